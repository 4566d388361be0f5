"""Smoke / heat / CO rules on hand-made sequences (EN 54-5, EN 50291, GB 20517 via REFERENCES.md;
cooking / hush / test behaviour as modelled in simulators/smoke_alarm.py)."""

from __future__ import annotations

import pytest

from alerts.detection.engine import DetectionEngine
from alerts.detection.profiles import ProfileSet
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from tests.alerts.detection.detect_helpers import T0, feed, of, reading

S = DeviceKind.SMOKE_ALARM
H = 3600.0


def _warm(eng: DetectionEngine, dev: str, n: int = 12) -> int:
    """Heartbeats that teach the room's baselines (22 °C, 45 %RH)."""
    assert feed(eng, [reading(S, dev, i, T0 - (n - i) * 12 * H) for i in range(n)]) == []
    return n


def test_test_button_never_pages() -> None:
    eng = DetectionEngine()
    seq = _warm(eng, "S1")
    ev = feed(
        eng,
        [
            reading(S, "S1", seq, T0, "test", "smoke_alarm"),
            reading(S, "S1", seq + 1, T0 + 10, "test", "smoke_alarm"),
            reading(S, "S1", seq + 2, T0 + 20),
        ],
    )
    assert ev == []


def test_cooking_steam_pages_no_one() -> None:
    """Density just over the detector's threshold, humidity up, temperature up a little, then gone."""
    eng = DetectionEngine()
    seq = _warm(eng, "S1")
    ev = feed(
        eng,
        [
            reading(S, "S1", seq, T0, "smoke_alarm", smoke_db_m=0.16, humidity_pct=58.0, temperature_c=23.0),
            reading(S, "S1", seq + 1, T0 + 40, "hush", smoke_db_m=0.2, humidity_pct=70.0, temperature_c=23.5),
            reading(S, "S1", seq + 2, T0 + 400, "hush", smoke_db_m=0.12, humidity_pct=60.0),
            reading(S, "S1", seq + 3, T0 + 1500, smoke_db_m=0.05),
        ],
    )
    assert ev == []


def test_thickening_dry_smoke_is_not_a_fire_until_co_corroborates() -> None:
    """Burnt toast thickens too (issue 10): only something cooking lacks - here CO - makes it a fire."""
    eng = DetectionEngine()
    seq = _warm(eng, "S1")
    dry = dict(smoke_db_m=0.16, humidity_pct=44.0)
    assert feed(eng, [reading(S, "S1", seq, T0, "smoke_alarm", **dry)]) == []
    thick = dict(smoke_db_m=0.3, humidity_pct=44.0)
    assert feed(eng, [reading(S, "S1", seq + 1, T0 + 30, "smoke_alarm", **thick)]) == []
    ev = feed(eng, [reading(S, "S1", seq + 2, T0 + 90, "smoke_alarm", co_ppm=40.0, **thick)])
    assert [(e.event_type, e.frame_time, e.episode_ms) for e in ev] == [
        (EventType.FIRE, T0 + 90, int(T0 * 1000))
    ]


def test_real_fire_pages_on_the_first_frame_where_the_bit_is_trusted() -> None:
    """A hallway detector (no kitchen nearby): its dry smoke bit pages at once (per-device profile)."""
    eng = DetectionEngine(ProfileSet(overrides={"S1": {"smoke_bit_immediate": True}}))
    seq = _warm(eng, "S1")
    first = reading(S, "S1", seq, T0, "smoke_alarm", smoke_db_m=0.3, humidity_pct=44.0, temperature_c=23.0)
    ev = feed(eng, [first])
    assert [(e.event_type, e.severity, e.phase) for e in ev] == [
        (EventType.FIRE, Severity.HIGH, AlertPhase.RAISED)
    ]
    assert ev[0].frame_time == first.time


def test_dense_smoke_or_heat_is_a_fire_even_in_a_humid_kitchen() -> None:
    eng = DetectionEngine()
    seq = _warm(eng, "S1")
    seq2 = _warm(eng, "S2")
    ev = feed(
        eng,
        [
            reading(
                S, "S1", seq, T0, "smoke_alarm", smoke_db_m=1.2, humidity_pct=90.0
            ),  # denser than cooking
            reading(S, "S2", seq2, T0, temperature_c=22.0),
            reading(S, "S2", seq2 + 1, T0 + 60, temperature_c=32.0),  # 10 °C/min > 8.3 (EN 54-5 A1)
            reading(S, "S3", 1, T0, "smoke_alarm", smoke_db_m=0.16, humidity_pct=90.0),  # steam: nothing
            reading(S, "S3", 2, T0 + 30, "smoke_alarm", "heat_alarm", smoke_db_m=0.3, humidity_pct=90.0),
        ],
    )
    assert [(e.device_id, e.event_type, e.frame_time) for e in ev] == [
        ("S1", EventType.FIRE, T0),
        ("S2", EventType.FIRE, T0 + 60),
        ("S3", EventType.FIRE, T0 + 30),
    ]


def test_temperature_noise_over_a_few_seconds_is_not_a_rate_of_rise() -> None:
    eng = DetectionEngine()
    seq = _warm(eng, "S1")
    ev = feed(
        eng,
        [
            reading(S, "S1", seq, T0, "test", "smoke_alarm", temperature_c=23.5),
            reading(S, "S1", seq + 1, T0 + 5.6, temperature_c=24.4),
        ],
    )  # 9.6 °C/min over 5.6 s
    assert ev == []


@pytest.mark.parametrize(("warm", "humidity"), [(True, 44.0), (False, 50.0)])
def test_uncorroborated_smoke_that_persists_beyond_a_meal_pages(warm: bool, humidity: float) -> None:
    """Dry smoke repeated every minute: cooking is over within fire_persist_s (45 min), a fire is not."""
    eng = DetectionEngine()
    seq = _warm(eng, "S1") if warm else 0
    smoky = dict(smoke_db_m=0.2, humidity_pct=humidity)
    frames = [reading(S, "S1", seq + i, T0 + 60 * i, "smoke_alarm", **smoky) for i in range(46)]
    assert feed(eng, frames[:45]) == []
    ev = feed(eng, frames[45:])
    assert of(ev, EventType.FIRE, AlertPhase.RAISED)
    assert ev[0].episode_ms == int(T0 * 1000)


@pytest.mark.parametrize("warm", [True, False])
def test_steam_never_pages_on_persistence_alone(warm: bool) -> None:
    eng = DetectionEngine()
    seq = _warm(eng, "S1") if warm else 0
    steam = dict(smoke_db_m=0.17, humidity_pct=70.0)  # +25 %RH over the room's 45 %; above 60 % unlearned
    assert (
        feed(eng, [reading(S, "S1", seq + i, T0 + 150 * i, "smoke_alarm", **steam) for i in range(6)]) == []
    )


def test_hush_never_hides_a_fire_with_rising_temperature() -> None:
    eng = DetectionEngine()
    seq = _warm(eng, "S1")
    ev = feed(
        eng,
        [
            reading(S, "S1", seq, T0, "hush", smoke_db_m=0.3, humidity_pct=80.0),
            reading(S, "S1", seq + 1, T0 + 60, "hush", "smoke_alarm", smoke_db_m=0.4, temperature_c=29.0),
        ],
    )
    assert [(e.event_type, e.phase) for e in ev] == [(EventType.FIRE, AlertPhase.RAISED)]


def test_hush_neither_pages_nor_restarts_the_persistence_clock() -> None:
    eng = DetectionEngine()
    seq = _warm(eng, "S1")
    dry = dict(smoke_db_m=0.2, humidity_pct=46.0)
    quiet = feed(
        eng,
        [reading(S, "S1", seq, T0, "smoke_alarm", **dry)]
        + [reading(S, "S1", seq + i, T0 + 60 * i, "hush", "smoke_alarm", **dry) for i in range(1, 11)]
        + [reading(S, "S1", seq + 11, T0 + 700, smoke_db_m=0.02)],  # the pan is off the stove: cleared
    )
    assert quiet == []
    # a smouldering fire hushed as "cooking": still paged once it outlasts a meal, hush or not
    late = feed(
        eng,
        [reading(S, "S1", seq + 12 + i, T0 + 3600 + 60 * i, "hush", "smoke_alarm", **dry) for i in range(47)],
    )
    assert [e.frame_time for e in of(late, EventType.FIRE, AlertPhase.RAISED)] == [T0 + 3600 + 2700]


def test_co_device_bit_and_own_dose_curve() -> None:
    eng = DetectionEngine()
    ev = feed(eng, [reading(S, "S1", 1, T0, "co_alarm", co_ppm=120.0)])
    assert [(e.event_type, e.severity) for e in ev] == [(EventType.CO, Severity.HIGH)]
    # no bit, 150 ppm reported every 2 minutes: our EN 50291 dose alarms within 10-40 min of the 100 ppm row
    rs = [reading(S, "S2", i, T0 + 120.0 * i, co_ppm=150.0) for i in range(30)]
    ev = of(feed(eng, rs), EventType.CO, AlertPhase.RAISED)
    assert len(ev) == 1 and 5 * 60 <= ev[0].frame_time - T0 <= 40 * 60


def test_co_at_30_ppm_never_alarms() -> None:
    eng = DetectionEngine()
    assert feed(eng, [reading(S, "S1", i, T0 + 300.0 * i, co_ppm=30.0) for i in range(40)]) == []


def test_flags_contamination_tamper_fault_battery() -> None:
    eng = DetectionEngine()
    ev = feed(
        eng,
        [
            reading(S, "S1", 1, T0, "contamination"),
            reading(S, "S2", 1, T0, "tamper"),
            reading(S, "S3", 1, T0, "fault"),
            reading(S, "S4", 1, T0, "low_battery"),
        ],
    )
    assert {(e.device_id, e.event_type) for e in ev} == {
        ("S1", EventType.CONTAMINATION),
        ("S2", EventType.TAMPER),
        ("S3", EventType.SENSOR_FAULT),
        ("S4", EventType.LOW_BATTERY),
    }


def test_a_second_co_episode_hours_later_is_a_new_alert() -> None:
    """The dose of a long first episode must not keep the alert open into the next one."""
    eng = DetectionEngine()
    first = [reading(S, "S1", i, T0 + 300.0 * i, "co_alarm", co_ppm=390.0) for i in range(8)]
    calm = [reading(S, "S1", 8, T0 + 2700.0, co_ppm=2.0), reading(S, "S1", 9, T0 + 12 * H, co_ppm=2.0)]
    second = [reading(S, "S1", 10, T0 + 13 * H, "co_alarm", co_ppm=105.0)]
    ev = of(feed(eng, first + calm + second), EventType.CO)
    assert [e.phase for e in ev] == [AlertPhase.RAISED, AlertPhase.CLEARED, AlertPhase.RAISED]
    assert ev[0].alert_id != ev[2].alert_id
