"""The delivery engine against fake providers: dedup, retries, fallback, failures, leases, rate limits."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from cloud.notify.channel import Retry
from cloud.notify.models import Delivery, InApp
from cloud.notify.outbox import Outbox, RetryPolicy
from cloud.notify.planner import NotifyRequest
from tests.cloud.notify.kit import fake_config, notify_kit, page
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.webhook import FakeWebhookReceiver
from tests.fakes.wecom import FakeWeCom


def deliveries(kit_db, incident: str = "37") -> list[Delivery]:  # type: ignore[no-untyped-def]
    with kit_db.read() as s:
        return list(s.scalars(select(Delivery).where(Delivery.incident_id == incident).order_by(Delivery.id)))


async def test_a_page_is_delivered_once_however_often_it_is_enqueued(
    tmp_path: Path, url: str, fake_wecom: FakeWeCom
) -> None:
    async with notify_kit(tmp_path, url, fake_config(wecom=fake_wecom)) as kit:
        kit.service.contacts.bind("grid1", now=kit.clock.now(), wecom_userid="zhangsan")
        w = kit.service.worker
        assert await w.submit([page()]) == 1
        assert await w.submit([page(), page()]) == 0  # same incident/step/recipient/channel
        assert await w.run_once() == 1
        assert await w.run_once() == 0
        assert len(fake_wecom.messages) == 1
        [d] = deliveries(kit.db)
        assert (d.channel, d.status, d.attempts) == ("wecom", "delivered", 1)
        assert d.fallback == ["inapp"]
        log = kit.service.outbox.log("37")
        assert log[0]["attempts"][0]["outcome"] == "delivered"
        # the message carries the signed links and nothing personal
        content = fake_wecom.messages[0]["text"]["content"]
        assert "https://vigil.test/l/" in content and "接单" in content


async def test_temporary_failures_retry_with_backoff(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config(wecom=fake_wecom)) as kit:
        kit.service.contacts.bind("grid1", now=kit.clock.now(), wecom_userid="zhangsan")
        w = kit.service.worker
        await w.submit([page()])
        fake_wecom.fail_next("timeout")
        await w.run_once()
        [d] = deliveries(kit.db)
        assert d.status == "pending" and "timeout" in d.last_error
        assert kit.clock.now() + 1.0 <= d.next_at <= kit.clock.now() + 2.0  # first backoff: 1-2 s
        assert await w.run_once() == 0  # not due yet
        kit.clock.advance(2.0)
        fake_wecom.fail_next("500")
        await w.run_once()
        [d] = deliveries(kit.db)
        assert d.status == "pending" and d.attempts == 2
        kit.clock.advance(60)
        await w.run_once()
        [d] = deliveries(kit.db)
        assert d.status == "delivered" and d.attempts == 3
        assert [a["outcome"] for a in kit.service.outbox.log("37")[0]["attempts"]] == [
            "retry",
            "retry",
            "delivered",
        ]
        assert len(fake_wecom.messages) == 1


async def test_a_channel_that_gives_up_hands_over_to_the_next(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom, fake_aliyun: FakeAliyun
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config(wecom=fake_wecom, aliyun=fake_aliyun)) as kit:
        kit.service.contacts.bind(
            "grid1",
            now=kit.clock.now(),
            wecom_userid="nobody",
            phone="13812341234",
            channels=["wecom", "sms"],
        )
        w = kit.service.worker
        await w.submit([page()])
        await w.run_once()  # WeCom: unknown user -> give up -> SMS row
        await w.run_once()
        rows = deliveries(kit.db)
        assert [(d.channel, d.status) for d in rows] == [("wecom", "failed"), ("sms", "delivered")]
        sms = fake_aliyun.sms[0]
        assert sms["PhoneNumbers"] == "13812341234" and '"ref":"37"' in sms["TemplateParam"]


async def test_retries_exhausted_then_in_app_and_operators_see_the_failure(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom
) -> None:
    config = fake_config(wecom=fake_wecom, max_attempts=2)
    async with notify_kit(tmp_path, sqlite_url, config) as kit:
        kit.service.contacts.bind("grid1", now=kit.clock.now(), wecom_userid="zhangsan")
        w = kit.service.worker
        await w.submit([page()])
        fake_wecom.fail_next("rate_limit", "rate_limit")
        await w.run_once()
        kit.clock.advance(61)
        await w.run_once()  # second failure: gives up, falls back to in-app
        await w.run_once()
        rows = deliveries(kit.db)
        assert [(d.channel, d.status) for d in rows] == [("wecom", "failed"), ("inapp", "delivered")]
        assert "gave up after 2 attempts" in rows[0].last_error
        with kit.db.read() as s:
            inapp = list(s.scalars(select(InApp).order_by(InApp.id)))
        kinds = [(i.kind, i.user_id) for i in inapp]
        assert ("failure", None) in kinds and ("notice", kit.users["grid1"]) in kinds
        assert w.metrics.failures._value.get() == 1


async def test_voice_only_for_life_safety_and_only_configured_channels(
    tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config(aliyun=fake_aliyun)) as kit:
        kit.service.contacts.bind(
            "grid1",
            now=kit.clock.now(),
            wecom_userid="zs",
            phone="13812341234",
            channels=["voice", "wecom", "sms"],
        )
        w = kit.service.worker
        await w.submit([page("1", severity=3), page("2", severity=1)])
        by = {d.incident_id: d for d in deliveries(kit.db, "1") + deliveries(kit.db, "2")}
        assert by["1"].channel == "voice" and by["1"].fallback == ["sms", "inapp"]  # WeCom not configured
        assert by["2"].channel == "sms"


async def test_two_workers_never_send_the_same_page(tmp_path: Path, url: str, fake_wecom: FakeWeCom) -> None:
    config = fake_config(wecom=fake_wecom, http_timeout_s=10.0)  # no client timeouts on a busy machine
    async with (
        notify_kit(tmp_path, url, config, worker_id="a") as a,
        notify_kit(tmp_path, url, config, worker_id="b", migrate=False) as b,
    ):
        a.service.contacts.bind("grid1", now=a.clock.now(), wecom_userid="zhangsan")
        await a.service.worker.submit([page(str(i)) for i in range(30)])
        rounds = [w.run_once() for w in (a.service.worker, b.service.worker) for _ in range(3)]
        await asyncio.gather(*rounds)
        for _ in range(5):  # whatever is left (a retry after a refused connection) goes out too
            a.clock.advance(600)
            b.clock.advance(600)
            await asyncio.gather(a.service.worker.run_once(), b.service.worker.run_once())
        cases = sorted(
            int(m["text"]["content"].split("编号：")[1].split("\n")[0]) for m in fake_wecom.messages
        )
        assert cases == list(range(30))  # each page exactly once


def test_concurrent_claims_are_exclusive(tmp_path: Path, url: str) -> None:
    """Threads racing on the claim: every row goes to exactly one of them (conditional UPDATE)."""
    from cloud.db import Database, upgrade_head
    from cloud.notify.outbox import NewDelivery

    if not url.startswith("sqlite"):
        upgrade_head(url)
    db = Database(url)
    try:
        boxes = [Outbox(db, worker=f"w{i}", policy=RetryPolicy()) for i in range(4)]
        boxes[0].enqueue(
            [NewDelivery(f"k{i}", "1", "user:1", "inapp", {"title": "t"}) for i in range(40)], now=100.0
        )
        got: list[list[int]] = [[] for _ in boxes]

        def grab(i: int) -> None:
            for _ in range(20):
                got[i].extend(c.id for c in boxes[i].claim(now=100.0, limit=3))

        threads = [threading.Thread(target=grab, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        flat = [x for g in got for x in g]
        assert len(flat) == 40 and len(set(flat)) == 40
    finally:
        db.close()


async def test_a_worker_dying_mid_send_leaves_the_page_to_another(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom
) -> None:
    # No timeout fault here: the heir's send (gettoken + message/send) must not hinge on the 0.5 s client
    # timeout the fault tests use, which a loaded 2-core CI box can exceed (the send then ends as a Retry
    # and the page stays 'pending'); what this test checks is the lease, not the HTTP deadline.
    config = fake_config(wecom=fake_wecom, lease_s=30, http_timeout_s=10.0)
    async with notify_kit(tmp_path, sqlite_url, config, worker_id="dead") as kit:
        kit.service.contacts.bind("grid1", now=kit.clock.now(), wecom_userid="zhangsan")
        await kit.service.worker.submit([page()])
        [claimed] = kit.service.outbox.claim(now=kit.clock.now(), limit=5)  # ... and the process dies here
        assert kit.service.outbox.claim(now=kit.clock.now() + 10, limit=5) == []  # lease still held
        async with notify_kit(tmp_path, sqlite_url, config, worker_id="heir", migrate=False) as heir:
            heir.clock.t = kit.clock.now() + 31
            assert await heir.service.worker.run_once() == 1
        [d] = deliveries(kit.db)
        assert d.status == "delivered" and d.attempts == 2
        outcomes = [a["outcome"] for a in kit.service.outbox.log("37")[0]["attempts"]]
        assert outcomes == ["lost", "delivered"]
        # the dead worker's late answer is fenced: it cannot overwrite the heir's result
        late = kit.service.outbox.finish(claimed, Retry("late"), now=kit.clock.now() + 40)
        assert late.status == "delivered"


async def test_graceful_stop_lets_sends_on_the_wire_finish(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config(wecom=fake_wecom, http_timeout_s=2.0)) as kit:
        kit.service.contacts.bind("grid1", now=kit.clock.now(), wecom_userid="zhangsan")
        await kit.service.worker.run_once()  # nothing yet; warms nothing
        await kit.service.worker.submit([page()])
        fake_wecom.hang_s = 0.4
        fake_wecom.fail_next("timeout")  # the fake holds the gettoken request 0.4 s, then answers 504
        task = asyncio.create_task(kit.service.worker.run())
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [d] = deliveries(kit.db)
        assert d.status == "pending" and d.attempts == 1  # the outcome was recorded, not lost
        assert kit.service.outbox.log("37")[0]["attempts"][0]["outcome"] == "retry"


async def test_robot_rate_limit_groups_into_digests(
    tmp_path: Path, sqlite_url: str, fake_dingtalk: FakeDingTalk
) -> None:
    config = fake_config(dingtalk=fake_dingtalk, per_minute=1, batch_size=50)
    async with notify_kit(tmp_path, sqlite_url, config) as kit:
        kit.service.contacts.set_group("g01", title="G01 网格", robot="g01")
        w = kit.service.worker
        await w.submit([page(str(i), kind="group", target="g01") for i in range(20)])
        assert await w.run_once() == 20  # one digest message for all twenty
        assert len(fake_dingtalk.messages) == 1
        card = fake_dingtalk.messages[0]["actionCard"]
        assert card["title"].startswith("20 条新告警")
        await w.submit([page(str(i), kind="group", target="g01") for i in range(20, 25)])
        assert await w.run_once() == 0  # the robot's minute budget is used up: they wait, not dropped
        kit.clock.advance(61)
        assert await w.run_once() == 5
        assert len(fake_dingtalk.messages) == 2
        with kit.db.read() as s:
            statuses = set(s.scalars(select(Delivery.status)))
        assert statuses == {"delivered"}


async def test_acknowledged_incident_cancels_its_queued_pages(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config(wecom=fake_wecom)) as kit:
        kit.service.contacts.bind("grid1", now=kit.clock.now(), wecom_userid="zhangsan")
        await kit.service.worker.submit([page()])
        assert kit.service.outbox.cancel_incident("37", now=kit.clock.now()) == 1
        assert await kit.service.worker.run_once() == 0
        assert fake_wecom.messages == []


async def test_webhook_target_is_signed_and_sent_once(
    tmp_path: Path, sqlite_url: str, fake_webhook: FakeWebhookReceiver
) -> None:
    config = fake_config(webhooks={"ops": {"url": fake_webhook.url + "/hook", "secret": fake_webhook.secret}})
    async with notify_kit(tmp_path, sqlite_url, config) as kit:
        w = kit.service.worker
        await w.submit([page(kind="webhook", target="ops"), page(kind="webhook", target="ops")])
        fake_webhook.fail_next("500")
        await w.run_once()
        kit.clock.advance(10)
        await w.run_once()
        assert len(fake_webhook.accepted) == 1 and fake_webhook.rejected == []
        body = fake_webhook.accepted[0].json()
        assert body["incident_id"] == "37" and body["delivery"].endswith("/webhook:ops/webhook")
        [d] = deliveries(kit.db)
        assert (d.status, d.attempts) == ("delivered", 2)


async def test_a_page_nobody_can_receive_is_settled_failed_and_shown_to_operators(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom
) -> None:
    """Soak finding: an intent for a target with no reachable recipient stayed claimed and was taken again
    after every lease, forever. Now it is settled ``failed`` once, and operators see it in-app."""

    class Intents:  # the loop's intent table, reduced to the two calls the worker makes
        def __init__(self) -> None:
            self.pending = [page(target="nobody-here", kind="user"), page("38")]
            self.settled: list[tuple[str, str, str]] = []

        def claim(self, *, now: float, limit: int) -> list[NotifyRequest]:
            out, self.pending = self.pending, []
            return [
                NotifyRequest(
                    r.facts, r.target_kind, r.target_id, r.step, r.channel_hint, f"key-{r.facts.incident_id}"
                )
                for r in out
            ]

        def settle(self, intent_key: str, state: str, *, now: float, detail: str = "") -> None:
            self.settled.append((intent_key, state, detail))

    async with notify_kit(tmp_path, sqlite_url, fake_config(wecom=fake_wecom)) as kit:
        kit.service.contacts.bind("grid1", now=kit.clock.now(), wecom_userid="zhangsan")
        w = kit.service.worker
        w.source = intents = Intents()
        assert await w.intake_once() == 1  # incident 38 reaches grid1; incident 37's target nobody
        assert intents.settled == [("key-37", "failed", "nobody to notify (user:nobody-here)")]
        with kit.db.read() as s:
            [shown] = s.scalars(select(InApp).where(InApp.kind == "failure")).all()
        assert shown.incident_id == "37" and shown.user_id is None and "无人可通知" in shown.notice["title"]
        await w.run_once()
        assert [k for k, state, _ in intents.settled] == ["key-37", "key-38"]  # 38 delivered, settled sent
