"""The whole loop over the real app on SQLite and PostgreSQL: gateway alert steps are ingested -> an
incident -> routed -> escalated when nobody accepts -> accepted -> handled -> verified by telemetry ->
closed -> rated -> KPIs."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import select

from cloud.loop.models import NotificationIntentRow, Timer
from cloud.loop.service import LoopService
from cloud.loop.wiring import LoopSink
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import GW1, MANHOLE_1, T0, Cloud, alert_step, batch

_ids = itertools.count(1)


async def drained(c: Cloud) -> None:
    """Wait until the loop's intake queue has handed every committed step to the loop (no sleeps).

    Ingest only queues alert steps for the loop (``cloud.loop.wiring.LoopSink``); the ``loop-intake``
    task handles them off the request. A test that expects an incident right after an ingest waits here.
    """
    sink: LoopSink = c.app.state.loop_sink
    await sink.drained()


async def ingest(c: Cloud, *steps: Any) -> None:
    """Ingest ``steps`` as gateway 1 and wait until the loop has handled them."""
    await c.state.ingest.ingest(batch(f"batch-loop-{next(_ids):04d}", alerts=list(steps)), gateway_id=GW1)
    await drained(c)


def loop(c: Cloud) -> LoopService:
    svc: LoopService = c.app.state.loop
    return svc


async def only_incident(c: Cloud) -> dict[str, Any]:
    r = await c.client.get("/api/v1/incidents", params={"language": "zh"}, headers=c.dispatcher)
    assert r.status_code == 200, r.text
    (inc,) = r.json()["incidents"]
    return inc  # type: ignore[no-any-return]


async def detail(c: Cloud, incident_id: int, who: dict[str, str] | None = None) -> dict[str, Any]:
    r = await c.client.get(f"/api/v1/incidents/{incident_id}?language=zh", headers=who or c.dispatcher)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def intents(c: Cloud, incident_id: int) -> list[tuple[int, str, str]]:
    with c.state.db.read() as s:
        q = select(NotificationIntentRow).where(NotificationIntentRow.incident_id == incident_id)
        return [(i.step, i.target_kind, i.target_id) for i in s.scalars(q.order_by(NotificationIntentRow.id))]


async def act(c: Cloud, incident_id: int, **body: Any) -> Any:
    return await c.client.post(f"/api/v1/incidents/{incident_id}/actions", json=body, headers=c.dispatcher)


async def test_closed_loop_end_to_end(lc: Cloud) -> None:
    c, t = lc, T0
    c.clock.t = t
    raised = alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, t - 5)
    await ingest(c, raised)
    inc = await only_incident(c)
    iid = inc["id"]
    # routed: a cover off its frame on a carriageway goes to the street office, municipal and traffic police
    assert inc["route_rule"] == "root/manhole/cover_on_road"
    assert [r["department"] for r in inc["receivers"]] == ["street_office", "municipal", "traffic"]
    assert inc["grade"] == "high" and inc["urgency"] == "critical" and inc["urgency_label"] == "非常紧急"
    # dispatched to the nearest on-call grid worker of G01
    assert inc["stage"] == "dispatched" and inc["stage_label"] == "派遣" and inc["assignee"] == "gw-wang"
    assert inc["created_at"].endswith("+08:00")
    step0 = intents(c, iid)
    assert ("user", "gw-wang") in [(k, t_) for _, k, t_ in step0] and ("user", "police-1") in [
        (k, t_) for _, k, t_ in step0
    ]
    assert {s for s, _, _ in step0} == {0}
    # the same step replayed (a gateway retry under a new batch id) changes nothing
    await ingest(c, raised)
    assert len(intents(c, iid)) == len(step0)

    # nobody accepts: after the step's wait the escalation pages the next step
    c.clock.advance(299)
    loop(c).run_due()  # the 3-minute accept limit of a critical case has passed: marked overdue
    assert not [x for x in intents(c, iid) if x[0] == 1]
    assert (await detail(c, iid))["incident"]["overdue"] == ["accept"]
    c.clock.advance(2)
    assert loop(c).run_due() >= 1
    step1 = [x for x in intents(c, iid) if x[0] == 1]
    assert {(k, t_) for _, k, t_ in step1} == {("user", "gw-wang"), ("user", "gw-li"), ("user", "crew-1")}
    n = len(intents(c, iid))
    loop(c).run_due()
    assert len(intents(c, iid)) == n  # fired once

    # the grid worker phones in and accepts; a second accept is told who owns it
    r = await act(c, iid, action="accept", on_behalf_of="gw-li", idempotency_key="accept-gw-li-0001")
    assert r.status_code == 200, r.text
    assert r.json()["incident"]["owner"] == "gw-li" and r.json()["incident"]["escalation"]["done"]
    again = await act(c, iid, action="accept", on_behalf_of="gw-li", idempotency_key="accept-gw-li-0001")
    assert again.status_code == 200  # idempotent retry
    r = await act(c, iid, action="accept", on_behalf_of="gw-wang")
    assert r.status_code == 409 and "gw-li" in r.json()["detail"]
    c.clock.advance(700)
    loop(c).run_due()
    assert not [x for x in intents(c, iid) if x[0] == 2]  # acknowledged: the chain stopped

    for action in ("arrive", "handle"):
        r = await act(c, iid, action=action, on_behalf_of="gw-li", reason="cover reseated")
        assert r.status_code == 200, r.text
    # verification by telemetry: the alert clears and stays quiet, then the case closes itself
    cleared = alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.CLEARED, c.clock.t,
                         episode_t=t - 5)  # fmt: skip
    await ingest(c, cleared)
    assert (await detail(c, iid))["incident"]["alerts_open"] == 0
    c.clock.advance(301)
    loop(c).run_due()
    d = await detail(c, iid)
    assert d["incident"]["stage"] == "closed" and d["incident"]["stage_label"] == "结案"
    actions = [e["action"] for e in d["timeline"]]
    for expected in ("opened", "routed", "dispatch", "notify", "escalate", "accept", "arrive", "handle",
                     "alert_cleared", "verify", "close"):  # fmt: skip
        assert expected in actions, (expected, actions)
    assert next(e for e in d["timeline"] if e["action"] == "verify")["channel"] == "telemetry"

    # the resident rates it; KPIs follow
    r = await act(c, iid, action="rate", rating=5, on_behalf_of="resident")
    assert r.status_code == 200 and r.json()["incident"]["stage"] == "rated"
    r = await act(c, iid, action="accept", on_behalf_of="gw-wang")
    assert r.status_code == 400 and "rated" in r.json()["detail"]  # an action on a finished order
    k = (await c.client.get("/api/v1/kpi", params={"by": "department"}, headers=c.viewer)).json()
    (row,) = k["rows"]
    assert row["group"] == "street_office" and row["due"] == 1 and row["closure_rate"] == 1.0
    assert row["on_time_rate"] == 1.0 and row["satisfaction"] == 5.0 and row["rework_rate"] == 0.0
    assert row["ack_p50_s"] is not None and row["dispatch_p50_s"] == 0.0
    assert row["discovery_p50_s"] == 5.0  # the episode began 5 s before the cloud had the alert
    csv = await c.client.get("/api/v1/kpi", params={"format": "csv"}, headers=c.viewer)
    assert csv.status_code == 200 and csv.text.startswith("group,due,closed,closed_on_time")

    # reopen inside the window counts as rework and restarts the escalation under a new snapshot version
    r = await act(c, iid, action="reopen", reason="lid rattles again", on_behalf_of="resident")
    assert r.status_code == 200 and r.json()["incident"]["rework"]
    assert r.json()["incident"]["escalation"]["version"] == 2
    with c.state.db.read() as s:
        stale = s.scalars(select(Timer).where(Timer.incident_id == iid, Timer.state == "pending")).all()
    assert all(tm.snapshot_version == 2 for tm in stale if tm.purpose == "escalation")
