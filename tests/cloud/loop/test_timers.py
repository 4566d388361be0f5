"""Timers survive restarts and fire exactly once across processes; stale timers are fenced; alerts the
sink never saw (a crash right after ingest's commit) still get their incident."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from cloud.alertstore import store_alert_steps
from cloud.loop.models import AlertLink, Incident, NotificationIntentRow, Timer
from cloud.loop.service import LoopService
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import BAND_1 as _BAND_1
from tests.cloud.cloudkit import GW1, MANHOLE_1, SMOKE_1, T0, Cloud, alert_step
from tests.cloud.loop.test_end_to_end import act, detail, ingest, intents, loop

assert _BAND_1 is not None
BAND_1: str = _BAND_1


def count_intents(c: Cloud) -> int:
    with c.state.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(NotificationIntentRow)) or 0)


async def test_two_processes_fire_each_timer_once(lc: Cloud) -> None:
    c = lc
    c.clock.t = T0
    await ingest(c, alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, T0 - 2))
    before = count_intents(c)
    c.clock.advance(181)  # the medical step waits 3 minutes for the family or the doctor
    other = LoopService(c.state.db, clock=c.clock)  # a second cloud process on the same database
    fired = await asyncio.gather(
        asyncio.to_thread(loop(c).run_due), asyncio.to_thread(other.run_due), asyncio.to_thread(other.run_due)
    )
    after = count_intents(c)
    assert after > before
    with c.state.db.read() as s:
        esc = s.scalars(select(Timer).where(Timer.purpose == "escalation", Timer.step == 1)).all()
    assert [t.state for t in esc] == ["done"]
    assert sum(fired) >= 1
    # 120 is a desk (a group target), the grid worker of G02 a person
    iid = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"][0]["id"]
    step1 = {(k, t) for s, k, t in intents(c, iid) if s == 1}
    assert step1 == {("group", "desk_120"), ("user", "gw-zhao")}


async def test_timers_survive_a_restart(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    await ingest(c, alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.SOS, AlertPhase.RAISED, T0 - 1))
    c.clock.advance(200)
    restarted = LoopService(c.state.db, clock=c.clock)  # a fresh process: nothing in memory
    assert restarted.run_due() >= 1
    iid = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"][0]["id"]
    assert any(s == 1 for s, _, _ in intents(c, iid))


async def test_a_reroute_fences_the_old_snapshots_timers(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    await ingest(
        c, alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0 - 1)
    )
    iid = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"][0]["id"]
    r = await act(c, iid, action="return", on_behalf_of="gw-wang", reason="")
    assert r.status_code == 400 and "needs a reason" in r.json()["detail"]
    r = await act(c, iid, action="return", on_behalf_of="gw-wang", reason="not the street office: municipal")
    assert r.status_code == 200, r.text
    inc = r.json()["incident"]
    assert (
        inc["department"] == "municipal" and inc["assignee"] == "crew-1" and inc["escalation"]["version"] == 2
    )
    c.clock.advance(301)
    loop(c).run_due()
    with c.state.db.read() as s:
        old = s.scalars(select(Timer).where(Timer.purpose == "escalation", Timer.snapshot_version == 1)).all()
    assert [t.state for t in old] == ["stale"]
    step1 = [(k, t) for s, k, t in intents(c, iid) if s == 1]
    assert step1 and all(":" not in t for _, t in step1)
    d = await detail(c, iid)
    assert "not the street office: municipal" in d["incident"]["returned_reasons"]


async def test_an_alert_committed_without_its_sink_call_gets_its_incident(lc: Cloud) -> None:
    c = lc
    c.clock.t = T0
    step = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1)
    with c.state.db.write() as s:  # ingest's commit, then the process dies before the sink is called
        store_alert_steps(s, [step], source=GW1, received_at=T0)
    assert loop(c).reconcile() == 0  # younger than the grace period: the sink may still be on it
    c.clock.advance(6)
    assert loop(c).reconcile() == 1
    assert loop(c).reconcile() == 0
    with c.state.db.read() as s:
        link = s.get(AlertLink, step.alert_id)
        assert link is not None and link.incident_id is not None
        inc = s.get(Incident, link.incident_id)
        assert inc is not None and inc.route_rule == "root/smoke/fire"


async def test_the_periodic_job_runs_reconcile_and_timers(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    step = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1)
    with c.state.db.write() as s:
        store_alert_steps(s, [step], source=GW1, received_at=T0)

    class Ctx:
        fenced = 0

        def fence(self, session: object) -> None:
            Ctx.fenced += 1

    c.clock.advance(6)
    await loop(c).job(Ctx())
    assert Ctx.fenced == 1 and count_intents(c) > 0


async def test_fire_waits_for_the_call_takers_confirmation(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    await ingest(c, alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1))
    iid = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"][0]["id"]
    assert {t for s, _, t in intents(c, iid) if s == 0} == {"resident"}  # the resident callback first
    c.clock.advance(61)
    loop(c).run_due()
    assert {t for s, _, t in intents(c, iid) if s == 1} == {"prop-1", "gw-zhao", "call_taker"}
    r = await c.client.post(f"/api/v1/incidents/{iid}/confirm", headers=c.viewer)
    assert r.status_code == 403
    r = await c.client.post(f"/api/v1/incidents/{iid}/confirm", headers=c.dispatcher)
    assert r.status_code == 200 and r.json()["incident"]["escalation"]["confirmed"]
    assert [(k, t) for s, k, t in intents(c, iid) if s == 2] == [("group", "desk_119")]
    c.clock.advance(130)
    loop(c).run_due()
    assert len([1 for s, _, _ in intents(c, iid) if s == 2]) == 1  # 119 paged once


async def test_grouping_and_silences(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    r = await c.client.post(
        "/api/v1/loop/silences",
        json={
            "match": {"device_id": MANHOLE_1},
            "ends_at": "2026-09-22T23:00:00+08:00",
            "reason": "roadworks",
        },
        headers=c.dispatcher,
    )
    assert r.status_code == 201, r.text
    await ingest(
        c, alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_DISPLACED, AlertPhase.RAISED, T0 - 1)
    )
    assert (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"] == []
    with c.state.db.read() as s:
        (link,) = s.scalars(select(AlertLink)).all()
    assert link.verdict == "silenced" and link.reason == "roadworks"
    audit = (await c.client.get("/api/v1/loop/audit", headers=c.admin)).json()["entries"]
    assert any(e["action"] == "silence.add" and e["actor"] == "disp" for e in audit)
    # a new episode of a low-grade event on another device opens; its updated step attaches
    low = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.LOW_BATTERY, AlertPhase.RAISED, T0,
                     severity=Severity.LOW)  # fmt: skip
    await ingest(c, low)
    (inc,) = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
    assert inc["route_rule"] == "root/maintenance" and inc["urgency"] == "normal"
