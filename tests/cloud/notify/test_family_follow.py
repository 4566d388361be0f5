"""What a wearer's family and the desk get beyond the first text: the console's per-incident notice list and
"was the family reached", the call task addressed to whoever is on duty when it is delivered, a follow link
in the family's SMS, and a new page when the case is reopened (docs/notifications.md, "A wearer's family").

SMS goes over real HTTP to the local Aliyun / Tencent fakes, which verify each request's signature as the
providers do (tests/fakes/); the tests read the template code and parameters the fakes accepted.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from alerts.loop.routing import family_target
from alerts.loop.stages import Action, Command
from cloud.db import Device
from cloud.loop.models import Incident, IncidentEvent
from cloud.loop.service import Report as LoopReport
from cloud.notify.inapp import list_for
from cloud.notify.links import FAMILY_ACTOR, LinkError, LinkKeys, LinkSigner, Purpose
from cloud.notify.loopbridge import REOPEN_POLL_S, ReopenWatch
from cloud.notify.models import Delivery, InApp
from cloud.notify.planner import NotifyRequest
from cloud.notify.render import IncidentFacts
from firmware_bridge.kernel.locale import show
from tests.cloud.cloudkit import Cloud, make_settings, start_cloud
from tests.cloud.notify.kit import T0, Kit, fake_config, notify_kit, page
from tests.cloud.notify.test_family_and_desks import CONTACT, DEVICE, register_wearer, with_family_templates
from tests.cloud.notify.test_family_words_and_duty import (
    SERVICE_PHONE,
    put_roster,
    tencent_config,
    wristband_incident,
)
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.tencent import FakeTencent
from tests.fakes.wecom import FakeWeCom


def write_family_config(path: Path, wecom: FakeWeCom, aliyun: FakeAliyun, *, extra: str = "") -> Path:
    path.write_text(
        f"""
public_base_url = "https://vigil.test"
http_timeout_s = 0.5
max_attempts = 1
reopen_window_s = 86400
{extra}

[wecom]
corp_id = "{wecom.corp_id}"
corp_secret = "{wecom.corp_secret}"
agent_id = {wecom.agent_id}
api_url = "{wecom.api_url}"

[aliyun_sms]
access_key_id = "{aliyun.key_id}"
access_key_secret = "{aliyun.secret}"
sign_name = "平安社区"
template_code = "SMS_1"
endpoint = "{aliyun.url}/"

[aliyun_sms.templates]
family = "SMS_FAMILY"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def cloud(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom, fake_aliyun: FakeAliyun
) -> AsyncIterator[Cloud]:
    config = write_family_config(tmp_path / "notify.toml", fake_wecom, fake_aliyun)
    settings = make_settings(tmp_path, sqlite_url, notify_config_file=config, run_jobs=False)
    async with start_cloud(settings) as c:
        yield c


def wearer_case(cloud: Cloud, *, stage: str = "dispatched") -> int:
    """A registered wristband with an emergency contact, and an open fall case on it."""
    notify = cloud.app.state.notify
    sealed = notify.contacts.box.seal({"wearer_name": "张秀英", "emergency_contact_phone": CONTACT})
    with cloud.state.db.write() as s:
        if s.get(Device, DEVICE) is None:
            s.add(Device(device_id=DEVICE, kind="wristband", grid="G01", interval_s=300.0,
                         private_enc=sealed, created_at=T0))  # fmt: skip
        inc = Incident(
            group_key=f"per_device|device_id={DEVICE}|event=fall", group_rule="per_device", stage=stage,
            source="gateway", kind="wristband", event_type="fall", grade=3, urgency="critical",
            device_id=DEVICE, grid="G01", title="跌倒 张秀英 心率 40 3号楼201", created_at=T0,
            stage_entered_at=T0, updated_at=T0,
        )  # fmt: skip
        s.add(inc)
        s.flush()
        return int(inc.id)


def family_page(incident_id: str | int, device_id: str = DEVICE, event_type: str = "fall") -> NotifyRequest:
    return NotifyRequest(
        facts=IncidentFacts(incident_id=str(incident_id), opened_at=T0, severity=3, event_type=event_type,
                            place="G01", summary="张秀英 心率 40 3号楼201"),
        target_kind="role",
        target_id=family_target(device_id),
    )  # fmt: skip


# -- the console: one incident's notices, and whether the family was reached ---------------------------------
async def test_the_console_lists_one_incidents_notices_and_sees_the_family_reached(
    cloud: Cloud, fake_aliyun: FakeAliyun
) -> None:
    notify = cloud.app.state.notify
    incident_id = wearer_case(cloud)
    url = f"/api/v1/notify/incidents/{incident_id}/family"
    (entry,) = (await cloud.client.get(url, headers=cloud.dispatcher)).json()
    assert entry["family_reached"] == {"status": "none", "at": None, "channel": None, "call": None}
    await notify.worker.submit([family_page(incident_id), page("T-77", target="disp")])
    (entry,) = (await cloud.client.get(url, headers=cloud.dispatcher)).json()
    assert entry["family_reached"] == {"status": "pending", "at": None, "channel": None, "call": None}
    cloud.clock.advance(42)
    while await notify.worker.send_once():
        pass
    assert [m["PhoneNumbers"] for m in fake_aliyun.sms] == [CONTACT]
    (entry,) = (await cloud.client.get(url, headers=cloud.dispatcher)).json()
    sent = {"status": "sent", "at": cloud.clock.now(), "channel": "sms", "call": None}
    assert entry["family_reached"] == sent
    assert CONTACT not in str(entry["family_reached"])

    # the incident page's notice list: this incident's call task, not the other incident's page
    mine = (
        await cloud.client.get("/api/v1/notify/inapp", params={"incident_id": str(incident_id)},
                               headers=cloud.dispatcher)
    ).json()  # fmt: skip
    assert [(i["incident_id"], i["title"][:5]) for i in mine] == [(str(incident_id), "请致电家属")]
    everything = (await cloud.client.get("/api/v1/notify/inapp", headers=cloud.dispatcher)).json()
    assert {i["incident_id"] for i in everything} == {str(incident_id), "T-77"}
    # the call task sits in the operators' queue (nobody on duty): not a read-only viewer's
    viewer = await cloud.client.get(
        "/api/v1/notify/inapp", params={"incident_id": str(incident_id)}, headers=cloud.viewer
    )
    assert viewer.status_code == 200 and viewer.json() == []
    assert (
        await cloud.client.get("/api/v1/notify/inapp", params={"incident_id": ""}, headers=cloud.viewer)
    ).status_code == 422


async def test_a_family_text_that_failed_on_every_channel_reads_failed(
    tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun
) -> None:
    config = with_family_templates(fake_config(aliyun=fake_aliyun), max_attempts=1)
    async with notify_kit(tmp_path, sqlite_url, config) as kit:
        register_wearer(kit)
        w = kit.service.worker
        await w.submit([family_page("41")])
        fake_aliyun.fail_next("500")
        kit.clock.advance(5)
        await w.send_once()  # one attempt allowed (max_attempts = 1): the SMS gives up, voice is next
        reached = kit.service.outbox.family_reached("41", DEVICE)
        # severity 3 (life-safety): the call follows; until it is settled the family is "pending"
        assert reached == {"status": "pending", "at": None, "channel": None}
        fake_aliyun.fail_next("500")
        kit.clock.advance(5)
        await w.send_once()
        assert kit.service.outbox.family_reached("41", DEVICE) == {
            "status": "failed", "at": kit.clock.now(), "channel": "voice"
        }  # fmt: skip
        assert kit.service.outbox.family_reached("41", "another-device")["status"] == "none"
        with kit.db.read() as s:
            assert s.scalar(select(Device.device_id)) == DEVICE


# -- the call task goes to whoever is on duty when it is delivered -------------------------------------------
async def test_a_call_task_planned_before_a_shift_change_goes_to_the_next_shift(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config()) as kit:
        register_wearer(kit)
        # G07's call takers hand over every hour; the next handover is 60 s after T0 ("07:59" -> "08:00")
        put_roster(kit, [{"role": "call_taker", "zone": "G07", "participants": ["ct-zhao", "ops"],
                          "start": T0 + 60 - 3600, "shift_s": 3600}])  # fmt: skip
        early, late = wristband_incident(kit, "G07"), wristband_incident(kit, "G07")
        w = kit.service.worker
        assert await w.submit([family_page(early), family_page(late)]) == 2  # both planned at "07:59"
        # the first is delivered at once, by the outgoing shift's call taker (grid2 answers for ct-zhao)
        await _send_only(kit, early)
        kit.clock.advance(90)  # "08:00:30": the incoming shift (ops) is on duty
        await w.send_once()
        with kit.db.read() as s:
            got = {(i.incident_id, i.user_id) for i in s.scalars(select(InApp))}
            log = {d.incident_id: d.provider_id for d in s.scalars(select(Delivery))}
        assert got == {(early, kit.users["grid2"]), (late, kit.users["ops"])}
        assert log == {early: f"user:{kit.users['grid2']}", late: f"user:{kit.users['ops']}"}
        assert [m["title"][:5] for m in list_for(kit.db, kit.users["ops"], operators=False)] == ["请致电家属"]


async def _send_only(kit: Kit, incident_id: str) -> None:
    """Deliver one incident's rows now and leave the others queued (another worker got there later)."""
    with kit.db.write() as s:
        held = s.scalars(select(Delivery).where(Delivery.incident_id != incident_id)).all()
        for d in held:
            d.next_at = kit.clock.now() + 30
    await kit.service.worker.send_once()
    with kit.db.write() as s:
        for d in s.scalars(select(Delivery).where(Delivery.incident_id != incident_id)):
            d.next_at = kit.clock.now()


async def test_someone_taking_the_case_does_not_cancel_the_familys_text_or_call_task(
    tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun
) -> None:
    async with notify_kit(
        tmp_path, sqlite_url, with_family_templates(fake_config(aliyun=fake_aliyun))
    ) as kit:
        register_wearer(kit)
        kit.service.contacts.bind("grid1", now=T0, phone="13812341234", channels=["sms"])
        w = kit.service.worker
        assert await w.submit([family_page("41"), page("41", target="grid1")]) == 3
        # grid1 accepts before anything is sent: the responders' queued page is pointless now
        assert kit.service.outbox.cancel_incident("41", now=kit.clock.now(), reason="accept by user:1") == 1
        await w.send_once()
        assert [m["TemplateCode"] for m in fake_aliyun.sms] == ["SMS_FAMILY"]
        with kit.db.read() as s:
            status = {d.channel: d.status for d in s.scalars(select(Delivery))}
        assert status == {"sms": "cancelled", "sms_family": "delivered", "call_task": "delivered"}


# -- the family's follow link --------------------------------------------------------------------------------
@pytest.fixture
async def linked(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom, fake_aliyun: FakeAliyun
) -> AsyncIterator[Cloud]:
    """The cloud with a family template that takes the follow link (``family_link = true``)."""
    config = write_family_config(
        tmp_path / "notify.toml", fake_wecom, fake_aliyun, extra="family_link = true"
    )
    settings = make_settings(tmp_path, sqlite_url, notify_config_file=config, run_jobs=False)
    async with start_cloud(settings) as c:
        yield c


async def loop_wearer_case(cloud: Cloud) -> int:
    """A fall case in the real loop (registered), on a wristband whose wearer has an emergency contact
    and a sealed home address: the words a family must never see are in the case's title and the registry."""
    notify = cloud.app.state.notify
    sealed = notify.contacts.box.seal(
        {"wearer_name": "张秀英", "emergency_contact_phone": CONTACT, "address": "3号楼201"}
    )
    loop = cloud.app.state.loop
    incident_id = await asyncio.to_thread(
        loop.report,
        LoopReport(type="elderly", description="跌倒", reporter="disp", lat=39.98, lon=116.31, register=True),
        role="dispatcher",
    )
    with cloud.state.db.write() as s:
        s.add(Device(device_id=DEVICE, kind="wristband", grid="G01", interval_s=300.0, private_enc=sealed,
                     created_at=T0))  # fmt: skip
        row = s.get(Incident, incident_id)
        assert row is not None
        row.kind, row.device_id, row.event_type = "wristband", DEVICE, "fall"
        row.title, row.address = "跌倒 张秀英 心率 40", "3号楼201"
    return int(incident_id)


async def drain(cloud: Cloud) -> None:
    for _ in range(10):
        if not await cloud.app.state.notify.worker.run_once():
            return


def family_sms(fake: FakeAliyun) -> list[dict[str, str]]:
    return [json.loads(m["TemplateParam"]) for m in fake.sms if m["TemplateCode"] == "SMS_FAMILY"]


SECRETS = ("张秀英", "心率", "3号楼", "G01", CONTACT, '"disp"', "39.98", "116.31")


async def test_the_family_sms_carries_a_follow_link_showing_progress_only(
    linked: Cloud, fake_aliyun: FakeAliyun
) -> None:
    cloud = linked
    incident_id = await loop_wearer_case(cloud)
    await cloud.app.state.notify.worker.submit([family_page(incident_id)])
    await drain(cloud)
    (params,) = family_sms(fake_aliyun)
    token = params["link"]  # the template holds "https://vigil.test/l/" as fixed text
    assert re.fullmatch(r"[A-Za-z0-9_-]{28}", token) and set(params) == {"event", "wearer", "time", "link"}

    async def progress() -> dict[str, object]:
        r = await cloud.client.get(f"/api/v1/links/{token}")
        assert r.status_code == 200, r.text
        text = json.dumps(r.json(), ensure_ascii=False)
        assert not [w for w in SECRETS if w in text], text  # no name, health value, address, responder
        return dict(r.json())

    first = await progress()
    assert (first["purpose"], first["family"], first["status"], first["title"]) == (
        "case",
        True,
        "已派单",
        "跌倒",
    )
    assert first["can_rate"] is False and first["reopen_until"] is None  # the page offers neither yet
    loop = cloud.app.state.loop
    steps = [
        (Command(Action.DISPATCH, "disp", assignee="disp"), "已派单"),
        (Command(Action.ACCEPT, "disp"), "已接单"),
        (Command(Action.ARRIVE, "disp"), "已到场"),
        (Command(Action.HANDLE, "disp", reason="已送医"), "已到场"),
    ]
    for cmd, shown in steps:
        await asyncio.to_thread(loop.act, incident_id, cmd)
        assert (await progress())["status"] == shown
    r = await cloud.client.post(f"/api/v1/links/{token}/rating", json={"score": 5})
    assert r.status_code == 409  # rated once the case is closed
    for cmd in (Command(Action.VERIFY, "disp"), Command(Action.CLOSE, "disp")):
        await asyncio.to_thread(loop.act, incident_id, cmd)
    done = await progress()
    assert (done["status"], done["progress"], done["can_rate"]) == ("已办结", "closed", True)

    # no position, no reopen from a family's link; a rating, once, filed as the family's
    assert (await cloud.client.get(f"/api/v1/links/{token}/position")).status_code == 400
    r = await cloud.client.post(f"/api/v1/links/{token}/reopen", json={"reason": "还是不舒服"})
    assert r.status_code == 403 and "请致电社区" in r.json()["detail"]
    r = await cloud.client.post(f"/api/v1/links/{token}/rating", json={"score": 5, "comment": "谢谢"})
    assert r.status_code == 200, r.text
    assert (await cloud.client.post(f"/api/v1/links/{token}/rating", json={"score": 4})).status_code == 409
    with cloud.state.db.read() as s:
        row = s.get(Incident, incident_id)
        assert row is not None and row.rating == 5 and row.stage == "rated" and row.reopen_count == 0
        rated = s.scalars(select(IncidentEvent).where(IncidentEvent.incident_id == incident_id,
                                                      IncidentEvent.action == "rate")).one()  # fmt: skip
        assert rated.actor == "family"
    rated_view = await progress()
    assert rated_view["rating"] == {"score": 5, "comment": "谢谢"} and rated_view["can_rate"] is False

    # a changed character is a forgery; after the link's life it has expired
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    r = await cloud.client.get(f"/api/v1/links/{forged}")
    assert r.status_code == 403 and r.json()["error"] == "link_forged"
    cloud.clock.advance(86400 + 86400 + 1)  # reopen_window_s + link_ttl_s, as a resident's case link
    r = await cloud.client.get(f"/api/v1/links/{token}")
    assert r.status_code == 403 and r.json()["error"] == "link_expired"


def test_a_family_link_survives_a_key_rotation_until_the_key_is_retired() -> None:
    k1, k2 = bytes(range(32)), bytes(range(1, 33))
    before = LinkSigner(LinkKeys(k1), base_url="https://vigil.test", ttl_s=3600)
    rotated = LinkSigner(LinkKeys(k2, (k1,)), base_url="https://vigil.test", ttl_s=3600)
    retired = LinkSigner(LinkKeys(k2), base_url="https://vigil.test", ttl_s=3600)
    token = before.family_token("37", now=T0)
    assert len(token) == 28 and "." not in token
    claims = rotated.verify(token, now=T0 + 60)
    assert (claims.purpose, claims.incident_id, claims.actor) == (Purpose.CASE, "37", FAMILY_ACTOR)
    assert claims.expires_at == T0 + 3600
    new = rotated.family_token("37", now=T0)
    assert new[1:4] != token[1:4]  # the key id bytes name the new primary
    assert retired.verify(new, now=T0).incident_id == "37"
    with pytest.raises(LinkError) as err:
        retired.verify(token, now=T0)
    assert err.value.code == "link_forged"
    with pytest.raises(LinkError) as err:
        rotated.verify(token, now=T0 + 3600)
    assert err.value.code == "link_expired"
    for bad in (token[:-1], token + "A", "A" * 28):
        with pytest.raises(LinkError) as err:
            rotated.verify(bad, now=T0)
        assert err.value.code in ("link_malformed", "link_forged")
    with pytest.raises(ValueError):
        before.family_token("T-9", now=T0)  # a family link names a loop incident by number


async def test_the_family_link_rides_in_tencents_last_parameter(
    tmp_path: Path, sqlite_url: str, fake_tencent: FakeTencent
) -> None:
    config = tencent_config(fake_tencent, service_phone=SERVICE_PHONE, family_link=True)
    async with notify_kit(tmp_path, sqlite_url, config) as kit:
        register_wearer(kit)
        await kit.service.worker.submit([family_page("43")])
        await kit.service.worker.send_once()
        (body,) = fake_tencent.sms
        event, wearer, when, phone, link = body["TemplateParamSet"]
        assert (event, wearer, when, phone) == ("跌倒", "张**", show(T0)[5:16], SERVICE_PHONE)
        assert kit.service.links.verify(link, now=kit.clock.now()).incident_id == "43"


async def test_the_family_call_after_a_failed_sms_speaks_no_link(
    tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun
) -> None:
    # the SMS fails for good; the voice call (same notice, the row's next channel) is sent without "link"
    config = with_family_templates(fake_config(aliyun=fake_aliyun), family_link=True, max_attempts=1)
    async with notify_kit(tmp_path, sqlite_url, config) as kit:
        register_wearer(kit)
        await kit.service.worker.submit([family_page("44")])
        fake_aliyun.fail_next("500")
        await kit.service.worker.send_once()
        await kit.service.worker.send_once()
        (call,) = fake_aliyun.calls
        assert call["TtsCode"] == "TTS_FAMILY" and set(json.loads(call["TtsParam"])) == {
            "event", "wearer", "time"
        }  # fmt: skip


# -- a reopened case pages the family again ------------------------------------------------------------------
async def close(cloud: Cloud, incident_id: int, *, dispatch: bool = True) -> None:
    loop = cloud.app.state.loop
    cmds = [Command(Action.DISPATCH, "disp", assignee="disp")] if dispatch else []
    cmds += [Command(Action.ACCEPT, "disp"), Command(Action.ARRIVE, "disp"),
             Command(Action.HANDLE, "disp", reason="已送医"), Command(Action.VERIFY, "disp"),
             Command(Action.CLOSE, "disp")]  # fmt: skip
    for cmd in cmds:
        await asyncio.to_thread(loop.act, incident_id, cmd)


async def test_each_reopen_of_the_case_pages_the_family_once_more(
    linked: Cloud, fake_aliyun: FakeAliyun
) -> None:
    cloud = linked
    notify = cloud.app.state.notify
    incident_id = await loop_wearer_case(cloud)
    await notify.worker.submit([family_page(incident_id)])
    await drain(cloud)
    await close(cloud, incident_id)
    cloud.clock.advance(600)
    await drain(cloud)
    assert [p["event"] for p in family_sms(fake_aliyun)] == ["跌倒"]  # closing is no news to page about

    # an operator reopens it: the family hears, with the reopen's time, and the desk gets a call task
    cloud.clock.advance(3600)
    reopened_at = cloud.clock.now()
    loop = cloud.app.state.loop
    await asyncio.to_thread(loop.act, incident_id, Command(Action.REOPEN, "disp", reason="家属反映仍不适"))
    cloud.clock.advance(REOPEN_POLL_S)
    await drain(cloud)
    sms = family_sms(fake_aliyun)
    assert [p["event"] for p in sms] == ["跌倒", "跌倒（重新处置）"]
    assert sms[1]["time"] == show(reopened_at)[5:16] and sms[1]["link"]
    tasks = (
        await cloud.client.get("/api/v1/notify/inapp", params={"incident_id": str(incident_id)},
                               headers=cloud.dispatcher)
    ).json()  # fmt: skip
    calls = sorted(t["title"][:11] for t in tasks if t["title"].startswith("请致电家属"))
    assert calls == ["请致电家属 / cal", "请致电家属（案件重开）"]  # (other roles' "无人可通知" aside)
    (entry,) = (
        await cloud.client.get(f"/api/v1/notify/incidents/{incident_id}/family", headers=cloud.dispatcher)
    ).json()
    assert entry["family_reached"]["status"] == "sent" and entry["family_reached"]["at"] == cloud.clock.now()

    # idempotent per reopen: more rounds, another worker, a restart's look-back add nothing
    for _ in range(3):
        cloud.clock.advance(REOPEN_POLL_S)
        await drain(cloud)
    again = ReopenWatch(cloud.state.db).poll(now=cloud.clock.now())
    assert len(again) == 1 and await notify.worker.submit(again) == 0
    assert len(family_sms(fake_aliyun)) == 2

    # closed again, then the resident's case link reopens it: one more page
    with cloud.state.db.read() as s:
        stage = s.get(Incident, incident_id).stage
    assert stage == "registered"
    await close(cloud, incident_id)
    case_url = notify.residents.case_link(str(incident_id), now=cloud.clock.now())
    r = await cloud.client.post(
        f"/api/v1/links/{case_url.rsplit('/l/', 1)[1]}/reopen", json={"reason": "没好"}
    )
    assert r.status_code == 200, r.text
    cloud.clock.advance(REOPEN_POLL_S)
    await drain(cloud)
    assert [p["event"] for p in family_sms(fake_aliyun)] == ["跌倒", "跌倒（重新处置）", "跌倒（重新处置）"]


async def test_only_a_family_already_paged_about_an_open_case_hears_of_its_reopen(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config()) as kit:
        register_wearer(kit)
        told, untold = wristband_incident(kit, "G01"), wristband_incident(kit, "G01")
        assert await kit.service.worker.submit([family_page(told)]) == 1  # the call task: family:<device>
        with kit.db.write() as s:
            for incident in (told, untold):
                s.add(IncidentEvent(incident_id=int(incident), at=T0 + 60, actor="disp", channel="api",
                                    action="reopen", from_stage="closed", to_stage="registered"))  # fmt: skip
        watch = ReopenWatch(kit.db)
        (req,) = watch.poll(now=T0 + 61)
        assert (req.facts.incident_id, req.target_id) == (told, family_target(DEVICE))
        assert req.facts.opened_at == T0 + 60 and req.reopen > 0
        assert watch.poll(now=T0 + 61 + REOPEN_POLL_S) == []  # each reopen once
        with kit.db.write() as s:
            row = s.get(Incident, int(told))
            assert row is not None
            row.stage, row.is_open = "closed", False  # closed again before anyone looked: nothing to page
        assert ReopenWatch(kit.db).poll(now=T0 + 100) == []


async def test_the_resident_case_page_serves_the_family_link_unchanged(
    linked: Cloud, fake_aliyun: FakeAliyun
) -> None:
    """The phone page behind /l/ (dashboards/public.py, resident.html) shows the family's answer as it is."""
    cloud = linked
    incident_id = await loop_wearer_case(cloud)
    await cloud.app.state.notify.worker.submit([family_page(incident_id)])
    await drain(cloud)
    (params,) = family_sms(fake_aliyun)
    transport = httpx.ASGITransport(app=cloud.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as phone:
        r = await phone.get(f"/l/{params['link']}", follow_redirects=True)
        assert r.status_code == 200, r.text[:300]
        assert "已派单" in r.text and "跌倒" in r.text
        assert 'id="reopen-form"' not in r.text and 'id="rate-form"' not in r.text
        assert not [w for w in SECRETS if w.strip('"') in r.text and w != '"disp"']
        await close(cloud, incident_id)
        r = await phone.get(f"/l/{params['link']}", follow_redirects=True)
        assert "已办结" in r.text and 'id="rate-form"' in r.text and 'id="reopen-form"' not in r.text


async def test_the_in_app_list_merges_own_and_operator_notices_newest_first(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config()) as kit:
        me, other = kit.users["grid1"], kit.users["grid2"]
        with kit.db.write() as s:
            for i, (uid, incident) in enumerate(
                [(me, "1"), (None, "1"), (other, "1"), (me, "2"), (None, "2"), (None, "1"), (me, "1")]
            ):
                s.add(InApp(user_id=uid, incident_id=incident, kind="notice", notice={"title": f"n{i}"},
                            created_at=T0 + i))  # fmt: skip
        titles = [n["title"] for n in list_for(kit.db, me)]
        assert titles == ["n6", "n5", "n4", "n3", "n1", "n0"]  # grid2's own n2 is not mine
        assert [n["title"] for n in list_for(kit.db, me, limit=3)] == ["n6", "n5", "n4"]
        assert [n["title"] for n in list_for(kit.db, me, operators=False)] == ["n6", "n3", "n0"]
        assert [n["title"] for n in list_for(kit.db, me, incident_id="1")] == ["n6", "n5", "n1", "n0"]
        assert [n["title"] for n in list_for(kit.db, me, incident_id="1", operators=False)] == ["n6", "n0"]
