"""The engine's contract: shape of every kind, idempotency, batching, persistence, time-driven steps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.detection.engine import DetectionEngine, SnapshotError
from alerts.detection.profiles import ProfileError, ProfileSet, WristbandProfile
from alerts.detection.registry import RULES
from firmware_bridge.kernel.events import KIND_EVENTS, LIFE_SAFETY, AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from firmware_bridge.registry import spec
from tests.alerts.detection.detect_helpers import T0, batch, feed, of, reading

K = DeviceKind


@pytest.mark.parametrize("kind", list(DeviceKind))
def test_every_kind_has_the_same_shape(kind: DeviceKind) -> None:
    mod = RULES[kind]
    assert mod.KIND is kind
    rules = mod.rules(mod.PROFILE())
    assert set(rules) <= KIND_EVENTS[kind], "a rule for an event this kind cannot produce"
    assert not any(et.is_nuisance for et in rules)
    assert callable(mod.evaluate) and callable(mod.make_detectors)


@pytest.mark.parametrize("kind", list(DeviceKind))
def test_empty_batch_and_normal_readings_page_no_one(kind: DeviceKind) -> None:
    eng = DetectionEngine()
    assert eng.process(ReadingBatch.empty(kind, len(spec(kind).channels)), now=T0) == []
    rs = [reading(kind, f"d{i % 7}", i // 7, T0 + 60.0 * i) for i in range(70)]
    assert feed(eng, rs) == []
    assert eng.devices == 7


@pytest.mark.parametrize("kind", list(DeviceKind))
def test_nan_values_never_crash_or_alert(kind: DeviceKind) -> None:
    """The codec turns an out-of-range value into NaN (firmware_bridge/payload.py); that is 'unknown'."""
    eng = DetectionEngine()
    names = spec(kind).channel_names
    rs = [reading(kind, "d1", i, T0 + 60.0 * i, **{names[i % len(names)]: float("nan")}) for i in range(20)]
    assert feed(eng, rs) == []


def _sos_then_fall(dev: str, seq0: int = 0) -> list[Reading]:
    w = K.WRISTBAND
    return [
        reading(w, dev, seq0, T0),
        reading(w, dev, seq0 + 1, T0 + 10, "sos"),
        reading(w, dev, seq0 + 2, T0 + 70, "sos"),
        reading(w, dev, seq0 + 3, T0 + 400),
        reading(
            w, dev, seq0 + 4, T0 + 500, "fall", accel_peak_g=4.0, stillness_s=1, orientation_change_deg=90
        ),
        reading(w, dev, seq0 + 5, T0 + 530, "fall", stillness_s=30, steps=0),
    ]


def test_duplicate_and_replayed_frames_never_raise_twice() -> None:
    eng = DetectionEngine()
    rs = _sos_then_fall("W1")
    first = feed(eng, rs)
    assert [(e.event_type, e.phase) for e in first] == [
        (EventType.SOS, AlertPhase.RAISED),
        (EventType.SOS, AlertPhase.CLEARED),
        (EventType.FALL, AlertPhase.RAISED),
    ]
    # the whole stream again (a replay), in one batch and one frame at a time
    assert eng.process(batch(rs), now=T0 + 600) == []
    assert feed(eng, rs) == []
    # the SOS frame heard by a second gateway later (same seq, later receive time)
    late = reading(K.WRISTBAND, "W1", 5, T0 + 560, "fall", stillness_s=30, steps=0)
    assert eng.process(batch([late]), now=T0 + 560) == []
    c = eng.counters
    assert c.accepted_total == 6 and c.duplicates_total + c.stale_total == 13


def test_old_seq_within_replay_window_is_rejected_but_a_reboot_is_not() -> None:
    eng = DetectionEngine()
    w = K.WRISTBAND
    feed(eng, [reading(w, "W1", 100, T0), reading(w, "W1", 101, T0 + 300)])
    replay = reading(w, "W1", 95, T0 + 600, "sos")  # an old SOS frame replayed with a fresh time
    assert eng.process(batch([replay]), now=T0 + 600) == []
    reboot = reading(w, "W1", 0, T0 + 900, "sos")
    assert of(eng.process(batch([reboot]), now=T0 + 900), EventType.SOS, AlertPhase.RAISED)


def test_one_big_shuffled_batch_equals_frame_by_frame() -> None:
    """Several frames of one device in a batch are ordered by time per device: same steps either way."""
    streams = [r for i in range(12) for r in _sos_then_fall(f"W{i}", seq0=10 * i)]
    a = DetectionEngine()
    one_by_one = feed(a, sorted(streams, key=lambda r: r.time))
    b = DetectionEngine()
    order = np.random.default_rng(7).permutation(len(streams))
    at_once = b.process(batch([streams[i] for i in order]), now=T0 + 600)
    key = lambda e: (e.alert_id, e.phase, e.severity, e.frame_time)  # noqa: E731
    assert sorted(map(key, one_by_one)) == sorted(map(key, at_once))
    assert len(one_by_one) == 36


def test_alert_identity_is_device_type_and_first_frame() -> None:
    eng = DetectionEngine()
    ev = feed(eng, _sos_then_fall("W1"))
    assert ev[0].alert_id == alert_id("W1", EventType.SOS, int((T0 + 10) * 1000))
    assert ev[0].severity is Severity.HIGH and ev[0].kind is K.WRISTBAND
    assert ev[1].alert_id == ev[0].alert_id  # the clear closes the same episode
    assert ev[2].episode_ms == int((T0 + 500) * 1000)  # the fall episode starts at the impact


def test_snapshot_restore_mid_episode_keeps_ids_and_does_not_re_raise() -> None:
    eng = DetectionEngine()
    m = K.MANHOLE
    raised = feed(eng, [reading(m, "MH1", 1, T0, ch4_pct_lel=30.0)])
    assert of(raised, EventType.GAS_COMBUSTIBLE, AlertPhase.RAISED)
    data = eng.snapshot()
    eng2 = DetectionEngine.restore(data)
    assert eng2.devices == 1
    assert [e.alert_id for e in eng2.open_alerts()] == [raised[0].alert_id]
    assert eng2.counters.accepted_total == 1
    # the same frame again after the restart: nothing; the gas rises: same episode updated; then clears
    assert eng2.process(batch([reading(m, "MH1", 1, T0, ch4_pct_lel=30.0)]), now=T0 + 5) == []
    up = feed(eng2, [reading(m, "MH1", 2, T0 + 60, ch4_pct_lel=60.0)])
    assert [(e.alert_id, e.phase, e.severity) for e in up] == [
        (raised[0].alert_id, AlertPhase.UPDATED, Severity.HIGH)
    ]
    done = feed(eng2, [reading(m, "MH1", 3, T0 + 120, ch4_pct_lel=5.0)])
    assert [(e.alert_id, e.phase) for e in done] == [(raised[0].alert_id, AlertPhase.CLEARED)]


def test_snapshot_restores_learned_baselines() -> None:
    eng = DetectionEngine(grace_period=3)
    s = K.SMOKE_ALARM
    feed(eng, [reading(s, "S1", i, T0 + 3600.0 * i, temperature_c=21.0) for i in range(5)])
    eng2 = DetectionEngine.restore(eng.snapshot())
    np.testing.assert_array_equal(
        eng.kinds[s].det["temp_base"].arrays["mean"][:1], eng2.kinds[s].det["temp_base"].arrays["mean"][:1]
    )
    assert eng2.grace_period == 3


@pytest.mark.parametrize("data", [b"", b"not a snapshot", b"PK\x03\x04garbage"])
def test_corrupt_snapshot_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        DetectionEngine.restore(data)


def test_invalid_device_id_or_time_is_counted_not_fatal() -> None:
    eng = DetectionEngine()
    w = K.WRISTBAND
    rs = [
        reading(w, "bad id with spaces", 1, T0, "sos"),
        reading(w, "W1", 1, float("nan"), "sos"),
        reading(w, "W2", 1, T0, "sos"),
    ]
    ev = eng.process(batch(rs), now=T0)
    assert [e.device_id for e in ev] == ["W2"]
    assert eng.counters.rejected_total == 2


def test_a_batch_of_only_invalid_readings_after_a_tick_is_counted_not_fatal() -> None:
    """Regression: once a tick had run, a batch whose every reading was invalid crashed ``process``
    (the minimum of an empty array); it must return nothing and count the readings."""
    eng = DetectionEngine()
    w = K.WRISTBAND
    feed(eng, [reading(w, "W1", 1, T0)])
    eng.tick(T0 + 60)
    bad = [reading(w, "bad id with spaces", 2, T0 + 61), reading(w, "W1", 2, float("nan"))]
    assert eng.process(batch(bad), now=T0 + 61) == []
    assert eng.counters.rejected_total == 2
    assert eng.tick(T0 + 120) == []  # and the engine carries on


def test_silent_device_raises_reminds_and_clears() -> None:
    eng = DetectionEngine()
    w = K.WRISTBAND  # heartbeat 300 s; silent after 2.2 intervals; reminder hourly (profiles.py)
    feed(eng, [reading(w, "W1", 1, T0)])
    assert eng.tick(T0 + 600) == []
    ev = eng.tick(T0 + 700)
    assert [(e.event_type, e.phase, e.severity) for e in ev] == [
        (EventType.DEVICE_SILENT, AlertPhase.RAISED, Severity.MEDIUM)
    ]
    assert ev[0].episode_ms == int(T0 * 1000)
    assert eng.tick(T0 + 800) == []
    rem = eng.tick(T0 + 700 + 3600)
    assert [(e.alert_id, e.phase) for e in rem] == [(ev[0].alert_id, AlertPhase.UPDATED)]
    back = feed(eng, [reading(w, "W1", 2, T0 + 5000)])
    assert [(e.alert_id, e.phase) for e in back] == [(ev[0].alert_id, AlertPhase.CLEARED)]


def test_a_device_heard_later_with_an_older_frame_falls_silent_on_time() -> None:
    """A tick skips the silence check until the earliest silence it found; a batch that brings a device
    whose silence comes sooner (a new device with an older frame, one whose silence just ended) must
    bring that time forward, or the device would page late."""
    eng = DetectionEngine()
    w = K.WRISTBAND  # silent after 660 s
    feed(eng, [reading(w, "W1", 1, T0 + 500)])
    assert eng.tick(T0 + 500) == []  # W1 silent at T0 + 1160 at the earliest
    assert eng.process(batch([reading(w, "W2", 1, T0)]), now=T0 + 500) == []
    ev = eng.tick(T0 + 700)
    assert [(e.device_id, e.event_type, e.phase) for e in ev] == [
        ("W2", EventType.DEVICE_SILENT, AlertPhase.RAISED)
    ]
    assert eng.tick(T0 + 1100) == []
    assert [e.device_id for e in eng.tick(T0 + 1200)] == ["W1"]
    # every device silent now: no silence to come, the check idles; W2 speaking again ends its silence
    # and must bring the check back for its next one (T0 + 1660)
    feed(eng, [reading(w, "W2", 2, T0 + 1000)])
    assert eng.tick(T0 + 1600) == []
    assert [e.device_id for e in eng.tick(T0 + 1700)] == ["W2"]


def test_warning_escalates_to_critical_when_it_persists() -> None:
    eng = DetectionEngine()
    m = K.MANHOLE
    ev = feed(eng, [reading(m, "MH1", 1, T0, h2s_ppm=12.0)])
    assert ev[0].severity is Severity.MEDIUM
    assert eng.tick(T0 + 1000) == []
    up = eng.tick(T0 + 1800)
    assert [(e.alert_id, e.phase, e.severity) for e in up] == [
        (ev[0].alert_id, AlertPhase.UPDATED, Severity.HIGH)
    ]
    assert eng.open_alerts()[0].phase is AlertPhase.UPDATED


def test_per_device_profile_override() -> None:
    profiles = ProfileSet(overrides={"MH-steep": {"tilt_threshold_deg": 20.0, "tilt_clear_deg": 15.0}})
    eng = DetectionEngine(profiles)
    m = K.MANHOLE
    tilt = dict(tilt_deg=16.0, tilt_ref_deg=2.0)
    ev = feed(
        eng, [reading(m, d, s, T0 + s, "alarm", **tilt) for s in (1, 2) for d in ("MH-steep", "MH-flat")]
    )
    assert {e.device_id for e in of(ev, EventType.COVER_DISPLACED)} == {"MH-flat"}


def test_bad_profiles_fail_loudly_with_the_key() -> None:
    with pytest.raises(ProfileError, match="tilt_treshold_deg"):
        ProfileSet(overrides={"MH1": {"tilt_treshold_deg": 5}})
    with pytest.raises(ProfileError, match="tilt_threshold_deg"):
        ProfileSet(overrides={"MH1": {"tilt_threshold_deg": -5}})
    with pytest.raises(ProfileError, match="spaceship"):
        ProfileSet.from_mapping({"spaceship": {}})
    ps = ProfileSet.from_mapping({"wristband": {"hr_high_bpm": 110}, "devices": {"W1": {"hr_low_bpm": 38}}})
    w1 = ps.profile(K.WRISTBAND, "W1")
    assert isinstance(w1, WristbandProfile)
    assert w1.hr_low_bpm == 38
    assert w1.hr_high_bpm == 110


def test_life_safety_alerts_are_raised_on_the_frame_that_shows_them() -> None:
    eng = DetectionEngine()
    s, m, w = K.SMOKE_ALARM, K.MANHOLE, K.WRISTBAND
    cases = [
        (reading(s, "S1", 1, T0, "heat_alarm", temperature_c=70.0), EventType.FIRE),
        (reading(s, "S2", 1, T0, "co_alarm", co_ppm=150.0), EventType.CO),
        (reading(m, "M1", 1, T0, "cover_open", "alarm", tilt_deg=120.0), EventType.COVER_OPEN),
        (reading(w, "W1", 1, T0, "sos"), EventType.SOS),
        (
            reading(w, "W2", 2, T0 + 30, "fall", stillness_s=30.0, orientation_change_deg=90.0, steps=0),
            EventType.FALL,
        ),
    ]
    impact = reading(
        w, "W2", 1, T0, "fall", accel_peak_g=5.0, stillness_s=1, orientation_change_deg=90, steps=0
    )
    assert eng.process(batch([impact]), now=T0) == []  # the impact alone: is the wearer still down?
    for r, et in cases:
        ev = eng.process(batch([r]), now=r.time + 0.01)
        assert et in LIFE_SAFETY
        assert [(e.event_type, e.severity, e.phase) for e in ev] == [(et, Severity.HIGH, AlertPhase.RAISED)]
        assert ev[0].time - ev[0].frame_time < 1.0


# -- properties ------------------------------------------------------------------------------------------

_FLAG_SETS = [(), ("sos",), ("fall",), ("low_battery",), ("sos", "fall")]


@st.composite
def _streams(draw: st.DrawFn) -> list[Reading]:
    """Random wristband streams: a few devices, random flags/values, increasing seq and time per device."""
    n_dev = draw(st.integers(1, 4))
    out = []
    for d in range(n_dev):
        t = T0
        for seq in range(draw(st.integers(1, 8))):
            t += draw(st.sampled_from([1.0, 30.0, 300.0, 900.0]))
            out.append(
                reading(
                    K.WRISTBAND,
                    f"W{d}",
                    seq,
                    t,
                    *draw(st.sampled_from(_FLAG_SETS)),
                    accel_peak_g=draw(st.sampled_from([1.0, 4.0])),
                    stillness_s=draw(st.sampled_from([0.0, 45.0])),
                    orientation_change_deg=90.0,
                    steps=draw(st.sampled_from([0.0, 200.0])),
                    heart_rate_bpm=draw(st.sampled_from([0.0, 70.0, 140.0])),
                )
            )
    return out


@settings(max_examples=25, deadline=None)
@given(stream=_streams(), cuts=st.lists(st.integers(0, 40), max_size=4), seed=st.integers(0, 2**16))
def test_any_batching_and_any_replay_give_the_same_steps(
    stream: list[Reading], cuts: list[int], seed: int
) -> None:
    """However frames are cut into batches and shuffled inside them, and whatever is replayed after,
    the engine emits exactly the steps of frame-by-frame processing."""
    key = lambda e: (e.alert_id, e.phase, e.severity, e.frame_time)  # noqa: E731
    ref = sorted(map(key, feed(DetectionEngine(), sorted(stream, key=lambda r: r.time))))
    eng = DetectionEngine()
    ordered = sorted(stream, key=lambda r: r.time)
    bounds = sorted({min(c, len(ordered)) for c in cuts} | {0, len(ordered)})
    rng = np.random.default_rng(seed)
    got = []
    for lo, hi in itertools.pairwise(bounds):
        part = [ordered[i] for i in rng.permutation(range(lo, hi))]
        if part:
            got += eng.process(batch(part), now=part[-1].time)
    assert sorted(map(key, got)) == ref
    assert eng.process(batch(stream), now=T0 + 1e5) == []  # a full replay adds nothing


def test_override_for_another_kind_is_ignored_with_defaults_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wristband id listed with manhole thresholds: the band keeps working on defaults, and it is logged."""
    eng = DetectionEngine(ProfileSet(overrides={"W1": {"tilt_threshold_deg": 5.0}}))
    ev = feed(eng, [reading(K.WRISTBAND, "W1", 1, T0, "sos")])
    assert [e.event_type for e in ev] == [EventType.SOS]
    assert "W1" in caplog.text and "default thresholds" in caplog.text


def test_snapshot_of_an_empty_engine_and_unknown_version() -> None:
    eng = DetectionEngine.restore(DetectionEngine().snapshot())
    assert eng.devices == 0 and eng.open_alerts() == []
    import io
    import json as _json

    buf = io.BytesIO()
    np.savez(buf, header=np.array(_json.dumps({"version": 99, "grace_period": 4, "kinds": {}})))
    with pytest.raises(SnapshotError, match="version 99"):
        DetectionEngine.restore(buf.getvalue())


def test_ticks_between_readings_never_lose_a_pending_or_new_condition() -> None:
    """tick() lets quiet episode tables skip work; a pending 'for 10 minutes' condition must survive it."""
    eng = DetectionEngine()
    w = K.WRISTBAND
    assert eng.tick(T0) == []
    feed(eng, [reading(w, "W1", 0, T0, heart_rate_bpm=140, steps=0)])  # pending, not raised
    assert eng.tick(T0 + 100) == []
    assert eng.tick(T0 + 200) == []
    ev = feed(eng, [reading(w, "W1", 2, T0 + 300, heart_rate_bpm=140, steps=0)])
    assert [(e.event_type, e.episode_ms) for e in ev] == [(EventType.HEART_RATE_HIGH, int(T0 * 1000))]
    assert eng.tick(T0 + 650) == []
    assert [e.event_type for e in feed(eng, [reading(w, "W2", 0, T0 + 700, "sos")])] == [EventType.SOS]


def test_confirm_after_raises_from_tick_survives_a_restart_and_is_cancelled_by_a_contradiction() -> None:
    """A tilted frame from a cover on a busy road (no ``tilt_settled``, vibration since the last uplink):
    raised by ``tick`` 45 s later unless the return to normal arrives first, also across a restart."""
    m = K.MANHOLE
    eng = DetectionEngine()
    feed(eng, [reading(m, "MH1", 1, T0, "alarm", tilt_deg=20.0, vibration_g=1.2)])
    feed(eng, [reading(m, "MH2", 1, T0, "alarm", tilt_deg=20.0, vibration_g=1.2)])
    assert eng.tick(T0 + 30) == []
    feed(eng, [reading(m, "MH2", 2, T0 + 40, tilt_deg=2.0, vibration_g=1.2)])  # MH2: a truck, back to normal
    eng = DetectionEngine.restore(eng.snapshot())
    ev = eng.tick(T0 + 46)
    assert [(e.device_id, e.event_type, e.phase, e.episode_ms) for e in ev] == [
        ("MH1", EventType.COVER_DISPLACED, AlertPhase.RAISED, int(T0 * 1000))
    ]
    assert eng.tick(T0 + 100) == []
