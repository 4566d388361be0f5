"""Fractional exposure dose, the way EN 50291 CO alarms integrate concentration over time.

EN 50291 fixes alarm times per concentration (50 ppm within 60-90 min, 100 ppm within 10-40 min,
300 ppm within 3 min, never at 30 ppm before 120 min). We interpolate a time-to-alarm ``T(ppm)`` on a
log-log curve through points inside those windows and accumulate ``dose += dt / T(ppm)``; the alarm is
``dose >= 1``. Below the lowest curve point the dose decays linearly over ``decay_s`` (fresh air). The
dose is capped at ``max_dose`` so an episode clears within ``max_dose x decay_s`` of fresh air however
long the exposure; a gap between readings adds at most ``max_dt`` of exposure but all of its decay.
The score is the dose the reading would bring the device to (higher = more anomalous).

>>> d = FractionalDose(max_dt=600.0)
>>> d.learn_many([0], [0.0], [0.0])
>>> for k in range(1, 4):                          # 300 ppm for 3 minutes
...     d.learn_many([0], [300.0], [60.0 * k])
>>> float(d.score_many([0], [300.0], [240.0])[0]) >= 1.0
True
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from tests.alerts.detection.reference.detectors.base import Detector, FloatArray, IntArray

#: (ppm, minutes to alarm); inside the EN 50291 windows quoted above (see /work/shared/REFERENCES.md)
EN50291_CURVE: tuple[tuple[float, float], ...] = (
    (40.0, 150.0),
    (50.0, 70.0),
    (100.0, 20.0),
    (300.0, 2.0),
    (1000.0, 0.5),
)


class FractionalDose(Detector):
    STATE: ClassVar[dict[str, tuple[str, float]]] = {"dose": ("f8", 0.0), "last_t": ("f8", np.nan)}

    def __init__(
        self,
        *,
        curve: tuple[tuple[float, float], ...] = EN50291_CURVE,
        max_dt: float = 600.0,
        decay_s: float = 1800.0,
        max_dose: float = 2.0,
        grace_period: int = 0,
    ) -> None:
        super().__init__(grace_period=grace_period)
        self._lx = np.log([p for p, _ in curve])
        self._ly = np.log([m * 60.0 for _, m in curve])
        self.min_ppm = float(curve[0][0])
        self.max_dt = float(max_dt)
        self.decay_s = float(decay_s)
        self.max_dose = float(max_dose)

    def time_to_alarm(self, ppm: FloatArray) -> FloatArray:
        """Seconds to alarm at a constant ``ppm`` (inf below the curve)."""
        p = np.asarray(ppm, dtype=np.float64)
        logp = np.log(np.maximum(p, 1e-9))
        t = np.exp(np.interp(logp, self._lx, self._ly))
        return np.where(p >= self.min_ppm, t, np.inf)

    def _next(self, rows: IntArray, x: FloatArray, t: FloatArray) -> FloatArray:
        gap = t - self.arrays["last_t"][rows]
        gap = np.where(np.isfinite(gap), np.maximum(gap, 0.0), 0.0)
        dose = self.arrays["dose"][rows]
        gain = np.minimum(gap, self.max_dt) / self.time_to_alarm(x)  # a long gap says little about exposure
        decay = np.where(x < self.min_ppm, gap / self.decay_s, 0.0)  # but fresh air now has cleared it
        out: FloatArray = np.clip(dose + gain - decay, 0.0, self.max_dose)
        return out

    def _learn(self, rows: IntArray, x: FloatArray, t: FloatArray) -> None:
        self.arrays["dose"][rows] = self._next(rows, x, t)
        self.arrays["last_t"][rows] = t

    def _score(self, rows: IntArray, x: FloatArray, t: FloatArray) -> FloatArray:
        return self._next(rows, x, t)
