"""The loop's intake queue: ingest only queues, the ``loop-intake`` task drains in batches, a full queue
leaves steps to the reconcile pass (counted, never lost), and the notify worker wakes after a batch."""

from __future__ import annotations

from sqlalchemy import select

from cloud.alertstore import store_alert_steps
from cloud.loop.models import AlertLink
from cloud.loop.wiring import LoopSink
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import GW1, MANHOLE_1, MANHOLE_2, SMOKE_1, T0, Cloud, alert_step, batch
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
