"""Detection quality on a simulated fleet with ground truth, scored by the project's scorer.

The fleet (``simulators.fleet.Fleet``, H4's signal models with trucks, cooking, hush, test buttons,
recovered falls) runs through the engine offline (``edge.offline.run_fleet``) and
``simulators.scorer.score`` compares raised alerts with the truth. Life-safety event rates are raised so
two simulated days hold enough episodes; nuisance rates are raised too, so false alarms have every
chance to happen. Floors are set a little below what ``bench/score_detect.py`` measures (docs/detection.md).
"""

from __future__ import annotations

import pytest

from alerts.detection.engine import DetectionEngine
from edge.offline import run_fleet
from firmware_bridge.kernel.events import LIFE_SAFETY, EventType
from firmware_bridge.kernel.records import DeviceKind

fleet_mod = pytest.importorskip("simulators.fleet")
scorer = pytest.importorskip("simulators.scorer")

K = DeviceKind
START = 1_780_272_000.0  # 2026-06-01T00:00:00Z
DAYS = 2.0
COUNTS = {K.MANHOLE: 150, K.SMOKE_ALARM: 150, K.WRISTBAND: 100}
RATES = {
    K.MANHOLE: dict(cover_open=0.05, cover_displaced=0.05, truck=12.0),
    K.SMOKE_ALARM: dict(fire=0.05, co=0.05, cooking=1.5, test=0.3),
    K.WRISTBAND: dict(fall=0.05, fall_recovered=0.2, sos=0.05),
}
# floors: (recall, precision) per life-safety type; measured 100 % / 100 % on this seed, except CO recall
FLOORS = {
    EventType.FIRE: (0.9, 0.9),
    EventType.CO: (0.8, 0.9),
    EventType.FALL: (0.9, 0.9),
    EventType.SOS: (0.9, 0.9),
    EventType.COVER_OPEN: (0.9, 0.9),
}


@pytest.fixture(scope="module")
def report():  # type: ignore[no-untyped-def]
    fleet = fleet_mod.Fleet.build(COUNTS, seed=2026, rates=RATES, step_s=300.0)
    run = run_fleet(fleet, START, DAYS * 86400.0, DetectionEngine())
    return scorer.score(fleet.truth, run.alerts, COUNTS, DAYS * 86400.0)


@pytest.mark.parametrize("event_type", sorted(LIFE_SAFETY))
def test_life_safety_recall_and_precision_floors(report, event_type: EventType) -> None:  # type: ignore[no-untyped-def]
    row = report.row(event_type)
    assert row.events >= 3, f"too few {event_type.value} episodes to score: raise its rate"
    recall_floor, precision_floor = FLOORS[event_type]
    assert row.recall >= recall_floor, report.format_table()
    assert row.precision >= precision_floor, report.format_table()
    assert row.duplicates == 0


def test_nuisances_page_no_one(report) -> None:  # type: ignore[no-untyped-def]
    causes = report.false_alarms_by_cause
    for nuisance in (
        "nuisance_traffic",
        "nuisance_cooking",
        "nuisance_test",
        "nuisance_hush",
        "fall (no alarm expected)",
    ):
        assert causes.get(nuisance, 0) == 0, report.format_table()


def test_life_safety_delays_are_seconds_not_minutes(report) -> None:  # type: ignore[no-untyped-def]
    for et in (EventType.SOS, EventType.COVER_OPEN, EventType.FALL, EventType.FIRE):
        assert report.row(et).delay_p95_s <= 120.0, report.format_table()
