"""Manhole cover rules on hand-made sequences (thresholds: /work/shared/REFERENCES.md, GB/T 41401-2022,
GB/T 50493-2019; truck behaviour as modelled in simulators/manhole.py)."""

from __future__ import annotations

from alerts.detection.engine import DetectionEngine
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from tests.alerts.detection.detect_helpers import T0, feed, of, reading, types

M = DeviceKind.MANHOLE


def test_passing_truck_pages_no_one() -> None:
    """A 2 s tilt spike with heavy vibration, alarm bit set, then the next heartbeat is normal; two
    trucks caught between heartbeats are still not two readings of a displaced cover."""
    eng = DetectionEngine()
    ev = feed(
        eng,
        [
            reading(M, "MH1", 1, T0),
            reading(M, "MH1", 2, T0 + 100, "alarm", tilt_deg=14.0, vibration_g=1.8),  # caught mid-shake
            reading(
                M, "MH1", 3, T0 + 12 * 3600, vibration_g=1.8
            ),  # heartbeat: peak vibration since last uplink
            reading(M, "MH1", 4, T0 + 13 * 3600, "alarm", tilt_deg=15.0, vibration_g=0.4),
            reading(M, "MH1", 5, T0 + 14 * 3600, "alarm", tilt_deg=12.0, vibration_g=2.2),
        ],
    )
    assert ev == []


def test_displaced_cover_confirmed_by_the_device_raises_at_once_then_escalates_and_clears() -> None:
    eng = DetectionEngine()
    ev = feed(eng, [reading(M, "MH1", 1, T0), reading(M, "MH1", 2, T0 + 60, "alarm", tilt_deg=25.0)])
    assert [(e.event_type, e.phase, e.severity) for e in ev] == [
        (EventType.COVER_DISPLACED, AlertPhase.RAISED, Severity.MEDIUM)
    ]
    assert ev[0].value == 23.0  # |tilt - tilt_ref|
    up = eng.tick(T0 + 60 + 1800)
    assert [(e.phase, e.severity) for e in up] == [(AlertPhase.UPDATED, Severity.HIGH)]
    # hysteresis: 8° off is inside the band (clear below 7°), the episode stays open
    assert feed(eng, [reading(M, "MH1", 3, T0 + 2000, tilt_deg=10.0)]) == []
    done = feed(eng, [reading(M, "MH1", 4, T0 + 2100, tilt_deg=3.0)])
    assert [(e.alert_id, e.phase) for e in done] == [(ev[0].alert_id, AlertPhase.CLEARED)]


def test_displaced_without_device_confirmation_needs_two_readings() -> None:
    eng = DetectionEngine()
    first = feed(eng, [reading(M, "MH1", 1, T0, tilt_deg=20.0)])
    assert first == []
    second = feed(eng, [reading(M, "MH1", 2, T0 + 1800, tilt_deg=20.0)])
    assert of(second, EventType.COVER_DISPLACED, AlertPhase.RAISED)
    assert second[0].episode_ms == int(T0 * 1000)  # the episode began with the first reading


def test_open_cover_is_high_on_the_first_frame() -> None:
    eng = DetectionEngine()
    for i, (flags, tilt) in enumerate([(("cover_open",), 2.0), ((), 95.0)]):
        ev = feed(eng, [reading(M, f"MH{i}", 1, T0, *flags, tilt_deg=tilt)])
        assert [(e.event_type, e.severity) for e in ev] == [(EventType.COVER_OPEN, Severity.HIGH)]


def test_gas_two_stages_with_hysteresis() -> None:
    eng = DetectionEngine()
    ev = feed(
        eng,
        [
            reading(M, "MH1", 1, T0, ch4_pct_lel=26.0),  # 1st stage (<= 25 %LEL)
            reading(M, "MH1", 2, T0 + 60, ch4_pct_lel=22.0),  # inside the hysteresis band: still open
            reading(M, "MH1", 3, T0 + 120, ch4_pct_lel=55.0),  # 2nd stage (<= 50 %LEL)
            reading(M, "MH1", 4, T0 + 180, ch4_pct_lel=10.0),
        ],
    )
    assert [(e.phase, e.severity) for e in of(ev, EventType.GAS_COMBUSTIBLE)] == [
        (AlertPhase.RAISED, Severity.MEDIUM),
        (AlertPhase.UPDATED, Severity.HIGH),
        (AlertPhase.CLEARED, Severity.HIGH),
    ]


def test_toxic_gas_oxygen_and_overflow() -> None:
    eng = DetectionEngine()
    ev = feed(
        eng,
        [
            reading(M, "A", 1, T0, h2s_ppm=25.0),  # above the OSHA ceiling 20 ppm
            reading(M, "B", 1, T0, o2_pct_vol=18.5),  # below 19.5 %vol
            reading(M, "C", 1, T0, o2_pct_vol=0.0),  # no O2 cell: not an alarm
            reading(M, "D", 1, T0, water_distance_cm=25.0),
            reading(
                M, "E", 1, T0, "sensor_fault", water_distance_cm=0.0
            ),  # blind sensor: a fault, not a flood
        ],
    )
    got = {(e.device_id, e.event_type, e.severity) for e in ev}
    assert got == {
        ("A", EventType.GAS_TOXIC, Severity.HIGH),
        ("B", EventType.OXYGEN_ABNORMAL, Severity.MEDIUM),
        ("D", EventType.OVERFLOW, Severity.MEDIUM),
        ("E", EventType.SENSOR_FAULT, Severity.LOW),
    }


def test_tamper_low_battery_and_frozen_readings() -> None:
    eng = DetectionEngine()
    ev = feed(eng, [reading(M, "T", 1, T0, "tamper"), reading(M, "B", 1, T0, battery=12.0)])
    assert types(ev) == {EventType.TAMPER, EventType.LOW_BATTERY}
    frozen = [
        reading(M, "F", i, T0 + 43200.0 * i, temperature_c=14.0, water_distance_cm=180.0, o2_pct_vol=20.9)
        for i in range(1, 9)
    ]
    ev = feed(eng, frozen)
    assert [(e.event_type, e.phase) for e in ev] == [(EventType.SENSOR_FAULT, AlertPhase.RAISED)]
    assert ev[0].frame_time == frozen[2].time  # after 2 repeats of all four channels (24 h, was 3 days)
