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

from tests.alerts.detection.reference.detectors.base import Detector, FloatArray, IntArray


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
