"""The shape every per-kind signal model shares: effects, the schedule, and the vectorised step.

Why this shape: a model holds its state as numpy arrays indexed by device and advances *all* devices of
its kind in one call (``step``), so 10,000 devices cost a handful of array operations per tick, not
10,000 Python calls. What happens to a device is an *effect* (a truck passing, a fire, a fall) declared
as data (:class:`Effect`): rate, duration, parameters, the ground-truth label and severity, and when the
device's own firmware would send an event-triggered uplink. Effects are scheduled up front from the seed
(:class:`Schedule`), which makes the ground truth exact and the run reproducible.

A subclass provides ``EFFECTS`` and ``sample(idx, tau) -> (values, flags, battery)``: the readings of
devices ``idx`` at times ``tau`` given the effects active then. Everything else (heartbeats, triggered
uplinks, silence, sequence numbers, vectorised encoding) lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from firmware_bridge.kernel.events import EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.registry import spec
from simulators.encode import encode_many
from simulators.neighbourhood import Sites
from simulators.timeutil import local_hour
from simulators.truth import TruthRecord

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]
N_PARAMS = 3
SAME_EFFECT_GAP_S = 3600.0  # two episodes of one effect on one device are at least this far apart
HANDLED_UPLINK_S = 1.25  # a handled device's state-change uplink, seconds after its episode ended


@dataclass(frozen=True)
class Effect:
    """Something that happens to a device, declared as data."""

    name: str
    label: EventType | None  # ground-truth event type (None: not an event, e.g. rain that stays low)
    severity: Severity
    rate_per_device_day: float
    duration_s: tuple[float, float]
    params: tuple[tuple[float, float], ...] = ()  # uniform ranges of up to N_PARAMS parameters
    offsets: tuple[float, ...] = (1.0,)  # event-triggered uplinks, seconds after start
    repeat_s: float = 0.0  # and then every repeat_s while active (0: no repeats)
    on_end: bool = True  # uplink when the condition ends (return to normal)
    silent: bool = False  # the device sends nothing while active
    hours: tuple[float, float] = (0.0, 24.0)  # local hours in which the effect may start
    eligible: str = ""  # name of a boolean Sites column restricting which devices it can hit
    derived: bool = False  # only created by the model from another effect (rate ignored)
    group: str = ""  # effects of one group never overlap on one device (physically exclusive); "" = own name


@dataclass
class Schedule:
    """Effects of one kind over one run, as columns sorted by start."""

    dev: I64
    eff: I64
    start: F64
    end: F64
    p: F64  # (k, N_PARAMS)

    def __len__(self) -> int:
        return len(self.dev)

    @classmethod
    def empty(cls) -> Schedule:
        return cls(
            np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), np.empty(0), np.empty((0, N_PARAMS))
        )

    @classmethod
    def concat(cls, parts: list[Schedule]) -> Schedule:
        s = cls(
            *(np.concatenate([getattr(x, f) for x in parts]) for f in ("dev", "eff", "start", "end", "p"))
        )
        order = np.lexsort((s.eff, s.dev, s.start))
        return s.take(order)

    def take(self, idx: npt.ArrayLike) -> Schedule:
        i = np.asarray(idx)
        return Schedule(self.dev[i], self.eff[i], self.start[i], self.end[i], self.p[i])


@dataclass
class Emission:
    """The uplinks of one kind in one tick, in time order (columns)."""

    kind: DeviceKind
    idx: I64
    time: F64
    seq: U32
    payloads: npt.NDArray[np.uint8]  # (m, payload size)

    def __len__(self) -> int:
        return len(self.idx)


@dataclass
class KindModel:
    """Base of the per-kind signal models (see module docstring)."""

    KIND: ClassVar[DeviceKind]
    EFFECTS: ClassVar[tuple[Effect, ...]]
    #: effects a responder on site ends (:meth:`handle`): the cover reseated, the fire out, the wearer up
    REACTS: ClassVar[frozenset[str]] = frozenset()
    #: per-kind settings that share the rates table (``[scenarios.<kind>]``) but are not effects (the
    #: wristband's share of bands on firmware 1.7, ...): accepted by the config, ignored by the scheduler
    SETTINGS: ClassVar[tuple[str, ...]] = ()

    sites: Sites
    t0: float
    rng: np.random.Generator
    rates: dict[str, float] = field(default_factory=dict)
    schedule: Schedule = field(init=False)

    # -- construction ---------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        n = len(self.sites)
        self.n = n
        self.spec = spec(self.KIND)
        self.codec = self.spec.codec
        self.eidx = {e.name: i for i, e in enumerate(self.EFFECTS)}
        n_e = len(self.EFFECTS)
        self.act_start = np.full((n_e, n), np.inf)
        self.act_end = np.full((n_e, n), -np.inf)
        self.act_p = np.zeros((n_e, n, N_PARAMS))
        hb = self.spec.heartbeat_s
        self.next_hb = self.t0 + self.rng.uniform(0, hb, n)
        self.hb_period = hb * self.rng.uniform(0.995, 1.005, n)  # each device's own crystal
        self.last_up = self.t0 - self.rng.uniform(0, hb, n)
        self.seq = self.rng.integers(0, 65536, n).astype(np.int64)
        self.fw = np.full(n, 0x0102, dtype=np.int64)
        self._ptr = 0
        self._tptr = 0
        self._prev_up: F64 | None = None
        self._silent = np.array([e.silent for e in self.EFFECTS])
        self._done_t = -np.inf  # the end of the last tick stepped: uplinks before it are already out
        self.handled_rows: set[int] = set()  # schedule rows a responder ended (:meth:`handle`)
        self.handled_end = np.full((n_e, n), -np.inf)  # per effect and device: when a responder ended it
        self.init_state()

    def init_state(self) -> None:
        """Per-device static state (subclasses)."""

    def eligible(self, name: str) -> npt.NDArray[np.bool_]:
        """A boolean device mask by name: a model attribute first, else a :class:`Sites` column."""
        mask = getattr(self, name, None)
        return np.asarray(mask if mask is not None else getattr(self.sites, name), dtype=bool)

    def since_last_uplink(self, name: str, idx: I64, tau: F64) -> npt.NDArray[np.bool_]:
        """Whether the latest episode of ``name`` started after each device's previous uplink.

        Models "peak since the last uplink" channels exactly, with no accumulating state.
        """
        st = self.act_start[self.eidx[name], idx]
        return np.asarray((st > self.prev_up_of(idx)) & (st <= tau), dtype=np.bool_)

    def prev_up_of(self, idx: I64) -> F64:
        """Time of each sampled uplink's previous uplink from the same device (exact within a tick)."""
        prev = self._prev_up
        return prev if prev is not None and len(prev) == len(idx) else self.last_up[idx]

    def effect(self, name: str) -> Effect:
        return self.EFFECTS[self.eidx[name]]

    def plan(self, start: float, duration_s: float) -> None:
        """Schedule the effects of ``[start, start + duration_s)`` and precompute triggered uplinks."""
        parts = [self._random_effects(start, duration_s)]
        base = Schedule.concat(parts)
        base = self._drop_overlaps(base)
        derived = self.derive(base, start, duration_s)
        self.schedule = self._drop_overlaps(Schedule.concat([base, derived])) if len(derived) else base
        self._trig_time, self._trig_dev, self._trig_row = self._triggers(self.schedule)
        self.handled_rows = set()

    def _random_effects(self, start: float, duration_s: float) -> Schedule:
        days = duration_s / 86400.0
        parts: list[Schedule] = []
        for e_i, e in enumerate(self.EFFECTS):
            rate = self.rates.get(e.name, e.rate_per_device_day)
            if e.derived or rate <= 0 or self.n == 0:
                continue
            pool = np.flatnonzero(self.eligible(e.eligible)) if e.eligible else np.arange(self.n)
            if len(pool) == 0:
                continue
            k = int(self.rng.poisson(rate * len(pool) * days))
            if k == 0:
                continue
            st = self._start_times(start, duration_s, k, e.hours)
            k = len(st)
            dev = pool[self.rng.integers(0, len(pool), k)]
            dur = self.rng.uniform(e.duration_s[0], e.duration_s[1], k)
            p = np.zeros((k, N_PARAMS))
            for j, (lo, hi) in enumerate(e.params):
                p[:, j] = self.rng.uniform(lo, hi, k)
            parts.append(Schedule(dev.astype(np.int64), np.full(k, e_i, np.int64), st, st + dur, p))
        return Schedule.concat(parts) if parts else Schedule.empty()

    def _start_times(self, start: float, duration_s: float, k: int, hours: tuple[float, float]) -> F64:
        st = start + self.rng.uniform(0, duration_s, k)
        if hours != (0.0, 24.0):
            lo, hi = hours
            h = local_hour(st)
            inside = (h >= lo) & (h < hi)
            # move starts outside the window into it on the same local day (keeps the count exact)
            shift = (lo + self.rng.uniform(0, 1, k) * (hi - lo) - h) * 3600.0
            st = np.where(inside, st, st + shift)
            st = np.where(st < start, st + 86400.0, st)
            st = np.where(st >= start + duration_s, st - 86400.0, st)
            # a run that does not contain the window gets none (the rate is per day, not per window)
            st = st[(st >= start) & (st < start + duration_s)]
        return st

    def _drop_overlaps(self, s: Schedule) -> Schedule:
        """Resolve clashes on one device, first episode wins.

        Episodes of one effect are at least ``SAME_EFFECT_GAP_S`` apart; episodes of effects in the same
        ``group`` never overlap (a band cannot report a fall while it lies on the table).
        """
        if len(s) < 2:
            return s
        group_of = {i: (e.group or e.name) for i, e in enumerate(self.EFFECTS)}
        names = sorted(set(group_of.values()))
        gid = np.array([names.index(group_of[int(e)]) for e in s.eff.tolist()], dtype=np.int64)
        order = np.lexsort((s.start, gid, s.dev))
        keep = np.ones(len(s), dtype=bool)
        last_key = (-1, -1)
        ends: dict[int, float] = {}  # effect -> last kept end, within the current (device, group)
        group_end = -np.inf
        for i in order.tolist():  # sparse: a few events per device-year, not a hot path
            key = (int(s.dev[i]), int(gid[i]))
            if key != last_key:
                last_key, ends, group_end = key, {}, -np.inf
            e = int(s.eff[i])
            st = float(s.start[i])
            if st < group_end or st < ends.get(e, -np.inf) + SAME_EFFECT_GAP_S:
                keep[i] = False
                continue
            ends[e] = float(s.end[i])
            group_end = max(group_end, float(s.end[i]))
        return s.take(np.sort(np.flatnonzero(keep)))

    def derive(self, base: Schedule, start: float, duration_s: float) -> Schedule:
        """Effects caused by other effects (hush after a cooking alarm, ...). Default: none."""
        return Schedule.empty()

    def trigger_offsets(self, row: int, s: Schedule) -> list[float]:
        """Times (absolute) of the uplinks the device's firmware sends because of schedule row ``row``."""
        e = self.EFFECTS[int(s.eff[row])]
        st, en = float(s.start[row]), float(s.end[row])
        if e.silent:
            return []
        times = [st + o for o in e.offsets if st + o < en]
        if e.repeat_s > 0 and e.offsets:
            t = st + e.offsets[-1] + e.repeat_s
            while t < en and len(times) < 500:
                times.append(t)
                t += e.repeat_s
        if e.on_end:
            times.append(en + 1.0)
        return times

    def _triggers(self, s: Schedule) -> tuple[F64, I64, I64]:
        times: list[float] = []
        devs: list[int] = []
        rows: list[int] = []
        for i in range(len(s)):
            ts = self.trigger_offsets(i, s)
            times.extend(ts)
            devs.extend([int(s.dev[i])] * len(ts))
            rows.extend([i] * len(ts))
        t = np.asarray(times, dtype=np.float64)
        d = np.asarray(devs, dtype=np.int64)
        r = np.asarray(rows, dtype=np.int64)
        if len(t):
            t = t + self.rng.uniform(0.05, 0.5, len(t))  # firmware + radio latency
        order = np.argsort(t, kind="stable")
        return t[order], d[order], r[order]

    # -- a responder on site ----------------------------------------------------------------------------
    def handle(self, dev: int, label: EventType, *, on_site: float, done: float) -> list[int]:
        """A responder on site at ``on_site`` ends the device's running episodes labelled ``label`` (of an
        effect in :attr:`REACTS`) at ``done``: the readings return to normal from then, the firmware's
        repeats stop and the device sends its state-change uplink (:data:`HANDLED_UPLINK_S` after, also
        for effects without ``on_end``: the technician's reset or test press), and the ground truth ends
        there (:meth:`truth_of` marks the record ``handled``). ``done`` is moved past the tick already
        stepped (those uplinks are out); an episode over before ``done`` is left as it is. No random draw:
        a seeded run without responders stays byte-identical. Returns the schedule rows ended."""
        s = self.schedule
        done = max(float(done), self._done_t)
        react = [i for i, e in enumerate(self.EFFECTS) if e.name in self.REACTS and e.label == label]
        if not react:
            return []
        # an episode that began after the responder arrived is not what they came for
        rows = np.flatnonzero((s.dev == dev) & np.isin(s.eff, react) & (s.start <= on_site) & (s.end > done))
        ended: list[int] = []
        extra: list[float] = []
        for r in rows.tolist():
            e = int(s.eff[r])
            # when the episode is over: ``done`` (the cover reseated) or later, by the model's own physics
            # (a wanderer found at ``done`` and walked home; :meth:`handled_end_of`)
            end, ups = self.handled_end_of(r, max(float(on_site), self._done_t), done)
            s.end[r] = end
            if self.act_start[e, dev] == s.start[r]:  # already under way in the models' state
                self.act_end[e, dev] = end
            self.handled_end[e, dev] = end
            self.handled_rows.add(r)
            ended.append(r)
            extra.extend(t for t in ups if t > self._done_t)
        if not ended:
            return []
        lo = self._tptr
        keep = ~(np.isin(self._trig_row[lo:], ended) & (self._trig_time[lo:] > done))
        t = np.concatenate([self._trig_time[lo:][keep], np.asarray(extra, dtype=np.float64)])
        d = np.concatenate([self._trig_dev[lo:][keep], np.full(len(extra), dev, dtype=np.int64)])
        rr = np.concatenate([self._trig_row[lo:][keep], np.full(len(extra), ended[0], dtype=np.int64)])
        order = np.argsort(t, kind="stable")
        self._trig_time = np.concatenate([self._trig_time[:lo], t[order]])
        self._trig_dev = np.concatenate([self._trig_dev[:lo], d[order]])
        self._trig_row = np.concatenate([self._trig_row[:lo], rr[order]])
        return ended

    def handled_end_of(self, row: int, start: float, done: float) -> tuple[float, list[float]]:
        """A responder ends schedule row ``row``: work from ``start`` (on site, after the tick already
        generated) until ``done``. Returns when the episode is over and the state-change uplinks the device
        sends because of it. Default: over at ``done``, one uplink :data:`HANDLED_UPLINK_S` after it.
        Models whose world takes time to settle (water pumped out, a wanderer walked home) override it; no
        random draw."""
        return done, [done + HANDLED_UPLINK_S]

    # -- ground truth ---------------------------------------------------------------------------------
    def truth(self, run_end: float) -> list[TruthRecord]:
        s = self.schedule
        out: list[TruthRecord] = []
        for i in range(len(s)):
            rec = self.truth_of(i, s, run_end)
            if rec is not None:
                out.append(rec)
        return out

    def truth_of(self, row: int, s: Schedule, run_end: float) -> TruthRecord | None:
        e = self.EFFECTS[int(s.eff[row])]
        if e.label is None:
            return None
        return TruthRecord(
            self.sites.device_id[int(s.dev[row])],
            self.KIND,
            e.label,
            float(s.start[row]),
            float(min(s.end[row], run_end)),
            self.severity_of(row, s),
            handled=row in self.handled_rows,
        )

    def severity_of(self, row: int, s: Schedule) -> Severity:
        return self.EFFECTS[int(s.eff[row])].severity

    # -- stepping -------------------------------------------------------------------------------------
    def active(self, name: str, idx: I64, tau: F64) -> npt.NDArray[np.bool_]:
        e = self.eidx[name]
        return np.asarray((self.act_start[e, idx] <= tau) & (tau < self.act_end[e, idx]), dtype=np.bool_)

    def elapsed(self, name: str, idx: I64, tau: F64) -> F64:
        return np.asarray(tau - self.act_start[self.eidx[name], idx], dtype=np.float64)

    def duration(self, name: str, idx: I64) -> F64:
        """Length of each device's latest episode of ``name`` (0 when it never had one)."""
        e = self.eidx[name]
        st, en = self.act_start[e, idx], self.act_end[e, idx]
        ok = np.isfinite(st) & np.isfinite(en)
        return np.where(ok, en - np.where(ok, st, 0.0), 0.0)

    def param(self, name: str, idx: I64, j: int) -> F64:
        return np.asarray(self.act_p[self.eidx[name], idx, j], dtype=np.float64)

    def _activate(self, t1: float) -> None:
        s = self.schedule
        hi = int(np.searchsorted(s.start, t1, side="left"))
        if hi > self._ptr:
            sl = slice(self._ptr, hi)
            self.act_start[s.eff[sl], s.dev[sl]] = s.start[sl]
            self.act_end[s.eff[sl], s.dev[sl]] = s.end[sl]
            self.act_p[s.eff[sl], s.dev[sl]] = s.p[sl]
            self._ptr = hi

    def step(self, t0: float, t1: float) -> Emission:
        """All uplinks of this kind in ``[t0, t1)``, encoded, in time order."""
        self._activate(t1)
        self._done_t = max(self._done_t, t1)
        hb_idx: list[I64] = []
        hb_t: list[F64] = []
        while True:
            due = np.flatnonzero(self.next_hb < t1)
            if len(due) == 0:
                break
            hb_idx.append(due)
            hb_t.append(self.next_hb[due].copy())
            self.next_hb[due] += self.hb_period[due]
        hi = int(np.searchsorted(self._trig_time, t1, side="left"))
        tr_idx = self._trig_dev[self._tptr : hi]
        tr_t = self._trig_time[self._tptr : hi]
        self._tptr = hi
        idx = np.concatenate([*hb_idx, tr_idx]) if hb_idx else tr_idx.copy()
        tau = np.concatenate([*hb_t, tr_t]) if hb_t else tr_t.copy()
        is_hb = np.zeros(len(idx), dtype=bool)
        is_hb[: len(idx) - len(tr_idx)] = True
        if len(idx) and self._silent.any():
            e_sil = np.flatnonzero(self._silent)
            sil = ((self.act_start[e_sil][:, idx] <= tau) & (tau < self.act_end[e_sil][:, idx])).any(axis=0)
            keep = ~sil
            idx, tau, is_hb = idx[keep], tau[keep], is_hb[keep]
        order = np.lexsort((idx, tau))
        idx, tau, is_hb = idx[order], tau[order], is_hb[order]
        m = len(idx)
        if m == 0:
            return Emission(
                self.KIND, idx, tau, np.empty(0, np.uint32), np.empty((0, self.codec.size), np.uint8)
            )
        # per device in time order: rank within the tick (sequence numbers) and the previous uplink's time
        by_dev = np.lexsort((tau, idx))
        sorted_idx = idx[by_dev]
        first = np.r_[True, sorted_idx[1:] != sorted_idx[:-1]]
        group_start = np.maximum.accumulate(np.where(first, np.arange(m), 0))
        rank = np.empty(m, dtype=np.int64)
        rank[by_dev] = np.arange(m) - group_start
        prev_sorted = np.where(first, self.last_up[sorted_idx], np.r_[0.0, tau[by_dev][:-1]])
        prev = np.empty(m)
        prev[by_dev] = prev_sorted
        self._prev_up = prev
        try:
            values, flags, battery = self.sample(idx, tau)
        finally:
            self._prev_up = None
        flags = flags | np.where(is_hb, self.spec.flag("heartbeat").mask, 0)
        seq = (self.seq[idx] + rank) & 0xFFFF
        np.add.at(self.seq, idx, 1)
        np.maximum.at(self.last_up, idx, tau)
        payloads = encode_many(self.codec, seq, flags, battery, self.fw[idx], values)
        return Emission(self.KIND, idx, tau, seq.astype(np.uint32), payloads)

    def sample(self, idx: I64, tau: F64) -> tuple[F64, npt.NDArray[np.int64], F64]:
        raise NotImplementedError
