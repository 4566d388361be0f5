"""Issue 10, one regression per defect, from frames a vendor would send (``datasheet.py``: struct-encoded
from docs/payloads.md, not our simulators), through batch decode + engine + ticks (``harness.run``).

Each test also runs the frozen pre-issue rules (``legacy``) where they failed, so the test shows the
defect it pins. Figures: ADI Analog Dialogue 43-07 (falls), GB/T 41401-2022 (covers), EN 54-5 / EN 50291
/ EN 14604 (alarms), via /work/shared/REFERENCES.md.
"""

from __future__ import annotations

from itertools import count

from alerts.contract import AlertEvent
from alerts.detection.engine import DetectionEngine
from alerts.detection.profiles import ProfileSet
from firmware_bridge.kernel.events import AlertPhase, EventType
from tests.alerts.detection.vendor import datasheet as ds
from tests.alerts.detection.vendor.harness import Frame, run
from tests.alerts.detection.vendor.legacy import RULES as LEGACY

T0 = 1_780_300_800.0  # 2026-06-01T08:00:00Z = 16:00 in China
H = 3600.0


def raised(alerts: list[AlertEvent], et: EventType) -> list[AlertEvent]:
    return [a for a in alerts if a.event_type is et and a.phase is AlertPhase.RAISED]


def both(frames: list[Frame]) -> tuple[list[AlertEvent], list[AlertEvent]]:
    return run(frames, DetectionEngine()), run(frames, DetectionEngine(rules=LEGACY))


SUMMARY = ("worn", "gps_valid", "heartbeat")


# -- wristband ----------------------------------------------------------------------------------------
def _band_day(dev: str, seq: count[int], until: float) -> list[Frame]:
    """Ordinary 5-min summaries (walking about at home) before the scenario."""
    return [
        Frame(
            dev,
            t,
            ds.wristband(seq=next(seq), flags=("worn", "gps_valid", "heartbeat"), steps=80, stillness_s=20),
        )
        for t in [until - 300.0 * k for k in range(12, 0, -1)]
    ]


def test_fall_reported_only_in_a_periodic_summary_pages() -> None:
    """A band without its own fall detector: the impact, 200 s of stillness since it and the turned
    wrist all arrive in one 5-min summary. stillness_s counts from the peak, so that frame is the fall."""
    seq = count(1)
    frames = _band_day("WB-S", seq, T0)
    frames += [
        Frame(
            "WB-S",
            T0 + 300,
            ds.wristband(
                seq=next(seq),
                accel_peak_g=3.8,
                stillness_s=200,
                orientation_change_deg=85,
                steps=12,
                flags=SUMMARY,
            ),
        ),
        Frame(
            "WB-S",
            T0 + 600,
            ds.wristband(
                seq=next(seq),
                accel_peak_g=1.0,
                stillness_s=500,
                orientation_change_deg=2,
                steps=0,
                flags=SUMMARY,
            ),
        ),
    ]
    new, old = both(frames)
    falls = raised(new, EventType.FALL)
    assert [a.time for a in falls] == [T0 + 300]
    assert raised(old, EventType.FALL) == []  # the defect: never confirmed


def test_fall_just_before_a_summary_is_confirmed_by_the_next_one() -> None:
    seq = count(1)
    frames = _band_day("WB-S2", seq, T0)
    frames += [
        Frame(
            "WB-S2",
            T0 + 300,
            ds.wristband(
                seq=next(seq),
                accel_peak_g=4.1,
                stillness_s=8,
                orientation_change_deg=70,
                steps=30,
                flags=SUMMARY,
            ),
        ),
        Frame(
            "WB-S2",
            T0 + 600,
            ds.wristband(seq=next(seq), accel_peak_g=1.0, stillness_s=308, steps=0, flags=SUMMARY),
        ),
    ]
    new, _old = both(frames)
    assert [a.time for a in raised(new, EventType.FALL)] == [T0 + 600]


def test_person_who_gets_up_and_sits_down_is_not_paged() -> None:
    """The band flags the fall at once; 60 s later the wearer is up, walks two steps and sits in a chair:
    the next summary's stillness (240 s) is shorter than the 302 s since the peak - moved, not lying."""
    seq = count(1)
    frames = _band_day("WB-F", seq, T0)
    frames += [
        Frame(
            "WB-F",
            T0 + 2,
            ds.wristband(
                seq=next(seq),
                flags=("worn", "gps_valid", "fall"),
                accel_peak_g=3.4,
                stillness_s=2,
                orientation_change_deg=70,
                steps=0,
            ),
        ),
        Frame(
            "WB-F",
            T0 + 300,
            ds.wristband(
                seq=next(seq),
                flags=("worn", "gps_valid", "heartbeat"),
                accel_peak_g=1.3,
                stillness_s=240,
                orientation_change_deg=60,
                steps=2,
            ),
        ),
        Frame(
            "WB-F",
            T0 + 600,
            ds.wristband(
                seq=next(seq),
                flags=("worn", "gps_valid", "heartbeat"),
                accel_peak_g=1.0,
                stillness_s=540,
                steps=0,
            ),
        ),
    ]
    new, old = both(frames)
    assert raised(new, EventType.FALL) == []
    assert raised(old, EventType.FALL)  # the defect: "lying" judged before "moved"


def test_fall_flag_band_with_a_second_uplink_pages_within_a_minute() -> None:
    seq = count(1)
    frames = _band_day("WB-F2", seq, T0)
    frames += [
        Frame(
            "WB-F2",
            T0 + 2,
            ds.wristband(
                seq=next(seq),
                flags=("worn", "gps_valid", "fall"),
                accel_peak_g=3.9,
                stillness_s=2,
                orientation_change_deg=95,
            ),
        ),
        Frame(
            "WB-F2",
            T0 + 35,
            ds.wristband(
                seq=next(seq),
                flags=("worn", "gps_valid", "fall"),
                accel_peak_g=1.0,
                stillness_s=35,
                orientation_change_deg=3,
            ),
        ),
    ]
    new, _old = both(frames)
    assert [a.time for a in raised(new, EventType.FALL)] == [T0 + 35]


def test_heart_rate_episode_of_eleven_minutes_is_not_lost_between_summaries() -> None:
    """135 bpm at rest from T0+200 to T0+860: only the summaries at +300 and +600 see it."""
    seq = count(1)
    frames = _band_day("WB-H", seq, T0)
    for k, hr in ((1, 135), (2, 135), (3, 74), (4, 72)):
        frames.append(
            Frame(
                "WB-H",
                T0 + 300 * k,
                ds.wristband(
                    seq=next(seq),
                    flags=("worn", "gps_valid", "heartbeat"),
                    heart_rate_bpm=hr,
                    stillness_s=300 * k,
                    steps=0,
                ),
            )
        )
    new, old = both(frames)
    assert [a.time for a in raised(new, EventType.HEART_RATE_HIGH)] == [T0 + 600]
    assert raised(old, EventType.HEART_RATE_HIGH) == []


# -- manhole ------------------------------------------------------------------------------------------
REF = 2.0  # the road slope the cover was installed at


def _cover_history(dev: str, seq: count[int], fw: tuple[int, int]) -> list[Frame]:
    """Two days of 12 h heartbeats on a busy road: a truck in every window (vibration_g ~1 g)."""
    return [
        Frame(
            dev,
            T0 - 12 * H * k,
            ds.manhole(
                seq=next(seq),
                fw=fw,
                flags=("heartbeat",),
                tilt_deg=2.0 + 0.03 * k,
                vibration_g=0.9 + 0.1 * k,
                temperature_c=16 + 0.3 * k,
                tilt_ref_deg=REF,
            ),
        )
        for k in range(4, 0, -1)
    ]


def test_displaced_cover_on_a_busy_road_pages_without_a_second_still_reading() -> None:
    """Firmware without debounce: the alarm frame's vibration_g is the trucks' peak since the previous
    heartbeat, and the next uplink is 12 h away. No return-to-normal within 45 s = displaced."""
    seq = count(1)
    frames = _cover_history("MH-B", seq, (1, 2))
    frames.append(
        Frame(
            "MH-B",
            T0 + 100,
            ds.manhole(
                seq=next(seq), fw=(1, 2), flags=("alarm",), tilt_deg=24.0, vibration_g=1.4, tilt_ref_deg=REF
            ),
        )
    )
    frames.append(
        Frame(
            "MH-B",
            T0 + 12 * H,
            ds.manhole(
                seq=next(seq),
                fw=(1, 2),
                flags=("alarm", "heartbeat"),
                tilt_deg=24.0,
                vibration_g=1.1,
                tilt_ref_deg=REF,
            ),
        )
    )
    new, old = both(frames)
    got = raised(new, EventType.COVER_DISPLACED)
    assert len(got) == 1 and T0 + 100 + 45 <= got[0].time <= T0 + 100 + 60
    assert all(a.time > T0 + 12 * H - 1 for a in raised(old, EventType.COVER_DISPLACED))  # 12 h late at best


def test_debounced_tilt_alarm_pages_at_once_and_trucks_never_do() -> None:
    seq = count(1)
    frames = _cover_history("MH-D", seq, (1, 3))
    frames.append(
        Frame(
            "MH-D",
            T0 + 100,
            ds.manhole(
                seq=next(seq),
                fw=(1, 3),
                flags=("alarm", "tilt_settled"),
                tilt_deg=19.0,
                vibration_g=1.2,
                tilt_ref_deg=REF,
            ),
        )
    )
    # a raw-firmware cover next to it: a truck rocks it past 10° for 2 s, it reports the return at once
    seq2 = count(1)
    frames += _cover_history("MH-T", seq2, (1, 2))
    for k in range(5):
        t = T0 + 1000 + 3000 * k
        frames.append(
            Frame(
                "MH-T",
                t,
                ds.manhole(
                    seq=next(seq2),
                    fw=(1, 2),
                    flags=("alarm",),
                    tilt_deg=14.5,
                    vibration_g=1.6,
                    tilt_ref_deg=REF,
                ),
            )
        )
        frames.append(
            Frame(
                "MH-T",
                t + 4 + 5 * k,
                ds.manhole(seq=next(seq2), fw=(1, 2), tilt_deg=2.1, vibration_g=1.6, tilt_ref_deg=REF),
            )
        )
    new, _old = both(frames)
    got = raised(new, EventType.COVER_DISPLACED)
    assert [(a.device_id, a.time) for a in got] == [("MH-D", T0 + 100)]


def test_frozen_cover_sensor_is_noticed_within_a_day() -> None:
    seq = count(1)
    frames = _cover_history("MH-F", seq, (1, 2))
    frames += [  # the firmware keeps sending the values it cached before its ADC hung
        Frame(
            "MH-F",
            T0 + 12 * H * k,
            ds.manhole(
                seq=next(seq),
                flags=("heartbeat",),
                tilt_ref_deg=REF,
                tilt_deg=2.05,
                vibration_g=0.8,
                temperature_c=17.3,
                water_distance_cm=176.4,
                o2_pct_vol=20.87,
            ),
        )
        for k in range(1, 8)
    ]
    new, old = both(frames)
    assert [a.time for a in raised(new, EventType.SENSOR_FAULT)] == [T0 + 36 * H]  # 24 h after the first
    assert [a.time for a in raised(old, EventType.SENSOR_FAULT)] == [T0 + 84 * H]  # 3 days after the first


# -- smoke alarm --------------------------------------------------------------------------------------
def _alarm_history(dev: str, seq: count[int]) -> list[Frame]:
    """Four days of 12 h heartbeats in a 23 °C, 48 %RH flat: the room's baselines are learned."""
    return [
        Frame(
            dev,
            T0 - 12 * H * k,
            ds.smoke_alarm(
                seq=next(seq),
                flags=("heartbeat",),
                smoke_db_m=0.012 + 0.001 * (k % 3),
                temperature_c=23.0 + 0.2 * (k % 4),
                co_ppm=1.0,
                humidity_pct=48.0,
            ),
        )
        for k in range(8, 0, -1)
    ]


def test_burnt_food_on_an_alarm_that_repeats_while_in_alarm_pages_no_one() -> None:
    """Toast burning under a kitchen detector that repeats every 60 s in alarm: smoke thickens from
    0.16 to 0.7 dB/m and is seen in twelve frames, the ceiling warms 3 °C, CO 6 ppm; hushed at minute 4."""
    seq = count(1)
    frames = _alarm_history("SA-R", seq)
    profile = [0.16, 0.32, 0.55, 0.70, 0.66, 0.58, 0.47, 0.38, 0.30, 0.24, 0.19, 0.16]
    for k, smoke in enumerate(profile):
        flags = ("smoke_alarm", "hush") if 4 <= k <= 10 else ("smoke_alarm",)
        frames.append(
            Frame(
                "SA-R",
                T0 + 60 * k,
                ds.smoke_alarm(
                    seq=next(seq),
                    flags=flags,
                    smoke_db_m=smoke,
                    temperature_c=23.2 + 0.25 * k,
                    co_ppm=2 + 0.4 * k,
                    humidity_pct=50.0,
                ),
            )
        )
    frames.append(
        Frame(
            "SA-R",
            T0 + 60 * 12,
            ds.smoke_alarm(seq=next(seq), smoke_db_m=0.09, temperature_c=25.0, co_ppm=5.0, humidity_pct=50.0),
        )
    )
    new, old = both(frames)
    assert raised(new, EventType.FIRE) == []
    assert raised(old, EventType.FIRE)  # the defect: thickening smoke paged as fire


def test_shower_steam_and_the_test_button_page_no_one() -> None:
    seq = count(1)
    frames = _alarm_history("SA-B", seq)
    for k in range(20):  # a 20-minute shower next door: droplets read as smoke, humidity 95 %
        frames.append(
            Frame(
                "SA-B",
                T0 + 60 * k,
                ds.smoke_alarm(
                    seq=next(seq),
                    flags=("smoke_alarm",),
                    smoke_db_m=0.2 + 0.01 * (k % 3),
                    temperature_c=27.0,
                    co_ppm=1.0,
                    humidity_pct=95.0,
                ),
            )
        )
    frames.append(
        Frame(
            "SA-B",
            T0 + 1260,
            ds.smoke_alarm(seq=next(seq), smoke_db_m=0.03, temperature_c=25.0, co_ppm=1.0, humidity_pct=70.0),
        )
    )
    for k, flags in enumerate((("test", "smoke_alarm", "heat_alarm", "co_alarm"), ())):
        frames.append(
            Frame(
                "SA-B",
                T0 + 2 * H + 8 * k,
                ds.smoke_alarm(
                    seq=next(seq),
                    flags=flags,
                    smoke_db_m=0.01,
                    temperature_c=23.0,
                    co_ppm=1.0,
                    humidity_pct=48.0,
                ),
            )
        )
    new, _old = both(frames)
    assert [a for a in new if a.phase is AlertPhase.RAISED] == []


def test_smouldering_fire_on_a_state_change_only_alarm_pages_on_its_first_frame() -> None:
    """EN 54-7 TF2/TF3-like smouldering: smoke bit with CO at 34 ppm and barely any heat. The alarm
    uplinks only on state changes, so the next frame is its CO bit, 25 min later."""
    seq = count(1)
    frames = _alarm_history("SA-C", seq)
    frames.append(
        Frame(
            "SA-C",
            T0,
            ds.smoke_alarm(
                seq=next(seq),
                flags=("smoke_alarm",),
                smoke_db_m=0.17,
                temperature_c=23.9,
                co_ppm=34.0,
                humidity_pct=47.0,
            ),
        )
    )
    frames.append(
        Frame(
            "SA-C",
            T0 + 1500,
            ds.smoke_alarm(
                seq=next(seq),
                flags=("smoke_alarm", "co_alarm"),
                smoke_db_m=0.9,
                temperature_c=25.0,
                co_ppm=160.0,
                humidity_pct=46.0,
            ),
        )
    )
    new, old = both(frames)
    assert [a.time for a in raised(new, EventType.FIRE)] == [T0]
    assert [a.time for a in raised(old, EventType.FIRE)] == [T0 + 1500]  # the defect: 25 min late


def test_smouldering_fire_before_co_builds_up_pages_when_the_co_bit_arrives() -> None:
    seq = count(1)
    frames = _alarm_history("SA-C2", seq)
    frames.append(
        Frame(
            "SA-C2",
            T0,
            ds.smoke_alarm(
                seq=next(seq),
                flags=("smoke_alarm",),
                smoke_db_m=0.16,
                temperature_c=23.4,
                co_ppm=12.0,
                humidity_pct=47.0,
            ),
        )
    )
    frames.append(
        Frame(
            "SA-C2",
            T0 + 900,
            ds.smoke_alarm(
                seq=next(seq),
                flags=("smoke_alarm", "co_alarm"),
                smoke_db_m=0.6,
                temperature_c=24.4,
                co_ppm=120.0,
                humidity_pct=46.0,
            ),
        )
    )
    new, _old = both(frames)
    assert [a.time for a in raised(new, EventType.FIRE)] == [T0 + 900]


def test_flaming_fire_with_heat_pages_on_the_revealing_frame() -> None:
    seq = count(1)
    frames = _alarm_history("SA-F", seq)
    frames.append(
        Frame(
            "SA-F",
            T0,
            ds.smoke_alarm(
                seq=next(seq),
                flags=("smoke_alarm",),
                smoke_db_m=0.4,
                temperature_c=26.0,
                co_ppm=8.0,
                humidity_pct=44.0,
            ),
        )
    )
    frames.append(
        Frame(
            "SA-F",
            T0 + 60,
            ds.smoke_alarm(
                seq=next(seq),
                flags=("smoke_alarm",),
                smoke_db_m=1.1,
                temperature_c=37.0,
                co_ppm=30.0,
                humidity_pct=40.0,
            ),
        )
    )
    new, _old = both(frames)
    assert [a.time for a in raised(new, EventType.FIRE)] == [T0 + 60]  # +11 °C/min: EN 54-5 rate of rise


def test_smoke_at_a_neighbouring_dwellings_alarm_corroborates_a_fire() -> None:
    """Two alarms in different flats of one building (``neighbour_group``) see smoke within minutes:
    smoke does not cross a party wall for cooking. One flat's smoke alone stays a nuisance."""
    profiles = ProfileSet(overrides={"SA-N1": {"neighbour_group": 7.0}, "SA-N2": {"neighbour_group": 7.0}})

    def episode(dev: str, t: float, smoke: float) -> list[Frame]:
        """History (seq 1-8), a dry smoke bit (seq 9), its clearing reported 6 min later (seq 10)."""

        def frame(seq: int, flags: tuple[str, ...], smoke_db_m: float) -> bytes:
            return ds.smoke_alarm(
                seq=seq, flags=flags, smoke_db_m=smoke_db_m, temperature_c=23.6, co_ppm=3.0, humidity_pct=47.0
            )

        smoky, cleared = (
            Frame(dev, t, frame(9, ("smoke_alarm",), smoke)),
            Frame(dev, t + 360, frame(10, (), 0.05)),
        )
        return [*_alarm_history(dev, count(1)), smoky, cleared]

    alone = run(episode("SA-N1", T0, 0.2), DetectionEngine(profiles))
    assert raised(alone, EventType.FIRE) == []
    both_flats = run(episode("SA-N1", T0, 0.2) + episode("SA-N2", T0 + 240, 0.18), DetectionEngine(profiles))
    assert [(a.device_id, a.time) for a in raised(both_flats, EventType.FIRE)] == [("SA-N2", T0 + 240)]
