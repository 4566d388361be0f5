"""Ingest of gateway uplink batches: authorise, store, de-duplicate, detect gaps, acknowledge after commit.

Called by the HTTP endpoint (``POST /api/v1/ingest/batches``) and by the MQTT worker
(``cloud.mqtt_ingest``) once the caller has authenticated the gateway. Order of work, and why:

1. **Duplicate batch?** ``(gateway_id, batch_id)`` already in ``ingested_batches`` -> ``duplicate=true``,
   nothing written. A gateway retries until it holds an ack, so every batch may arrive more than once.
2. **Authorise** every device id in the batch (telemetry and alerts): each must be registered and
   assigned to this gateway, else the whole batch is refused (403 with the offending ids) and nothing is
   stored: a half-stored batch could never be acknowledged honestly.
3. **Telemetry** goes to the time-series store first. Its writes are idempotent on
   ``(device_id, time, seq)``, so if anything later fails and the gateway retries, nothing doubles.
4. **One database transaction** records the batch id, stores the alert lifecycle steps (de-duplicated on
   ``(alert_id, phase, time)``), moves each alert's current state, and updates each device's last seen,
   last sequence number and lost-frame count, and the gateway's last seen and status.
5. **Ack** only after that commit; then the :class:`AlertSink` (dispatch, a later issue) is told about the
   steps that were new. A failing sink is logged and counted; it never un-acknowledges stored data.

Sequence gaps (lost frames, 16-bit wrap) are computed for the whole batch at once: :mod:`cloud.sequence`.

All blocking work (SQL, the time-series write) runs in a worker thread: the event loop only awaits.
"""

from __future__ import annotations

import asyncio
import logging
import time as _time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from alerts.contract import AlertEvent, UplinkAck, UplinkBatch
from cloud.alertstore import store_alert_steps
from cloud.db import Database, Device, Gateway, IngestedBatch
from cloud.errors import BadRequestError, CloudError, ConflictError, PermissionDeniedError, StorageError
from cloud.metrics import CloudMetrics
from cloud.sequence import SEQ_MODULUS, SeqSummary, sequence_summary
from cloud.timeseries import TimeSeriesError, TimeSeriesStore
from firmware_bridge.kernel.clock import Clock, SystemClock

log = logging.getLogger(__name__)

_CHUNK = 2000  # ids per IN (...) list: far below SQLite's and PostgreSQL's bound-parameter limits


class AlertSink(Protocol):
    """Told about alert steps after they are committed (dispatch / escalation hooks in here)."""

    async def alerts_committed(self, steps: Sequence[AlertEvent], *, source: str) -> None: ...


class NullAlertSink:
    """The default sink: does nothing."""

    async def alerts_committed(self, steps: Sequence[AlertEvent], *, source: str) -> None:
        return None


class IngestService:
    """Turns an authenticated gateway's :class:`UplinkBatch` into stored data and an :class:`UplinkAck`."""

    def __init__(
        self,
        db: Database,
        store: TimeSeriesStore,
        *,
        metrics: CloudMetrics | None = None,
        sink: AlertSink | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.metrics = metrics or CloudMetrics()
        self.sink: AlertSink = sink or NullAlertSink()
        self.clock: Clock = clock or SystemClock()

    async def ingest(
        self, batch: UplinkBatch, *, gateway_id: str, allow_unassigned: bool = False
    ) -> UplinkAck:
        """Store ``batch`` sent by ``gateway_id``; returns the ack only after the commit.

        ``allow_unassigned`` also accepts devices assigned to no gateway (operator-platform pushes, where
        the "gateway" is CTWing or OneNET).

        Raises :class:`PermissionDeniedError` (wrong gateway id in the batch, or devices not assigned to
        the gateway), :class:`BadRequestError` (a device reported under the wrong kind) and
        :class:`StorageError` (database or time-series store failure; the gateway should retry).
        """
        if batch.gateway_id != gateway_id:
            self.metrics.batches.labels("forbidden").inc()
            raise PermissionDeniedError(
                f"batch names gateway {batch.gateway_id!r} but was sent by gateway {gateway_id!r}"
            )
        t0 = _time.perf_counter()
        try:
            ack, new_steps = await asyncio.to_thread(
                self._ingest_blocking, batch, gateway_id, allow_unassigned
            )
        except PermissionDeniedError:
            self.metrics.batches.labels("forbidden").inc()
            raise
        except CloudError:
            self.metrics.batches.labels("error").inc()
            raise
        self.metrics.ingest_seconds.observe(_time.perf_counter() - t0)
        self.metrics.batches.labels("duplicate" if ack.duplicate else "stored").inc()
        if new_steps:
            try:
                await self.sink.alerts_committed(new_steps, source=gateway_id)
            except Exception:  # supervisor boundary: the data is committed whatever the sink does
                self.metrics.sink_errors.inc()
                log.exception(
                    "alert sink failed", extra={"gateway_id": gateway_id, "batch_id": batch.batch_id}
                )
        return ack

    # -- blocking part (worker thread) ----------------------------------------------------------------
    def _ingest_blocking(
        self, batch: UplinkBatch, gateway_id: str, allow_unassigned: bool = False
    ) -> tuple[UplinkAck, list[AlertEvent]]:
        try:
            dup = self._find_batch(gateway_id, batch.batch_id)
            if dup is not None:
                return dup, []
            self._authorise(batch, gateway_id, allow_unassigned)
            stored, duplicates = self._write_telemetry(batch)
            for attempt in range(3):
                try:
                    return self._commit(batch, gateway_id, stored, duplicates)
                except ConflictError:
                    # a concurrent delivery of the same batch, or a concurrent first step of the same alert
                    dup = self._find_batch(gateway_id, batch.batch_id)
                    if dup is not None:
                        return dup, []
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        except SQLAlchemyError as exc:
            raise StorageError(
                f"database error while storing batch {batch.batch_id}: {type(exc).__name__}"
            ) from exc

    def _find_batch(self, gateway_id: str, batch_id: str) -> UplinkAck | None:
        with self.db.read() as s:
            row = s.scalars(
                select(IngestedBatch).where(
                    IngestedBatch.gateway_id == gateway_id, IngestedBatch.batch_id == batch_id
                )
            ).first()
            if row is None:
                return None
            return UplinkAck(batch_id=batch_id, duplicate=True, committed_at=row.received_at)

    def _authorise(self, batch: UplinkBatch, gateway_id: str, allow_unassigned: bool) -> None:
        kinds: dict[str, str] = {}
        for block in batch.telemetry:
            for d in set(block.device_id):
                kinds[d] = block.kind.value
        for a in batch.alerts:
            kinds.setdefault(a.device_id, a.kind.value)
        ids = sorted(kinds)
        found: dict[str, tuple[str | None, str]] = {}
        with self.db.read() as s:
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                for dev_id, gw, kind in s.execute(
                    select(Device.device_id, Device.gateway_id, Device.kind).where(
                        Device.device_id.in_(chunk)
                    )
                ):
                    found[dev_id] = (gw, kind)
        allowed = {gateway_id, None} if allow_unassigned else {gateway_id}
        offending = [d for d in ids if d not in found or found[d][0] not in allowed]
        if offending:
            self.metrics.forbidden_devices.inc(len(offending))
            log.warning(
                "gateway wrote for devices not assigned to it",
                extra={
                    "gateway_id": gateway_id,
                    "batch_id": batch.batch_id,
                    "device_ids": offending[:50],
                    "count": len(offending),
                },
            )
            raise PermissionDeniedError(
                f"gateway {gateway_id!r} is not assigned {len(offending)} device(s) in this batch; "
                "nothing was stored",
                device_ids=offending,
            )
        wrong_kind = [d for d in ids if found[d][1] != kinds[d]]
        if wrong_kind:
            raise BadRequestError(
                f"device(s) {wrong_kind[:20]} are registered as another kind than the batch says; "
                "nothing was stored"
            )

    def _write_telemetry(self, batch: UplinkBatch) -> tuple[int, int]:
        stored = duplicates = 0
        for block in batch.telemetry:
            if not len(block):
                continue
            try:
                res = self.store.write(block.to_batch())
            except TimeSeriesError as exc:
                raise StorageError(f"time-series store failed: {exc}") from exc
            stored += res.stored
            duplicates += res.duplicates
        self.metrics.readings.inc(stored)
        self.metrics.reading_duplicates.inc(duplicates)
        return stored, duplicates

    def _commit(
        self, batch: UplinkBatch, gateway_id: str, stored: int, duplicates: int
    ) -> tuple[UplinkAck, list[AlertEvent]]:
        now = self.clock.now()
        with self.db.write() as s:
            s.add(
                IngestedBatch(
                    gateway_id=gateway_id,
                    batch_id=batch.batch_id,
                    received_at=now,
                    sent_at=batch.sent_at,
                    telemetry_stored=stored,
                    telemetry_duplicates=duplicates,
                    alerts_stored=0,
                )
            )
            s.flush()  # a concurrent duplicate fails here, before any other work
            gaps = self._update_devices(s, batch, now)
            new_steps = store_alert_steps(s, batch.alerts, source=gateway_id, received_at=now)
            s.execute(
                update(IngestedBatch)
                .where(IngestedBatch.gateway_id == gateway_id, IngestedBatch.batch_id == batch.batch_id)
                .values(alerts_stored=len(new_steps))
            )
            gw = s.get(Gateway, gateway_id, with_for_update=self.db.for_update())
            if gw is not None:
                gw.last_seen = now
                gw.batches_total = (gw.batches_total or 0) + 1
                if batch.status is not None:
                    gw.last_status = batch.status.model_dump()
        committed_at = self.clock.now()
        self.metrics.seq_gaps.inc(gaps)
        for step in new_steps:
            self.metrics.alert_steps.labels("gateway", step.phase.value).inc()
        ack = UplinkAck(
            batch_id=batch.batch_id,
            duplicate=False,
            telemetry_stored=stored,
            telemetry_duplicates=duplicates,
            alerts_stored=len(new_steps),
            committed_at=committed_at,
        )
        return ack, new_steps

    def _update_devices(self, s: Session, batch: UplinkBatch, now: float) -> int:
        blocks = [b for b in batch.telemetry if len(b)]
        if not blocks:
            return 0
        ids = np.concatenate([np.asarray(b.device_id, dtype=np.str_) for b in blocks])
        seq = np.concatenate([np.asarray(b.seq, dtype=np.int64) for b in blocks])
        tm = np.concatenate([np.asarray(b.time, dtype=np.float64) for b in blocks])
        batt = np.concatenate([np.asarray(b.battery_pct, dtype=np.float64) for b in blocks])
        uniq = sorted(set(ids.tolist()))
        state: dict[str, tuple[int | None, float | None, int, int]] = {}
        for i in range(0, len(uniq), _CHUNK):
            q = select(
                Device.device_id,
                Device.last_seq,
                Device.last_seen,
                Device.seq_gaps_total,
                Device.readings_total,
            ).where(Device.device_id.in_(uniq[i : i + _CHUNK]))
            if self.db.for_update():
                # rows locked in one global order (by id), so concurrent batches cannot deadlock
                q = q.order_by(Device.device_id).with_for_update()
            for dev_id, last_seq, last_seen, gaps_total, readings_total in s.execute(q):
                state[dev_id] = (last_seq, last_seen, gaps_total or 0, readings_total or 0)
        summ = sequence_summary(
            ids, seq, tm, batt, {k: v[0] for k, v in state.items()}, {k: v[1] for k, v in state.items()}
        )
        rows = []
        for j, dev_id in enumerate(summ.device_id):
            last_seq, last_seen, gaps_total, readings_total = state[dev_id]
            row: dict[str, object] = {
                "device_id": dev_id,
                "seq_gaps_total": gaps_total + int(summ.gaps[j]),
                "readings_total": readings_total + int(summ.count[j]),
                "last_received_at": now,
            }
            newest = float(summ.last_time[j])
            if last_seen is None or newest >= last_seen:
                row.update(
                    last_seen=newest,
                    last_seq=int(summ.last_seq[j]),
                    last_battery_pct=float(summ.last_battery[j]),
                )
            rows.append(row)
        # One driver-level executemany per key set. The ORM's bulk UPDATE (and even Core) builds every
        # row's parameters in Python: ~40 % of the ingest thread at 5,000 readings per batch
        # (bench/bench_ingest.py). Column names are ours, never user input.
        conn = s.connection()
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        for keys in {tuple(sorted(r)) for r in rows}:
            cols = [k for k in keys if k != "device_id"]
            sql = f"UPDATE devices SET {', '.join(f'{c} = {mark}' for c in cols)} WHERE device_id = {mark}"
            params = [(*(r[c] for c in cols), r["device_id"]) for r in rows if tuple(sorted(r)) == keys]
            conn.exec_driver_sql(sql, params)
        return int(summ.gaps.sum())


__all__ = [
    "SEQ_MODULUS",
    "AlertSink",
    "IngestService",
    "NullAlertSink",
    "SeqSummary",
    "sequence_summary",
    "store_alert_steps",
]
