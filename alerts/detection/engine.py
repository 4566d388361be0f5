"""The gateway's detection engine: readings in, alert lifecycle steps out, vectorised per batch.

Why this shape:

* **State is arrays indexed by device row** (a dict ``device_id -> row``, arrays grown by doubling), so a
  batch of 10,000 frames is a handful of numpy operations per rule instead of 10,000 Python iterations.
* **Several frames of one device in a batch** (a backlog after an outage) are ordered by time within the
  device and fed *rank by rank*: all devices' first frames, then all second frames, ... Each rank has
  unique devices, so the per-device state machines stay exact and still vectorised.
* **Idempotent**: a frame with the device's last sequence number, or older than its last accepted frame,
  is counted (``duplicates``/``stale``) and ignored, so a re-fed or replayed batch never raises a second
  alert for an episode nor re-raises a cleared one. Sequence numbers slightly *behind* the last one
  (within :data:`SEQ_REPLAY_WINDOW`) are replays; a jump back further is a rebooted device.
* **Crash-safe**: :meth:`DetectionEngine.snapshot` / :meth:`DetectionEngine.restore` (numpy ``.npz`` with
  a JSON header, no pickle) keep every episode's id, so a restarted gateway resumes instead of re-paging.

Python work happens only per *emitted alert step* (rare) and per *new device* (once).
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from alerts.contract import AlertEvent
from alerts.detection.episodes import EpisodeTable
from alerts.detection.kindstate import KindState
from alerts.detection.profiles import ProfileSet
from alerts.detection.registry import RULES
from alerts.detection.rulekit import OK_KEY_MARK, RuleContext, Verdict
from alerts.detection.segments import Segments
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch

_log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
SEQ_REPLAY_WINDOW = 16
DEFAULT_GRACE_PERIOD = 4  # calm readings before a learned baseline is trusted (2 days of heartbeats)
_MAX_TIME = 4_102_444_800.0
_SEVERITY: dict[int, Severity] = {int(s): s for s in Severity}
_TEXT: dict[Any, str] = {
    **{m: m.value for e in (EventType, AlertPhase, DeviceKind) for m in e},
    **{m: m.name for m in Severity},
}
_PHASE_ORDER = {AlertPhase.RAISED: 0, AlertPhase.UPDATED: 1, AlertPhase.CLEARED: 2}
# the steps of one event type in a batch: (type, its position among the kind's verdicts, reading index,
# phase, severity, episode id, the per-reading values the steps report, the per-reading "I'm OK" cause of
# a clear or None)
_Steps = tuple[
    EventType,
    int,
    npt.NDArray[np.int64],
    list[AlertPhase],
    npt.NDArray[np.int8],
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
    npt.NDArray[np.bool_] | None,
]


class EngineError(Exception):
    """Base of the engine's errors."""


class SnapshotError(EngineError, ValueError):
    """A snapshot could not be read (corrupt, truncated, or from an incompatible version)."""


@dataclass
class EngineCounters:
    frames_total: int = 0
    accepted_total: int = 0
    duplicates_total: int = 0
    stale_total: int = 0
    rejected_total: int = 0  # invalid device id or time
    alerts_total: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class DetectionEngine:
    """Vectorised detection for every device kind; see the module docstring."""

    def __init__(
        self,
        profiles: ProfileSet | None = None,
        *,
        grace_period: int = DEFAULT_GRACE_PERIOD,
        rules: Mapping[DeviceKind, Any] | None = None,
    ) -> None:
        """``rules`` replaces the registry's rule modules (a frozen earlier rule set for a benchmark)."""
        self.profiles = profiles or ProfileSet()
        self.grace_period = int(grace_period)
        modules = RULES if rules is None else rules
        self.kinds: dict[DeviceKind, KindState] = {
            k: KindState(k, self.profiles, self.grace_period, module=modules[k]) for k in modules
        }
        self.counters = EngineCounters()

    @property
    def devices(self) -> int:
        return sum(ks.n for ks in self.kinds.values())

    # -- readings --------------------------------------------------------------------------------------
    def process(self, batch: ReadingBatch, now: float) -> list[AlertEvent]:
        """Run one batch (one kind) through every rule; returns the alert steps it caused.

        The batch is sorted once by (device, time, seq); each device's readings are then a segment and
        every per-device recurrence a scan over segments (:mod:`alerts.detection.segments`), so the
        rules run once per batch whatever the number of readings per device. The steps come out in
        the order frame-by-frame ranks produced them (rank, event type, phase, device).
        """
        n = len(batch)
        self.counters.frames_total += n
        if n == 0:
            return []
        ks = self.kinds[batch.kind]
        rows = ks.rows_for(batch.device_id)
        t = batch.time
        seq = batch.seq.astype(np.int64)
        ok = (rows >= 0) & np.isfinite(t) & (t >= 0) & (t <= _MAX_TIME)
        if ok.all():
            order, same = _device_order(rows, t, seq, ks.scratch)
        else:
            bad = int((~ok).sum())
            self.counters.rejected_total += bad
            _log.warning("rejected %d %s readings with an invalid device id or time", bad, batch.kind.value)
            idx = np.flatnonzero(ok)
            if not len(idx):
                return []  # nothing valid (before: an empty batch crashed the silence bookkeeping)
            order = idx[_device_order(rows[idx], t[idx], seq[idx], ks.scratch)[0]]
            same = False
        # every device once and every reading valid (a quiet gateway's batch): the batch's own order,
        # so its columns are used as they are (nothing here writes into them)
        r, ts, sq = (rows, t, seq) if same else (rows[order], t[order], seq[order])
        seg = Segments(r)
        c = ks.common
        keep, last_t, ndup, nstale = _accept(seg, ts, sq, c["last_time"], c["last_seq"])
        self.counters.duplicates_total += ndup
        self.counters.stale_total += nstale
        rank = np.zeros(len(r), dtype=np.int64) if seg.single else seg.pos - seg.start
        if keep is not None:
            same = False
            order, r, ts, sq, last_t, rank = (
                order[keep],
                r[keep],
                ts[keep],
                sq[keep],
                last_t[keep],
                rank[keep],
            )
            if len(r) == 0:
                return []
            seg = Segments(r)
        self.counters.accepted_total += len(r)
        dt = ts - last_t
        seg.store_last(c["last_time"], ts)
        seg.store_last(c["last_seq"], sq)
        devs = seg.seg_rows
        if ks.silent_quiet_until > -math.inf:
            lim = ks.params.view(devs).silent_after_heartbeats
            ks.silent_quiet_until = min(
                ks.silent_quiet_until, float(np.min(ts[seg.ends] + lim * ks.spec.heartbeat_s)) - 1e-3
            )
        c["frames"][devs] += seg.lengths
        fresh = ~np.isfinite(c["first_time"][devs])
        c["first_time"][devs[fresh]] = ts[seg.starts[fresh]]

        steps: list[_Steps] = []
        silent = ks.episodes[EventType.DEVICE_SILENT]
        if silent.arrays["open_sev"][devs].any():
            firsts = seg.starts
            i, sev = silent.close_rows(devs, ts[firsts])
            j = firsts[i]
            ep = silent.arrays["episode_ms"][devs[i]]
            steps.append((EventType.DEVICE_SILENT, -1, j, [AlertPhase.CLEARED] * len(j), sev, ep, dt, None))
        ctx = RuleContext(
            spec=ks.spec,
            rows=r,
            t=ts,
            dt=dt,
            values=batch.values if same else batch.values[order],
            flags=batch.flags if same else batch.flags[order],
            battery=batch.battery_pct if same else batch.battery_pct[order],
            p=ks.params.view(r),
            state=ks.state,
            det=ks.det,
            seg=seg,
            batch_rank=rank,
            fw_version=batch.fw_version if same else batch.fw_version[order],
        )
        verdicts = _evaluate(ks.module, ctx)
        for pos, (et, v) in enumerate(verdicts.items()):
            bs = ks.episodes[et].step_batch(
                seg, ts, v.level, v.value, v.immediate, v.since, v.confirm_after, v.clear_after
            )
            if bs is not None:
                steps.append((et, pos, bs.idx, bs.phase, bs.severity, bs.episode_ms, v.value, v.cause))
        if not steps:
            return []
        events = self._emit(ks, steps, r, ts, rank, now)
        self.counters.alerts_total += len(events)
        return events

    def _emit(
        self,
        ks: KindState,
        steps: list[_Steps],
        rows: npt.NDArray[np.int64],
        t: npt.NDArray[np.float64],
        rank: npt.NDArray[np.int64],
        now: float,
    ) -> list[AlertEvent]:
        """Alert steps in the order frame-by-frame ranks gave them: rank, event type, phase, device. A
        CLEARED step at a reading whose verdict carries the "I'm OK" cause ends its message with
        :data:`~alerts.detection.rulekit.OK_KEY_MARK`."""
        todo: list[
            tuple[tuple[int, int, int, int], EventType, int, AlertPhase, int, int, float, float, bool]
        ] = []
        for et, pos, idx, phases, sev, ep, value, cause in steps:
            oks = [False] * len(idx) if cause is None else cause[idx].tolist()
            # the step's columns as Python values in one call each, not a numpy scalar per alert
            for row, rk, ft, val, ph, s, e, ok in zip(
                rows[idx].tolist(),
                rank[idx].tolist(),
                t[idx].tolist(),
                value[idx].tolist(),
                phases,
                sev.tolist(),
                ep.tolist(),
                oks,
                strict=True,
            ):
                todo.append(((rk, pos, _PHASE_ORDER[ph], row), et, row, ph, s, e, ft, val, ok))
        todo.sort(key=lambda x: x[0])
        return [
            self._event(ks, et, row, ph, s, now, ft, val, e, ok_key=ok and ph is AlertPhase.CLEARED)
            for _k, et, row, ph, s, e, ft, val, ok in todo
        ]

    def _event(
        self,
        ks: KindState,
        et: EventType,
        row: int,
        phase: AlertPhase,
        sev: int,
        now: float,
        frame_time: float,
        value: float,
        episode_ms: int | None = None,
        *,
        ok_key: bool = False,
    ) -> AlertEvent:
        """One step; ``episode_ms`` as it was when the step happened (default: the table's now); ``ok_key``:
        the step is a clear by the wearer's "I'm OK" key (its message ends with ``OK_KEY_MARK``)."""
        device = ks.ids[row]
        ep = int(ks.episodes[et].arrays["episode_ms"][row]) if episode_ms is None else int(episode_ms)
        etv = _TEXT[et]  # enum .value/.name are properties: looked up once per member, not per step
        aid = f"{device}/{etv}/{ep}"  # alert_id(device, et, ep) for a member, without the enum call
        v = float(value) if math.isfinite(value) else None
        named = _SEVERITY.get(sev)
        if named is None:
            named = Severity(sev)  # not a severity: raises as the contract would
        name = _TEXT[named]
        what = "cleared" if phase is AlertPhase.CLEARED else name
        msg = f"{_TEXT[ks.kind]} {device}: {etv} {what}" + (f" (value {v:.4g})" if v is not None else "")
        if ok_key:
            msg += f" {OK_KEY_MARK}"
        _log.info("alert %s %s %s", aid, _TEXT[phase], name)
        return AlertEvent(
            alert_id=aid,
            device_id=device,
            kind=ks.kind,
            event_type=et,
            severity=_SEVERITY[max(sev, 1)],
            phase=phase,
            episode_ms=ep,
            time=min(max(now, 0.0), _MAX_TIME),
            frame_time=min(max(frame_time, 0.0), _MAX_TIME),
            value=v,
            message=msg,
        )

    # -- time ------------------------------------------------------------------------------------------
    def tick(self, now: float) -> list[AlertEvent]:
        """Time-driven steps: silent devices, escalation of persisting warnings, reminders."""
        events: list[AlertEvent] = []
        for ks in self.kinds.values():
            n = ks.n
            if n == 0:
                continue
            last = ks.common["last_time"][:n]
            silent_tab = ks.episodes[EventType.DEVICE_SILENT]
            if not now < ks.silent_quiet_until:
                events += self._silence(ks, now, last, silent_tab)
            for et, tab in ks.episodes.items():
                tr = tab.due(now)
                if not tr.phase:
                    continue
                for r, ph, s in zip(tr.idx.tolist(), tr.phase, tr.severity.tolist(), strict=True):
                    val = float(tab.arrays["value"][r])
                    if et is EventType.DEVICE_SILENT:
                        val = float(now - last[r])
                    events.append(
                        self._event(ks, et, r, ph, int(s), now, float(tab.arrays["frame_time"][r]), val)
                    )
        self.counters.alerts_total += len(events)
        return events

    def _silence(
        self, ks: KindState, now: float, last: npt.NDArray[np.float64], silent_tab: EpisodeTable
    ) -> list[AlertEvent]:
        """Raise DEVICE_SILENT for the kind's devices not heard for their limit, and note when the next
        one can fall silent (the earliest among the rest; a millisecond early, as ``now - last >= limit``
        rounds; a device not heard yet, NaN, never does)."""
        events: list[AlertEvent] = []
        n = len(last)
        p = ks.params.view(np.arange(n, dtype=np.int64))
        limit = np.asarray(p.silent_after_heartbeats, dtype=np.float64) * ks.spec.heartbeat_s
        late = np.flatnonzero(now - last >= limit)  # never for NaN: a device not heard yet
        due = late[silent_tab.arrays["open_sev"][late] == 0]
        if len(due):
            sev_all = np.broadcast_to(np.asarray(p.silent_severity, dtype=np.int64), (n,))
            for s in np.unique(sev_all[due]).tolist():
                grp = due[sev_all[due] == s]
                raised = grp[silent_tab.raise_rows(grp, now, int(s), last[grp])]
                for r in raised.tolist():
                    events.append(
                        self._event(
                            ks,
                            EventType.DEVICE_SILENT,
                            r,
                            AlertPhase.RAISED,
                            int(s),
                            now,
                            float(last[r]),
                            float(now - last[r]),
                        )
                    )
        at = np.broadcast_to(last + limit, (n,))[silent_tab.arrays["open_sev"][:n] == 0]
        at = at[~np.isnan(at)]
        ks.silent_quiet_until = float(at.min()) - 1e-3 if len(at) else math.inf
        return events

    def open_alerts(self) -> list[AlertEvent]:
        """The latest step of every open episode (RAISED, or UPDATED after a change)."""
        out: list[AlertEvent] = []
        for ks in self.kinds.values():
            for et, tab in ks.episodes.items():
                a = tab.arrays
                for r in tab.open_rows().tolist():
                    phase = (
                        AlertPhase.UPDATED if a["last_step_at"][r] > a["opened_at"][r] else AlertPhase.RAISED
                    )
                    out.append(
                        self._event(
                            ks,
                            et,
                            r,
                            phase,
                            int(a["open_sev"][r]),
                            float(a["last_step_at"][r]),
                            float(a["frame_time"][r]),
                            float(a["value"][r]),
                        )
                    )
        return out

    # -- persistence -------------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Everything needed to resume: ``.npz`` (no pickle) with a JSON header."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **self.snapshot_arrays())
        return buf.getvalue()

    def snapshot_arrays(self) -> dict[str, Any]:
        """What :meth:`snapshot` writes, before it is written: ``{name: array}``, ``"header"`` a JSON
        string array (the arrays are views of the engine's state: read them before the next batch)."""
        arrays: dict[str, Any] = {}
        header: dict[str, Any] = {
            "version": SNAPSHOT_VERSION,
            "grace_period": self.grace_period,
            "counters": self.counters.as_dict(),
            "kinds": {},
        }
        for kind, ks in self.kinds.items():
            n = ks.n
            k = kind.value
            header["kinds"][k] = {"n": n}
            arrays[f"{k}/ids"] = np.array(ks.ids, dtype=np.str_)
            for name, arr in ks.common.items():
                arrays[f"{k}/common/{name}"] = arr[:n]
            for name, arr in ks.state.items():
                arrays[f"{k}/state/{name}"] = arr[:n]
            for dname, det in ks.det.items():
                for name, arr in det.arrays.items():
                    arrays[f"{k}/det/{dname}/{name}"] = arr[:n]
            for et, tab in ks.episodes.items():
                for name, arr in tab.arrays.items():
                    arrays[f"{k}/ep/{et.value}/{name}"] = arr[:n]
        arrays["header"] = np.array(json.dumps(header))
        return arrays

    @classmethod
    def restore(cls, data: bytes, profiles: ProfileSet | None = None) -> DetectionEngine:
        """Rebuild an engine from :meth:`snapshot` bytes; raises :class:`SnapshotError` if unreadable."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                files = {name: z[name] for name in z.files}
            header = json.loads(str(files["header"]))
            if header.get("version") != SNAPSHOT_VERSION:
                raise SnapshotError(f"snapshot version {header.get('version')} is not {SNAPSHOT_VERSION}")
            eng = cls(profiles, grace_period=int(header["grace_period"]))
            for key, value in header.get("counters", {}).items():
                if hasattr(eng.counters, key):
                    setattr(eng.counters, key, int(value))
            for k, info in header["kinds"].items():
                ks = eng.kinds[DeviceKind(k)]
                n = int(info["n"])
                ids = [str(x) for x in files[f"{k}/ids"].tolist()]
                if len(ids) != n:
                    raise SnapshotError(f"snapshot of {k} lists {len(ids)} ids for {n} devices")
                if n:
                    ks.add(ids)
                for name, arr in ks.common.items():
                    _load(arr, files, f"{k}/common/{name}", n)
                for name, arr in ks.state.items():
                    _load(arr, files, f"{k}/state/{name}", n)
                for dname, det in ks.det.items():
                    for name, arr in det.arrays.items():
                        _load(arr, files, f"{k}/det/{dname}/{name}", n)
                for et, tab in ks.episodes.items():
                    for name, arr in tab.arrays.items():
                        _load(arr, files, f"{k}/ep/{et.value}/{name}", n)
        except SnapshotError:
            raise
        except (
            OSError,
            EOFError,
            ValueError,
            KeyError,
            TypeError,
            zipfile.BadZipFile,
            pickle.UnpicklingError,
        ) as exc:
            raise SnapshotError(f"unreadable detection snapshot: {exc}") from exc
        return eng


def _device_order(
    rows: npt.NDArray[np.int64],
    t: npt.NDArray[np.float64],
    seq: npt.NDArray[np.int64],
    scratch: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], bool]:
    """An order grouping each device's readings, in (time, seq) order within the device, and whether
    it is the batch's own order.

    Every device once (the common case): the batch as it is, checked with one scatter into ``scratch``
    (an int array of at least the kind's capacity). A batch in time order: a stable sort by device.
    Otherwise, or with two readings of one device at the same time, the full (device, time, seq) sort.
    """
    n = len(rows)
    pos = np.arange(n, dtype=np.int64)
    scratch[rows] = pos
    if (scratch[rows] == pos).all():
        return pos, True
    if n > 1 and bool((t[1:] >= t[:-1]).all()):
        order = np.argsort(rows, kind="stable")
        r, ts = rows[order], t[order]
        if not ((r[1:] == r[:-1]) & (ts[1:] == ts[:-1])).any():
            return order, False
    return np.lexsort((seq, t, rows)), False


def _evaluate(module: Any, ctx: RuleContext) -> dict[EventType, Verdict]:
    """The module's verdicts on a batch. A module that does not declare ``BATCH = True`` (one written for
    readings of unique devices, like the frozen rule sets benchmarks compare with) sees it rank by rank:
    the k-th frame of every device at once, as the engine always fed it."""
    if getattr(module, "BATCH", False) or ctx.seg.single:
        out: dict[EventType, Verdict] = module.evaluate(ctx)
        return out
    n = len(ctx.rows)
    parts = [(ix, module.evaluate(ctx.sub(ix))) for ix in _rank_groups(ctx.batch_rank)]
    merged: dict[EventType, Verdict] = {}
    for et in parts[0][1]:
        level, value = np.empty(n, dtype=np.int8), np.empty(n)
        extra: dict[str, Any] = {}
        for name, fill in (
            ("immediate", False),
            ("since", math.nan),
            ("confirm_after", math.nan),
            ("clear_after", math.nan),
            ("cause", False),
        ):
            if any(getattr(v[et], name) is not None for _ix, v in parts):
                extra[name] = np.full(n, fill, dtype=type(fill))
        for ix, v in parts:
            level[ix], value[ix] = v[et].level, v[et].value
            for name, arr in extra.items():
                got = getattr(v[et], name)
                if got is not None:
                    arr[ix] = got
        merged[et] = Verdict(level, value, **extra)
    return merged


def _rank_groups(rank: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
    order = np.argsort(rank, kind="stable")
    bounds = np.cumsum(np.bincount(rank))
    return np.split(order, bounds[:-1])


def _accept(
    seg: Segments,
    t: npt.NDArray[np.float64],
    seq: npt.NDArray[np.int64],
    last_time: npt.NDArray[np.float64],
    last_seq: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.bool_] | None, npt.NDArray[np.float64], int, int]:
    """Which readings are new (not a duplicate, a replay or older than the device's last accepted one),
    and per reading the time of its device's previous accepted reading.

    A reading is judged against the latest *accepted* reading before it, which depends on which earlier
    ones were accepted: a fixed point. Starting from "all accepted", each pass settles at least the next
    reading of every device (the first one is judged against the state alone), so it ends after at most
    the longest segment's length; in practice one pass confirms the first guess. Returns the mask
    (``None``: all new), the previous times, and how many were duplicates and how many stale.
    """
    acc = np.ones(len(seq), dtype=bool)
    while True:
        ls = seg.prev_where(acc, seq, last_seq)
        lt = seg.prev_where(acc, t, last_time)
        back = (ls - seq) & 0xFFFF
        dup = (ls >= 0) & ((seq == ls) | (back < SEQ_REPLAY_WINDOW))
        stale = ~dup & (t < lt)
        new = ~(dup | stale)
        if seg.single or (new == acc).all():
            break
        acc = new
    if new.all():
        return None, lt, 0, 0
    return new, lt, int(np.count_nonzero(dup)), int(np.count_nonzero(stale))


def _load(dst: npt.NDArray[Any], files: dict[str, npt.NDArray[Any]], key: str, n: int) -> None:
    """Copy a saved column into a live array; a column missing from an older snapshot keeps defaults."""
    src = files.get(key)
    if src is None:
        return
    if len(src) != n:
        raise SnapshotError(f"snapshot column {key} has {len(src)} rows, expected {n}")
    dst[:n] = src
