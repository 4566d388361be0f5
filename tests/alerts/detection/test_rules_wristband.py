"""Wristband rules on hand-made sequences (fall: ADI Analog Dialogue 43-07; HR/SpO2 bounds via
REFERENCES.md; the band's uplink pattern as modelled in simulators/wristband.py)."""

from __future__ import annotations

from alerts.contract import AlertEvent
from alerts.detection.engine import DetectionEngine
from alerts.detection.profiles import ProfileSet
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind, Reading
from tests.alerts.detection.detect_helpers import T0, batch, feed, of, reading, types

W = DeviceKind.WRISTBAND


def test_fall_impact_then_stillness_pages_with_the_impact_as_episode_start() -> None:
    eng = DetectionEngine()
    ev = feed(
        eng,
        [
            reading(W, "W1", 1, T0),
            reading(
                W,
                "W1",
                2,
                T0 + 1,
                "fall",
                accel_peak_g=4.2,
                stillness_s=1,
                orientation_change_deg=80,
                steps=0,
            ),
            reading(W, "W1", 3, T0 + 30, "fall", stillness_s=30, orientation_change_deg=80, steps=0),
        ],
    )
    assert [(e.event_type, e.severity, e.phase) for e in ev] == [
        (EventType.FALL, Severity.HIGH, AlertPhase.RAISED)
    ]
    assert ev[0].episode_ms == int((T0 + 1) * 1000)
    assert ev[0].frame_time == T0 + 30


def test_person_who_got_up_is_not_paged() -> None:
    eng = DetectionEngine()
    ev = feed(
        eng,
        [
            reading(
                W,
                "W1",
                1,
                T0 + 1,
                "fall",
                accel_peak_g=3.5,
                stillness_s=1,
                orientation_change_deg=60,
                steps=0,
            ),
            reading(W, "W1", 2, T0 + 120, stillness_s=12, steps=5),  # got up after ~12 s
            reading(W, "W1", 3, T0 + 170, stillness_s=40, steps=0),  # then sat down: not a fall
        ],
    )
    assert ev == []


def test_knock_on_a_table_is_not_a_fall() -> None:
    eng = DetectionEngine()
    ev = feed(
        eng, [reading(W, "W1", 1, T0, accel_peak_g=3.0, stillness_s=40, orientation_change_deg=10, steps=0)]
    )
    assert ev == []


def test_removed_band_cannot_fall() -> None:
    eng = DetectionEngine()
    dropped = reading(
        W,
        "W1",
        1,
        T0,
        "gps_valid",
        base_flags=False,
        accel_peak_g=6.0,
        stillness_s=60,
        orientation_change_deg=120,
        steps=0,
        heart_rate_bpm=0,
        spo2_pct=0,
    )
    assert of(feed(eng, [dropped]), EventType.FALL) == []


def test_sos_repeats_stay_one_episode() -> None:
    eng = DetectionEngine()
    ev = feed(eng, [reading(W, "W1", i, T0 + 60.0 * i, *(("sos",) if i < 4 else ())) for i in range(8)])
    assert [(e.event_type, e.phase) for e in ev] == [
        (EventType.SOS, AlertPhase.RAISED),
        (EventType.SOS, AlertPhase.CLEARED),
    ]
    assert ev[1].frame_time >= T0 + 300  # kept open at least 5 min


def test_heart_rate_high_at_rest_for_ten_minutes_not_while_walking() -> None:
    eng = DetectionEngine()
    walk = [reading(W, "W1", i, T0 + 300.0 * i, heart_rate_bpm=135, steps=400) for i in range(6)]
    assert feed(eng, walk) == []
    rest = [reading(W, "W2", i, T0 + 300.0 * i, heart_rate_bpm=135, steps=0) for i in range(4)]
    ev = feed(eng, rest)
    assert [(e.event_type, e.severity) for e in ev] == [(EventType.HEART_RATE_HIGH, Severity.MEDIUM)]
    # two 5-min summaries in a row (issue 10: a 10-15 min episode must not slip between three of them)
    assert ev[0].frame_time == T0 + 300
    assert ev[0].episode_ms == int(T0 * 1000)


def test_heart_rate_zero_means_not_measured() -> None:
    eng = DetectionEngine()
    rs = [reading(W, "W1", i, T0 + 300.0 * i, heart_rate_bpm=0, spo2_pct=0, steps=0) for i in range(6)]
    assert of(feed(eng, rs), EventType.HEART_RATE_LOW) == []


def test_low_heart_rate_and_spo2() -> None:
    eng = DetectionEngine()
    ev = feed(
        eng, [reading(W, "W1", i, T0 + 300.0 * i, heart_rate_bpm=38, spo2_pct=84, steps=0) for i in range(4)]
    )
    got = {(e.event_type, e.severity) for e in ev if e.phase is AlertPhase.RAISED}
    assert got == {(EventType.HEART_RATE_LOW, Severity.MEDIUM), (EventType.SPO2_LOW, Severity.HIGH)}


def test_band_removed_for_fifteen_minutes() -> None:
    eng = DetectionEngine()
    off = dict(base_flags=False, heart_rate_bpm=0.0, spo2_pct=0.0, steps=0.0)
    ev = feed(eng, [reading(W, "W1", i, T0 + 300.0 * i, **off) for i in range(5)])
    assert [(e.event_type, e.frame_time) for e in ev] == [(EventType.BAND_REMOVED, T0 + 900)]
    charging = [reading(W, "W2", i, T0 + 300.0 * i, "charging", **off) for i in range(5)]
    assert feed(eng, charging) == []


def test_daytime_inactivity_but_not_sleep() -> None:
    eng = DetectionEngine()
    # T0 is 08:00 in China (UTC+8): two hours still in the morning pages
    day = [reading(W, "W1", i, T0 + 300.0 * i, stillness_s=300.0 * i, steps=0) for i in range(26)]
    assert types(feed(eng, day)) == {EventType.INACTIVITY}
    # 23:00-07:00 local: sleeping is not inactivity
    night0 = T0 + 15 * 3600.0
    night = [reading(W, "W2", i, night0 + 300.0 * i, stillness_s=300.0 * i, steps=0) for i in range(80)]
    assert feed(eng, night) == []


def test_geofence_with_configured_home_and_learned_home() -> None:
    eng = DetectionEngine(
        ProfileSet(overrides={"W1": {"home_lat": 22.54, "home_lon": 114.05}}), grace_period=5
    )
    far = dict(lat=22.55, lon=114.05)  # ~1.1 km north
    ev = feed(eng, [reading(W, "W1", i, T0 + 300.0 * i, **far) for i in range(2)])
    assert [(e.event_type, e.frame_time) for e in ev] == [(EventType.GEOFENCE_EXIT, T0 + 300)]
    home = [reading(W, "W2", i, T0 + 300.0 * i) for i in range(8)]
    away = [reading(W, "W2", 8 + i, T0 + 300.0 * (8 + i), **far) for i in range(2)]
    assert feed(eng, home) == []
    assert of(feed(eng, away), EventType.GEOFENCE_EXIT, AlertPhase.RAISED)


def test_geofence_learned_home_without_warm_up() -> None:
    """home_learn_warmup_fixes=0 (allowed: ge=0): the first fix has no home to clip towards, it must become
    the home; before the fix it was clipped against a NaN baseline, the learned home stayed NaN and the band
    never raised GEOFENCE_EXIT."""
    eng = DetectionEngine(ProfileSet(overrides={"W": {"home_learn_warmup_fixes": 0.0}}))
    out: list[AlertEvent] = []
    t = T0 + 3600  # 09:00 local: daytime, so fixes are clipped (not learned in full)
    for seq in range(46):
        far = seq >= 40  # 40 fixes at home, then 2.2 km north
        r = reading(DeviceKind.WRISTBAND, "W", seq, t, lat=22.56 if far else 22.54, lon=114.05)
        out += eng.process(batch([r]), now=t)
        t += 300
    assert [(e.event_type, e.phase) for e in out if e.event_type is EventType.GEOFENCE_EXIT] == [
        (EventType.GEOFENCE_EXIT, AlertPhase.RAISED)
    ]


def _lying(dev: str, minutes: int) -> list[Reading]:
    """A fall at T0 + 1 and ``minutes`` of lying still, the band's fall flag set, a summary every 5 min."""
    rs = [
        reading(
            W, dev, 1, T0 + 1, "fall", accel_peak_g=4.0, stillness_s=1, orientation_change_deg=80, steps=0
        ),
        reading(W, dev, 2, T0 + 31, "fall", stillness_s=30, orientation_change_deg=80, steps=0),
    ]
    rs += [
        reading(
            W, dev, 2 + k, T0 + 1 + 300 * k, "fall", stillness_s=300 * k, orientation_change_deg=80, steps=0
        )
        for k in range(1, minutes // 5 + 1)
    ]
    return rs


def test_fall_end_of_fall_uplink_without_steps_does_not_clear_steps_do() -> None:
    """The band's end-of-fall uplink (its fall flag cleared, the stillness restarted since the previous
    uplink) is also what a wearer who rolled over on the floor as the flag timed out sends: it no longer
    clears (docs/detection-wristband.md). Nor does a summary with a few steps (12: what an arm moving on
    the floor may add in 5 min, below the 15 a summary needs; docs/detection.md "Walking, not a
    pedometer's false steps"); the next summary with a walk does."""
    eng = DetectionEngine()
    lying = _lying("W1", 30)
    up = T0 + 1 + 1800 + 40  # got up 13 s before this uplink, then sat down: no steps
    after = [
        reading(W, "W1", 100, up, stillness_s=13, orientation_change_deg=30, steps=0),
        reading(W, "W1", 101, up + 300, stillness_s=313, orientation_change_deg=5, steps=0),
        reading(W, "W1", 102, up + 600, stillness_s=200, orientation_change_deg=5, steps=12),
        reading(W, "W1", 103, up + 900, stillness_s=100, orientation_change_deg=5, steps=40),
    ]
    ev = of(feed(eng, lying + after), EventType.FALL)
    assert [e.phase for e in ev if e.phase is not AlertPhase.UPDATED] == [
        AlertPhase.RAISED,
        AlertPhase.CLEARED,
    ]
    assert [e.time for e in ev if e.phase is AlertPhase.CLEARED] == [up + 900]


def test_fall_flag_cleared_while_still_lying_does_not_clear() -> None:
    """A band whose own fall flag times out while the wearer still lies there (stillness keeps growing
    across the uplink gap) is not 'got up'."""
    eng = DetectionEngine()
    lying = _lying("W2", 30)
    still_down = [reading(W, "W2", 100, T0 + 1 + 2100, stillness_s=2100, orientation_change_deg=80, steps=0)]
    ev = of(feed(eng, lying + still_down), EventType.FALL)
    assert AlertPhase.CLEARED not in [e.phase for e in ev]
