"""The shared base of Vigil's per-device online detectors.

Why a base class: every detector (EWMA baseline, rate of rise, flatline, ...) keeps *per-device* state as
numpy arrays indexed by the engine's device row, grows them by doubling when devices join, learns and
scores whole columns at once, and must survive a snapshot/restore. Sharing that machinery means each
detector module only writes its maths, and one conformance test (``tests/edge/test_detectors.py``) holds
them all to the same contract (river style):

* ``score_many(rows, x, t)`` returns one float per row, **higher = more anomalous**, never NaN; a NaN
  input scores 0 (no evidence) and does not poison the state;
* ``learn_many(rows, x, t)`` updates the baseline; rows in one call are unique devices (the engine feeds
  the k-th reading of every device in one call, in time order);
* a device scores 0 until it has been learned ``grace_period`` times (warm-up);
* ``score_learn(seg, x, t)`` does both for a whole batch sorted by device (several readings of a
  device allowed, see :mod:`alerts.detection.segments`): each reading scored against the state its
  device's earlier readings left, exactly as ``score_many`` then ``learn_many`` reading by reading;
  detectors whose recurrence is a scan override it with one;
* thresholding is a separate filter (:class:`Threshold`), so the engine can keep anomalous readings out
  of the baseline: ``learn_many(rows[~alarm], ...)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from alerts.detection.segments import Segments

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def grow(arr: npt.NDArray[Any], capacity: int, fill: object) -> npt.NDArray[Any]:
    """Return ``arr`` extended along axis 0 to ``capacity`` rows, new rows set to ``fill``."""
    if len(arr) >= capacity:
        return arr
    out = np.empty((capacity, *arr.shape[1:]), dtype=arr.dtype)
    out[: len(arr)] = arr
    out[len(arr) :] = fill
    return out


def _times(t: npt.ArrayLike, shape: tuple[int, ...]) -> FloatArray:
    """``t`` as float64 of ``shape`` (one time for all, or one per row); no copy when it already is."""
    if isinstance(t, np.ndarray) and t.dtype == np.float64 and t.shape == shape:
        return t
    out: FloatArray = np.broadcast_to(np.asarray(t, dtype=np.float64), shape)
    return out


class Detector(ABC):
    """Per-device online detector over one channel.

    Subclasses declare their state arrays in :attr:`STATE` (name -> (dtype, fill)) and implement
    :meth:`_learn` / :meth:`_score` on already-validated inputs.
    """

    STATE: ClassVar[dict[str, tuple[str, float]]] = {}

    def __init__(self, *, grace_period: int = 10) -> None:
        if grace_period < 0:
            raise ValueError("grace_period must be >= 0")
        self.grace_period = int(grace_period)
        self.capacity = 0
        self.arrays: dict[str, npt.NDArray[Any]] = {"n_learned": np.zeros(0, dtype=np.int64)}
        for name, (dtype, fill) in self.STATE.items():
            self.arrays[name] = np.full(0, fill, dtype=dtype)

    # -- storage ------------------------------------------------------------------------------------
    def resize(self, capacity: int) -> None:
        """Make room for ``capacity`` devices (new devices start unlearned)."""
        if capacity <= self.capacity:
            return
        self.arrays["n_learned"] = grow(self.arrays["n_learned"], capacity, 0)
        for name, (_dtype, fill) in self.STATE.items():
            self.arrays[name] = grow(self.arrays[name], capacity, fill)
        self.capacity = capacity

    def _check(self, rows: IntArray, x: npt.ArrayLike) -> tuple[IntArray, FloatArray]:
        rows = np.asarray(rows, dtype=np.int64)
        xa = np.asarray(x, dtype=np.float64)
        if xa.shape != rows.shape:
            raise ValueError(f"x has shape {xa.shape}, rows has {rows.shape}")
        if len(rows) and int(rows.max()) >= self.capacity:
            self.resize(max(int(rows.max()) + 1, 2 * self.capacity))
        return rows, xa

    # -- river-style API ----------------------------------------------------------------------------
    def learn_many(self, rows: npt.ArrayLike, x: npt.ArrayLike, t: npt.ArrayLike) -> None:
        """Learn one value per device row (rows unique); NaN values are skipped."""
        r, xa = self._check(np.asarray(rows), x)
        ta = _times(t, r.shape)
        ok = np.isfinite(xa) & np.isfinite(ta)
        n_ok = np.count_nonzero(ok)
        if n_ok == 0:
            return
        if n_ok < len(ok):
            r, xa, ta = r[ok], xa[ok], ta[ok]
        self._learn(r, xa, ta)
        self.arrays["n_learned"][r] += 1

    def learn_known(self, rows: IntArray, x: FloatArray, t: FloatArray) -> None:
        """:meth:`learn_many` for rows already within capacity and values and times the caller knows are
        finite (a filtered selection): the same state, without the checks and the filtering."""
        self._learn(rows, x, t)
        self.arrays["n_learned"][rows] += 1

    def score_many(self, rows: npt.ArrayLike, x: npt.ArrayLike, t: npt.ArrayLike) -> FloatArray:
        """Anomaly score per row: >= 0, higher = more anomalous, 0 during warm-up or for NaN input."""
        r, xa = self._check(np.asarray(rows), x)
        ta = _times(t, r.shape)
        out = np.zeros(len(r), dtype=np.float64)
        ok = np.isfinite(xa) & np.isfinite(ta) & (self.arrays["n_learned"][r] >= self.grace_period)
        if np.count_nonzero(ok):
            s = self._score(r[ok], xa[ok], ta[ok])
            out[ok] = np.where(np.isfinite(s), np.maximum(s, 0.0), 0.0)
        return out

    def score_learn(self, seg: Segments, x: FloatArray, t: FloatArray) -> FloatArray:
        """Score then learn every reading of a batch in segment order (see the module docstring).

        This form runs rank by rank (the k-th reading of every device at once); it is exact for any
        detector.
        """
        rows = seg.rows
        if seg.single:
            out = self.score_many(rows, x, t)
            self.learn_many(rows, x, t)
            return out
        out = np.zeros(len(rows), dtype=np.float64)
        for ix in seg.ranks():
            r, xi, ti = rows[ix], x[ix], t[ix]
            out[ix] = self.score_many(r, xi, ti)
            self.learn_many(r, xi, ti)
        return out

    def warm(self, rows: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Which rows are past their grace period."""
        r = np.asarray(rows, dtype=np.int64)
        if len(r) and int(r.max()) >= self.capacity:
            self.resize(int(r.max()) + 1)
        return self.arrays["n_learned"][r] >= self.grace_period

    @abstractmethod
    def _learn(self, rows: IntArray, x: FloatArray, t: FloatArray) -> None: ...

    @abstractmethod
    def _score(self, rows: IntArray, x: FloatArray, t: FloatArray) -> FloatArray: ...


class Threshold:
    """The filter that turns scores into decisions, kept apart from the detectors (river's style).

    ``above(score)`` is True where ``score > threshold``; the engine uses it both to alarm and to keep
    alarming readings out of the baseline.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def above(self, score: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        s = np.asarray(score, dtype=np.float64)
        return np.isfinite(s) & (s > self.threshold)
