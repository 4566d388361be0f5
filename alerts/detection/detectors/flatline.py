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

import math
from typing import ClassVar

import numpy as np

from alerts.detection.detectors.base import Detector, FloatArray, IntArray
from alerts.detection.segments import Segments


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

    def score_learn(self, seg: Segments, x: FloatArray, t: FloatArray) -> FloatArray:
        """A scan: the run after each learned reading is the device's repeats since its latest change
        (a cumulative sum with resets), continuing the state's run while there was no change."""
        rows, xa = self._check(seg.rows, x)
        a = self.arrays
        learned = np.isfinite(xa) & np.isfinite(t)
        if seg.single:
            return self._score_learn_single(rows, xa, learned)
        last = seg.prev_where(learned, xa, a["last_x"])
        same = learned & np.isfinite(last) & (np.abs(xa - last) <= self.tolerance)
        reset = learned & ~same
        c = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(same, out=c[1:])
        start = seg.start
        j = seg.latest(reset, True)  # the latest change at or before each reading
        since_reset = c[1:] - c[np.maximum(j, 0) + 1]
        run_after = np.where(j >= start, since_reset, a["run"][rows] + (c[1:] - c[start]))
        n_before = a["n_learned"][rows] + seg.count_before(learned)
        ok = learned & (n_before >= self.grace_period) & same
        out: FloatArray = np.where(ok, run_after, 0.0).astype(np.float64)
        seg.store_last(a["run"], run_after.astype(np.float64), learned)
        seg.store_last(a["last_x"], xa, learned)
        a["n_learned"][seg.seg_rows] += seg.count(learned)
        return out

    def _score_learn_single(self, rows: IntArray, xa: FloatArray, learned: np.ndarray) -> FloatArray:
        """:meth:`score_learn` when every device has one reading (a quiet gateway's batch): the same
        values with half the array operations (a comparison with a NaN last value is False; a repeat
        implies a learned reading)."""
        a = self.arrays
        last = a["last_x"][rows]
        same = learned & (np.abs(xa - last) <= self.tolerance)  # False for a NaN (never learned) last
        if not math.isfinite(self.tolerance):
            same &= np.isfinite(last)
        run_after = np.where(same, a["run"][rows] + 1.0, 0.0)
        out: FloatArray = np.where(same & (a["n_learned"][rows] >= self.grace_period), run_after, 0.0)
        rl = rows[learned]
        a["run"][rl] = run_after[learned]
        a["last_x"][rl] = xa[learned]
        a["n_learned"][rl] += 1
        return out
