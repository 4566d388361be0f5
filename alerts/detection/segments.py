"""A batch's readings grouped by device: segmented scans instead of per-device Python or per-rank passes.

Why: a batch holds several readings of some devices (a backlog, a device in alarm uplinking every
minute). Their per-device recurrences (last accepted sequence number, previous value, run lengths, hush
edges, episode state) must see the readings in time order. The engine sorts the batch once by
(device row, time, seq); the readings of one device are then one contiguous *segment*, and a
recurrence becomes a scan over segments: "the latest earlier reading of this device where ..." is a
``np.maximum.accumulate`` of positions bounded by the segment's start, a count since a reset is a
difference of cumulative sums. Recurrences that are not scans (an EWMA learned only from calm readings,
a clipped dose, an episode machine) run *rank by rank* over the few segments that need them: the k-th
reading of every such device at once, so a loop has as many iterations as the longest segment, and
most devices (one reading per batch, or nothing going on) never enter it.

Every helper takes per-reading arrays in segment order and, where a reading has no earlier reading in
its segment, the device's state array (indexed by device row) as the value before the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class Segments:
    """Readings grouped by device (each device's readings contiguous, in time order): the segments.

    Sorted rows are one way to group; a batch where every device appears once is grouped as it is.
    """

    __slots__ = ("_pos", "_start", "ends", "first", "lengths", "n", "nranks", "rows", "single", "starts")

    def __init__(self, rows: IntArray) -> None:
        n = len(rows)
        self.rows = rows
        self.n = n
        first = np.ones(n, dtype=bool)
        if n > 1:
            np.not_equal(rows[1:], rows[:-1], out=first[1:])
        self.first = first
        self._start: IntArray | None = None
        self._pos: IntArray | None = None
        self.single = bool(first.all())  # every device once: every scan is the state itself
        if self.single:  # the common case, kept to a few operations (a small batch pays them)
            self._pos = self.starts = self.ends = self._start = np.arange(n, dtype=np.int64)
            self.lengths = np.ones(n, dtype=np.int64)
            self.nranks = 1 if n else 0
            return
        self.starts = np.flatnonzero(first)
        self.lengths = np.diff(np.append(self.starts, n))
        self.ends = self.starts + self.lengths - 1
        self.nranks = int(self.lengths.max())

    @property
    def seg_rows(self) -> IntArray:
        """The device row of each segment (unique)."""
        return self.rows[self.starts]

    @property
    def start(self) -> IntArray:
        """Per reading: the index where its segment starts."""
        if self._start is None:
            self._start = np.repeat(self.starts, self.lengths)
        return self._start

    @property
    def pos(self) -> IntArray:
        if self._pos is None:
            self._pos = np.arange(self.n, dtype=np.int64)
        return self._pos

    def ranks(self) -> Iterator[IntArray | slice]:
        """Index of the k-th reading of every segment that has one, for k = 0, 1, ... (row order)."""
        if self.single:
            yield slice(None)
            return
        for k in range(self.nranks):
            yield self.starts[self.lengths > k] + k

    def latest(self, mask: BoolArray, inclusive: bool) -> IntArray:
        """Per reading: index of the latest reading at (or strictly before) it in its segment where
        ``mask``; below the segment's start when there is none."""
        latest = np.maximum.accumulate(np.where(mask, self.pos, -1))
        if inclusive:
            return latest
        out = np.empty(self.n, dtype=np.int64)
        out[:1] = -1
        out[1:] = latest[:-1]
        return out

    def prev(self, x: npt.NDArray[Any], state: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Per reading: ``x`` of the previous reading of its device, or ``state[row]`` for the first."""
        if self.single:
            return state[self.rows]
        out = np.empty(self.n, dtype=np.result_type(x, state))
        out[1:] = x[:-1]
        f = self.first
        out[f] = state[self.rows[f]]
        return out

    def prev_where(
        self, mask: BoolArray, x: npt.NDArray[Any], state: npt.NDArray[Any], *, inclusive: bool = False
    ) -> npt.NDArray[Any]:
        """Per reading: ``x`` of the latest earlier (``inclusive``: or this) reading of its device where
        ``mask``, or ``state[row]`` when there is none."""
        if self.single:
            return np.where(mask, x, state[self.rows]) if inclusive else state[self.rows]
        j = self.latest(mask, inclusive)
        has = j >= self.start
        return np.where(has, x[np.maximum(j, 0)], state[self.rows])

    def count_before(self, mask: BoolArray) -> IntArray:
        """Per reading: how many earlier readings of its device are ``mask``."""
        if self.single:
            return np.zeros(self.n, dtype=np.int64)
        c = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(mask, out=c[1:])
        out: IntArray = c[:-1] - c[self.start]
        return out

    def seen(self, mask: BoolArray) -> BoolArray:
        """Per reading: ``mask`` holds at this or an earlier reading of its device."""
        if self.single:
            return mask
        j = self.latest(mask, True)
        out: BoolArray = j >= self.start
        return out

    def any(self, mask: BoolArray) -> BoolArray:
        """Per segment: ``mask`` holds at some reading of it."""
        if self.single:
            return mask
        out: BoolArray = np.logical_or.reduceat(mask, self.starts) if self.n else np.zeros(0, dtype=bool)
        return out

    def count(self, mask: BoolArray) -> IntArray:
        """Per segment: how many of its readings are ``mask``."""
        if self.single:
            return mask.astype(np.int64)
        if not self.n:
            return np.zeros(0, dtype=np.int64)
        out: IntArray = np.add.reduceat(mask.astype(np.int64), self.starts)
        return out

    def last_where(self, mask: BoolArray) -> tuple[IntArray, IntArray]:
        """Segments with a ``mask`` reading: (their device rows, the index of their latest such reading)."""
        if self.single:
            i = np.flatnonzero(mask)
            return self.rows[i], i
        j = self.latest(mask, True)[self.ends]
        ok = j >= self.starts
        return self.seg_rows[ok], j[ok]

    def store_last(self, state: npt.NDArray[Any], x: npt.NDArray[Any], mask: BoolArray | None = None) -> None:
        """``state[row] = x`` of the device's latest reading (where ``mask``), as sequential writes would."""
        if mask is None:
            if self.single:
                state[self.rows] = x
            else:
                state[self.seg_rows] = x[self.ends]
            return
        r, i = self.last_where(mask)
        state[r] = x[i]

    def in_segments(self, seg_mask: BoolArray) -> IntArray:
        """Indices of the readings of the segments where ``seg_mask`` (in order)."""
        if self.single:
            return np.flatnonzero(seg_mask)
        return np.flatnonzero(np.repeat(seg_mask, self.lengths))
