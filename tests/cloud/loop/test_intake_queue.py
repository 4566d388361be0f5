"""The loop's intake queue: ingest only queues, the ``loop-intake`` task drains in batches, a full queue
leaves steps to the reconcile pass (counted, never lost), and the notify worker wakes after a batch."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select

from cloud.alertstore import store_alert_steps
from cloud.loop.models import AlertLink, Incident
from cloud.loop.service import LoopService
from cloud.loop.wiring import LoopSink
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import GW1, GW2, MANHOLE_1, MANHOLE_2, SMOKE_1, T0, Cloud, alert_step, batch
from tests.cloud.loop.test_end_to_end import drained, loop


def sink(c: Cloud) -> LoopSink:
    s: LoopSink = c.app.state.loop_sink
    return s


def links(c: Cloud) -> set[str]:
    with c.state.db.read() as s:
        return set(s.scalars(select(AlertLink.alert_id)))


async def test_hand_offs_queue_and_the_drain_handles_them_in_one_transaction(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    calls: list[int] = []
    svc = loop(c)
    real = svc.take_batch

    def counting(b):  # type: ignore[no-untyped-def]
        calls.append(len(b))
        return real(b)

    svc.take_batch = counting  # type: ignore[method-assign]
    steps = [
        alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0 - 3),
        alert_step(MANHOLE_2, DeviceKind.MANHOLE, EventType.OVERFLOW, AlertPhase.RAISED, T0 - 2),
        alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1),
    ]
    with c.state.db.write() as s:  # ingest's commits
        store_alert_steps(s, steps, source=GW1, received_at=T0)
    for st in steps:  # three requests' hand-offs back to back: none waits for the loop
        await sink(c).alerts_committed([st], source=GW1)
    assert sink(c).queued == 3 and links(c) == set()
    await drained(c)
    assert sink(c).queued == 0
    assert links(c) == {st.alert_id for st in steps}
    assert calls == [3]  # one transaction for the three hand-offs
    assert c.sink.calls and c.sink.calls[0][1] == [steps[0]]  # the wrapped sink is still called at once


async def test_a_full_queue_leaves_steps_to_the_reconcile_pass_and_counts_them(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    sink(c).max_steps = 0  # every hand-off overflows
    step = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1)
    ack = await c.state.ingest.ingest(batch("batch-full-1", alerts=[step]), gateway_id=GW1)
    assert ack.alerts_stored == 1
    await drained(c)
    assert sink(c).overflowed == 1 and links(c) == set()
    assert "vigil_cloud_loop_queue_overflow_total 1.0" in (await c.client.get("/metrics")).text
    c.clock.advance(6)  # past the reconcile grace period
    assert loop(c).reconcile() == 1
    assert links(c) == {step.alert_id}


async def test_the_notify_worker_wakes_after_the_drain_handled_a_batch(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    worker = c.app.state.notify.worker
    assert worker.wake in sink(c).on_handled  # connect_loop registered the worker's wake-up
    woken: list[bool] = []
    real = worker.wake

    def wake() -> None:
        woken.append(True)
        real()

    sink(c).on_handled[:] = [wake]
    step = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1)
    await c.state.ingest.ingest(batch("batch-wake-1", alerts=[step]), gateway_id=GW1)
    await drained(c)
    assert woken and links(c) == {step.alert_id}


def incident_of(c: Cloud, alert: str) -> int:
    with c.state.db.read() as s:
        link = s.get(AlertLink, alert)
        assert link is not None and link.incident_id is not None, alert
        return int(link.incident_id)


async def test_a_fire_behind_thousands_of_cover_alarms_becomes_an_incident_first(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    tiers: list[set[str]] = []  # the event types of each loop transaction, in order
    svc = loop(c)
    real = svc.take_batch

    def recording(b):  # type: ignore[no-untyped-def]
        tiers.append({str(st.event_type) for steps, _ in b for st in steps})
        return real(b)

    svc.take_batch = recording  # type: ignore[method-assign]
    overflow = [
        alert_step(MANHOLE_2, DeviceKind.MANHOLE, EventType.OVERFLOW, AlertPhase.RAISED, T0 - 100 + i / 100)
        for i in range(2500)
    ]
    covers = [
        alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0 - 50 + i / 100)
        for i in range(2500)
    ]
    fire = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1)
    for k in range(0, 2500, 500):  # a storm: ingest hands off cover alarms, oldest first ...
        await sink(c).alerts_committed(overflow[k : k + 500], source=GW2)
        await sink(c).alerts_committed(covers[k : k + 500], source=GW1)
    await sink(c).alerts_committed([fire], source=GW1)  # ... and the fire arrives last
    assert sink(c).queued == 5001
    await drained(c)
    assert tiers[0] == {"fire"}  # a transaction of its own, before any cover alarm
    last_cover = max(i for i, t in enumerate(tiers) if "cover_open" in t)
    first_overflow = min(i for i, t in enumerate(tiers) if "overflow" in t)
    assert last_cover < first_overflow and all(len(t) == 1 for t in tiers)  # open covers before floods
    assert (
        incident_of(c, fire.alert_id)
        < incident_of(c, covers[0].alert_id)
        < incident_of(c, overflow[0].alert_id)
    )
    assert len(links(c)) == 5001


async def test_the_reconcile_pass_takes_life_safety_first(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    cover = alert_step(MANHOLE_2, DeviceKind.MANHOLE, EventType.OVERFLOW, AlertPhase.RAISED, T0 - 9)
    fire = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1)
    with c.state.db.write() as s:  # committed by ingest; the process died before the sink call
        store_alert_steps(s, [cover, fire], source=GW1, received_at=T0)
    c.clock.advance(6)
    assert loop(c).reconcile(limit=1) == 1  # one at a time: the newer fire before the older flood
    assert links(c) == {fire.alert_id}
    assert loop(c).reconcile(limit=1) == 1
    assert links(c) == {fire.alert_id, cover.alert_id}


async def test_one_batch_opens_an_incident_and_attaches_its_later_steps(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    first = alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0 - 30)
    again = alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0 - 20)
    cleared = alert_step(
        MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.CLEARED, T0 - 10, episode_t=T0 - 30
    )
    ids = loop(c).take_steps([first, again, cleared, first], GW1)  # the replayed step changes nothing
    assert ids[0] is not None and ids == [ids[0]] * 4
    d = (await c.client.get(f"/api/v1/incidents/{ids[0]}", headers=c.dispatcher)).json()
    assert d["incident"]["alert_count"] == 2 and d["incident"]["alerts_open"] == 1
    actions = [e["action"] for e in d["timeline"]]
    assert actions.count("opened") == 1 and actions.count("alert_attached") == 1
    assert actions.count("alert_cleared") == 1 and actions.index("opened") < actions.index("alert_attached")


async def test_the_oldest_waiting_step_is_a_metric(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    assert "vigil_cloud_loop_queue_oldest_seconds 0.0" in (await c.client.get("/metrics")).text
    # what a loop falling behind would show (queued without waking the drain task)
    sink(c)._queues[2].append(([], GW1, time.monotonic() - 42))
    text = (await c.client.get("/metrics")).text
    sink(c)._queues[2].clear()
    age = float(
        next(ln.split()[1] for ln in text.splitlines() if ln.startswith("vigil_cloud_loop_queue_oldest"))
    )
    assert 42 <= age < 600


async def test_an_open_cover_inhibits_its_displaced_alert_within_and_across_batches(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    svc = loop(c)

    def step(etype: EventType, phase: AlertPhase, t: float, episode_t: float | None = None):  # type: ignore[no-untyped-def]
        return alert_step(MANHOLE_1, DeviceKind.MANHOLE, etype, phase, t, episode_t=episode_t)

    def verdict(alert: str) -> str:
        with c.state.db.read() as s:
            link = s.get(AlertLink, alert)
            assert link is not None
            return str(link.verdict)

    opened = step(EventType.COVER_OPEN, AlertPhase.RAISED, T0 - 50)
    same_batch = step(EventType.COVER_DISPLACED, AlertPhase.RAISED, T0 - 60)  # older, still inhibited
    svc.take_steps([same_batch, opened], GW1)
    assert verdict(opened.alert_id) == "open" and verdict(same_batch.alert_id) == "inhibited"
    later = step(EventType.COVER_DISPLACED, AlertPhase.RAISED, T0 - 40)  # the open cover is in the table
    svc.take_steps([later], GW1)
    assert verdict(later.alert_id) == "inhibited"
    # the cover is reseated: its cleared step and a new displaced alert in one batch; the clear counts
    cleared = step(EventType.COVER_OPEN, AlertPhase.CLEARED, T0 - 30, episode_t=T0 - 50)
    after = step(EventType.COVER_DISPLACED, AlertPhase.RAISED, T0 - 20)
    svc.take_steps([after, cleared], GW1)
    assert verdict(after.alert_id) == "open"


async def test_a_hand_off_larger_than_a_batch_is_split_across_transactions(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    calls: list[int] = []
    svc = loop(c)
    real = svc.take_batch

    def counting(b):  # type: ignore[no-untyped-def]
        calls.append(sum(len(steps) for steps, _ in b))
        return real(b)

    svc.take_batch = counting  # type: ignore[method-assign]
    sink(c).batch_steps = 2  # each transaction commits (and shows its incidents) after 2 steps
    steps = [
        alert_step(MANHOLE_2, DeviceKind.MANHOLE, EventType.OVERFLOW, AlertPhase.RAISED, T0 - 10 + i)
        for i in range(5)
    ]
    await sink(c).alerts_committed(steps, source=GW1)
    await drained(c)
    assert calls == [2, 2, 1]
    assert links(c) == {st.alert_id for st in steps}


async def test_two_workers_taking_the_same_storm_at_once_open_each_incident_once(lc: Cloud) -> None:
    c = lc
    c.clock.t = T0
    one, two = LoopService(c.state.db, clock=c.clock), LoopService(c.state.db, clock=c.clock)
    devices = [f"70b3d57ee{k:07x}" for k in range(60)]
    steps = [
        alert_step(dev, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0 - 100 + k + episode)
        for episode in (0, 50)  # two episodes per cover: the second joins the first's incident
        for k, dev in enumerate(devices)
    ]
    # two ingest workers hand the same committed steps to their loops at once (a redelivered batch)
    await asyncio.gather(
        asyncio.to_thread(one.take_steps, steps, GW1),
        asyncio.to_thread(two.take_steps, list(reversed(steps)), GW1),
    )
    with c.state.db.read() as s:
        incidents = s.execute(select(Incident.device_id, Incident.alert_count)).all()
    assert sorted(incidents) == [(dev, 2) for dev in devices]
    assert links(c) == {st.alert_id for st in steps}
