"""The reconcile grace period is real time, whatever the clock's speed (docs/loop.md, "From alerts to
incidents"): under the demo's 60x clock, 5 clock seconds are 83 ms, and the reconciler took steps the
sink was still handling ("loop reconciled alerts the sink had not handled" warnings, the loop seeing
steps twice). The grace is :data:`RECONCILE_GRACE_S` seconds of real time, converted with the clock's
own ``real_seconds``."""

from __future__ import annotations

from cloud.alertstore import store_alert_steps
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
