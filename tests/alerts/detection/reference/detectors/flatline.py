"""Stuck-sensor detector: how many consecutive readings repeated the previous value.

Why: a frozen optical heart-rate sensor or a stuck ADC keeps reporting a plausible number, so range
checks never fire; the only symptom is a value that stops moving. The score is the current run length
(higher = longer frozen); the rule decides how long a run is suspicious for its channel.

>>> d = Flatline(tolerance=0.0, grace_period=0)
>>> for _ in range(4):
...     d.learn_many([0], [72.0], [0.0])
>>> float(d.score_many([0], [72.0], [0.0])[0])
4.0
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from tests.alerts.detection.reference.detectors.base import Detector, FloatArray, IntArray


class Flatline(Detector):
    STATE: ClassVar[dict[str, tuple[str, float]]] = {"last_x": ("f8", np.nan), "run": ("f8", 0.0)}

    def __init__(self, *, tolerance: float = 0.0, grace_period: int = 0) -> None:
        super().__init__(grace_period=grace_period)
        self.tolerance = float(tolerance)

    def _same(self, rows: IntArray, x: FloatArray) -> np.ndarray:
        last = self.arrays["last_x"][rows]
        same: np.ndarray = np.isfinite(last) & (np.abs(x - last) <= self.tolerance)
        return same

    def _learn(self, rows: IntArray, x: FloatArray, t: FloatArray) -> None:
        same = self._same(rows, x)
        self.arrays["run"][rows] = np.where(same, self.arrays["run"][rows] + 1.0, 0.0)
        self.arrays["last_x"][rows] = x

    def _score(self, rows: IntArray, x: FloatArray, t: FloatArray) -> FloatArray:
        return np.where(self._same(rows, x), self.arrays["run"][rows] + 1.0, 0.0)
