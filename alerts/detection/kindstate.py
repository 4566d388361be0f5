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

from alerts.detection.detectors.base import grow
from alerts.detection.episodes import EpisodeRule, EpisodeTable
from alerts.detection.profiles import ParamTable, ProfileSet
from alerts.detection.registry import RULES
from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.registry import spec

_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}\Z")  # \Z: "$" would let a trailing newline in
_ID_CHARS = np.zeros(128, dtype=bool)  # the same alphabet as a table of code points (valid_ids)
_ID_CHARS[[ord(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"]] = True
# odd 64-bit multipliers, one per 8 bytes of an id (two UCS-4 characters): the id hash of id_hashes
_FEW = 512  # up to this many ids, Python's dict and re beat numpy's per-call cost (crossover ~500-700)
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
    # ids hashed to uint64 in an open-addressing table (slot -> hash, row; row -1 empty), and the ids as
    # one array: a batch finds its rows with a probe or two per id and one string comparison that
    # confirms each hit, not a dict lookup per reading. The dict stays the source of truth: a miss or a
    # collision goes through it.
    _table: _HashTable = field(default_factory=lambda: _HashTable())
    _id_arr: npt.NDArray[np.str_] = field(default_factory=lambda: np.zeros(0, dtype="U16"))
    # ids added since the hash table was last brought up to date, in row order: only a big batch
    # looks rows up by hash (``_lookup``), so a quiet gateway's new devices never pay for the table
    _unhashed: list[list[str] | npt.NDArray[np.str_]] = field(default_factory=list)

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
        self.scratch = np.zeros(0, dtype=np.int64)  # one int per row, free for the engine's bookkeeping
        # before this time no device of the kind falls silent (the engine's tick skips the check); -inf:
        # not known. A reading only moves its device's silence later, so a batch lowers it at most to
        # its own devices' (a new device, one whose silence just ended).
        self.silent_quiet_until = -np.inf

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
        self.scratch = np.zeros(capacity, dtype=np.int64)
        self.capacity = capacity

    def add(self, device_ids: list[str] | npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
        """Give rows to new devices (ids not known yet, unique), in the order given."""
        ids = device_ids.tolist() if isinstance(device_ids, np.ndarray) else list(device_ids)
        start = self.n
        self.ids.extend(ids)
        self.index.update(zip(ids, range(start, self.n), strict=True))
        if self.n > self.capacity:
            self._resize(max(64, self.capacity * 2, self.n))
        rows = np.arange(start, self.n, dtype=np.int64)
        self._unhashed.append(device_ids if isinstance(device_ids, np.ndarray) else ids)
        self.params.add(rows, ids, self.capacity)
        return rows

    def _sync_hashes(self) -> None:
        """Bring the hash table and the id array up to the rows added since (``add`` defers them)."""
        if not self._unhashed:
            return
        parts = [np.asarray(p, dtype=np.str_) for p in self._unhashed]
        self._unhashed = []
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
        start = len(self._id_arr)
        rows = np.arange(start, start + len(arr), dtype=np.int64)
        self._id_arr = np.concatenate([self._id_arr, arr])
        new_rows = rows
        if arr.dtype.itemsize > 64:  # some ids past 16 characters: the dict only finds those
            short = np.flatnonzero(np.char.str_len(arr) <= 16)
            arr, new_rows = arr[short], rows[short]
        h = id_hashes(arr.astype("U16"))
        if h is not None and len(h):
            self._table.insert(h, new_rows)

    def rows_for(self, device_ids: npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
        """Row per reading; -1 for an invalid device id. New valid ids get rows (in order of appearance).

        A few ids (a quiet gateway's batch) go through the dict and the pattern, which cost less than
        the array operations' fixed cost; many go through the hash table and :func:`valid_ids`.
        """
        get = self.index.get
        small = len(device_ids) <= _FEW
        h = None if small else _hashable(device_ids)
        if small:
            rows = np.fromiter(
                (get(d, -1) for d in device_ids.tolist()), dtype=np.int64, count=len(device_ids)
            )
        else:
            rows = self._lookup(device_ids, h)
        missing = np.flatnonzero(rows < 0)
        if len(missing) == 0:
            return rows
        cand = device_ids[missing]
        if len(missing) <= _FEW:
            ids = cand.tolist()
            fresh = [d for d in dict.fromkeys(ids) if _ID_RE.match(d)]
            if fresh:
                self.add(fresh)
                rows[missing] = np.fromiter((get(d, -1) for d in ids), dtype=np.int64, count=len(ids))
            return rows
        hm = None if h is None else h[missing]
        uniq, which = _first_appearances(cand, hm)
        ok = valid_ids(uniq)
        if ok.any():
            start = self.n
            self.add(uniq[ok])  # rows start, start + 1, ... in order of first appearance
            if which is None:
                rows[missing] = self._lookup(cand, hm)
            else:
                rows[missing] = np.where(ok, start + np.cumsum(ok) - 1, -1)[which]
        return rows

    def _lookup(self, ids: npt.NDArray[np.str_], h: npt.NDArray[np.uint64] | None) -> npt.NDArray[np.int64]:
        """Known rows, -1 for ids not known: by hash (confirmed by comparing the ids), else the dict.

        A hash not in the table is an id never seen (every known id of <= 16 characters is hashed, and
        hashable ids are that short); an equal hash with another id is a collision: the dict decides.
        """
        get = self.index.get
        if h is None:
            return np.fromiter((get(d, -1) for d in ids.tolist()), dtype=np.int64, count=len(ids))
        self._sync_hashes()
        if not len(self._id_arr):
            return np.full(len(ids), -1, dtype=np.int64)
        # the row holding each hash (-1: not in the table), and the ids whose probe ran long: the dict
        cand, slow = self._table.find(h)
        rows = np.where((self._id_arr[cand] == ids) & (cand >= 0), cand, -1)
        clash = np.flatnonzero((rows < 0) & (cand >= 0))
        if len(slow):
            clash = np.concatenate([clash, slow])
        if len(clash):
            rows[clash] = np.fromiter(
                (get(d, -1) for d in ids[clash].tolist()), dtype=np.int64, count=len(clash)
            )
        return rows


class _HashTable:
    """uint64 hash -> row, open addressing with linear probing, at most half full; vectorised.

    The slot of a hash is its top bits (:func:`id_hashes` mixes into the high bits; the low bits of a
    product see only the low bits of the id). A hash already in the table keeps its first row (another id
    with the same hash is a collision the dict resolves). Every operation is a few whole-array steps per
    probe round, and rounds shrink fast: at half load most ids are found in their home slot.
    """

    __slots__ = ("_bits", "_count", "_hashes", "_keys", "_row_of", "_rows")

    def __init__(self) -> None:
        self._bits = 0
        self._count = 0
        self._keys = np.zeros(1, dtype=np.uint64)
        self._rows = np.full(1, -1, dtype=np.int64)
        self._hashes = np.zeros(0, dtype=np.uint64)  # every hash inserted, and its row (a rebuild's input)
        self._row_of = np.zeros(0, dtype=np.int64)

    def _home(self, h: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        if self._bits == 0:
            return np.zeros(len(h), dtype=np.int64)
        return (h >> np.uint64(64 - self._bits)).astype(np.int64)

    def find(
        self, h: npt.NDArray[np.uint64], rounds: int = 4
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The row of each hash (-1: not in the table) after at most ``rounds`` probes, and the indices
        of the hashes not settled by then (their row says -1: the caller asks the dict). A few long
        probe chains would otherwise cost a round of array operations each."""
        out = np.full(len(h), -1, dtype=np.int64)
        idx = np.arange(len(h), dtype=np.int64)
        if self._count == 0:
            return out, idx[:0]
        mask = len(self._keys) - 1
        slot, want = self._home(h), h
        for _ in range(rounds):
            if not len(idx):
                break
            r = self._rows[slot]
            hit = (r >= 0) & (self._keys[slot] == want)
            out[idx[hit]] = r[hit]
            go = (r >= 0) & ~hit  # an occupied slot of another hash: probe on; an empty one: not there
            idx, slot, want = idx[go], (slot[go] + 1) & mask, want[go]
        return out, idx

    def insert(self, h: npt.NDArray[np.uint64], rows: npt.NDArray[np.int64]) -> None:
        self._hashes = np.concatenate([self._hashes, h])
        self._row_of = np.concatenate([self._row_of, rows])
        if 2 * (self._count + len(h)) > len(self._keys):
            size = 1 << max(10, int(2 * len(self._hashes) - 1).bit_length())
            self._bits = size.bit_length() - 1
            self._keys = np.zeros(size, dtype=np.uint64)
            self._rows = np.full(size, -1, dtype=np.int64)
            self._count = 0
            h, rows = self._hashes, self._row_of
        self._place(h, rows)

    def _place(self, h: npt.NDArray[np.uint64], rows: npt.NDArray[np.int64]) -> None:
        mask = len(self._keys) - 1
        keys, table_rows = self._keys, self._rows
        claim = np.empty(len(keys), dtype=np.int64)  # per slot: which pending hash takes it this round
        idx = np.arange(len(h), dtype=np.int64)
        slot = self._home(h)
        while len(idx):
            r = table_rows[slot]
            taken = r >= 0
            known = taken & (keys[slot] == h[idx])  # this hash is in already: its first row stays
            free = np.flatnonzero(~taken)
            if len(free):
                fs, fi = slot[free], idx[free]
                claim[fs[::-1]] = fi[::-1]  # several hashes aiming at one free slot: one of them wins
                won = claim[fs] == fi
                ws, wi = fs[won], fi[won]
                keys[ws] = h[wi]
                table_rows[ws] = rows[wi]
                self._count += len(wi)
                done = known.copy()
                done[free[won]] = True
                # a loser tries the same slot again: it holds a hash now (maybe its own: then known)
                go = ~done
                nxt = np.where(taken, (slot + 1) & mask, slot)
            else:
                go = ~known
                nxt = (slot + 1) & mask
            idx, slot = idx[go], nxt[go]


def _hashable(ids: npt.NDArray[np.str_]) -> npt.NDArray[np.uint64] | None:
    """:func:`id_hashes` of ids up to 16 characters (any width: odd ones are padded); None for longer."""
    if ids.dtype.kind != "U" or ids.dtype.itemsize > 64:
        return None
    w = ids.dtype.itemsize // 4
    return id_hashes(ids if w % 2 == 0 else ids.astype(f"U{w + 1}"))


def _first_appearances(
    ids: npt.NDArray[np.str_], h: npt.NDArray[np.uint64] | None
) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.int64] | None]:
    """The distinct ids in order of first appearance and, when found by hash (no two ids sharing one),
    the index of each input id among them."""
    if h is not None:
        _u, first, inv = np.unique(h, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if (ids[first][inv] == ids).all():
            order = np.argsort(first)
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order), dtype=np.int64)
            return ids[first[order]], rank[inv]
    _u, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)], None


def valid_ids(ids: npt.NDArray[np.str_]) -> npt.NDArray[np.bool_]:
    """Which ids are contract identifiers (``[A-Za-z0-9_.:-]{1,64}``), for a whole array at once."""
    n = len(ids)
    width = ids.dtype.itemsize // 4
    if n == 0 or width == 0:
        return np.zeros(n, dtype=bool)
    codes = np.ascontiguousarray(ids).view(np.uint32).reshape(n, width)
    ok_char = _ID_CHARS[np.minimum(codes, 127)] & (codes < 128)
    nz = codes != 0
    # numpy pads with NULs: characters must be allowed up to the first NUL and NULs only trailing
    out: npt.NDArray[np.bool_] = (ok_char | ~nz).all(axis=1) & nz[:, 0]
    if width > 1:
        out &= (nz[:, 1:] <= nz[:, :-1]).all(axis=1)
    if width > 64:
        out &= ~nz[:, 64:].any(axis=1)
    return out


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
