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

``step`` takes the readings of unique devices (the engine feeds the k-th reading of every device in one
call) and returns the transitions as index arrays; only emitted steps cost Python work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bridge.kernel.events import AlertPhase, Severity
from tests.alerts.detection.reference.detectors.base import grow

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

    def resize(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        for k, (_dt, fill) in _STATE.items():
            self.arrays[k] = grow(self.arrays[k], capacity, fill)
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
            self.busy = True
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

    # -- time ------------------------------------------------------------------------------------------
    def due(self, now: float) -> Transitions:
        """Time-driven steps over all devices: escalation of persisting MEDIUM episodes and reminders.

        ``idx`` here are device rows.
        """
        a = self.arrays
        r = self.rule
        n = self.capacity
        if n == 0:
            return _EMPTY
        if self.busy and not ((a["open_sev"][:n] > 0).any() or (a["pending_count"][:n] > 0).any()):
            self.busy = False
        if not self.busy:
            return _EMPTY
        confirmed = _join(self._confirm_due(now), self._clear_due(now))
        if math.isinf(r.escalate_after_s) and math.isinf(r.remind_every_s):
            return confirmed
        sev = a["open_sev"][:n]
        if not sev.any():
            return confirmed  # nothing open for this event type (only pending ones)
        opened = a["opened_at"][:n]
        esc = (sev > 0) & (sev < Severity.HIGH) & ((now - opened) >= r.escalate_after_s)
        rem = (sev > 0) & ~esc & ((now - a["last_step_at"][:n]) >= r.remind_every_s)
        rows_e = np.flatnonzero(esc)
        rows_r = np.flatnonzero(rem)
        if len(rows_e) == 0 and len(rows_r) == 0:
            return confirmed
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
        return Transitions(idx, confirmed.phase + [AlertPhase.UPDATED] * (len(rows_e) + len(rows_r)), sev_out)

    def _confirm_due(self, now: float) -> Transitions:
        """Raise pending episodes whose ``confirm_after`` deadline passed with no contradicting reading."""
        a = self.arrays
        n = self.capacity
        dl = a["deadline"][:n]
        hit = np.flatnonzero((a["open_sev"][:n] == 0) & (a["pending_count"][:n] > 0) & (dl <= now))
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

    def _clear_due(self, now: float) -> Transitions:
        """Clear open episodes whose ``clear_after`` timer passed with no active or HOLD reading since."""
        a = self.arrays
        n = self.capacity
        hit = np.flatnonzero((a["open_sev"][:n] > 0) & (a["clear_at"][:n] <= now))
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
