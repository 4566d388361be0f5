"""Wandering (GEOFENCE_EXIT) clears when the wearer is home although bands rarely get a GNSS fix indoors,
from frames a vendor would send (``datasheet.py``: struct-encoded from docs/payloads.md), through batch
decode + engine + ticks (``harness.run``).

Before this rule the alert could only clear on a valid fix inside the fence, so with real bands it stayed
open for hours after the wearer was home (bench: median 1,759 s, 22 of 87 over an hour), and the learned
home (a mean of in-fence fixes, which indoors come only from walks) was dragged along the walking route.
Positions: metres north/south of home converted with 111,195 m per degree of latitude.
"""

from __future__ import annotations

from itertools import count

from alerts.contract import AlertEvent
from alerts.detection.engine import DetectionEngine
from firmware_bridge.kernel.events import AlertPhase, EventType
from tests.alerts.detection.vendor import datasheet as ds
from tests.alerts.detection.vendor.harness import Frame, run

T0 = 1_780_300_800.0  # 2026-06-01T08:00:00Z = 16:00 in China (daytime: no night-time learning)
HOME_LAT, HOME_LON = 22.543096, 114.057865
M_PER_DEG = 111_195.0
GF = EventType.GEOFENCE_EXIT
FIX = ("worn", "gps_valid", "heartbeat")
NOFIX = ("worn", "heartbeat")


def north(m: float) -> float:
    return HOME_LAT + m / M_PER_DEG


def steps(alerts: list[AlertEvent], phase: AlertPhase) -> list[AlertEvent]:
    return [a for a in alerts if a.event_type is GF and a.phase is phase]


def frame(dev: str, seq: count[int], t: float, flags: tuple[str, ...], m: float | None = 0.0) -> Frame:
    """A 5-min summary; ``m`` metres north of home (None: the band sends 0/0, as many do without a fix)."""
    lat, lon = (0.0, 0.0) if m is None else (north(m), HOME_LON)
    return Frame(dev, t, ds.wristband(seq=next(seq), flags=flags, steps=60, stillness_s=20, lat=lat, lon=lon))


def outing(dev: str, seq: count[int]) -> tuple[list[Frame], float]:
    """Home fixes (the learned home is warm), then 600 m out with valid fixes: the alert is raised.
    Returns the frames and the time of the last one."""
    frames = [frame(dev, seq, T0 - 300.0 * k, FIX) for k in range(12, 0, -1)]
    t = T0
    for _ in range(4):
        frames.append(frame(dev, seq, t, FIX, 600.0))
        t += 120.0
    return frames, t - 120.0


def test_return_home_without_indoor_fixes_clears_within_bounded_time() -> None:
    """Walks back (fixes approaching home, the last one still in the 80-100 % hysteresis band), goes
    indoors: worn, no fix ever again. Clears 900 s (geofence_indoor_s) after that last fix, next summary."""
    seq = count(1)
    frames, t = outing("WB-G1", seq)
    t += 120.0
    frames += [frame("WB-G1", seq, t, FIX, 450.0), frame("WB-G1", seq, t + 120.0, FIX, 280.0)]
    last_fix = t + 120.0
    frames += [frame("WB-G1", seq, last_fix + 300.0 * k, NOFIX, None) for k in range(1, 13)]
    alerts = run(frames, DetectionEngine(), until=last_fix + 3700.0)
    assert len(steps(alerts, AlertPhase.RAISED)) == 1
    cleared = steps(alerts, AlertPhase.CLEARED)
    assert len(cleared) == 1
    assert last_fix + 900.0 <= cleared[0].time <= last_fix + 900.0 + 300.0 + 60.0


def test_charging_at_home_clears() -> None:
    """No fix after the outing, but the band goes on its charger (at home): the charging flag clears."""
    seq = count(1)
    frames, t = outing("WB-G2", seq)
    frames += [frame("WB-G2", seq, t + 300.0 * k, ("charging", "heartbeat"), None) for k in range(1, 4)]
    alerts = run(frames, DetectionEngine(), until=t + 1200.0)
    assert len(steps(alerts, AlertPhase.RAISED)) == 1
    cleared = steps(alerts, AlertPhase.CLEARED)
    assert len(cleared) == 1 and cleared[0].time <= t + 300.0 + 60.0


def test_still_outside_does_not_clear() -> None:
    """Still 600 m out: a valid fix every third summary (sky partly hidden), worn no-fix summaries between,
    small GNSS scatter (20 m nearer is not approaching), and twice the charging flag (a power bank) with
    a valid fix outside: an out-of-fence fix always wins over indoor evidence, for an hour and a half."""
    seq = count(1)
    frames, t = outing("WB-G3", seq)
    for k in range(1, 19):
        tk = t + 300.0 * k
        if k in (9, 10):  # a power bank: charging, with valid fixes outside the fence
            frames.append(frame("WB-G3", seq, tk, ("worn", "gps_valid", "charging", "heartbeat"), 600.0))
        elif k % 3 == 0:
            frames.append(frame("WB-G3", seq, tk, FIX, 600.0 - (20.0 if k % 2 else 0.0)))
        else:
            frames.append(frame("WB-G3", seq, tk, NOFIX, None))
    alerts = run(frames, DetectionEngine(), until=t + 300.0 * 19)
    assert len(steps(alerts, AlertPhase.RAISED)) == 1
    assert steps(alerts, AlertPhase.CLEARED) == []


def test_band_taken_off_outside_does_not_clear() -> None:
    """Walked back to 280 m (an anchor for indoor evidence), then the band comes off the wrist: no fix, not
    worn, for two hours. Silence of an unworn band is no evidence of being home."""
    seq = count(1)
    frames, t = outing("WB-G4", seq)
    frames.append(frame("WB-G4", seq, t + 120.0, FIX, 280.0))
    t += 120.0
    frames += [frame("WB-G4", seq, t + 300.0 * k, ("heartbeat",), None) for k in range(1, 25)]
    alerts = run(frames, DetectionEngine(), until=t + 300.0 * 25)
    assert len(steps(alerts, AlertPhase.RAISED)) == 1
    assert steps(alerts, AlertPhase.CLEARED) == []


def test_learned_home_is_not_dragged_by_repeated_walks() -> None:
    """100 fixes at home learn it, then 20 days of the same daytime walk (4 fixes 200 m north, inside the
    fence) and 6 poor indoor fixes at home. A mean lands ~80 m north, so a visit 260 m south (inside the
    300 m fence) reads 340 m: a false wandering alarm. The learned home must stay near home."""
    seq = count(1)
    dev = "WB-G5"
    day0 = T0 - 8 * 3600.0  # 08:00 in China
    frames = [frame(dev, seq, day0 + 300.0 * k, FIX) for k in range(100)]
    for d in range(1, 21):
        base = day0 + 86400.0 * d + 3600.0  # 09:00 in China
        frames += [frame(dev, seq, base + 300.0 * k, FIX, 200.0) for k in range(4)]
        frames += [frame(dev, seq, base + 3600.0 + 300.0 * k, FIX, 0.0) for k in range(6)]
    t = day0 + 86400.0 * 21 + 3600.0
    frames += [frame(dev, seq, t + 300.0 * k, FIX, -260.0) for k in range(3)]
    alerts = run(frames, DetectionEngine(), until=t + 1200.0)
    assert steps(alerts, AlertPhase.RAISED) == []


def _walk_frame(
    dev: str, seq: count[int], t: float, m: float, walked: float, flags: tuple[str, ...] = FIX
) -> Frame:
    """A 5-min summary ``m`` metres north of home (negative: south) with ``walked`` steps in its window."""
    return Frame(
        dev,
        t,
        ds.wristband(seq=next(seq), flags=flags, steps=walked, stillness_s=20, lat=north(m), lon=HOME_LON),
    )


def _started_on_a_walk(dev: str, seq: count[int]) -> tuple[list[Frame], float]:
    """A band whose first fixes come from a walk 150 m north (300 steps per summary, the datasheet's
    ``steps`` since the previous uplink), then the wearer is home, pottering (10 steps, fixes by the
    window): the home the band has to learn is the second place, not the first."""
    frames = [_walk_frame(dev, seq, T0 + 300.0 * k, 150.0, 300.0) for k in range(3)]
    frames += [_walk_frame(dev, seq, T0 + 300.0 * (3 + k), 5.0 * k, 10.0) for k in range(3)]
    return frames, T0 + 300.0 * 6


def test_learned_home_seeded_on_a_walk_does_not_call_an_exit_early() -> None:
    """Then the wearer walks south: 200, 260, 280, 290 m (inside the 300 m fence of the real home), then
    360 and 420 m (out). Before: the home was seeded by the walk's first fix (150 m north) and the fixes
    at 260 / 280 m south read ~410-430 m from it: the exit was called while the wearer was inside the fence
    (score_detect seeds 11 and 15: 255 s and 105 s before the crossing). Now: raised at 420 m, not before."""
    seq = count(1)
    frames, t = _started_on_a_walk("WB-SEED", seq)
    for m in (-200.0, -260.0, -280.0, -290.0, -360.0, -420.0):
        frames.append(_walk_frame("WB-SEED", seq, t, m, 300.0))
        t += 300.0
    raised = steps(run(frames, DetectionEngine(), until=t + 600.0), AlertPhase.RAISED)
    assert len(raised) == 1
    assert raised[0].time == T0 + 300.0 * 11  # the second fix out (420 m), need_count=2


def test_standing_still_outside_or_a_still_night_fix_outside_does_not_become_home() -> None:
    """Out to 600 m (raised), then the wearer stands still there (0 steps, fixes every summary) into the
    night: fixes with fewer steps than the home's seed, and still night fixes, are home evidence only
    inside the fence (or on the charger). The alert stays open."""
    seq = count(1)
    frames, t = _started_on_a_walk("WB-STAY", seq)
    for _ in range(2):
        frames.append(_walk_frame("WB-STAY", seq, t, -600.0, 300.0))
        t += 300.0
    while t < T0 + 8 * 3600.0:  # 16:00 -> 24:00 local, standing / sitting still 600 m out
        frames.append(_walk_frame("WB-STAY", seq, t, -600.0, 0.0))
        t += 300.0
    alerts = run(frames, DetectionEngine(), until=t)
    assert len(steps(alerts, AlertPhase.RAISED)) == 1
    assert steps(alerts, AlertPhase.CLEARED) == []


def test_a_fix_on_the_charger_reseeds_a_home_learned_on_walks() -> None:
    """After its warm-up a band has learned only walk fixes 150 m north (no fix at home during the day);
    in the evening it gets one fix on the charger at home. From then on a walk 280 m south (inside the
    fence of the real home) is no exit."""
    seq = count(1)
    frames = [_walk_frame("WB-CHG", seq, T0 + 300.0 * k, 150.0, 300.0) for k in range(100)]
    t = T0 + 300.0 * 100
    frames.append(_walk_frame("WB-CHG", seq, t, 0.0, 0.0, ("charging", "gps_valid", "heartbeat")))
    for k in range(1, 5):
        frames.append(_walk_frame("WB-CHG", seq, t + 300.0 * k, -280.0, 300.0))
    assert steps(run(frames, DetectionEngine(), until=t + 1800.0), AlertPhase.RAISED) == []
