"""Per-device learned baseline: exponentially weighted mean and variance, scored as a z-score.

Why EWMA and not a window: a Pi holds 10^4-10^5 devices; two floats per device and channel are enough,
and an update is three vectorised array operations. ``side="up"`` scores only rises (a temperature
climbing above the room's usual value), ``"both"`` scores either way. ``min_std`` floors the spread so a
perfectly steady channel (quantised to 0.1 °C) does not turn a 0.1 step into a huge z-score.

>>> import numpy as np
>>> d = EWMAZScore(alpha=0.2, min_std=0.5, grace_period=3)
>>> for v in (20.0, 20.2, 19.9, 20.1):
...     d.learn_many([0], [v], [0.0])
>>> float(d.score_many([0], [30.0], [0.0])[0]) > 10
True
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from tests.alerts.detection.reference.detectors.base import Detector, FloatArray, IntArray


class EWMAZScore(Detector):
    STATE: ClassVar[dict[str, tuple[str, float]]] = {"mean": ("f8", np.nan), "var": ("f8", 0.0)}

    def __init__(
        self, *, alpha: float = 0.05, min_std: float = 1.0, side: str = "both", grace_period: int = 10
    ) -> None:
        super().__init__(grace_period=grace_period)
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        if side not in ("both", "up", "down"):
            raise ValueError("side must be 'both', 'up' or 'down'")
        self.alpha = float(alpha)
        self.min_std = float(min_std)
        self.side = side

    def _learn(self, rows: IntArray, x: FloatArray, t: FloatArray) -> None:
        mean = self.arrays["mean"][rows]
        var = self.arrays["var"][rows]
        fresh = ~np.isfinite(mean)
        diff = np.where(fresh, 0.0, x - mean)
        incr = self.alpha * diff
        self.arrays["mean"][rows] = np.where(fresh, x, mean + incr)
        self.arrays["var"][rows] = np.where(fresh, 0.0, (1.0 - self.alpha) * (var + diff * incr))

    def _score(self, rows: IntArray, x: FloatArray, t: FloatArray) -> FloatArray:
        mean = self.arrays["mean"][rows]
        std = np.sqrt(np.maximum(self.arrays["var"][rows], 0.0))
        d = x - mean
        if self.side == "up":
            d = np.maximum(d, 0.0)
        elif self.side == "down":
            d = np.maximum(-d, 0.0)
        z: FloatArray = np.abs(d) / np.maximum(std, self.min_std)
        return z

    def baseline(self, rows: IntArray) -> FloatArray:
        """The learned mean per row (NaN for a device never learned)."""
        r = np.asarray(rows, dtype=np.int64)
        if len(r) and int(r.max()) >= self.capacity:
            self.resize(int(r.max()) + 1)
        return np.asarray(self.arrays["mean"][r], dtype=np.float64)
