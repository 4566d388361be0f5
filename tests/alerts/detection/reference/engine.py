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
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from tests.alerts.detection.reference.episodes import Transitions
from tests.alerts.detection.reference.kindstate import KindState
from tests.alerts.detection.reference.profiles import ProfileSet
from tests.alerts.detection.reference.registry import RULES
from tests.alerts.detection.reference.rulekit import OK_KEY_MARK, RuleContext

_log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
SEQ_REPLAY_WINDOW = 16
DEFAULT_GRACE_PERIOD = 4  # calm readings before a learned baseline is trusted (2 days of heartbeats)
_MAX_TIME = 4_102_444_800.0
_SEVERITY: dict[int, Severity] = {int(s): s for s in Severity}


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
        """Run one batch (one kind) through every rule; returns the alert steps it caused."""
        n = len(batch)
        self.counters.frames_total += n
        if n == 0:
            return []
        ks = self.kinds[batch.kind]
        rows = ks.rows_for(batch.device_id)
        t = batch.time
        ok = (rows >= 0) & np.isfinite(t) & (t >= 0) & (t <= _MAX_TIME)
        if not ok.all():
            bad = int((~ok).sum())
            self.counters.rejected_total += bad
            _log.warning("rejected %d %s readings with an invalid device id or time", bad, batch.kind.value)
        idx = np.flatnonzero(ok)
        seq = batch.seq.astype(np.int64)
        order = idx[np.lexsort((seq[idx], t[idx], rows[idx]))]
        r_sorted = rows[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = r_sorted[1:] != r_sorted[:-1]
        pos = np.arange(len(order))
        rank = pos - np.maximum.accumulate(np.where(first, pos, 0))
        by_rank = order[np.argsort(rank, kind="stable")]
        bounds = np.cumsum(np.bincount(rank)) if len(rank) else np.zeros(0, dtype=np.int64)
        events: list[AlertEvent] = []
        lo = 0
        for hi in bounds.tolist():
            events += self._process_rank(ks, batch, rows, by_rank[lo:hi], now)
            lo = hi
        self.counters.alerts_total += len(events)
        return events

    def _process_rank(
        self,
        ks: KindState,
        batch: ReadingBatch,
        rows_all: npt.NDArray[np.int64],
        sel: npt.NDArray[np.int64],
        now: float,
    ) -> list[AlertEvent]:
        rows = rows_all[sel]
        t = batch.time[sel]
        seq = batch.seq[sel].astype(np.int64)
        c = ks.common
        last_t = c["last_time"][rows]
        last_seq = c["last_seq"][rows]
        back = (last_seq - seq) & 0xFFFF
        dup = (last_seq >= 0) & ((seq == last_seq) | (back < SEQ_REPLAY_WINDOW))
        stale = ~dup & (t < last_t)
        keep = ~(dup | stale)
        if not keep.all():
            self.counters.duplicates_total += int(dup.sum())
            self.counters.stale_total += int(stale.sum())
            sel, rows, t, seq, last_t = sel[keep], rows[keep], t[keep], seq[keep], last_t[keep]
            if len(rows) == 0:
                return []
        self.counters.accepted_total += len(rows)
        dt = t - last_t
        c["last_time"][rows] = t
        c["last_seq"][rows] = seq
        c["frames"][rows] += 1
        fresh = ~np.isfinite(c["first_time"][rows])
        c["first_time"][rows[fresh]] = t[fresh]

        events: list[AlertEvent] = []
        silent = ks.episodes[EventType.DEVICE_SILENT]
        if silent.arrays["open_sev"][rows].any():
            i, sev = silent.close_rows(rows, t)
            for j, s in zip(i.tolist(), sev.tolist(), strict=True):
                events.append(
                    self._event(
                        ks,
                        EventType.DEVICE_SILENT,
                        int(rows[j]),
                        AlertPhase.CLEARED,
                        s,
                        now,
                        float(t[j]),
                        float(dt[j]),
                    )
                )
        ctx = RuleContext(
            spec=ks.spec,
            rows=rows,
            t=t,
            dt=dt,
            values=batch.values[sel],
            flags=batch.flags[sel],
            battery=batch.battery_pct[sel],
            p=ks.params.view(rows),
            state=ks.state,
            det=ks.det,
            fw_version=batch.fw_version[sel],
        )
        verdicts = ks.module.evaluate(ctx)
        for et, v in verdicts.items():
            tr = ks.episodes[et].step(
                rows, t, v.level, v.value, v.immediate, v.since, v.confirm_after, v.clear_after
            )
            if len(tr.idx):
                events += self._emit(ks, et, tr, rows, t, v.value, now, v.cause)
        return events

    def _emit(
        self,
        ks: KindState,
        et: EventType,
        tr: Transitions,
        rows: npt.NDArray[np.int64],
        t: npt.NDArray[np.float64],
        value: npt.NDArray[np.float64],
        now: float,
        cause: npt.NDArray[np.bool_] | None = None,
    ) -> list[AlertEvent]:
        out = []
        for i, ph, s in zip(tr.idx.tolist(), tr.phase, tr.severity.tolist(), strict=True):
            e = self._event(ks, et, int(rows[i]), ph, int(s), now, float(t[i]), float(value[i]))
            # mirrors the "I'm OK" mark of alerts/detection/engine.py: a clear at a reading whose verdict
            # says the wearer's key caused it
            if ph is AlertPhase.CLEARED and cause is not None and bool(cause[i]):
                e = e.model_copy(update={"message": f"{e.message} {OK_KEY_MARK}"})
            out.append(e)
        return out

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
    ) -> AlertEvent:
        device = ks.ids[row]
        ep = int(ks.episodes[et].arrays["episode_ms"][row])
        aid = f"{device}/{et.value}/{ep}"  # alert_id(device, et, ep) for a member, without the enum call
        v = float(value) if math.isfinite(value) else None
        named = _SEVERITY.get(sev)
        if named is None:
            named = Severity(sev)  # not a severity: raises as the contract would
        what = "cleared" if phase is AlertPhase.CLEARED else named.name
        msg = f"{ks.kind.value} {device}: {et.value} {what}" + (f" (value {v:.4g})" if v is not None else "")
        _log.info("alert %s %s %s", aid, phase.value, named.name)
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
            rows = np.arange(n, dtype=np.int64)
            p = ks.params.view(rows)
            last = ks.common["last_time"][:n]
            limit = np.asarray(p.silent_after_heartbeats, dtype=np.float64) * ks.spec.heartbeat_s
            silent_tab = ks.episodes[EventType.DEVICE_SILENT]
            due = np.flatnonzero(
                np.isfinite(last) & (now - last >= limit) & (silent_tab.arrays["open_sev"][:n] == 0)
            )
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
            for et, tab in ks.episodes.items():
                tr = tab.due(now)
                for r, ph, s in zip(tr.idx.tolist(), tr.phase, tr.severity.tolist(), strict=True):
                    val = float(tab.arrays["value"][r])
                    if et is EventType.DEVICE_SILENT:
                        val = float(now - last[r])
                    events.append(
                        self._event(ks, et, r, ph, int(s), now, float(tab.arrays["frame_time"][r]), val)
                    )
        self.counters.alerts_total += len(events)
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


def _load(dst: npt.NDArray[Any], files: dict[str, npt.NDArray[Any]], key: str, n: int) -> None:
    """Copy a saved column into a live array; a column missing from an older snapshot keeps defaults."""
    src = files.get(key)
    if src is None:
        return
    if len(src) != n:
        raise SnapshotError(f"snapshot column {key} has {len(src)} rows, expected {n}")
    dst[:n] = src
