"""The desk's rule-out (核警：非火情): ``POST /api/v1/incidents/{id}/rule-out`` stops the 119 escalation of
a smoke-alarm case the site explained (toast, shower steam), and never silences a real fire: CO, a second
alarm in the building are refused; a new alarm afterwards escalates again."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from cloud.db import Device
from cloud.loop.models import AuditEntry, IncidentEvent, Timer
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import SMOKE_1, T0, Cloud, alert_step
from tests.cloud.loop.test_end_to_end import act, detail, ingest, intents, loop

SMOKE_2 = "70b3d57ed0000102"  # a second smoke alarm in the same building (grid G02)


async def _fire(c: Cloud, device: str = SMOKE_1, t: float = T0 - 1) -> int:
    await ingest(
        c, alert_step(device, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, t, value=0.4)
    )
    r = await c.client.get("/api/v1/incidents", headers=c.dispatcher)
    return int(r.json()["incidents"][0]["id"])


async def _rule_out(c: Cloud, iid: int, who: dict[str, str] | None = None, **body: Any) -> Any:
    body = {"reason": "nuisance", "note": "住户烤面包烤糊了", **body}
    url = f"/api/v1/incidents/{iid}/rule-out?language=zh"
    return await c.client.post(url, json=body, headers=who or c.dispatcher)


def _steps_to(c: Cloud, iid: int, target: str) -> list[int]:
    return [s for s, _, t in intents(c, iid) if t == target]


async def test_a_rule_out_stops_the_119_step_and_keeps_the_responder(lc: Cloud) -> None:
    c = lc  # SQLite and PostgreSQL (the row lock)
    c.clock.t = T0
    iid = await _fire(c)
    c.clock.advance(61)
    loop(c).run_due()  # step 1: property, grid worker, the call taker calls the site
    assert {t for s, _, t in intents(c, iid) if s == 1} == {"prop-1", "gw-zhao", "call_taker"}
    assert (await _rule_out(c, iid, c.viewer)).status_code == 403
    assert (await _rule_out(c, 999999)).status_code == 404
    assert (await _rule_out(c, iid, reason="toast")).status_code == 422
    assert (await _rule_out(c, iid, note="x" * 201)).status_code == 422
    r = await _rule_out(c, iid)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["rule_out"]["ruled_out"] and out["rule_out"]["by"] == "disp"
    assert out["rule_out"]["escalation"] == {"done": True, "reason": "ruled_out", "step": 2}
    assert out["rule_out"]["pending_escalation_timers"] == 0
    assert out["incident"]["outcome"] == "nuisance"
    words = [e["reason_text"] for e in out["timeline"] if e["action"] == "rule_out"]
    assert words == ["接警员核实：烹饪油烟、水蒸气等扰动，非火情，已取消 119 升级：住户烤面包烤糊了"]
    stopped = [e for e in out["timeline"] if e["action"] == "escalation_stopped"]
    assert stopped[-1]["reason_code"] == "esc_ruled_out" and stopped[-1]["actor"] == "disp"
    # the 119 step's wait runs out: nobody is paged, the timer is fenced
    c.clock.advance(600)
    loop(c).run_due()
    assert _steps_to(c, iid, "desk_119") == []
    with c.state.db.read() as s:
        esc = s.scalars(select(Timer).where(Timer.incident_id == iid, Timer.purpose == "escalation")).all()
        assert "pending" not in {t.state for t in esc}
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "incident.rule_out")).all()
    assert [(a.actor, a.detail["reason"], a.detail["external"]) for a in audit] == [
        ("disp", "nuisance", ["desk_119"])
    ]
    assert "note" not in audit[0].detail
    # the local responder keeps the order; a repeat is a no-op
    d = await detail(c, iid)
    assert d["incident"]["is_open"] and d["incident"]["stage"] == out["incident"]["stage"]
    again = await _rule_out(c, iid, reason="false_alarm")
    assert again.status_code == 200 and again.json()["incident"]["outcome"] == "nuisance"
    assert [e["action"] for e in again.json()["timeline"]].count("rule_out") == 1


async def test_co_or_a_second_alarm_in_the_building_refuses_the_rule_out(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    iid = await _fire(c)
    await ingest(
        c, alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.CO, AlertPhase.RAISED, T0, value=60)
    )
    r = await _rule_out(c, iid)
    assert r.status_code == 409
    assert "一氧化碳报警仍在" in r.json()["detail"], r.text
    d = await detail(c, iid)
    assert d["incident"]["outcome"] is None and "rule_out" not in [e["action"] for e in d["timeline"]]


async def test_dense_smoke_refuses_the_rule_out(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    await ingest(
        c, alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1, value=1.6)
    )
    iid = int((await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"][0]["id"])
    r = await _rule_out(c, iid)
    assert r.status_code == 409 and "1.6 dB/m" in r.json()["detail"]


def _second_smoke_alarm(c: Cloud) -> None:
    with c.state.db.write() as s:
        src = s.get(Device, SMOKE_1)
        assert src is not None
        cols = {k.key: getattr(src, k.key) for k in Device.__mapper__.column_attrs}
        cols["device_id"] = SMOKE_2
        s.add(Device(**cols))


async def test_a_second_device_in_the_building_refuses_then_a_new_alarm_reopens(lc: Cloud) -> None:
    c = lc
    c.clock.t = T0
    _second_smoke_alarm(c)
    iid = await _fire(c)
    c.clock.advance(61)
    loop(c).run_due()
    r = await _rule_out(c, iid)
    assert r.status_code == 200, r.text
    # a NEW alarm after the rule-out (another flat's detector): the escalation starts again
    c.clock.advance(30)
    await _fire(c, SMOKE_2, c.clock.t - 1)
    d = await detail(c, iid)
    lifted = [e for e in d["timeline"] if e["action"] == "rule_out_lifted"]
    assert lifted and lifted[0]["reason_text"] == f"排除后又有新报警（设备 {SMOKE_2}），已重新升级"
    assert d["incident"]["outcome"] is None
    # ... and runs to 119 this time
    for _ in range(3):
        c.clock.advance(200)
        loop(c).run_due()
    assert _steps_to(c, iid, "desk_119") == [2]
    # two devices now: a second rule-out is refused
    r = await _rule_out(c, iid)
    assert r.status_code == 409 and "同一楼栋" in r.json()["detail"], r.text
    with c.state.db.read() as s:
        n = s.scalars(select(IncidentEvent).where(IncidentEvent.action == "rule_out")).all()
    assert len(n) == 1


async def test_confirming_after_a_rule_out_escalates_to_119_now(lc_sqlite: Cloud) -> None:
    """The desk ruled it out, then a neighbour calls: it is a fire. 确认火情 must still page 119 at once
    (before: the stopped escalation swallowed the confirmation)."""
    c = lc_sqlite
    c.clock.t = T0
    iid = await _fire(c)
    assert (await _rule_out(c, iid, stand_down=True)).status_code == 200
    c.clock.advance(30)
    r = await c.client.post(f"/api/v1/incidents/{iid}/confirm?language=zh", headers=c.dispatcher)
    assert r.status_code == 200, r.text
    assert _steps_to(c, iid, "desk_119") == [2]
    inc = r.json()["incident"]
    assert inc["outcome"] is None and inc["escalation"]["confirmed"] and not inc["escalation"]["done"]
    d = await detail(c, iid)
    words = {e["action"]: e["reason_text"] for e in d["timeline"]}
    assert words["rule_out_withdrawn"] == "接警员撤销排除，确认火情，立即升级"
    assert words["rule_out"].endswith("，已通知现场人员无需前往：住户烤面包烤糊了")


async def test_the_responder_on_site_keeps_or_overrides_the_desks_verdict(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    iid = await _fire(c)
    assert (await _rule_out(c, iid)).status_code == 200
    assignee = (await detail(c, iid))["incident"]["assignee"]
    for action in ("accept", "arrive"):
        r = await act(c, iid, action=action, on_behalf_of=assignee)
        assert r.status_code == 200, r.text
    r = await act(c, iid, action="handle", on_behalf_of=assignee, reason="已复位报警器")
    assert r.status_code == 200 and r.json()["incident"]["outcome"] == "nuisance"  # kept
    r = await act(c, iid, action="reject", reason="复核：现场仍有焦味")
    assert r.status_code == 200, r.text
    for action in ("accept", "arrive"):  # rework: back to the responder
        r = await act(c, iid, action=action, on_behalf_of=assignee)
        assert r.status_code == 200, r.text
    r = await act(c, iid, action="handle", on_behalf_of=assignee, reason="阴燃", outcome="real")
    assert r.status_code == 200 and r.json()["incident"]["outcome"] == "real"  # the site's word wins
