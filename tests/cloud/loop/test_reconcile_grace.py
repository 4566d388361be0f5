"""The reconcile grace period is real time, whatever the clock's speed (docs/loop.md, "From alerts to
incidents"): under the demo's 60x clock, 5 clock seconds are 83 ms, and the reconciler took steps the
sink was still handling ("loop reconciled alerts the sink had not handled" warnings, the loop seeing
steps twice). The grace is :data:`RECONCILE_GRACE_S` seconds of real time, converted with the clock's
own ``real_seconds``."""

from __future__ import annotations

from cloud.alertstore import store_alert_steps
from cloud.loop.models import AlertLink
from cloud.loop.service import RECONCILE_GRACE_S, LoopService
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import GW1, SMOKE_1, T0, Cloud, ManualClock, alert_step

SPEEDUP = 60.0


class FastClock(ManualClock):
    """A hand-moved clock that says it runs 60 times real time, as the demo's AcceleratedClock."""

    def real_seconds(self, seconds: float) -> float:
        return seconds / SPEEDUP


async def test_the_grace_period_is_real_seconds_under_an_accelerated_clock(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    clock = FastClock(T0)
    loop = LoopService(c.state.db, clock=clock)
    step = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1)
    with c.state.db.write() as s:  # committed by ingest; the sink has it in hand
        store_alert_steps(s, [step], source=GW1, received_at=T0)
    clock.advance(RECONCILE_GRACE_S + 1)  # 6 clock seconds = 0.1 s of real time: still the sink's
    assert loop.reconcile() == 0
    clock.advance(RECONCILE_GRACE_S * SPEEDUP)  # 5 real seconds later: the sink has had its chance
    assert loop.reconcile() == 1
    assert loop.reconcile() == 0


async def test_a_real_time_clock_keeps_five_seconds(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    clock = ManualClock(T0)
    loop = LoopService(c.state.db, clock=clock)
    step = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1)
    with c.state.db.write() as s:
        store_alert_steps(s, [step], source=GW1, received_at=T0)
    clock.advance(RECONCILE_GRACE_S - 1)
    assert loop.reconcile() == 0
    clock.advance(2)
    assert loop.reconcile() == 1


async def test_a_new_step_of_an_older_alert_is_left_to_the_sink(lc_sqlite: Cloud) -> None:
    """The demo's "loop reconciled alerts the sink had not handled" (9 per 2-hour run, each one an alert
    whose link was one phase behind by 0.5-8.6 clock seconds): the pass picked an alert because one of its
    steps was old enough, then compared the link with the alert's CURRENT phase, moved by a step received
    a moment ago that the sink still had in hand. The grace now holds for the alert's newest state too."""
    c = lc_sqlite
    clock = FastClock(T0)
    loop = LoopService(c.state.db, clock=clock)
    raised = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1)
    with c.state.db.write() as s:
        store_alert_steps(s, [raised], source=GW1, received_at=T0)
    loop.take_steps([raised], GW1)  # the sink handled the raise
    clock.advance(600)  # ten clock minutes (10 s of real time) later the alarm is updated
    later = clock.now()
    updated = alert_step(
        SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.UPDATED, later - 1, episode_t=T0 - 1
    )
    with c.state.db.write() as s:  # committed by ingest; the sink has it in hand
        store_alert_steps(s, [updated], source=GW1, received_at=later)
    clock.advance(1)  # one clock second: the loop job's next tick
    assert updated.alert_id == raised.alert_id
    assert loop.reconcile() == 0  # before: 1, and the warning
    clock.advance(RECONCILE_GRACE_S * SPEEDUP)  # the sink never came: the safety net still takes it
    assert loop.reconcile() == 1
    with c.state.db.read() as s:
        link = s.get(AlertLink, updated.alert_id)
        assert link is not None and link.phase == "updated"
    assert loop.reconcile() == 0
