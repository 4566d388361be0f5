"""No batch is retried forever, and nothing the cloud refuses can block what it accepts (issue 11).

The gateway's outbox and sender talk to the *real* cloud app (``tests/cloud/cloudkit.py``, SQLite) over
``httpx.ASGITransport``; where a failure the real cloud cannot be made to produce is needed (a 5xx that
only one record provokes, an old cloud), a small :class:`Uplink` wrapper is the seam, not monkeypatching.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from alerts.contract import AlertEvent, UplinkAck
from edge.metrics import GatewayMetrics
from edge.outbox import Outbox, PendingBatch
from edge.status import diagnose_metrics, diagnose_outbox
from edge.uplink import UplinkAuthError, UplinkInvalid, UplinkSender, UplinkThrottled, UplinkUnavailable
from edge.uplink.base import Uplink
from edge.uplink.http import HttpUplink
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.aio import cancel_and_wait
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import MANHOLE_1, SMOKE_1, T0, Cloud, alert_step, readings

M, S = DeviceKind.MANHOLE, DeviceKind.SMOKE_ALARM
FORGED = "70b3d57edeadbeef"  # canonical form, as a gateway sends it
GW = "gw-community-1"


def http_uplink(cloud: Cloud) -> HttpUplink:
    return HttpUplink("http://vigil.test", cloud.gw1_token, transport=httpx.ASGITransport(app=cloud.app))


class Wrapped:
    """An uplink that fails on purpose for some batches (``fail(batch) -> exception or None``)."""

    def __init__(self, inner: Uplink, fail: Callable[[PendingBatch], Exception | None]) -> None:
        self.inner, self.fail = inner, fail
        self.attempts: list[tuple[float, str]] = []

    async def run(self) -> None:
        return None

    async def send(self, batch: PendingBatch) -> UplinkAck:
        self.attempts.append((time.monotonic(), batch.batch_id))
        exc = self.fail(batch)
        if exc is not None:
            raise exc
        return await self.inner.send(batch)

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextlib.asynccontextmanager
async def sending(outbox: Outbox, uplink: Uplink, **kw: float) -> AsyncIterator[UplinkSender]:
    opts: dict[str, float] = {"backoff_initial_s": 0.02, "backoff_max_s": 0.1, **kw}
    s = UplinkSender(outbox, uplink, GatewayMetrics(), GW, **opts)  # type: ignore[arg-type]
    task = asyncio.create_task(s.run(), name="sender")
    try:
        yield s
    finally:
        await cancel_and_wait(task)
        await uplink.aclose()


async def wait_until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


def metric(s: UplinkSender) -> str:
    return s.metrics.render().decode()


@pytest.fixture
def outbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    ob = Outbox(tmp_path / "outbox.sqlite3")
    yield ob
    ob.close()


def empty(ob: Outbox) -> bool:
    return ob.stats().depth == {"alert": 0, "live": 0, "backlog": 0}


async def test_forged_frame_is_quarantined_and_the_gateway_moves_on(
    cloud_sqlite: Cloud, outbox: Outbox, tmp_path: Path
) -> None:
    c = cloud_sqlite
    fire = alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0)
    forged = alert_step(FORGED, S, EventType.FIRE, AlertPhase.CLEARED, T0)
    outbox.commit([readings(M, MANHOLE_1, [1, 2]), readings(M, FORGED, [7, 8, 9])], [fire, forged])
    async with sending(outbox, http_uplink(c)) as s:
        await wait_until(lambda: empty(outbox))
        outbox.commit([readings(M, MANHOLE_1, [3])], [])  # later records are not blocked
        await wait_until(lambda: empty(outbox))
        text = metric(s)
    assert c.state.registry.get(MANHOLE_1, "admin").readings_total == 3
    assert (await c.client.get(f"/api/v1/alerts/{fire.alert_id}", headers=c.admin)).status_code == 200
    assert outbox.quarantined == {"unknown_device": 4}  # 3 readings + 1 alert step
    assert outbox.quarantine_report() == [(FORGED, "unknown_device", 4)]
    assert 'vigil_gateway_quarantined_total{reason="unknown_device"} 4.0' in text
    # the quarantine keeps the refused data for inspection
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    bodies = {r: json.loads(b) for r, b in db.execute("SELECT record, body FROM quarantine")}
    db.close()
    assert bodies["alert"]["alert_id"] == forged.alert_id and bodies["telemetry"][0]["seq"] == [7, 8, 9]
    # visible to the installer: running (metrics + outbox) and stopped (outbox only)
    report = diagnose_metrics(text)
    assert any("4 record(s) refused by the cloud" in line for line in report.lines)
    offline = diagnose_outbox(tmp_path / "outbox.sqlite3")
    assert any(FORGED in line and "not registered in the cloud" in line for line in offline.lines)


def poison_alert() -> AlertEvent:
    """An alert step the cloud refuses whole (422: episode beyond the schema bound)."""
    good = alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0 + 99)
    return AlertEvent.model_construct(**{**dict(good), "episode_ms": 2**63 + 5})


async def test_invalid_record_is_isolated_and_dead_lettered_while_the_rest_is_stored(
    cloud_sqlite: Cloud, outbox: Outbox, tmp_path: Path
) -> None:
    c = cloud_sqlite
    goods = [
        alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0 + i, episode_t=T0 + i) for i in range(5)
    ]
    outbox.commit([], [*goods[:2], poison_alert(), *goods[2:]])
    async with sending(outbox, http_uplink(c), max_refusals=2) as s:
        # the outbox's dead-letter move commits in its thread; the sender counts it when it resumes
        dead = 'vigil_gateway_dead_letter_total{lane="alert"} 1.0'
        await wait_until(lambda: empty(outbox) and dead in metric(s))
        text = metric(s)
    for g in goods:
        r = await c.client.get(f"/api/v1/alerts/{g.alert_id}", headers=c.admin)
        assert r.status_code == 200, g.alert_id
    assert outbox.dead_lettered == {"alert": 1}
    assert 'vigil_gateway_dead_letter_total{lane="alert"} 1.0' in text
    assert "vigil_gateway_batch_splits_total 3.0" in text  # 6 -> 3 + 3, 3 -> 1 + 2, 2 -> 1 + 1
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    (reason, attempts), *_ = db.execute("SELECT reason, attempts FROM dead_letter").fetchall()
    db.close()
    assert reason.startswith("http_422") and attempts == 2
    assert any("1 alert record(s) in the dead letter" in line for line in diagnose_metrics(text).lines)


async def test_a_batch_only_5xx_dead_letters_once_the_cloud_takes_others(
    cloud_sqlite: Cloud, outbox: Outbox
) -> None:
    c = cloud_sqlite
    poison = alert_step(SMOKE_1, S, EventType.CO, AlertPhase.RAISED, T0)
    outbox.commit([], [poison])

    def fail(b: PendingBatch) -> Exception | None:
        return (
            UplinkUnavailable("500", reason="http_500") if poison.alert_id.encode() in b.as_json() else None
        )

    up = Wrapped(http_uplink(c), fail)
    async with sending(outbox, up, max_attempts=4) as s:
        await wait_until(lambda: len(up.attempts) >= 6)
        assert outbox.dead_lettered == {}  # nothing else acknowledged yet: could be an outage
        outbox.commit([], [alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0)])
        s.notify()
        await wait_until(lambda: outbox.dead_lettered == {"alert": 1})
        await wait_until(lambda: empty(outbox))


async def test_an_outage_never_dead_letters_anything(outbox: Outbox) -> None:
    for i in range(3):
        outbox.commit(
            [readings(M, MANHOLE_1, [i])], [alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0 + i)]
        )

    class Down:
        async def run(self) -> None:
            return None

        async def send(self, batch: PendingBatch) -> UplinkAck:
            raise UplinkUnavailable("connection refused", reason="connect")

        async def aclose(self) -> None:
            return None

    down = Wrapped(Down(), lambda b: None)
    async with sending(outbox, down, max_attempts=3, backoff_max_s=0.02, dead_letter_after_s=0.0):
        await wait_until(lambda: len(down.attempts) >= 40)
    assert outbox.dead_lettered == {} and outbox.quarantined == {}
    assert outbox.stats().depth["alert"] == 3 and outbox.stats().depth["live"] == 3


async def test_alert_batch_awaiting_retry_goes_before_telemetry_batches(outbox: Outbox) -> None:
    outbox.commit([readings(M, MANHOLE_1, [1])], [])
    tele = outbox.next_batch(GW)
    outbox.commit([], [alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0)])
    first_alert = outbox.next_batch(GW)
    assert tele is not None and first_alert is not None and first_alert.n_alerts == 1
    again = outbox.next_batch(GW)  # both wait for a retry: the alert one goes first
    assert again is not None and again.batch_id == first_alert.batch_id


async def test_cloud_back_is_noticed_within_the_probe_interval(cloud_sqlite: Cloud, outbox: Outbox) -> None:
    c = cloud_sqlite
    down = [True]
    up = Wrapped(http_uplink(c), lambda b: UplinkUnavailable("down", reason="connect") if down[0] else None)
    outbox.commit([], [alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0)])
    async with sending(outbox, up, backoff_initial_s=0.05, backoff_max_s=60.0, recovery_probe_s=0.3):
        await asyncio.sleep(2.0)  # long enough for an uncapped backoff to grow past 1 s
        down[0] = False
        t0 = time.monotonic()
        await wait_until(lambda: empty(outbox))
    # the retry cadence stays at the probe interval (an uncapped backoff would be past 1 s by now), and
    # the first attempt after the cloud came back is within one probe interval of it; how long the
    # cloud then takes to store the batch is the cloud's time, not the gateway's noticing (on a loaded
    # CI machine that was up to 2 s)
    gaps = [b[0] - a[0] for a, b in zip(up.attempts, up.attempts[1:], strict=False)]
    first_after = min(t for t, _ in up.attempts if t >= t0)
    assert max(gaps) <= 0.3 + 0.25 and first_after - t0 <= 0.3 + 0.25


async def test_new_alert_cuts_short_a_refusal_pause(cloud_sqlite: Cloud, outbox: Outbox) -> None:
    c = cloud_sqlite
    calls = [0]

    def fail(b: PendingBatch) -> Exception | None:
        calls[0] += 1
        return UplinkAuthError("401", reason="http_401") if calls[0] == 1 else None

    up = Wrapped(http_uplink(c), fail)
    fire = alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0)
    outbox.commit([readings(M, MANHOLE_1, [1])], [])
    async with sending(outbox, up, backoff_initial_s=30.0, backoff_max_s=60.0) as s:
        await wait_until(lambda: calls[0] == 1)
        t0 = time.monotonic()
        outbox.commit([], [fire])
        s.notify()
        await wait_until(lambda: outbox.stats().depth["alert"] == 0, timeout=5)
        assert time.monotonic() - t0 < 2.0


async def test_cloud_without_contract_v2_gets_version_1_batches(cloud_sqlite: Cloud, outbox: Outbox) -> None:
    c = cloud_sqlite

    def old_cloud(b: PendingBatch) -> Exception | None:
        if json.loads(b.as_json())["contract_version"] != 1:
            return UplinkInvalid("422: [{'loc': ['body', 'contract_version'], ...}]", reason="http_422")
        return None

    up = Wrapped(http_uplink(c), old_cloud)
    outbox.commit([readings(M, MANHOLE_1, [1, 2])], [])
    async with sending(outbox, up):
        await wait_until(lambda: empty(outbox))
    assert outbox.contract_version == 1 and outbox.dead_lettered == {}
    assert c.state.registry.get(MANHOLE_1, "admin").readings_total == 2


async def test_quarantine_counts_reach_the_console_through_gateway_status(
    cloud_sqlite: Cloud, outbox: Outbox
) -> None:
    c = cloud_sqlite
    outbox.commit([readings(M, MANHOLE_1, [1]), readings(M, FORGED, [1, 2])], [])
    up = http_uplink(c)
    s = UplinkSender(outbox, up, GatewayMetrics(), GW, backoff_initial_s=0.02, backoff_max_s=0.1, status=dict)
    task = asyncio.create_task(s.run())
    try:
        await wait_until(lambda: empty(outbox))
        outbox.commit([readings(M, MANHOLE_1, [2])], [])  # the next batch carries the count
        await wait_until(lambda: empty(outbox))
    finally:
        await cancel_and_wait(task)
        await up.aclose()
    gw = (await c.client.get(f"/api/v1/gateways/{GW}", headers=c.viewer)).json()
    assert gw["status"]["quarantined_total"] == 2 and gw["status"]["dead_letter_total"] == 0


@pytest.mark.parametrize(
    "failure",
    [
        lambda: UplinkThrottled("429", reason="http_429", retry_after_s=0.05),
        lambda: UplinkUnavailable("503", reason="http_503"),  # storage down: "retry the same batch"
        lambda: UplinkUnavailable("timeout", reason="timeout"),
    ],
    ids=["throttled", "storage_down", "timeout"],
)
async def test_throttled_or_storage_down_telemetry_is_never_given_up(
    cloud_sqlite: Cloud, outbox: Outbox, failure: Callable[[], Exception]
) -> None:
    """Even while alert batches are acknowledged (which would prove a poison batch), these wait."""
    c = cloud_sqlite
    failing = [True]

    def fail(b: PendingBatch) -> Exception | None:
        return failure() if failing[0] and b'"telemetry":[]' not in b.as_json() else None

    up = Wrapped(http_uplink(c), fail)
    outbox.commit([readings(M, MANHOLE_1, [1]), readings(M, MANHOLE_1, [2], t0=T0 + 60)], [])
    async with sending(outbox, up, max_attempts=2) as s:
        for i in range(3):
            outbox.commit(
                [], [alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0 + i, episode_t=T0 + i)]
            )
            s.notify()
            await wait_until(lambda: outbox.stats().depth["alert"] == 0)
            await asyncio.sleep(0.2)
        assert len(up.attempts) >= 8 and outbox.dead_lettered == {}
        assert outbox.stats().depth["live"] + outbox.stats().depth["backlog"] == 2
        failing[0] = False
        await wait_until(lambda: empty(outbox))
    assert c.state.registry.get(MANHOLE_1, "admin").readings_total == 2
