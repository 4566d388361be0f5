"""The fleet is hard enough that a naive threshold detector makes the mistakes real deployments make,
and the scorer shows it: the ground truth and the scorer together, end to end.

Rules of thumb come from REFERENCES.md: a fall is an impact followed by lying still (ADI Analog Dialogue
43-07), cover alarms compare against the installed tilt, cooking smoke comes with steam.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from alerts.contract import AlertEvent
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind as K
from firmware_bridge.kernel.records import Reading
from firmware_bridge.registry import spec
from simulators.fleet import Fleet
from simulators.scorer import score

T0 = 1_780_243_200.0
DAY = 86400.0
RATES = {
    K.MANHOLE: {"cover_displaced": 0.2},
    K.SMOKE_ALARM: {"fire": 0.05, "cooking": 1.0, "test": 0.1},
    K.WRISTBAND: {"fall": 0.2, "fall_recovered": 0.4},
}
COUNTS = {K.MANHOLE: 120, K.SMOKE_ALARM: 150, K.WRISTBAND: 80}


@pytest.fixture(scope="module")
def run():  # type: ignore[no-untyped-def]
    fleet = Fleet.build(COUNTS, seed=77, rates=RATES)
    readings = []
    for f in fleet.run(T0, DAY):
        readings.append(spec(f.kind).codec.decode(f.payload, device_id=f.device_id, time=f.time))
    return fleet, readings


def detect(readings: list[Reading], rule) -> list[AlertEvent]:  # type: ignore[no-untyped-def]
    """Raise once per device and type, then stay quiet for 30 min (a crude episode)."""
    quiet: dict[tuple[str, EventType], float] = defaultdict(lambda: -1e18)
    out = []
    for r in readings:
        et = rule(r)
        if et is None or r.time < quiet[(r.device_id, et)]:
            continue
        quiet[(r.device_id, et)] = r.time + 1800
        ep = int(r.time * 1000)
        out.append(
            AlertEvent(
                alert_id=alert_id(r.device_id, et, ep),
                device_id=r.device_id,
                kind=r.kind,
                event_type=et,
                severity=Severity.HIGH,
                phase=AlertPhase.RAISED,
                episode_ms=ep,
                time=r.time,
                frame_time=r.time,
            )
        )
    return out


def naive(r: Reading) -> EventType | None:
    if r.kind is K.MANHOLE and r.value("tilt_deg") > 10:
        return EventType.COVER_DISPLACED
    if r.kind is K.SMOKE_ALARM and r.has_flag("smoke_alarm"):
        return EventType.FIRE
    if r.kind is K.WRISTBAND and r.has_flag("fall"):
        return EventType.FALL
    return None


def careful(r: Reading) -> EventType | None:
    if (
        r.kind is K.MANHOLE
        and abs(r.value("tilt_deg") - r.value("tilt_ref_deg")) > 10
        and r.value("vibration_g") < 0.2
    ):
        return EventType.COVER_DISPLACED
    if (
        r.kind is K.SMOKE_ALARM
        and r.has_flag("smoke_alarm")
        and not r.has_flag("test")
        and (r.value("smoke_db_m") > 0.5 or r.value("temperature_c") > 40)
    ):
        return EventType.FIRE
    if r.kind is K.WRISTBAND and r.has_flag("fall") and r.value("stillness_s") >= 60:
        return EventType.FALL
    return None


def test_naive_thresholds_page_on_nuisances(run) -> None:  # type: ignore[no-untyped-def]
    fleet, readings = run
    rep = score(fleet.truth, detect(readings, naive), COUNTS, DAY)
    causes = rep.false_alarms_by_cause
    assert causes.get("nuisance_cooking", 0) > 0
    assert causes.get("fall (no alarm expected)", 0) > 0
    assert causes.get("nuisance_traffic", 0) > 0 or rep.row(EventType.COVER_DISPLACED).false_alarms > 0
    for et in (EventType.FIRE, EventType.FALL):
        assert rep.row(et).events > 0
        assert rep.row(et).precision is not None and rep.row(et).precision < 0.8  # type: ignore[operator]


def test_a_careful_detector_scores_better(run) -> None:  # type: ignore[no-untyped-def]
    fleet, readings = run
    bad = score(fleet.truth, detect(readings, naive), COUNTS, DAY)
    good = score(fleet.truth, detect(readings, careful), COUNTS, DAY)
    for et in (EventType.FIRE, EventType.FALL, EventType.COVER_DISPLACED):
        g, b = good.row(et), bad.row(et)
        assert g.recall is not None and g.recall >= 0.9, (et, g)
        assert g.false_alarms == 0, (et, g)  # (its crude 30-min episodes may page twice: duplicates)
        assert g.false_alarms < b.false_alarms or b.false_alarms == 0
    assert good.overall.false_alarms < bad.overall.false_alarms
    # a fall is only confirmed once the person has lain still: the delay shows it
    assert good.row(EventType.FALL).delay_p50_s >= 59  # type: ignore[operator]
