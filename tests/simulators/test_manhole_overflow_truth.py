"""The overflow truth is the water itself: the sewer's daily cycle (``DIURNAL_CM``, the water up to 4 cm
higher or lower by the hour) is part of the level the truth compares with ``OVERFLOW_CM``, as it is part
of what the cover reads. Found in ``vigil demo`` seed 11 (2026-11-27): a well whose rain alone stopped
0.8 cm short of the 30 cm line, at 13:15 local where the cycle stands the water 1.3 cm higher, read
28.8 cm; the detector paged an overflow and the score called it an unexplained false alarm, because the
truth had no record."""

from __future__ import annotations

import math

import numpy as np

from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind as K
from simulators.fleet import Fleet
from simulators.manhole import DIURNAL_CM, OVERFLOW_CM, RAMP_S, ManholeModel

T0 = 1_780_243_200.0  # 2026-06-01 00:00 local (UTC+8)
H = 3600.0


def _rain_row(short_cm: float, start_local_h: float) -> tuple[ManholeModel, int, float]:
    """A fleet's first rain row moved to ``start_local_h`` (4 h) with its peak ``short_cm`` short of the
    overflow line without the daily cycle."""
    fleet = Fleet.build({K.MANHOLE: 40}, seed=5, rates={K.MANHOLE: {"rain": 2.0}})
    fleet.plan(T0, 86400.0)
    m = fleet.models[K.MANHOLE]
    assert isinstance(m, ManholeModel)
    s = m.schedule
    row = int(next(i for i in range(len(s)) if m.EFFECTS[int(s.eff[i])].name == "rain"))
    dev = int(s.dev[row])
    s.start[row] = T0 + start_local_h * H
    s.end[row] = s.start[row] + 4 * H
    s.p[row, 0] = m.depth_cm[dev] - OVERFLOW_CM - short_cm
    return m, row, float(m.depth_cm[dev])


def _level(depth: float, peak: float, start: float, end: float, t: float) -> float:
    hour = ((t + 8 * H) % 86400.0) / H
    rise = peak * min(max(min(t - start, end - t) / RAMP_S, 0.0), 1.0)
    return depth + DIURNAL_CM * math.sin(2 * math.pi * hour / 24.0) - rise


def test_the_daily_cycle_brings_a_well_over_the_line() -> None:
    # plateau 16:30-19:30 local: the cycle stands the water 2.0-4.0 cm higher than the rain alone
    m, row, depth = _rain_row(short_cm=0.8, start_local_h=16.0)
    s = m.schedule
    rec = m.truth_of(row, s, T0 + 86400.0)
    assert rec is not None and rec.event_type is EventType.OVERFLOW  # None before: the cycle left out
    peak, st, en = float(s.p[row, 0]), float(s.start[row]), float(s.end[row])
    # the record runs from the water reaching the line to its leaving it (within 0.05 cm of 30 cm)
    assert abs(_level(depth, peak, st, en, rec.start) - OVERFLOW_CM) < 0.05
    assert abs(_level(depth, peak, st, en, rec.end) - OVERFLOW_CM) < 0.05
    mid = np.linspace(rec.start + 60, rec.end - 60, 50)
    assert all(_level(depth, peak, st, en, float(t)) < OVERFLOW_CM for t in mid)


def test_the_daily_cycle_keeps_a_well_under_the_line() -> None:
    # plateau 04:30-07:30 local: the cycle stands the water 2.0-4.0 cm lower, so a rain that alone would
    # reach 1 cm past the line does not
    m, row, _ = _rain_row(short_cm=-1.0, start_local_h=4.0)
    assert m.truth_of(row, m.schedule, T0 + 86400.0) is None
