"""Alert lifecycle: per-device episode state machines, one table per (kind, event type), vectorised.

Why a separate module: every rule of every kind needs the same lifecycle, and getting it right once is
what makes alerts trustworthy (Alertmanager/Grafana users complain about alarms without hysteresis,
without "warning -> critical if it persists", without reminders). A rule only says, per reading, what
level the condition is at (:data:`CLEAR`, :data:`HOLD`, :data:`UNKNOWN` or a severity 1..3) and
whether the reading is proof enough on its own (``immediate``). This module turns that into steps:

* **raise** when the condition held for ``need_count`` readings in a row spanning ``for_s`` seconds (no
  two of them more than ``max_gap_s`` apart), or at once for an ``immediate`` reading, or - for a
  reading that carries ``confirm_after`` - when that many seconds pass without a reading that contradicts
  it (devices that uplink at once on a return to normal: their silence is evidence, raised by ``due``).
  The episode id is the time of the *first* reading that showed the condition (or the rule's
  ``since``), so replays and restarts keep it.
* **update** when the level rises (MEDIUM -> HIGH), when a MEDIUM episode persists ``escalate_after_s``
  (warning -> critical) and, as a reminder, every ``remind_every_s`` while open.
* **clear** after ``clear_count`` readings at :data:`CLEAR` and at least ``min_open_s`` after raising,
  or - for a :data:`HOLD` reading that carries ``clear_after`` (the condition is over but not yet for
  long enough to trust it) - when that many seconds pass without an active or plain HOLD reading
  (devices that uplink at once when the condition returns: their silence is evidence, cleared by ``due``).
  :data:`HOLD` (the hysteresis band between the raise and clear thresholds) keeps an episode open and
  resets a pending one; :data:`UNKNOWN` (not measured) changes nothing.

``step`` takes the readings of unique devices and returns the transitions as index arrays; only emitted
steps cost Python work. ``step_batch`` takes a whole batch sorted by device
(:mod:`alerts.detection.segments`): a device with nothing open or pending ignores its readings until its
first active one (they change nothing), so only the devices where something goes on are stepped, rank
by rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from alerts.detection.detectors.base import grow
from alerts.detection.segments import Segments
from firmware_bridge.kernel.events import AlertPhase, Severity

UNKNOWN = -2
HOLD = -1
CLEAR = 0

_STATE: dict[str, tuple[str, float]] = {
    "open_sev": ("i1", 0),
    "episode_ms": ("i8", -1),
    "opened_at": ("f8", np.nan),
    "last_step_at": ("f8", np.nan),
    "pending_since": ("f8", np.nan),
    "pending_count": ("i4", 0),
    "pending_last": ("f8", np.nan),
    "clear_count": ("i4", 0),
    "value": ("f8", np.nan),
    "frame_time": ("f8", np.nan),
    "deadline": ("f8", np.nan),  # raise at this time unless a CLEAR/HOLD reading comes first
    "pending_sev": ("i1", 0),
    "pending_value": ("f8", np.nan),
    "clear_at": ("f8", np.nan),  # an open episode clears at this time unless an active/HOLD reading comes
}


@dataclass(frozen=True)
class EpisodeRule:
    """Timing of one event type's lifecycle (per kind; thresholds live in the profile)."""

    need_count: int = 1
    for_s: float = 0.0
    clear_count: int = 1
    min_open_s: float = 0.0
    escalate_after_s: float = math.inf
    remind_every_s: float = math.inf
    max_gap_s: float = math.inf  # readings further apart than this do not confirm each other


@dataclass(frozen=True)
class Transitions:
    """Steps produced by one call: ``idx`` into the call's arrays, with phase and severity per step."""

    idx: npt.NDArray[np.int64]
    phase: list[AlertPhase]
    severity: npt.NDArray[np.int8]


_EMPTY = Transitions(np.zeros(0, dtype=np.int64), [], np.zeros(0, dtype=np.int8))


@dataclass(frozen=True)
class BatchSteps:
    """Steps of one :meth:`EpisodeTable.step_batch`: reading index, phase, severity and the episode id
    the step belongs to (read when it happened: a device may clear and raise again in one batch)."""

    idx: npt.NDArray[np.int64]
    phase: list[AlertPhase]
    severity: npt.NDArray[np.int8]
    episode_ms: npt.NDArray[np.int64]


class EpisodeTable:
    """Episode state of one event type for every device of a kind (arrays indexed by device row)."""

    def __init__(self, rule: EpisodeRule) -> None:
        self.rule = rule
        self.capacity = 0
        # False only when a full scan (in ``due``) found nothing open or pending: lets ``step`` skip the
        # common all-quiet case with one reduction. Conservative: True whenever in doubt.
        self.busy = True
        self.arrays: dict[str, npt.NDArray[Any]] = {
            k: np.full(0, fill, dtype=dt) for k, (dt, fill) in _STATE.items()
        }
        # the rows ``due`` looks at: every row open or pending is in ``_watch`` (ascending) or ``_new``
        # (rows a step or a time-raise may have opened or made pending since). None: not known yet (a
        # new or restored table), the next ``due`` scans every row. A tick then costs the few rows
        # where something goes on, not the whole table.
        self._watch: npt.NDArray[np.int64] | None = None
        self._new: list[npt.NDArray[np.int64]] = []
        # before this time no ``due`` can step anything (no deadline, escalation or reminder falls due),
        # as the last ``due`` that stepped nothing found; -inf: not known. Only a row becoming open or
        # pending (``_note``) can bring a due time earlier - a step that clears, resets or worsens an
        # episode only removes or postpones them - so that is what forgets the bound. A small gateway
        # ticks many times a second: most ticks of most tables then cost one comparison.
        self._quiet_until = -math.inf
        # Without reminders that holds exactly (a worsening step sets ``last_step_at`` to its reading's
        # time, which may be earlier than a tick's reminder; only reminders read it), so such a table
        # keeps its bound exact instead of forgetting it: the rows noted since lower it to their own due
        # times (``_quiet_for_new``, ``_bounded`` of ``_new`` already counted), and a ``due`` that
        # stepped something notes the next time too (``_settle``). Either way, as before, it is a true
        # bound and ``due`` steps exactly what is due; a table with reminders keeps the rules above.
        self._exact = math.isinf(rule.remind_every_s)
        self._bounded = 0
        # per row: may be open or pending (every such row is; set with ``_note``, made exact by
        # ``_watched``). None: not known yet, derived from the arrays when first needed. A batch with no
        # active reading for this event type and none of its devices engaged steps nothing: one gather
        self._engaged: npt.NDArray[np.bool_] | None = None

    def resize(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        for k, (_dt, fill) in _STATE.items():
            self.arrays[k] = grow(self.arrays[k], capacity, fill)
        if self._engaged is not None:
            self._engaged = grow(self._engaged, capacity, False)
        self.capacity = capacity

    def open_rows(self) -> npt.NDArray[np.int64]:
        return np.flatnonzero(self.arrays["open_sev"][: self.capacity] > 0)

    # -- readings ------------------------------------------------------------------------------------
    def step(
        self,
        rows: npt.NDArray[np.int64],
        t: npt.NDArray[np.float64],
        level: npt.NDArray[np.int8],
        value: npt.NDArray[np.float64],
        immediate: npt.NDArray[np.bool_] | None = None,
        since: npt.NDArray[np.float64] | None = None,
        confirm_after: npt.NDArray[np.float64] | None = None,
        clear_after: npt.NDArray[np.float64] | None = None,
    ) -> Transitions:
        """Advance the machines of ``rows`` (unique) by one reading each.

        Sections whose rows are all quiet are skipped (one count each), so a rank where nothing happens
        costs a few array operations whatever the table holds.
        """
        a = self.arrays
        r = self.rule
        active = level > 0
        any_active = np.count_nonzero(active) > 0
        if not (self.busy or any_active):
            return _EMPTY  # nothing open or pending anywhere and nothing new: the common case
        open_sev = a["open_sev"][rows]
        is_open = open_sev > 0
        pending_count = a["pending_count"][rows]
        any_open = np.count_nonzero(is_open) > 0
        any_pending = np.count_nonzero(pending_count) > 0
        if not (any_active or any_open or any_pending):
            return _EMPTY  # nothing going on for these devices
        self.busy = True
        idx_parts: list[npt.NDArray[np.int64]] = []
        phases: list[AlertPhase] = []
        sev_parts: list[npt.NDArray[np.int8]] = []

        # pending bookkeeping for closed episodes (a device with nothing pending and no active reading
        # has nothing to reset: pending_since and deadline are NaN whenever pending_count is 0)
        closed = ~is_open
        if any_pending:
            gap = t - a["pending_last"][rows]
            stale = closed & active & (pending_count > 0) & (gap > r.max_gap_s)
            if np.count_nonzero(stale):
                a["pending_count"][rows[stale]] = 0
                pending_count = a["pending_count"][rows]
            reset = closed & ((level == CLEAR) | (level == HOLD))
            if np.count_nonzero(reset):
                rz = rows[reset]
                a["pending_count"][rz] = 0
                a["pending_since"][rz] = np.nan
        else:
            stale = None
            reset = None
        cont = closed & active
        if np.count_nonzero(cont):
            self._note(rows[cont])
            start = cont & (pending_count == 0)
            a["pending_since"][rows[start]] = t[start]
            rc = rows[cont]
            a["pending_last"][rc] = t[cont]
            a["pending_count"][rc] += 1
            if reset is not None:
                a["deadline"][rows[reset | stale]] = np.nan
            pend = a["pending_since"][rows]
            ready = cont & (
                (np.zeros(len(rows), dtype=bool) if immediate is None else immediate)
                | ((a["pending_count"][rows] >= r.need_count) & ((t - pend) >= r.for_s))
            )
            if np.count_nonzero(ready):
                rr = rows[ready]
                a["open_sev"][rr] = level[ready]
                begin = np.where(np.isfinite(pend[ready]), pend[ready], t[ready])
                if since is not None:
                    begin = np.fmin(begin, np.where(since[ready] <= t[ready], since[ready], np.nan))
                a["episode_ms"][rr] = np.floor(begin * 1000.0)
                a["opened_at"][rr] = t[ready]
                a["last_step_at"][rr] = t[ready]
                a["pending_count"][rr] = 0
                a["pending_since"][rr] = np.nan
                a["clear_count"][rr] = 0
                a["value"][rr] = value[ready]
                a["frame_time"][rr] = t[ready]
                a["deadline"][rr] = np.nan
                a["clear_at"][rr] = np.nan
                i = np.flatnonzero(ready)
                idx_parts.append(i)
                phases += [AlertPhase.RAISED] * len(i)
                sev_parts.append(level[ready].astype(np.int8))
            wait = cont & ~ready
            if np.count_nonzero(wait):
                rw = rows[wait]
                again = a["pending_count"][rw] > 1
                a["pending_sev"][rw] = np.maximum(a["pending_sev"][rw] * again, level[wait])
                a["pending_value"][rw] = value[wait]
                if confirm_after is not None:
                    due_at = t[wait] + confirm_after[wait]
                    a["deadline"][rw] = np.fmin(a["deadline"][rw], due_at)  # NaN-aware: keeps the earliest
        elif reset is not None:
            a["deadline"][rows[reset | stale]] = np.nan

        if not any_open:
            if not idx_parts:
                return _EMPTY
            return Transitions(idx_parts[0], phases, sev_parts[0])
        # open episodes: severity rises, hold, clear
        worse = is_open & active & (level > open_sev)
        if np.count_nonzero(worse):
            rr = rows[worse]
            a["open_sev"][rr] = level[worse]
            a["last_step_at"][rr] = t[worse]
            a["value"][rr] = value[worse]
            a["frame_time"][rr] = t[worse]
            i = np.flatnonzero(worse)
            idx_parts.append(i)
            phases += [AlertPhase.UPDATED] * len(i)
            sev_parts.append(level[worse].astype(np.int8))
        keep = is_open & ((level == HOLD) | active)
        a["clear_count"][rows[keep]] = 0
        # a clear timer: armed by a HOLD reading carrying clear_after, cancelled by any other HOLD or
        # active reading (CLEAR readings count towards clear_count and leave it; UNKNOWN changes nothing)
        if clear_after is not None:
            arm = keep & (level == HOLD) & np.isfinite(clear_after)
        else:
            arm = np.zeros(len(rows), dtype=bool)
        a["clear_at"][rows[keep & ~arm]] = np.nan
        if np.count_nonzero(arm):
            ra = rows[arm]
            a["clear_at"][ra] = t[arm] + clear_after[arm]  # type: ignore[index]
            # the frame that says it is over: what a timer's cleared step (and a reminder meanwhile) reports
            a["value"][ra] = value[arm]
            a["frame_time"][ra] = t[arm]
            self._note(ra)
        oa = is_open & active
        a["value"][rows[oa]] = value[oa]
        calm = is_open & (level == CLEAR)
        if np.count_nonzero(calm):
            a["clear_count"][rows[calm]] += 1
            done = (
                calm
                & (a["clear_count"][rows] >= r.clear_count)
                & ((t - a["opened_at"][rows]) >= r.min_open_s)
            )
            if np.count_nonzero(done):
                rr = rows[done]
                i = np.flatnonzero(done)
                idx_parts.append(i)
                phases += [AlertPhase.CLEARED] * len(i)
                sev_parts.append(a["open_sev"][rr].astype(np.int8))
                a["open_sev"][rr] = 0
                a["clear_count"][rr] = 0
                a["clear_at"][rr] = np.nan
                a["value"][rr] = value[done]
                a["frame_time"][rr] = t[done]
        if not idx_parts:
            return _EMPTY
        if len(idx_parts) == 1:
            return Transitions(idx_parts[0], phases, sev_parts[0])
        return Transitions(np.concatenate(idx_parts), phases, np.concatenate(sev_parts))

    def step_batch(
        self,
        seg: Segments,
        t: npt.NDArray[np.float64],
        level: npt.NDArray[np.int8],
        value: npt.NDArray[np.float64],
        immediate: npt.NDArray[np.bool_] | None = None,
        since: npt.NDArray[np.float64] | None = None,
        confirm_after: npt.NDArray[np.float64] | None = None,
        clear_after: npt.NDArray[np.float64] | None = None,
    ) -> BatchSteps | None:
        """Advance the machines over a batch sorted by device (``seg``); None when nothing happened.

        Exactly :meth:`step` reading by reading of each device: a device with nothing open or pending
        skips its readings before its first active one (``step`` would change nothing for them), one
        with an episode open that its readings neither clear nor worsen is a scan, and the rest run
        rank by rank.
        """
        active = level > 0
        any_active = np.count_nonzero(active)
        if not (self.busy or any_active):
            return None
        rows = seg.rows
        if not any_active:
            engaged = self._engaged
            if engaged is None:
                a = self.arrays
                engaged = self._engaged = (a["open_sev"] > 0) | (a["pending_count"] > 0)
            if not engaged[rows].any():
                return None  # nothing going on for these devices and nothing new
        if seg.single:
            tr = self.step(rows, t, level, value, immediate, since, confirm_after, clear_after)
            if not len(tr.idx):
                return None
            return BatchSteps(tr.idx, tr.phase, tr.severity, self.arrays["episode_ms"][rows[tr.idx]])
        a = self.arrays
        open0 = a["open_sev"][rows]
        quiet = (open0 == 0) & (a["pending_count"][rows] == 0)
        if quiet.all() and not np.count_nonzero(active):
            return None  # nothing going on for these devices and nothing new
        # only the devices with an episode open or pending, or an active reading, can step: the rest
        # of the batch is left out before any scan
        live = np.flatnonzero(np.repeat(seg.any(~quiet | active), seg.lengths))
        lseg = Segments(rows[live])
        l_open, l_quiet, l_level, l_active = open0[live], quiet[live], level[live], active[live]
        todo_m = ~l_quiet | lseg.seen(l_active)
        # an open episode whose readings neither clear nor worsen it (a long low battery, an ongoing
        # inactivity) steps to no transition: only its clear count and reported value move
        # (a reading that arms a clear timer is not inert; the others cancel one, like a step would)
        arms = (l_level == HOLD) & np.isfinite(clear_after[live]) if clear_after is not None else False
        inert = ~lseg.any((l_open <= 0) | (l_level == CLEAR) | (l_level > l_open) | arms)
        if inert.any():
            ir = np.repeat(inert, lseg.lengths)
            held, _i = lseg.last_where(ir & ((l_level == HOLD) | l_active))
            a["clear_count"][held] = 0
            a["clear_at"][held] = np.nan
            lseg.store_last(a["value"], value[live], ir & l_active)
            self.busy = True
            todo_m &= ~ir
        todo = live[todo_m]
        if not len(todo):
            return None
        sub = Segments(rows[todo])
        idx: list[npt.NDArray[np.int64]] = []
        phases: list[AlertPhase] = []
        sev: list[npt.NDArray[np.int8]] = []
        ep: list[npt.NDArray[np.int64]] = []
        for k in sub.ranks():
            ix = todo[k]
            tr = self.step(
                rows[ix],
                t[ix],
                level[ix],
                value[ix],
                None if immediate is None else immediate[ix],
                None if since is None else since[ix],
                None if confirm_after is None else confirm_after[ix],
                None if clear_after is None else clear_after[ix],
            )
            if len(tr.idx):
                j = ix[tr.idx]
                idx.append(j)
                phases += tr.phase
                sev.append(tr.severity)
                ep.append(a["episode_ms"][rows[j]])
        if not idx:
            return None
        return BatchSteps(np.concatenate(idx), phases, np.concatenate(sev), np.concatenate(ep))

    # -- time ------------------------------------------------------------------------------------------
    def _note(self, rows: npt.NDArray[np.int64]) -> None:
        """``rows`` may have become open or pending: ``due`` must look at them."""
        self._new.append(rows)
        if not self._exact:
            self._quiet_until = -math.inf
        if self._engaged is not None:
            self._engaged[rows] = True
        if len(self._new) >= 64:  # no tick for a long while: keep the list short
            self._new = [np.unique(np.concatenate(self._new))]
            self._bounded = 0  # (the bound may count some of them twice: a min, that is harmless)

    def _watched(self) -> npt.NDArray[np.int64]:
        """The rows open or pending now, ascending."""
        a = self.arrays
        n = self.capacity
        if self._watch is None:
            cand = np.arange(n, dtype=np.int64)
        elif self._new:
            cand = np.union1d(self._watch, np.concatenate(self._new)).astype(np.int64)
        else:
            cand = self._watch
        w = cand[(a["open_sev"][cand] > 0) | (a["pending_count"][cand] > 0)]
        self._watch, self._new, self._bounded = w, [], 0
        engaged = np.zeros(n, dtype=bool)
        engaged[w] = True
        self._engaged = engaged
        return w

    def _due_times(self, w: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """When ``due`` could step the rows ``w`` next (NaN-free): a pending deadline, an escalation or a
        reminder."""
        a, r = self.arrays, self.rule
        sev = a["open_sev"][w]
        times = [a["deadline"][w][(sev == 0) & (a["pending_count"][w] > 0)], a["clear_at"][w][sev > 0]]
        if not math.isinf(r.escalate_after_s):
            times.append(a["opened_at"][w][(sev > 0) & (sev < Severity.HIGH)] + r.escalate_after_s)
        if not math.isinf(r.remind_every_s):
            times.append(a["last_step_at"][w][sev > 0] + r.remind_every_s)
        at = np.concatenate(times)
        out: npt.NDArray[np.float64] = at[~np.isnan(at)]  # NaN is never due
        return out

    def _quiet_for_new(self, now: float) -> bool:
        """With a known bound: lower it to the due times of the rows noted since, and say whether ``now``
        is still before it (nothing can be due)."""
        new = self._new[self._bounded :]
        if new:
            at = self._due_times(new[0] if len(new) == 1 else np.concatenate(new))
            self._bounded = len(self._new)
            if len(at):
                self._quiet_until = min(self._quiet_until, float(at.min()) - 1e-3)
        return now < self._quiet_until

    def due(self, now: float) -> Transitions:
        """Time-driven steps over all devices: escalation of persisting MEDIUM episodes and reminders.

        ``idx`` here are device rows.
        """
        a = self.arrays
        r = self.rule
        if self.capacity == 0 or not self.busy:
            return _EMPTY
        if now < self._quiet_until and (not self._exact or self._quiet_for_new(now)):
            return _EMPTY
        w = self._watched()
        if not len(w):
            self.busy = False
            return _EMPTY
        confirmed = _join(self._confirm_due(now, w), self._clear_due(now, w))
        if math.isinf(r.escalate_after_s) and math.isinf(r.remind_every_s):
            return self._idle(confirmed, w)
        sev = a["open_sev"][w]
        if not sev.any():
            return self._idle(confirmed, w)  # nothing open for this event type (only pending ones)
        opened = a["opened_at"][w]
        esc = (sev > 0) & (sev < Severity.HIGH) & ((now - opened) >= r.escalate_after_s)
        rem = (sev > 0) & ~esc & ((now - a["last_step_at"][w]) >= r.remind_every_s)
        rows_e = w[esc]
        rows_r = w[rem]
        if len(rows_e) == 0 and len(rows_r) == 0:
            return self._idle(confirmed, w)
        a["open_sev"][rows_e] = int(Severity.HIGH)
        a["last_step_at"][rows_e] = now
        a["last_step_at"][rows_r] = now
        idx = np.concatenate([confirmed.idx, rows_e, rows_r]).astype(np.int64)
        sev_out = np.concatenate(
            [
                confirmed.severity,
                np.full(len(rows_e), int(Severity.HIGH), dtype=np.int8),
                a["open_sev"][rows_r].astype(np.int8),
            ]
        )
        if self._exact:
            self._settle(w)
        return Transitions(idx, confirmed.phase + [AlertPhase.UPDATED] * (len(rows_e) + len(rows_r)), sev_out)

    def _idle(self, confirmed: Transitions, w: npt.NDArray[np.int64]) -> Transitions:
        """``due``'s result when it escalated and reminded nothing; with nothing confirmed either (or in
        an exact table), the table notes when it can step next (:meth:`_settle`)."""
        if self._exact or not len(confirmed.idx):
            self._settle(w)
        return confirmed

    def _settle(self, w: npt.NDArray[np.int64]) -> None:
        """After ``due`` stepped what was due: note the earliest time a later ``due`` could step the
        watched rows ``w`` (their state as it is now): a pending deadline, an escalation or a reminder.
        A millisecond early, so that rounding in ``due``'s ``now - opened >= after`` never steps before
        the bound says. (A step just taken only moves its row's times later.)"""
        at = self._due_times(w)
        self._quiet_until = float(at.min()) - 1e-3 if len(at) else math.inf

    def _confirm_due(self, now: float, w: npt.NDArray[np.int64]) -> Transitions:
        """Raise pending episodes whose ``confirm_after`` deadline passed with no contradicting reading."""
        a = self.arrays
        hit = w[(a["open_sev"][w] == 0) & (a["pending_count"][w] > 0) & (a["deadline"][w] <= now)]
        if len(hit) == 0:
            return _EMPTY
        sev = np.maximum(a["pending_sev"][hit], 1).astype(np.int8)
        a["open_sev"][hit] = sev
        a["episode_ms"][hit] = np.floor(a["pending_since"][hit] * 1000.0)
        a["opened_at"][hit] = now
        a["last_step_at"][hit] = now
        a["value"][hit] = a["pending_value"][hit]
        a["frame_time"][hit] = a["pending_last"][hit]
        a["pending_count"][hit] = 0
        a["pending_since"][hit] = np.nan
        a["clear_count"][hit] = 0
        a["deadline"][hit] = np.nan
        return Transitions(hit.astype(np.int64), [AlertPhase.RAISED] * len(hit), sev)

    def _clear_due(self, now: float, w: npt.NDArray[np.int64]) -> Transitions:
        """Clear open episodes whose ``clear_after`` timer passed with no active or HOLD reading since."""
        a = self.arrays
        hit = w[(a["open_sev"][w] > 0) & (a["clear_at"][w] <= now)]
        if len(hit) == 0:
            return _EMPTY
        sev = a["open_sev"][hit].astype(np.int8)
        a["open_sev"][hit] = 0
        a["clear_count"][hit] = 0
        a["clear_at"][hit] = np.nan
        return Transitions(hit.astype(np.int64), [AlertPhase.CLEARED] * len(hit), sev)

    def raise_rows(
        self, rows: npt.NDArray[np.int64], now: float, severity: int, episode_s: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.int64]:
        """Open episodes decided by time alone (a silent device); returns the index into ``rows`` raised."""
        a = self.arrays
        sel = a["open_sev"][rows] == 0
        new = rows[sel]
        a["open_sev"][new] = severity
        self.busy = True
        self._note(new)
        a["episode_ms"][new] = np.floor(episode_s[sel] * 1000.0)
        a["opened_at"][new] = now
        a["last_step_at"][new] = now
        a["value"][new] = np.nan
        a["frame_time"][new] = episode_s[sel]
        return np.flatnonzero(sel)

    def close_rows(
        self, rows: npt.NDArray[np.int64], t: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int8]]:
        """Close open episodes of ``rows`` (a silent device spoke again): index into rows, old severity."""
        a = self.arrays
        i = np.flatnonzero(a["open_sev"][rows] > 0)
        rr = rows[i]
        sev = a["open_sev"][rr].astype(np.int8)
        a["open_sev"][rr] = 0
        a["clear_count"][rr] = 0
        a["frame_time"][rr] = t[i]
        return i, sev


def _join(x: Transitions, y: Transitions) -> Transitions:
    if not len(y.idx):
        return x
    if not len(x.idx):
        return y
    return Transitions(
        np.concatenate([x.idx, y.idx]), x.phase + y.phase, np.concatenate([x.severity, y.severity])
    )
