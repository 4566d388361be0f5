"""Per-record screening of an uplink batch: what this gateway may write, and why the rest is refused.

A gateway is trusted with its own devices only. One forged radio frame, or a neighbour's device heard over
the air, must never block the batch it travels in (that silenced every later alarm of the gateway), so
every record is judged on its own (``docs/contract.md``, *Per-record acceptance*):

- telemetry: the device must be registered, assigned to this gateway (or to none, for operator-platform
  pushes), registered as the block's kind, and the reading's time must lie within the cloud's window
  (:meth:`cloud.limits.IngestLimits.time_window`);
- alert steps: the same device rules; ``alert_id`` must be ``device_id/event_type/episode_ms`` (a step
  cannot name another device's alert); ``time``, ``frame_time`` and the episode start must lie within the
  window; and an existing alert with that id must be the same device, kind and event and must not have been
  raised by the cloud itself (connectivity alerts are the cloud's to clear).

Everything is vectorised per telemetry block (``np.isin`` + one time mask); only refused rows cost Python.
Each block is turned into a :class:`~firmware_bridge.kernel.records.ReadingBatch` once, here, and the
ingest service stores and summarises those arrays (no second conversion).

Devices' ``(gateway_id, kind)`` come from a :class:`DeviceCache`: one read of the registry generation per
batch (a one-row table every device insert, delete and re-assignment moves, by trigger, in the same
transaction: migration ``0017_registry_generation``), and a driver-level ``SELECT .. IN`` only for ids not
cached under that generation. Querying every batch's devices was about 12 % of the ingest path's CPU on
2,000-reading batches (``bench/bench_ingest.py``); a changed generation empties the cache, in every worker
process, before the next batch is judged.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter as Tally
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from alerts.contract import (
    MAX_REFUSALS_PER_ACK,
    AlertEvent,
    Refusal,
    RefusalReason,
    UplinkBatch,
)
from cloud.db import Alert
from cloud.registry import canonical_device_id
from firmware_bridge.kernel.events import alert_id as make_alert_id
from firmware_bridge.kernel.records import ReadingBatch

_CHUNK = 2000  # ids per IN (...) list
CLOUD_SOURCE = "cloud"  # cloud.connectivity.SOURCE: alerts the cloud raised itself


def canonical_ids(batch: UplinkBatch) -> UplinkBatch:
    """``batch`` with every device id in the registry's spelling (:func:`canonical_device_id`).

    An upper-case DevEUI or an IMEI from a gateway then finds its device; an alert id built on the
    gateway's spelling (``device_id/event_type/episode_ms``) is re-keyed the same way. Unchanged batches
    are returned as they are.
    """
    blocks = []
    changed = False
    for b in batch.telemetry:
        canon = {d: _canonical(d) for d in set(b.device_id)}
        if any(k != v for k, v in canon.items()):
            changed = True
            b = b.model_copy(update={"device_id": [canon[d] for d in b.device_id]})
        blocks.append(b)
    steps = []
    for a in batch.alerts:
        dev = _canonical(a.device_id)
        if dev != a.device_id:
            changed = True
            aid = a.alert_id
            if aid.startswith(a.device_id + "/"):
                aid = dev + aid[len(a.device_id) :]
            a = a.model_copy(update={"device_id": dev, "alert_id": aid})
        steps.append(a)
    return batch.model_copy(update={"telemetry": blocks, "alerts": steps}) if changed else batch


# a pure function of the id, called for every device of every batch: remembered (bounded)
_canonical = lru_cache(maxsize=1 << 16)(canonical_device_id)


@dataclass
class Screened:
    """The part of a batch that may be stored (telemetry as arrays, one batch per block), and the refusals."""

    telemetry: list[ReadingBatch]
    alerts: list[AlertEvent]
    refused: list[Refusal] = field(default_factory=list)
    telemetry_refused: int = 0
    alerts_refused: int = 0
    by_reason: dict[tuple[str, str], int] = field(default_factory=dict)  # (record, reason) -> count

    @property
    def unknown_devices(self) -> list[str]:
        return sorted({r.device_id for r in self.refused if r.reason == "unknown_device"})


#: a read session, or (SQLite, a batch without alert steps) the ingest service's pooled sqlite3 connection
Reader = Session | sqlite3.Connection


def _driver_rows(c: sqlite3.Connection, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
    """Rows of one read on a sqlite3 connection, its errors as SQLAlchemy's (the caller's StorageError)."""
    try:
        return c.execute(sql, args).fetchall()
    except sqlite3.Error as exc:
        raise DBAPIError(sql[:200], None, exc) from exc


def _device_table(s: Reader, ids: list[str]) -> dict[str, tuple[str | None, str]]:
    """``device_id -> (gateway_id, kind)`` for the registered ones among ``ids`` (bound parameters only)."""
    found: dict[str, tuple[str | None, str]] = {}
    if isinstance(s, sqlite3.Connection):
        for i in range(0, len(ids), _CHUNK):
            part = tuple(ids[i : i + _CHUNK])
            marks = ", ".join("?" * len(part))
            sql = f"SELECT device_id, gateway_id, kind FROM devices WHERE device_id IN ({marks})"
            for dev_id, gw, kind in _driver_rows(s, sql, part):
                found[dev_id] = (gw, kind)
        return found
    conn = s.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        marks = ", ".join([mark] * len(chunk))
        sql = f"SELECT device_id, gateway_id, kind FROM devices WHERE device_id IN ({marks})"
        for dev_id, gw, kind in conn.exec_driver_sql(sql, tuple(chunk)).all():
            found[dev_id] = (gw, kind)
    return found


def _generation(s: Reader) -> int | None:
    """The registry generation (``None`` without its row: then nothing is cached)."""
    sql = "SELECT generation FROM registry_generation WHERE id = 1"
    if isinstance(s, sqlite3.Connection):
        rows = _driver_rows(s, sql)
        return int(rows[0][0]) if rows else None
    conn = s.connection()
    if conn.dialect.paramstyle == "qmark":  # SQLite: on the driver connection (~20 us less per batch)
        try:
            row = conn.connection.dbapi_connection.execute(sql).fetchone()  # type: ignore[union-attr]
        except sqlite3.Error as exc:  # as exec_driver_sql raises it: the caller's StorageError
            raise DBAPIError(sql, None, exc) from exc
    else:
        row = conn.exec_driver_sql(sql).first()
    return None if row is None else int(row[0])


class DeviceCache:
    """``device_id -> (gateway_id, kind)`` (or not registered) as of one registry generation.

    Each :meth:`lookup` reads the generation *first* and the missing rows after it: rows read after a
    change are newer than the generation they are filed under, never older, so the worst case is one
    needless reload. A different generation empties the cache; so does growing past ``max_entries``
    (ids a gateway invented are remembered as unknown, and must not grow memory without bound).
    Thread-safe: the ingest service screens batches in several worker threads.
    """

    def __init__(self, max_entries: int = 500_000) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._rows: dict[str, tuple[str | None, str] | None] = {}

    def lookup(self, s: Reader, ids: list[str]) -> dict[str, tuple[str | None, str]]:
        """The registered ones among ``ids`` with their ``(gateway_id, kind)``, current as of this call."""
        gen = _generation(s)
        if gen is None:
            return _device_table(s, ids)
        with self._lock:
            if gen != self._generation or len(self._rows) > self.max_entries:
                self._generation, self._rows = gen, {}
            rows = self._rows
        missing = [d for d in ids if d not in rows]
        fetched: dict[str, tuple[str | None, str] | None] = {}
        if missing:
            found = _device_table(s, missing)
            fetched = {d: found.get(d) for d in missing}
            with self._lock:
                if self._generation == gen:
                    self._rows.update(fetched)
        out: dict[str, tuple[str | None, str]] = {}
        for d in ids:
            row = fetched[d] if d in fetched else rows.get(d)
            if row is not None:
                out[d] = row
        return out


def _alert_table(s: Reader, ids: list[str]) -> dict[str, tuple[str, str, str, str]]:
    found: dict[str, tuple[str, str, str, str]] = {}
    if not ids:
        return found
    if not isinstance(s, Session):
        raise TypeError("alert steps are screened in a read session")
    for i in range(0, len(ids), _CHUNK):
        for aid, dev, kind, et, src in s.execute(
            select(Alert.alert_id, Alert.device_id, Alert.kind, Alert.event_type, Alert.source).where(
                Alert.alert_id.in_(ids[i : i + _CHUNK])
            )
        ):
            found[aid] = (dev, kind, et, src)
    return found


def screen(
    s: Reader,
    batch: UplinkBatch,
    gateway_id: str,
    *,
    window: tuple[float, float],
    allow_unassigned: bool = False,
    cache: DeviceCache | None = None,
) -> Screened:
    """Split ``batch`` into what ``gateway_id`` may store and what is refused (``s``: a read session, or
    for a batch without alert steps on SQLite a sqlite3 connection).

    ``cache`` (the ingest service's) spares the device query while the registry is unchanged."""
    lo, hi = window
    blocks = [(b.to_batch(), set(b.device_id)) for b in batch.telemetry if len(b)]
    ids = sorted(set().union(*(u for _, u in blocks), (a.device_id for a in batch.alerts)))
    devices = cache.lookup(s, ids) if cache is not None else _device_table(s, ids)
    allowed_gw = {gateway_id, None} if allow_unassigned else {gateway_id}

    def device_reason(dev: str, kind: str) -> RefusalReason | None:
        found = devices.get(dev)
        if found is None:
            return "unknown_device"
        if found[0] not in allowed_gw:
            return "not_assigned"
        if found[1] != kind:
            return "wrong_kind"
        return None

    out = Screened(telemetry=[], alerts=[])
    tele_tally: Tally[tuple[str, RefusalReason]] = Tally()
    for rb, block_ids in blocks:
        n = len(rb)
        dev, tm = rb.device_id, rb.time
        kind = rb.kind.value
        reasons = {d: device_reason(d, kind) for d in block_ids}
        bad_dev = np.array([d for d, r in reasons.items() if r is not None], dtype=np.str_)
        dev_ok = ~np.isin(dev, bad_dev) if len(bad_dev) else np.ones(n, dtype=bool)
        keep = dev_ok & (tm >= lo) & (tm <= hi)
        if keep.all():
            out.telemetry.append(rb)
            continue
        for i in np.flatnonzero(~keep).tolist():
            d = str(dev[i])
            tele_tally[(d, reasons[d] or "time_out_of_range")] += 1
        if keep.any():
            out.telemetry.append(rb.take(keep))
    for (d, reason), count in sorted(tele_tally.items()):
        out.telemetry_refused += count
        out.by_reason[("telemetry", reason)] = out.by_reason.get(("telemetry", reason), 0) + count
        detail = (
            f"{count} reading(s) outside the cloud's time window" if reason == "time_out_of_range" else ""
        )
        out.refused.append(
            Refusal(record="telemetry", device_id=d, reason=reason, count=count, detail=detail)
        )

    existing = _alert_table(s, sorted({a.alert_id for a in batch.alerts}))
    for a in batch.alerts:
        why, detail = _alert_reason(a, device_reason(a.device_id, _v(a.kind)), existing, lo, hi)
        if why is None:
            out.alerts.append(a)
            continue
        reason = why
        out.alerts_refused += 1
        out.by_reason[("alert", reason)] = out.by_reason.get(("alert", reason), 0) + 1
        out.refused.append(
            Refusal(
                record="alert",
                device_id=a.device_id,
                reason=reason,
                alert_id=a.alert_id[:160],
                phase=a.phase,
                time=a.time,
                detail=detail,
            )
        )
    del out.refused[MAX_REFUSALS_PER_ACK:]
    return out


def _v(x: object) -> str:
    return str(getattr(x, "value", x))


def _alert_reason(
    a: AlertEvent,
    device_reason: RefusalReason | None,
    existing: dict[str, tuple[str, str, str, str]],
    lo: float,
    hi: float,
) -> tuple[RefusalReason | None, str]:
    if device_reason is not None:
        return device_reason, ""
    if a.alert_id != make_alert_id(a.device_id, a.event_type, a.episode_ms):
        return "alert_id_mismatch", "alert_id must be device_id/event_type/episode_ms"
    for name, t in (("time", a.time), ("frame_time", a.frame_time), ("episode", a.episode_ms / 1000.0)):
        if not lo <= t <= hi:
            return "time_out_of_range", f"{name} {t:.3f} is outside the cloud's window [{lo:.0f}, {hi:.0f}]"
    found = existing.get(a.alert_id)
    if found is not None:
        dev, kind, et, src = found
        if src == CLOUD_SOURCE:
            return "alert_not_owned", "the cloud raised this alert; only the cloud clears it"
        if (dev, kind, et) != (a.device_id, _v(a.kind), _v(a.event_type)):
            return "alert_not_owned", "an alert with this id belongs to another device, kind or event"
    return None, ""


__all__ = ["CLOUD_SOURCE", "DeviceCache", "Screened", "screen"]
