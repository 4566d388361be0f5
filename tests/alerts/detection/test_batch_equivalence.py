"""The batch engine (segmented scans, one rule pass per batch) equals the engine it replaced, step for step.

Issue 12 rewrote :meth:`DetectionEngine.process` from "rank by rank" (the k-th frame of every device at
once, every rule per rank) to one pass per batch with per-device recurrences as scans over segments.
Detection is life-safety: the rewrite must change nothing. ``tests/alerts/detection/reference`` is the
engine as it was; these properties feed both the same random multi-kind, multi-device streams - bursts
of one device in alarm, duplicates and replays, equal times, devices out of order inside a batch,
per-device thresholds, neighbour groups - cut into random batches with ticks between them, and demand
the same alert steps in the same order, the same counters and snapshots the other can resume from.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.contract import AlertEvent
from alerts.detection.detectors import EWMAZScore, Flatline, FractionalDose, RateOfRise
from alerts.detection.engine import DetectionEngine
from alerts.detection.kindstate import valid_ids
from alerts.detection.profiles import ProfileSet
from alerts.detection.segments import Segments
from firmware_bridge.kernel.records import DeviceKind, Reading
from tests.alerts.detection.detect_helpers import T0, batch, reading
from tests.alerts.detection.reference.engine import DetectionEngine as ReferenceEngine
from tests.alerts.detection.reference.profiles import ProfileSet as ReferenceProfiles

K = DeviceKind
# a few values per channel either side of the thresholds that matter, so random draws cross them
VALUES: dict[DeviceKind, dict[str, list[float]]] = {
    K.MANHOLE: dict(
        tilt_deg=[2.0, 2.0, 15.0, 95.0],
        vibration_g=[0.02, 0.5],
        water_distance_cm=[200.0, 25.0, 10.0],
        ch4_pct_lel=[1.0, 1.0, 30.0, 60.0],
        h2s_ppm=[0.5, 12.0, 25.0],
        o2_pct_vol=[20.8, 20.8, 18.0, 0.0],
        temperature_c=[15.0, 15.0, 15.3],
    ),
    K.SMOKE_ALARM: dict(
        smoke_db_m=[0.01, 0.01, 0.2, 1.5],
        temperature_c=[22.0, 22.0, 35.0, 60.0],
        co_ppm=[1.0, 1.0, 30.0, 300.0],
        humidity_pct=[45.0, 45.0, 90.0],
    ),
    K.WRISTBAND: dict(
        heart_rate_bpm=[70.0, 70.0, 0.0, 140.0, 30.0],
        spo2_pct=[97.0, 97.0, 88.0, 80.0],
        accel_peak_g=[1.0, 1.0, 4.0],
        stillness_s=[0.0, 10.0, 45.0, 400.0],
        orientation_change_deg=[10.0, 90.0],
        steps=[0.0, 100.0],
        lat=[22.54, 22.54, 22.6],
    ),
}
FLAGS: dict[DeviceKind, list[tuple[str, ...]]] = {
    K.MANHOLE: [(), (), ("alarm",), ("cover_open", "alarm"), ("tilt_settled", "alarm"), ("tamper",),
                ("sensor_fault",), ("low_battery",)],
    K.SMOKE_ALARM: [(), (), ("smoke_alarm",), ("smoke_alarm", "heat_alarm"), ("co_alarm",), ("test",),
                    ("smoke_alarm", "hush"), ("hush",), ("fault",), ("contamination",), ("tamper",)],
    K.WRISTBAND: [(), (), ("sos",), ("fall",), ("charging",), ("rest_broken",), ("sos", "fall"), ("ok",),
                  ("ok", "fall"), ("ok", "sos")],
}  # fmt: skip
# firmware versions: the wristband's ok bit means "I'm OK" from 1.7 on and is a reserved bit before
FW = {K.MANHOLE: [0x0102], K.SMOKE_ALARM: [0x0201], K.WRISTBAND: [0x0105, 0x0107, 0x0107]}
STEPS = [0.0, 1.0, 20.0, 60.0, 300.0, 900.0, 3600.0]
# per-device thresholds (a ParamView array) and a neighbour group (cross-device state)
OVERRIDES = {
    "S0": {"temp_rise_c": 4.0, "neighbour_group": 7.0},
    "S1": {"neighbour_group": 7.0, "smoke_bit_immediate": True},
    "M1": {"tilt_threshold_deg": 5.0},
    "W1": {"home_lat": 22.54, "home_lon": 114.05},
    # the geofence's home evidence and learned home, per device (the reference profiles have them too)
    "W0": {"geofence_indoor_s": 300.0, "geofence_approach_factor": 30.0, "geofence_approach_m": 0.0},
    "W2": {"home_learn_warmup_fixes": 0.0, "home_learn_step_m": 5.0, "geofence_radius_m": 200.0},
}


@st.composite
def streams(
    draw: st.DrawFn, max_devices: int = 3, max_frames: int = 10, same_time: bool = True
) -> list[Reading]:
    """Frames of a few devices of every kind, in time order overall, with duplicates and replays (and,
    with ``same_time``, frames of one device at the same time)."""
    out: list[Reading] = []
    for kind, prefix in ((K.MANHOLE, "M"), (K.SMOKE_ALARM, "S"), (K.WRISTBAND, "W")):
        for d in range(draw(st.integers(0, max_devices))):
            t, seq = T0 + draw(st.sampled_from([0.0, 7.0, 600.0])), draw(st.integers(0, 65535))
            for _ in range(draw(st.integers(1, max_frames))):
                t += draw(st.sampled_from(STEPS if same_time else STEPS[1:]))
                seq = (seq + draw(st.sampled_from([1, 1, 1, 0, -3, 40]))) & 0xFFFF  # dup, replay, reboot
                values: dict[str, Any] = {ch: draw(st.sampled_from(vs)) for ch, vs in VALUES[kind].items()}
                flags = draw(st.sampled_from(FLAGS[kind]))
                battery = draw(st.sampled_from([80.0, 80.0, 10.0]))
                r = reading(kind, f"{prefix}{d}", seq, t, *flags, battery=battery, **values)
                out.append(dataclasses.replace(r, fw_version=draw(st.sampled_from(FW[kind]))))
    out.sort(key=lambda r: r.time)
    return out


def _run(eng: Any, stream: list[Reading], cuts: list[int], seed: int, ticks: bool) -> list[dict[str, Any]]:
    """Feed ``stream`` cut at ``cuts``, each batch shuffled and split by kind; tick after each batch."""
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    rng = np.random.default_rng(seed)
    out: list[AlertEvent] = []
    now = T0
    for lo, hi in itertools.pairwise(bounds):
        part = [stream[i] for i in rng.permutation(range(lo, hi))]
        if not part:
            continue
        now = max(r.time for r in part)
        for kind in K:
            mine = [r for r in part if r.kind is kind]
            if mine:
                out += eng.process(batch(mine), now=now)
        if ticks:
            out += eng.tick(now)
    if ticks:
        out += eng.tick(now + 86400.0)  # silence, reminders, escalations, confirmation deadlines
    return [e.model_dump() for e in out]


def _assert_same_state(a: Any, b: Any) -> None:
    """Equal snapshots: the same header and every column equal (NaN where NaN), compared before they are
    written (reading ~900 ``.npz`` members back cost ~0.5 s an example; the written form is tested by
    ``test_snapshots_of_either_engine_resume_in_the_other``)."""
    za, zb = a.snapshot_arrays(), b.snapshot_arrays()
    assert sorted(za) == sorted(zb)
    assert json.loads(str(za["header"])) == json.loads(str(zb["header"]))
    for name in za:
        np.testing.assert_array_equal(za[name], zb[name], err_msg=name)


_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(
    stream=streams(),
    cuts=st.lists(st.integers(0, 90), max_size=6),
    seed=st.integers(0, 2**16),
    overrides=st.booleans(),
)
def test_batch_engine_equals_the_rank_by_rank_engine(
    stream: list[Reading], cuts: list[int], seed: int, overrides: bool
) -> None:
    """Same steps in the same order, same counters and the same state, whatever the batches."""
    o = OVERRIDES if overrides else {}
    new, ref = DetectionEngine(ProfileSet(overrides=o)), ReferenceEngine(ReferenceProfiles(overrides=o))
    assert _run(new, stream, cuts, seed, True) == _run(ref, stream, cuts, seed, True)
    assert new.counters.as_dict() == ref.counters.as_dict()
    _assert_same_state(new, ref)


@st.composite
def ok_streams(draw: st.DrawFn) -> list[Reading]:
    """Wristbands that fall and lie still, with "I'm OK" presses (fw 1.5 or 1.7) before, during and after
    the paging, SOS presses and a few steps: the ok paths (cancel, clear, fall_ok) in random batches."""
    out: list[Reading] = []
    for d in range(draw(st.integers(1, 4))):
        fw = draw(st.sampled_from([0x0105, 0x0107]))
        t0 = T0 + draw(st.sampled_from([0.0, 5.0]))
        frames: list[tuple[float, tuple[str, ...], dict[str, float]]] = [
            (0.0, ("fall",), dict(accel_peak_g=4.0, stillness_s=2.0, orientation_change_deg=80.0, steps=0.0)),
            (40.0, (), dict(stillness_s=40.0, steps=0.0)),
        ]
        for k in range(draw(st.integers(2, 8))):
            dt = 60.0 + 60.0 * k
            flags = draw(st.sampled_from([(), (), ("ok",), ("sos",), ("ok", "sos")]))
            ch = dict(
                stillness_s=draw(st.sampled_from([dt, dt, 3.0])),
                steps=draw(st.sampled_from([0.0, 0.0, 1.0, 5.0])),
            )
            frames.append((dt, flags, ch))
        for seq, (dt, flags, ch) in enumerate(frames, start=1):
            r = reading(K.WRISTBAND, f"W{d}", seq, t0 + dt, *flags, **ch)
            out.append(dataclasses.replace(r, fw_version=fw))
    out.sort(key=lambda r: r.time)
    return out


@_SETTINGS
@given(stream=ok_streams(), cuts=st.lists(st.integers(0, 40), max_size=5), seed=st.integers(0, 2**16))
def test_ok_presses_batch_engine_equals_the_rank_by_rank_engine(
    stream: list[Reading], cuts: list[int], seed: int
) -> None:
    """The "I'm OK" bit in both engines: same steps, counters and state."""
    new, ref = DetectionEngine(), ReferenceEngine()
    assert _run(new, stream, cuts, seed, True) == _run(ref, stream, cuts, seed, True)
    assert new.counters.as_dict() == ref.counters.as_dict()
    _assert_same_state(new, ref)


def test_both_engines_mark_an_ok_key_clear_and_only_that() -> None:
    """The property above compares messages too; this pins that they hold the mark at all: a fall paged
    and cleared by an "I'm OK" press (fw 1.7) ends its cleared message with " [ok_key]" in both engines,
    one cleared by walking (fw 1.5, where bit 8 is reserved) does not."""
    stream: list[Reading] = []
    for dev, fw, flags, ch in (
        ("W0", 0x0107, ("ok",), dict(stillness_s=5.0, steps=0.0)),
        ("W1", 0x0105, ("ok",), dict(stillness_s=0.0, steps=40.0)),
    ):
        frames: list[tuple[float, tuple[str, ...], dict[str, float]]] = [
            (0.0, ("fall",), dict(accel_peak_g=4.0, stillness_s=2.0, orientation_change_deg=80.0, steps=0.0)),
            (40.0, (), dict(stillness_s=40.0, steps=0.0)),
            (180.0, flags, ch),
        ]
        for seq, (dt, fl, c) in enumerate(frames, start=1):
            stream.append(
                dataclasses.replace(reading(K.WRISTBAND, dev, seq, T0 + dt, *fl, **c), fw_version=fw)
            )
    stream.sort(key=lambda r: r.time)
    for eng in (DetectionEngine(), ReferenceEngine()):
        cleared = [e for e in _run(eng, stream, [], 0, True) if e["phase"] == "cleared"]
        assert {e["device_id"]: e["message"].endswith(" [ok_key]") for e in cleared} == {
            "W0": True,
            "W1": False,
        }


@st.composite
def home_streams(draw: st.DrawFn) -> list[Reading]:
    """Wristbands learning their home from walks, home, still fixes outside, the charger (also outside:
    a power bank) and night fixes: the learned home's re-seeding (``gf_seed``) in random batches."""
    out: list[Reading] = []
    m_lat = 1.0 / 111_195.0
    for d in range(draw(st.integers(1, 3))):
        t = T0 + draw(st.sampled_from([0.0, 13 * 3600.0]))  # 08:00 or 21:00 in China
        for seq in range(draw(st.integers(4, 14))):
            m = draw(st.sampled_from([0.0, 150.0, -280.0, -600.0, -600.0]))
            flags = draw(st.sampled_from([(), (), ("charging",)]))
            ch = dict(lat=22.54 + m * m_lat, lon=114.05, steps=draw(st.sampled_from([0.0, 10.0, 300.0])))
            out.append(reading(K.WRISTBAND, f"W{d}", seq, t, *flags, **ch))
            t += draw(st.sampled_from([300.0, 300.0, 3600.0]))
    out.sort(key=lambda r: r.time)
    return out


@_SETTINGS
@given(stream=home_streams(), cuts=st.lists(st.integers(0, 40), max_size=5), seed=st.integers(0, 2**16))
def test_learned_home_batch_engine_equals_the_rank_by_rank_engine(
    stream: list[Reading], cuts: list[int], seed: int
) -> None:
    """The learned home's seed in both engines: same steps, counters and state."""
    new, ref = DetectionEngine(), ReferenceEngine()
    assert _run(new, stream, cuts, seed, True) == _run(ref, stream, cuts, seed, True)
    assert new.counters.as_dict() == ref.counters.as_dict()
    _assert_same_state(new, ref)


@_SETTINGS
@given(stream=streams(), cut=st.integers(0, 90), seed=st.integers(0, 2**16))
def test_snapshots_of_either_engine_resume_in_the_other(stream: list[Reading], cut: int, seed: int) -> None:
    """The snapshot format did not change: a gateway or cloud worker upgraded mid-episode resumes."""
    cut = min(cut, len(stream))
    first, rest = stream[:cut], stream[cut:]
    new, ref = DetectionEngine(), ReferenceEngine()
    _run(new, first, [], seed, True)
    _run(ref, first, [], seed, True)
    new_from_ref = DetectionEngine.restore(ref.snapshot())
    ref_from_new = ReferenceEngine.restore(new.snapshot())
    expected = _run(ref, rest, [], seed, True)
    assert _run(new_from_ref, rest, [], seed, True) == expected
    assert _run(ref_from_new, rest, [], seed, True) == expected


@_SETTINGS
@given(
    stream=streams(max_devices=4, max_frames=14, same_time=False),
    cuts=st.lists(st.integers(0, 150), max_size=8),
    seed=st.integers(0, 2**16),
)
def test_any_batch_cut_gives_the_steps_of_frame_by_frame(
    stream: list[Reading], cuts: list[int], seed: int
) -> None:
    """One big batch, many small ones, one frame at a time: the same steps (without ticks between
    batches, which decide by the clock, and without neighbour groups, which compare devices). Two
    frames of one device at the same time are excluded: which came first is the arrival order frame by
    frame but the seq order inside a batch, in this engine as in the one before it."""

    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        return (e["alert_id"], e["phase"], e["severity"], e["frame_time"], e["value"], e["episode_ms"])

    one_by_one = sorted(map(key, _run(DetectionEngine(), stream, list(range(len(stream))), seed, False)))
    assert sorted(map(key, _run(DetectionEngine(), stream, [], seed, False))) == one_by_one
    assert sorted(map(key, _run(DetectionEngine(), stream, cuts, seed, False))) == one_by_one


@given(
    st.lists(
        st.one_of(
            st.text(alphabet="abcXYZ019_.:-", min_size=0, max_size=70),
            st.text(min_size=0, max_size=8),  # anything: spaces, newlines, NULs, non-ASCII
        ),
        min_size=1,
        max_size=20,
    )
)
def test_vectorised_id_check_equals_the_identifier_pattern(ids: list[str]) -> None:
    import re

    pattern = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}\Z")
    arr = np.asarray(ids, dtype=np.str_)
    # numpy drops trailing NULs when it stores a string: judge the id as the array holds it
    assert valid_ids(arr).tolist() == [bool(pattern.match(s)) for s in arr.tolist()]


def _detectors() -> list[Any]:
    return [
        Flatline(tolerance=0.0, grace_period=0),
        Flatline(tolerance=0.5, grace_period=2),
        RateOfRise(min_dt=20.0, max_dt=900.0, min_delta=2.0),
        FractionalDose(max_dt=600.0),
        EWMAZScore(alpha=0.2, min_std=1.0, grace_period=2),
    ]


@settings(max_examples=80, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 3),  # device row
                st.sampled_from([0.0, 20.0, 45.0, 300.0, 1000.0]),  # time step
                st.sampled_from([20.0, 20.0, 20.0, 23.0, 50.0, 120.0, 400.0, float("nan")]),
            ),
            max_size=12,
        ),
        max_size=5,
    )
)
def test_segment_scans_equal_reading_by_reading(batches: list[list[tuple[int, float, float]]]) -> None:
    """Every detector's ``score_learn`` over a batch grouped by device equals ``score_many`` then
    ``learn_many`` one reading at a time, and leaves the same state, batch after batch."""
    clock = [T0] * 4
    pairs = list(zip(_detectors(), _detectors(), strict=True))
    for pair in pairs:
        for d in pair:
            d.resize(4)  # the same capacity: states compare row for row
    for b in batches:
        rows, times, xs = [], [], []
        for row, step, value in b:
            clock[row] += step
            rows.append(row)
            times.append(clock[row])
            xs.append(value)
        order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")  # grouped, time order kept
        r = np.asarray(rows, dtype=np.int64)[order]
        t = np.asarray(times)[order]
        x = np.asarray(xs)[order]
        for scan, one in pairs:
            got = scan.score_learn(Segments(r), x, t)
            want = []
            for i in range(len(r)):
                want.append(float(one.score_many(r[i : i + 1], x[i : i + 1], t[i : i + 1])[0]))
                one.learn_many(r[i : i + 1], x[i : i + 1], t[i : i + 1])
            np.testing.assert_array_equal(
                got, np.asarray(want, dtype=np.float64), err_msg=type(scan).__name__
            )
            for name, arr in one.arrays.items():
                np.testing.assert_array_equal(scan.arrays[name][:4], arr[:4], err_msg=name)


# a cover's uplinks a truck's rock apart and further: quiet and loud vibration, tilted alarm frames and
# heartbeats, the debounce bit, an unknown vibration; two covers with their own quiet window / truck level
MANHOLE_STEPS = [0.1, 0.1, 1.0, 4.9, 5.0, 6.0, 30.0, 50.0, 43200.0]
MANHOLE_OVERRIDES = {"M1": {"quiet_window_s": 30.0}, "M2": {"truck_vibration_g": 1.0}}


@st.composite
def truck_streams(draw: st.DrawFn) -> list[Reading]:
    """Covers on a busy road: trucks' alarm uplinks, heartbeats falling due 0.1 s after them, returns to
    normal, covers left askew - the "no vehicle" evidence (quiet run since the last loud uplink)."""
    out: list[Reading] = []
    for d in range(draw(st.integers(1, 3))):
        t, seq = T0 + draw(st.sampled_from([0.0, 0.1, 3.0])), draw(st.integers(0, 65535))
        for _ in range(draw(st.integers(2, 12))):
            t += draw(st.sampled_from(MANHOLE_STEPS))
            seq = (seq + draw(st.sampled_from([1, 1, 1, 1, 0]))) & 0xFFFF  # and a duplicate now and then
            tilt = draw(st.sampled_from([2.0, 14.8, 14.8, 25.0]))
            vib = draw(st.sampled_from([0.02, 0.02, 0.5, 1.9, float("nan")]))
            flags = draw(
                st.sampled_from(
                    [(), ("alarm",), ("alarm",), ("alarm", "heartbeat"), ("alarm", "tilt_settled")]
                )
            )
            out.append(reading(K.MANHOLE, f"M{d}", seq, t, *flags, tilt_deg=tilt, vibration_g=vib))
    out.sort(key=lambda r: r.time)
    return out


@_SETTINGS
@given(
    stream=truck_streams(),
    cuts=st.lists(st.integers(0, 36), max_size=6),
    seed=st.integers(0, 2**16),
    overrides=st.booleans(),
)
def test_truck_and_heartbeat_streams_batch_engine_equals_the_rank_by_rank_engine(
    stream: list[Reading], cuts: list[int], seed: int, overrides: bool
) -> None:
    """COVER_DISPLACED's quiet-window evidence in both engines, whatever the batches: same steps and state."""
    o = MANHOLE_OVERRIDES if overrides else {}
    new, ref = DetectionEngine(ProfileSet(overrides=o)), ReferenceEngine(ReferenceProfiles(overrides=o))
    assert _run(new, stream, cuts, seed, True) == _run(ref, stream, cuts, seed, True)
    assert new.counters.as_dict() == ref.counters.as_dict()
    _assert_same_state(new, ref)
