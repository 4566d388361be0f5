"""Work-order behaviour through the API: concurrent accepts, parking stops the clock, a return with
nowhere to go reaches the desk, verification failure is rework."""

from __future__ import annotations

import asyncio

from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import MANHOLE_1, SMOKE_1, T0, Cloud, alert_step
from tests.cloud.loop.test_end_to_end import act, detail, ingest, intents


async def _open(c: Cloud) -> int:
    c.clock.t = T0
    await ingest(
        c, alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0 - 1)
    )
    return int((await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"][0]["id"])


async def test_two_responders_accept_at_once_exactly_one_owns_it(lc: Cloud) -> None:
    c = lc
    iid = await _open(c)
    results = await asyncio.gather(
        act(c, iid, action="accept", on_behalf_of="gw-wang"),
        act(c, iid, action="accept", on_behalf_of="gw-li"),
        act(c, iid, action="accept", on_behalf_of="crew-1"),
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409, 409]
    owner = (await detail(c, iid))["incident"]["owner"]
    for r in results:
        if r.status_code == 409:
            assert owner in r.json()["detail"]
    timeline = (await detail(c, iid))["timeline"]
    assert [e["actor"] for e in timeline if e["action"] == "accept"] == [owner]


async def test_parking_stops_the_case_clock_and_needs_an_explanation(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    iid = await _open(c)
    before = (await detail(c, iid))["incident"]["case_deadline"]
    r = await act(c, iid, action="park")
    assert r.status_code == 400 and "park needs a reason" in r.json()["detail"]
    r = await act(c, iid, action="park", reason="等待新井盖到货（挂账）")
    assert r.status_code == 200 and r.json()["incident"]["stage"] == "parked"
    c.clock.advance(3600)
    r = await act(c, iid, action="unpark")
    inc = r.json()["incident"]
    assert inc["stage"] == "dispatched" and inc["case_deadline"] != before  # an hour later: the pause
    assert inc["assignee"] == "gw-wang"


async def test_a_return_with_nowhere_else_to_go_reaches_the_desk(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    iid = await _open(c)
    for who, why in (("gw-wang", "市政的井"), ("crew-1", "交警负责道路"), ("police-1", "不是我们的")):
        inc = (await detail(c, iid))["incident"]
        if inc["stage"] != "dispatched":
            break
        r = await act(c, iid, action="return", reason=why, on_behalf_of=inc["assignee"] or who)
        assert r.status_code == 200, r.text
    inc = (await detail(c, iid))["incident"]
    assert inc["stage"] in ("returned", "dispatched")
    if inc["stage"] == "returned":
        assert ("role", "call_taker") in [(k, t) for s, k, t in intents(c, iid) if s == -1]
    assert len(inc["returned_reasons"]) >= 2


async def test_failed_verification_is_rework_and_kpis_count_it(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    iid = await _open(c)
    for body in (
        {"action": "accept", "on_behalf_of": "gw-wang"},
        {"action": "handle", "on_behalf_of": "gw-wang", "reason": "盖好了"},
        {"action": "reject", "reason": "cover still tilted on the camera"},
        {"action": "accept", "on_behalf_of": "gw-wang"},
        {"action": "handle", "on_behalf_of": "gw-wang", "reason": "重新安装"},
        {"action": "verify"},
        {"action": "close"},
    ):
        r = await act(c, iid, **body)
        assert r.status_code == 200, (body, r.text)
    row = (await c.client.get("/api/v1/kpi", params={"by": "zone"}, headers=c.viewer)).json()["rows"][0]
    assert row["group"] == "G01" and row["rework_rate"] == 1.0 and row["closure_rate"] == 1.0


async def test_queue_order_puts_the_most_urgent_first_and_counts_what_it_leaves_out(lc_sqlite: Cloud) -> None:
    """``sort=grade``: a high-grade incident older than many low-grade ones is still in a capped page."""
    c = lc_sqlite
    c.clock.t = T0
    await ingest(
        c, alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0 - 5)
    )
    await ingest(
        c,
        alert_step(
            SMOKE_1,
            DeviceKind.SMOKE_ALARM,
            EventType.LOW_BATTERY,
            AlertPhase.RAISED,
            T0 - 1,
            severity=Severity.LOW,
        ),
    )
    newest = (await c.client.get("/api/v1/incidents?open=true&limit=1", headers=c.dispatcher)).json()
    urgent = (
        await c.client.get("/api/v1/incidents?open=true&limit=1&sort=grade", headers=c.dispatcher)
    ).json()
    assert newest["total"] == urgent["total"] == 2
    assert newest["incidents"][0]["event_type"] == EventType.LOW_BATTERY.value
    assert urgent["incidents"][0]["event_type"] == EventType.COVER_OPEN.value
    bad = await c.client.get("/api/v1/incidents?sort=oldest", headers=c.dispatcher)
    assert bad.status_code == 422 and "sort" in bad.text


async def test_the_intake_queue_depth_is_a_metric(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    await ingest(
        c, alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0 - 5)
    )
    text = (await c.client.get("/metrics")).text
    assert "vigil_cloud_loop_queue_steps 0.0" in text  # drained
    c.app.state.loop_sink._queued = 7  # what a loop falling behind would show
    assert "vigil_cloud_loop_queue_steps 7.0" in (await c.client.get("/metrics")).text
    c.app.state.loop_sink._queued = 0
