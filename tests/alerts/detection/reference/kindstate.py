"""Everything the engine keeps for one device kind: the device table and its per-device arrays.

Why a table and not objects: a dict ``device_id -> row`` and numpy arrays indexed by row (grown by
doubling) let every rule, detector and episode machine work on whole columns. A new device costs one
dict entry and, when some device of the kind has per-device thresholds, one row of parameter arrays.
Device ids must be valid contract identifiers (``[A-Za-z0-9_.:-]{1,64}``); a reading of an invalid id
gets row -1 and is counted as rejected by the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.registry import spec
from tests.alerts.detection.reference.detectors.base import grow
from tests.alerts.detection.reference.episodes import EpisodeRule, EpisodeTable
from tests.alerts.detection.reference.profiles import ParamTable, ProfileSet
from tests.alerts.detection.reference.registry import RULES

_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}\Z")  # \Z: "$" would let a trailing newline in
# odd 64-bit multipliers, one per 8 bytes of an id (two UCS-4 characters): the id hash of id_hashes
_MULT = np.random.default_rng(0x5EED).integers(1, 2**63, size=8, dtype=np.uint64) | np.uint64(1)
_COMMON: dict[str, tuple[str, float]] = {
    "last_time": ("f8", np.nan),
    "last_seq": ("i8", -1),
    "first_time": ("f8", np.nan),
    "frames": ("i8", 0),
}


@dataclass
class KindState:
    """Everything the engine keeps for one device kind."""

    kind: DeviceKind
    profiles: ProfileSet
    grace_period: int
    index: dict[str, int] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    capacity: int = 0
    module: Any = None  # the kind's rule module; the registry's when not given
    # ids hashed to uint64 and sorted -> rows, and the ids as one array: a batch finds its rows with one
    # searchsorted and one string comparison that confirms each hit, not a dict lookup per reading. The
    # dict stays the source of truth: a miss or a collision goes through it.
    _hashes: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    _hash_rows: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _id_arr: npt.NDArray[np.str_] = field(default_factory=lambda: np.zeros(0, dtype="U16"))

    def __post_init__(self) -> None:
        if self.module is None:
            self.module = RULES[self.kind]
        self.spec = spec(self.kind)
        default = self.profiles.defaults[self.kind]
        self.common = {k: np.full(0, f, dtype=d) for k, (d, f) in _COMMON.items()}
        self.state = {k: np.full(0, f, dtype=d) for k, (d, f) in self.module.STATE.items()}
        self.det = self.module.make_detectors(default, self.grace_period)
        rules: dict[EventType, EpisodeRule] = dict(self.module.rules(default))
        rules[EventType.DEVICE_SILENT] = EpisodeRule(remind_every_s=float(default.silent_remind_s))
        self.episodes = {et: EpisodeTable(rule) for et, rule in rules.items()}
        self.params = ParamTable(self.profiles, self.kind)

    @property
    def n(self) -> int:
        return len(self.ids)

    def _resize(self, capacity: int) -> None:
        for k, (_d, f) in _COMMON.items():
            self.common[k] = grow(self.common[k], capacity, f)
        for k, (_d, f) in self.module.STATE.items():
            self.state[k] = grow(self.state[k], capacity, f)
        for d in self.det.values():
            d.resize(capacity)
        for e in self.episodes.values():
            e.resize(capacity)
        self.capacity = capacity

    def add(self, device_ids: list[str]) -> npt.NDArray[np.int64]:
        start = self.n
        self.ids.extend(device_ids)
        for i, d in enumerate(device_ids):
            self.index[d] = start + i
        if self.n > self.capacity:
            self._resize(max(64, self.capacity * 2, self.n))
        rows = np.arange(start, self.n, dtype=np.int64)
        self._id_arr = np.concatenate([self._id_arr, np.asarray(device_ids, dtype=np.str_)])
        short = [i for i, d in enumerate(device_ids) if len(d) <= 16]  # longer ids: the dict only
        h = id_hashes(np.asarray([device_ids[i] for i in short], dtype="U16"))
        if h is not None and len(h):
            all_h = np.concatenate([self._hashes, h])
            all_rows = np.concatenate([self._hash_rows, rows[short]])
            order = np.argsort(all_h, kind="stable")
            self._hashes, self._hash_rows = all_h[order], all_rows[order]
        self.params.add(rows, device_ids, self.capacity)
        return rows

    def rows_for(self, device_ids: npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
        """Row per reading; -1 for an invalid device id. New valid ids get rows."""
        get = self.index.get
        h = id_hashes(device_ids) if len(self._hashes) else None
        if h is not None:
            pos = np.minimum(np.searchsorted(self._hashes, h), len(self._hashes) - 1)
            cand = self._hash_rows[pos]
            rows = np.where(self._id_arr[cand] == device_ids, cand, -1)
            if not (rows >= 0).all():  # new devices, or ids hashed alike: ask the dict
                miss = np.flatnonzero(rows < 0)
                rows[miss] = np.fromiter(
                    (get(d, -1) for d in device_ids[miss].tolist()), dtype=np.int64, count=len(miss)
                )
        else:
            rows = np.fromiter(
                (get(d, -1) for d in device_ids.tolist()), dtype=np.int64, count=len(device_ids)
            )
        missing = rows < 0
        if missing.any():
            new = [d for d in dict.fromkeys(device_ids[missing].tolist()) if _ID_RE.match(d)]
            if new:
                self.add(new)
                rows[missing] = np.fromiter(
                    (get(d, -1) for d in device_ids[missing].tolist()), dtype=np.int64
                )
        return rows


def id_hashes(ids: npt.NDArray[np.str_]) -> npt.NDArray[np.uint64] | None:
    """A 64-bit hash per id from its UCS-4 code points, 8 bytes at a time; None for widths it skips.

    Trailing NULs (numpy pads shorter ids) add nothing, so an id hashes alike in a ``<U16`` and a
    ``<U20`` array. Only ids up to 16 characters in a width of a multiple of two are hashed; equal
    hashes are confirmed by comparing the ids themselves.
    """
    n = len(ids)
    if ids.dtype.kind != "U" or ids.dtype.itemsize % 8 or ids.dtype.itemsize > 64:
        return None
    words = np.ascontiguousarray(ids).view(np.uint64).reshape(n, ids.dtype.itemsize // 8)
    h: npt.NDArray[np.uint64] = words[:, 0] * _MULT[0]
    for j in range(1, words.shape[1]):
        h ^= words[:, j] * _MULT[j]
    return h
