"""Rate of rise per minute between a device's consecutive readings (heat detectors, EN 54-5 style).

Why a detector and not a one-liner: the previous value and its time are per-device state that must
persist across batches and snapshots. Only rises score (a falling temperature is never a fire), and
pairs too close in time (sensor noise over a few seconds looks like a steep slope) or too far apart (a
device that was silent for an hour) score 0, since a slope over them says nothing about a fire now, and
so does a rise smaller than ``min_delta`` (the noise floor).

>>> d = RateOfRise(min_dt=5.0, max_dt=600.0)
>>> d.learn_many([0], [20.0], [0.0])
>>> float(d.score_many([0], [30.0], [60.0])[0])
10.0
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from alerts.detection.detectors.base import Detector, FloatArray, IntArray
from alerts.detection.segments import Segments


class RateOfRise(Detector):
    STATE: ClassVar[dict[str, tuple[str, float]]] = {"last_x": ("f8", np.nan), "last_t": ("f8", np.nan)}

    def __init__(
        self, *, min_dt: float = 5.0, max_dt: float = 900.0, min_delta: float = 0.0, grace_period: int = 1
    ) -> None:
        super().__init__(grace_period=grace_period)
        self.min_dt = float(min_dt)
        self.max_dt = float(max_dt)
        self.min_delta = float(min_delta)

    def _learn(self, rows: IntArray, x: FloatArray, t: FloatArray) -> None:
        self.arrays["last_x"][rows] = x
        self.arrays["last_t"][rows] = t

    def _score(self, rows: IntArray, x: FloatArray, t: FloatArray) -> FloatArray:
        dt = t - self.arrays["last_t"][rows]
        dx = x - self.arrays["last_x"][rows]
        ok = np.isfinite(dt) & (dt >= self.min_dt) & (dt <= self.max_dt) & (dx >= self.min_delta)
        slope = np.divide(dx, dt, out=np.zeros_like(x), where=ok) * 60.0
        return np.where(ok, np.maximum(slope, 0.0), 0.0)

    def score_learn(self, seg: Segments, x: FloatArray, t: FloatArray) -> FloatArray:
        """A scan: each reading against the latest earlier learned (finite) reading of its device."""
        rows, xa = self._check(seg.rows, x)
        a = self.arrays
        learned = np.isfinite(xa) & np.isfinite(t)
        single = seg.single  # every device once: the previous values are the state's, no scans
        n_before = a["n_learned"][rows] if single else a["n_learned"][rows] + seg.count_before(learned)
        ok = learned & (n_before >= self.grace_period)
        out = np.zeros(len(rows), dtype=np.float64)
        if np.count_nonzero(ok):
            lx = a["last_x"][rows] if single else seg.prev_where(learned, xa, a["last_x"])
            lt = a["last_t"][rows] if single else seg.prev_where(learned, t, a["last_t"])
            dt = t[ok] - lt[ok]
            dx = xa[ok] - lx[ok]
            good = np.isfinite(dt) & (dt >= self.min_dt) & (dt <= self.max_dt) & (dx >= self.min_delta)
            slope = np.divide(dx, dt, out=np.zeros_like(dx), where=good) * 60.0
            s = np.where(good, np.maximum(slope, 0.0), 0.0)
            out[ok] = np.where(np.isfinite(s), np.maximum(s, 0.0), 0.0)
        if single:
            rl = rows[learned]
            a["last_x"][rl] = xa[learned]
            a["last_t"][rl] = t[learned]
            a["n_learned"][rl] += 1
            return out
        seg.store_last(a["last_x"], xa, learned)
        seg.store_last(a["last_t"], t, learned)
        a["n_learned"][seg.seg_rows] += seg.count(learned)
        return out
