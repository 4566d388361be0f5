"""Walking, not a pedometer's false steps: what clears FALL / SOS / INACTIVITY (docs/detection.md,
"Walking, not a pedometer's false steps"), from frames a vendor would send (``vendor/datasheet.py``,
struct-encoded from docs/payloads.md, not our simulators) through batch decode + engine + ticks, at an
uplink every 1 s, 10 s, 60 s and the datasheet's own cadence (a 5-min summary, event uplinks on a fall).

What the payload gives (docs/payloads.md, wristband): ``steps`` since the previous uplink, the window's
peak acceleration ``accel_peak_g``, and the uplink times - no posture, no activity class, no cadence. A
wrist pedometer counts arm movements too: a wearer on the floor waving or struggling adds a few steps, a
band shaken adds many. Before this rule 3 steps in one uplink, or within 30 s, read as walking.
"""

from __future__ import annotations

import numpy as np
import pytest

from alerts.contract import AlertEvent
from alerts.detection.wristband import WALK_STEPS
from firmware_bridge.kernel.events import AlertPhase, EventType
from tests.alerts.detection.test_wristband_recovery import CADENCES, FALL, IDLE, SOS, T0, Band, feed, of


def _wave(band: Band, a: int, b: int, every: int = 120) -> None:
    """Lying on the floor, moving an arm (waving for help, trying to push up) every ``every`` s from ``a``
    to ``b``: 3 s of motion (1.6 g, wrist turned 30 deg) that the pedometer counts as 3 steps (2, then 1)."""
    for k, s in enumerate(range(a, b, every)):
        band.motion(s, s + 3, 1.6, 30.0 if k % 2 == 0 else -30.0)
        band.steps[band.i(s)] += 2.0
        band.steps[band.i(s + 2)] += 1.0


def _up_and_walk(band: Band, s: int, walk_s: int = 20) -> None:
    """Gets up at ``s`` (3 s, wrist turned back) and walks ``walk_s`` seconds (~1.6 steps/s)."""
    band.motion(s, s + 3, 1.8, -80.0)
    band.walk(s + 3, s + 3 + walk_s)


def _raised_once_cleared_in(alerts: list[AlertEvent], event: EventType, lo: float, hi: float) -> None:
    """``event`` raised once and cleared once, the clear at ``lo`` .. ``hi`` (epoch seconds)."""
    assert len(of(alerts, event, AlertPhase.RAISED)) == 1
    cleared = of(alerts, event, AlertPhase.CLEARED)
    assert len(cleared) == 1, [(a.time - T0, a.phase) for a in alerts if a.event_type is event]
    assert lo <= cleared[0].time <= hi


def _shake(band: Band, s: int, peak_g: float) -> None:
    """The arm shaken for 12 s from ``s``: ``peak_g`` peaks, the pedometer counts 5 steps a second."""
    ia, ib = band.i(s), band.i(s + 12)
    band.moving[ia:ib] = True
    band.accel[ia:ib] = peak_g
    band.steps[ia:ib] = 5.0


# the first uplink after a walk that starts at ``s``: the datasheet's summaries are at 7 s past every
# 5 minutes of the band's clock (test_wristband_recovery.Band); a walk of 20 s shows in at most two
_LATEST = {"1s": 15.0, "10s": 30.0, "60s": 90.0, "event": 610.0}


@pytest.mark.parametrize("cadence", CADENCES)
def test_waving_on_the_floor_does_not_clear_a_fall_and_walking_then_does(cadence: str) -> None:
    """Fell at T0 (band flag 2 min), then on the floor for half an hour moving an arm every 2 min, each
    time 3 false steps within 3 s: the fall stays open (before: cleared at the first waving uplink). At
    35 min the wearer gets up and walks 20 s: cleared by the uplinks that carry the walk."""
    band = Band(2400 + 900)
    band.fall(0, flag_s=120)
    _wave(band, 310, 2100)
    _up_and_walk(band, 2100)
    alerts = feed(band.frames(f"W-WAVE-{cadence}", cadence), T0 + 3300)
    _raised_once_cleared_in(alerts, FALL, T0 + 2103, T0 + 2103 + _LATEST[cadence])


@pytest.mark.parametrize("cadence", CADENCES)
def test_waving_after_an_sos_does_not_clear_it(cadence: str) -> None:
    """Pressed SOS at T0 and stayed on the floor, moving an arm every 2 min for 30 min (3 false steps each
    time): the SOS stays open until the wearer gets up and walks."""
    band = Band(2400 + 900)
    band.motion(-1, 0, 1.3, 5.0)
    band.sos = [0]
    _wave(band, 130, 2100)
    _up_and_walk(band, 2100)
    alerts = feed(band.frames(f"W-WSOS-{cadence}", cadence), T0 + 3300)
    _raised_once_cleared_in(alerts, SOS, T0 + 2103, T0 + 2103 + _LATEST[cadence])


@pytest.mark.parametrize("cadence", ["60s", "event"])
def test_waving_during_daytime_inactivity_does_not_clear_it(cadence: str) -> None:
    """Still from 16:00 (an unseen fall): INACTIVITY at 2 h; then an arm moves every 2 min for 30 min with
    3 false steps each time: still open; the wearer walks at 2 h 50 min: cleared."""
    band = Band(10800)
    band.motion(-1, 0, 1.3, 10.0)
    _wave(band, 7510, 9300)
    _up_and_walk(band, 10200)
    alerts = feed(band.frames(f"W-WIDLE-{cadence}", cadence), T0 + 10800)
    _raised_once_cleared_in(alerts, IDLE, T0 + 10203, T0 + 10203 + _LATEST[cadence])


@pytest.mark.parametrize("cadence", CADENCES)
def test_a_band_shaken_on_the_floor_does_not_clear(cadence: str) -> None:
    """Fell at T0; at 5 min the wearer (still on the floor) shakes the arm for 12 s: 3 g peaks, the
    pedometer counts 5 steps a second. Not walking: the fall stays open until the walk at 20 min."""
    band = Band(1200 + 900)
    band.fall(0, flag_s=120)
    _shake(band, 300, 3.0)
    _up_and_walk(band, 1200)
    alerts = feed(band.frames(f"W-SHAKE-{cadence}", cadence), T0 + 2100)
    _raised_once_cleared_in(alerts, FALL, T0 + 1203, T0 + 1203 + _LATEST[cadence])


def test_a_band_shaken_gently_at_one_second_does_not_clear() -> None:
    """The same at an uplink every second, shaken without impact-level peaks (2 g) but at 5 steps a
    second for 12 s: faster than anyone walks, so not walking either (the bout's rate)."""
    band = Band(1200 + 900)
    band.fall(0, flag_s=120)
    _shake(band, 300, 2.0)
    _up_and_walk(band, 1200)
    alerts = feed(band.frames("W-SHAKE2-1s", "1s"), T0 + 2100)
    cleared = of(alerts, FALL, AlertPhase.CLEARED)
    assert len(cleared) == 1 and T0 + 1203 <= cleared[0].time <= T0 + 1203 + _LATEST["1s"]


@pytest.mark.parametrize("cadence", CADENCES)
@pytest.mark.parametrize("debounce", [0, 7], ids=["steady", "debounced"])
def test_got_up_and_walked_a_few_metres_clears(cadence: str, debounce: int) -> None:
    """Lay 5 min, got up and walked 12 s to a chair (~19 steps), sat still: cleared at every cadence. With
    ``debounce`` the pedometer holds the first 7 steps until it is sure of a walk and then counts them at
    once (as wrist pedometers do), which at a 1 s uplink is a lump of 7-9 steps in one second."""
    band = Band(1800)
    band.fall(0, flag_s=None)
    _up_and_walk(band, 320, walk_s=12)
    if debounce:
        ia = band.i(323)
        held = np.cumsum(band.steps[ia : ia + 10])
        k = int(np.searchsorted(held, debounce))  # the second the 7th step is counted
        band.steps[ia + k] = held[k]
        band.steps[ia : ia + k] = 0.0
    assert band.steps[band.i(323) : band.i(335)].sum() >= WALK_STEPS + 5
    alerts = feed(band.frames(f"W-CHAIR-{cadence}-{debounce}", cadence), T0 + 1800)
    latest = {"1s": 2.0, "10s": 10.0, "60s": 60.0, "event": 300.0}[cadence]
    _raised_once_cleared_in(alerts, FALL, T0 + 323, T0 + 335 + latest)


@pytest.mark.parametrize("seed", range(16))
def test_walking_evidence_is_the_same_in_batches_as_in_the_reference(seed: int) -> None:
    """Bands paged as down (an SOS press, a fall) then sending runs of steps at every cadence the rule
    distinguishes - windows of 0.5-300 s, 0-25 steps, peaks below and above an impact's - cut into random
    batches: the batch engine's steps and state equal the frozen reference's, whose walking rule is
    written reading by reading (``reference/wristband.py::_walked``). Drawn so that pauses around
    ``WALK_PAUSE_S``, rates around ``WALK_MAX_SPS`` and totals around ``WALK_STEPS`` plus the noise allowance
    all occur."""
    from alerts.detection.engine import DetectionEngine
    from firmware_bridge.kernel.records import DeviceKind
    from tests.alerts.detection.detect_helpers import reading
    from tests.alerts.detection.reference.engine import DetectionEngine as ReferenceEngine
    from tests.alerts.detection.test_batch_equivalence import _assert_same_state, _run

    rng = np.random.default_rng(1000 + seed)
    stream = []
    for d in range(3):
        t = T0 + float(rng.choice([0.0, 0.5]))
        seq = 0
        for _ in range(int(rng.integers(2, 5))):  # a few episodes per band
            stream.append(reading(DeviceKind.WRISTBAND, f"W{d}", seq, t, "sos", accel_peak_g=1.3, steps=0.0))
            seq += 1
            for _k in range(int(rng.integers(5, 40))):
                t += float(rng.choice([0.5, 1.0, 1.0, 2.0, 3.5, 4.5, 5.0, 10.0, 60.0, 300.0]))
                stream.append(
                    reading(
                        DeviceKind.WRISTBAND,
                        f"W{d}",
                        seq,
                        t,
                        accel_peak_g=float(rng.choice([1.2, 1.2, 1.5, 3.0])),
                        stillness_s=float(rng.choice([0.0, 2.0, 20.0])),
                        steps=float(rng.choice([0.0, 0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 25.0])),
                    )
                )
                seq += 1
            t += 600.0
    stream.sort(key=lambda r: r.time)
    cuts = sorted(int(c) for c in rng.integers(0, len(stream), size=6))
    new, ref = DetectionEngine(), ReferenceEngine()
    got = _run(new, stream, cuts, seed, True)
    assert got == _run(ref, stream, cuts, seed, True)
    _assert_same_state(new, ref)
    assert any(e["event_type"] == "sos" and e["phase"] == "cleared" for e in got)  # some walks, some not
