"""Ingest of gateway uplink batches: authorise, store, de-duplicate, detect gaps, acknowledge after commit.

Called by the HTTP endpoint (``POST /api/v1/ingest/batches``) and by the MQTT worker
(``cloud.mqtt_ingest``) once the caller has authenticated the gateway. Order of work, and why:

1. **Duplicate batch?** ``(gateway_id, batch_id)`` already in ``ingested_batches`` -> ``duplicate=true``,
   nothing written. A gateway retries until it holds an ack, so every batch may arrive more than once.
2. **Quota and screening.** A gateway over its quota gets 429 and nothing is stored
   (:class:`cloud.limits.GatewayQuota`). Then every record is judged on its own
   (:func:`cloud.screening.screen`): devices registered, assigned to this gateway and of the block's
   kind; times within the cloud's window; alert steps that name their own device's episode and no alert
   the cloud raised. What passes is stored; the rest is listed in the ack's ``refused`` with a reason
   (contract version 2), counted (``vigil_cloud_refused_records_total``) and logged at a bounded rate.
   A refused record never blocks its neighbours: one forged radio frame must not silence a gateway.
3. **Telemetry** goes to the time-series store first. Its writes are idempotent on
   ``(device_id, time, seq)``, so if anything later fails and the gateway retries, nothing doubles.
4. **One database transaction** records the batch id, stores the alert lifecycle steps (de-duplicated on
   ``(alert_id, phase, time)``), moves each alert's current state, and updates each device's last seen,
   last sequence number and lost-frame count, and the gateway's last seen and status. With the
   ``ingest_overlap`` setting (SQLite only, off by default) it is built in a second thread *while* step
   3 runs and committed only after step 3 returned (:meth:`IngestService._ingest_overlapped`; why, and
   what it was measured against: ``docs/deploy-district.md``, "Whole path / store on the embedded
   default").
5. **Ack** only after that commit; then the :class:`AlertSink` (dispatch, a later issue) is told about the
   steps that were new. A failing sink is logged and counted; it never un-acknowledges stored data.

Sequence gaps (lost frames, 16-bit wrap) are computed for the whole batch at once: :mod:`cloud.sequence`.

All blocking work (SQL, the time-series write) runs in a worker thread: the event loop only awaits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time as _time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from itertools import repeat
from typing import Any, Protocol, TypeVar

import numpy as np
from sqlalchemy import Connection
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from alerts.contract import AlertEvent, UplinkAck, UplinkBatch
from cloud.alertstore import store_alert_steps
from cloud.db import Database
from cloud.errors import BadRequestError, CloudError, ConflictError, PermissionDeniedError, StorageError
from cloud.limits import GatewayQuota, GuardMetrics, IngestLimits, RateLimitedError
from cloud.metrics import CloudMetrics
from cloud.screening import DeviceCache, Screened, canonical_ids, screen
from cloud.sequence import (
    SEQ_MODULUS,
    BatchSequences,
    SeqSummary,
    batch_sequences,
    first_frame_gaps,
    sequence_summary,
)
from cloud.timeseries import TimeSeriesError, TimeSeriesStore
from firmware_bridge.kernel.clock import Clock, SystemClock
from firmware_bridge.kernel.records import ReadingBatch

log = logging.getLogger(__name__)

_CHUNK = 2000  # ids per IN (...) list: far below SQLite's and PostgreSQL's bound-parameter limits
_T = TypeVar("_T")


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
        limits: IngestLimits | None = None,
        overlap: bool = False,
    ) -> None:
        self.db = db
        self.store = store
        self.metrics = metrics or CloudMetrics()
        self.sink: AlertSink = sink or NullAlertSink()
        self.clock: Clock = clock or SystemClock()
        self.limits = limits or IngestLimits.from_env()
        self.quota = GatewayQuota(self.limits)
        self.guard = GuardMetrics.for_registry(self.metrics.registry)
        self._last_refusal_log: dict[str, float] = {}
        self.devices = DeviceCache()  # devices' gateway and kind, per registry generation
        # the database transaction beside the time-series write (see _ingest_overlapped): SQLite only, and
        # only when asked (``ingest_overlap``): measured a win on a loaded machine, a loss on a quiet one
        self.overlap = overlap and db.is_sqlite
        self._op_pool: ThreadPoolExecutor | None = None
        self._op_pool_lock = threading.Lock()

    async def ingest(
        self, batch: UplinkBatch, *, gateway_id: str, allow_unassigned: bool = False
    ) -> UplinkAck:
        """Store ``batch`` sent by ``gateway_id``; returns the ack only after the commit.

        ``allow_unassigned`` also accepts devices assigned to no gateway (operator-platform pushes, where
        the "gateway" is CTWing or OneNET).

        Records this gateway may not write are not stored and are listed in ``UplinkAck.refused``.

        Raises :class:`PermissionDeniedError` (the batch names another gateway),
        :class:`~cloud.limits.RateLimitedError` (over quota; nothing stored, retry later) and
        :class:`StorageError` (database or time-series store failure; the gateway should retry).
        """
        batch = self._admit(batch, gateway_id)
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
            await self._hand_to_sink(new_steps, gateway_id)
        return ack

    def _admit(self, batch: UplinkBatch, gateway_id: str) -> UplinkBatch:
        """The checks before any storage: the batch is the sender's own and within its quota. Returns it
        with canonical device ids (an upper-case DevEUI or an IMEI finds its registry row)."""
        if batch.gateway_id != gateway_id:
            self.metrics.batches.labels("forbidden").inc()
            raise PermissionDeniedError(
                f"batch names gateway {batch.gateway_id!r} but was sent by gateway {gateway_id!r}"
            )
        batch = canonical_ids(batch)
        n_readings = sum(len(b) for b in batch.telemetry)
        try:
            self.quota.admit(gateway_id, readings=n_readings, alert_steps=len(batch.alerts))
        except RateLimitedError:
            self.metrics.batches.labels("rate_limited").inc()
            self.guard.quota.labels("telemetry" if n_readings else "alert").inc()
            raise
        return batch

    async def _hand_to_sink(self, steps: list[AlertEvent], gateway_id: str) -> None:
        committed = getattr(self.store, "alert_steps_committed", None)  # cloud.privacy.MinimisingStore
        if committed is not None:
            committed({s.kind for s in steps})
        try:
            await self.sink.alerts_committed(steps, source=gateway_id)
        except Exception:  # supervisor boundary: the data is committed whatever the sink does
            self.metrics.sink_errors.inc()
            log.exception("alert sink failed", extra={"gateway_id": gateway_id, "steps": len(steps)})

    async def ingest_many(self, items: Sequence[tuple[UplinkBatch, str]]) -> list[UplinkAck | CloudError]:
        """Store several gateways' batches with one database transaction (an MQTT worker's waiting messages).

        One entry per item, in order: its ack (committed), or the :class:`CloudError` that refused that item
        alone (it names another gateway, over quota: nothing of it stored). Readings are written first and
        durably, per batch (as in :meth:`ingest`); then one transaction holds every batch's row, device
        bookkeeping and alert steps: one commit (one fsync, one round trip) for the group instead of one per
        batch. A batch already stored, or twice in the group, is answered ``duplicate``. If the shared
        transaction hits a unique-key conflict (a concurrent delivery of one of the batches) the group is
        committed batch by batch instead. Raises :class:`StorageError` when storing failed as a whole
        (nothing of the group committed): the caller retries the group.
        """
        results: list[UplinkAck | CloudError | None] = [None] * len(items)
        todo: list[tuple[int, UplinkBatch, str]] = []
        for i, (batch, gateway_id) in enumerate(items):
            try:
                todo.append((i, self._admit(batch, gateway_id), gateway_id))
            except (PermissionDeniedError, RateLimitedError) as exc:
                results[i] = exc
        if todo:
            t0 = _time.perf_counter()
            try:
                outs = await asyncio.to_thread(self._ingest_many_blocking, [(b, g) for _, b, g in todo])
            except CloudError:
                self.metrics.batches.labels("error").inc(len(todo))
                raise
            elapsed = _time.perf_counter() - t0
            steps_by_source: dict[str, list[AlertEvent]] = {}
            for (i, _batch, gateway_id), (ack, new_steps) in zip(todo, outs, strict=True):
                results[i] = ack
                self.metrics.ingest_seconds.observe(elapsed)
                self.metrics.batches.labels("duplicate" if ack.duplicate else "stored").inc()
                if new_steps:
                    steps_by_source.setdefault(gateway_id, []).extend(new_steps)
            for source, steps in steps_by_source.items():
                await self._hand_to_sink(steps, source)
        return [r for r in results if r is not None]

    def _ingest_many_blocking(
        self, items: Sequence[tuple[UplinkBatch, str]]
    ) -> list[tuple[UplinkAck, list[AlertEvent]]]:
        out: list[tuple[UplinkAck, list[AlertEvent]] | None] = [None] * len(items)
        fresh: list[tuple[int, UplinkBatch, str, Screened]] = []
        first_of: dict[tuple[str, str], int] = {}  # (gateway, batch id) -> its first index in the group
        again: list[tuple[int, int]] = []  # (index, index of the same batch earlier in the group)
        try:
            with self.db.read() as s:  # one session for every duplicate check and screening
                for i, (batch, gateway_id) in enumerate(items):
                    key = (gateway_id, batch.batch_id)
                    if key in first_of:
                        again.append((i, first_of[key]))
                        continue
                    first_of[key] = i
                    dup = self._find_batch(gateway_id, batch.batch_id, s)
                    if dup is not None:
                        out[i] = (dup, [])
                        continue
                    fresh.append((i, batch, gateway_id, self._screen(s, batch, gateway_id, False)))
            # one global order (gateway, batch) inside the shared transaction: two workers' groups lock
            # gateway and device rows in the same order, so they wait for each other, never deadlock
            fresh.sort(key=lambda f: (f[2], f[1].batch_id))
            written = [self._write_telemetry(sc.telemetry) for _, _, _, sc in fresh]
            if fresh:
                seqs = [_sequences(sc.telemetry) for _, _, _, sc in fresh]  # outside the transaction
                now = self.clock.now()
                try:
                    with self.db.write() as s:
                        committed = [
                            self._commit_in(s, batch, gw, st, du, sc, now, sq)
                            for (_, batch, gw, sc), (st, du), sq in zip(fresh, written, seqs, strict=True)
                        ]
                except ConflictError:
                    # a concurrent delivery of one of these batches: batch by batch, each with its own
                    # duplicate handling (readings are already durable and idempotent)
                    for (i, batch, gw, sc), (st, du) in zip(fresh, written, strict=True):
                        out[i] = self._commit_or_duplicate(batch, gw, st, du, sc)
                else:
                    for (i, batch, _gw, sc), (st, du), (gaps, steps) in zip(
                        fresh, written, committed, strict=True
                    ):
                        out[i] = self._acked(batch, st, du, sc, gaps, steps)
        except SQLAlchemyError as exc:
            raise StorageError(
                f"database error while storing {len(items)} batches: {type(exc).__name__}"
            ) from exc
        for i, first in again:
            done = out[first]
            assert done is not None
            # as any duplicate answer (docs/contract.md): no counts, the first delivery's commit time
            first_ack = done[0]
            out[i] = (
                UplinkAck(batch_id=first_ack.batch_id, duplicate=True, committed_at=first_ack.committed_at),
                [],
            )
        return [o for o in out if o is not None]

    def _commit_or_duplicate(
        self, batch: UplinkBatch, gateway_id: str, stored: int, duplicates: int, screened: Screened
    ) -> tuple[UplinkAck, list[AlertEvent]]:
        for attempt in range(3):
            try:
                return self._commit(batch, gateway_id, stored, duplicates, screened)
            except ConflictError:
                dup = self._find_batch(gateway_id, batch.batch_id)
                if dup is not None:
                    return dup, []
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # -- blocking part (worker thread) ----------------------------------------------------------------
    def _ingest_blocking(
        self, batch: UplinkBatch, gateway_id: str, allow_unassigned: bool = False
    ) -> tuple[UplinkAck, list[AlertEvent]]:
        try:
            # one pool checkout for both reads: on SQLite, for a batch without alert steps (whose screening
            # needs the ORM), the driver connection alone (no session around two driver-level reads)
            reads = _driver_read(self.db) if self.db.is_sqlite and not batch.alerts else self.db.read()
            with reads as s:
                dup = self._find_batch(gateway_id, batch.batch_id, s)
                if dup is not None:
                    return dup, []
                screened = self._screen(s, batch, gateway_id, allow_unassigned)
            if self.overlap and screened.telemetry:
                return self._ingest_overlapped(batch, gateway_id, screened)
            # Readings first, durable (idempotent: a failure later is repaired by the gateway's retry), then
            # one transaction.
            stored, duplicates = self._write_telemetry(screened.telemetry)
            # a concurrent delivery of the same batch, or a concurrent first step of an alert: retried
            return self._commit_or_duplicate(batch, gateway_id, stored, duplicates, screened)
        except SQLAlchemyError as exc:
            raise StorageError(
                f"database error while storing batch {batch.batch_id}: {type(exc).__name__}"
            ) from exc

    def _ingest_overlapped(
        self, batch: UplinkBatch, gateway_id: str, screened: Screened
    ) -> tuple[UplinkAck, list[AlertEvent]]:
        """The batch's database transaction built in a second thread while this one writes the readings;
        committed only once the readings are durable.

        The ordering invariant of the serial path holds: the ``ingested_batches`` row is committed after
        ``_write_telemetry`` returned (readings durable), never before, else a retry of a batch whose
        readings were lost would be answered ``duplicate``. The transaction's thread does the device
        bookkeeping, the alert steps and the gateway row, then waits for the readings' outcome: on
        success it adds the batch row and commits; on failure it rolls everything back (nothing of the
        batch in the database, the gateway retries). A ``kill -9`` before the commit leaves the readings
        (idempotent) and no batch row: the retry stores the batch.

        The time-series write must never take the operational database's write lock (``Database.write``):
        this transaction holds it while it waits for that write. It only reads it (the wristbands' open
        alarms, ``cloud.privacy.OpenAlarms``), which WAL never blocks.
        """
        gate: Future[tuple[int, int]] = Future()
        op = self._op_executor().submit(self._op_transaction, batch, gateway_id, screened, gate)
        try:
            stored, duplicates = self._write_telemetry(screened.telemetry)
        except BaseException as exc:
            gate.set_exception(exc)
            with suppress(BaseException):  # the readings' failure is the one to report
                op.result()  # rolled back (the write lock released) before the caller hears of it
            raise
        gate.set_result((stored, duplicates))
        try:
            gaps, new_steps = op.result()
        except ConflictError:
            # a concurrent delivery of this batch committed first (or a concurrent first step of an
            # alert): as the serial path, its duplicate answer or a serial retry
            dup = self._find_batch(gateway_id, batch.batch_id)
            if dup is not None:
                return dup, []
            return self._commit_or_duplicate(batch, gateway_id, stored, duplicates, screened)
        return self._acked(batch, stored, duplicates, screened, gaps, new_steps)

    def _op_transaction(
        self, batch: UplinkBatch, gateway_id: str, screened: Screened, gate: Future[tuple[int, int]]
    ) -> tuple[int, list[AlertEvent]]:
        """The operational transaction of :meth:`_ingest_overlapped` (in the ingest service's own thread)."""
        if gate.done() and gate.exception() is not None:
            raise _ReadingsFailed  # the readings failed before this started: nothing to do
        seqs = _sequences(screened.telemetry)
        now = self.clock.now()
        with self.db.write() as s:
            conn = s.connection()
            mark = _mark(conn.dialect.paramstyle)
            gaps = self._update_devices(conn, screened.telemetry, now, seqs=seqs)
            new_steps = store_alert_steps(s, screened.alerts, source=gateway_id, received_at=now)
            if new_steps:
                s.flush()
            self._gateway_row(conn, mark, batch, gateway_id, now)
            if gate.exception() is not None:  # waits for the readings: durable, or failed
                raise _ReadingsFailed  # rolls the transaction back
            stored, duplicates = gate.result()
            # last: the row that makes a retry a duplicate (a concurrent delivery fails here, rolled back)
            conn.exec_driver_sql(
                "INSERT INTO ingested_batches (gateway_id, batch_id, received_at, sent_at, telemetry_stored, "
                f"telemetry_duplicates, alerts_stored) VALUES ({', '.join([mark] * 7)})",
                (gateway_id, batch.batch_id, now, batch.sent_at, stored, duplicates, len(new_steps)),
            )
        return gaps, new_steps

    def _op_executor(self) -> ThreadPoolExecutor:
        """The threads of :meth:`_op_transaction` (created on first use; the embedded database has one
        writer, so two threads are plenty: one committing, one waiting for the write lock)."""
        with self._op_pool_lock:
            if self._op_pool is None:
                self._op_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vigil-ingest-tx")
            return self._op_pool

    def close(self) -> None:
        """Stop the transaction threads (after the work queued on them)."""
        with self._op_pool_lock:
            pool, self._op_pool = self._op_pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _find_batch(
        self, gateway_id: str, batch_id: str, s: Session | sqlite3.Connection | None = None
    ) -> UplinkAck | None:
        sql = "SELECT received_at FROM ingested_batches WHERE gateway_id = ? AND batch_id = ?"
        if isinstance(s, sqlite3.Connection):
            row = _sqlite_call(s.execute, sql, (gateway_id, batch_id)).fetchone()
            return None if row is None else UplinkAck(batch_id=batch_id, duplicate=True, committed_at=row[0])
        with nullcontext(s) if s is not None else self.db.read() as session:
            conn = session.connection()
            if self.db.is_sqlite:  # on the driver connection: no SQLAlchemy statement handling (~20 us)
                row = _sqlite_call(_sqlite_dbapi(conn).execute, sql, (gateway_id, batch_id)).fetchone()
            else:
                row = conn.exec_driver_sql(sql.replace("?", "%s"), (gateway_id, batch_id)).first()
            if row is None:
                return None
            return UplinkAck(batch_id=batch_id, duplicate=True, committed_at=row[0])

    def _screen(
        self, s: Session | sqlite3.Connection, batch: UplinkBatch, gateway_id: str, allow_unassigned: bool
    ) -> Screened:
        out = screen(
            s,
            batch,
            gateway_id,
            window=self.limits.time_window(self.clock.now()),
            allow_unassigned=allow_unassigned,
            cache=self.devices,
        )
        if out.refused:
            for (record, reason), n in out.by_reason.items():
                self.guard.refused.labels(record, reason).inc(n)
            foreign = {r.device_id for r in out.refused if r.reason in ("unknown_device", "not_assigned")}
            self.metrics.forbidden_devices.inc(len(foreign))
            self._log_refusals(gateway_id, batch.batch_id, out)
        return out

    def _log_refusals(self, gateway_id: str, batch_id: str, out: Screened) -> None:
        """At most one line per gateway per 10 s (a hostile gateway must not flood the journal)."""
        now = _time.monotonic()
        if now - self._last_refusal_log.get(gateway_id, -1e9) < 10.0:
            return
        if len(self._last_refusal_log) > 10_000:
            self._last_refusal_log.clear()
        self._last_refusal_log[gateway_id] = now
        log.warning(
            "gateway sent records the cloud refused; stored the rest",
            extra={
                "gateway_id": gateway_id,
                "batch_id": batch_id,
                "telemetry_refused": out.telemetry_refused,
                "alerts_refused": out.alerts_refused,
                "reasons": {f"{k[0]}:{k[1]}": v for k, v in out.by_reason.items()},
                "device_ids": sorted({r.device_id for r in out.refused})[:20],
            },
        )

    def _write_telemetry(self, readings: Sequence[ReadingBatch]) -> tuple[int, int]:
        """Store ``readings`` in the time-series store; returns ``(stored, duplicates)`` once durable."""
        stored = duplicates = 0
        for rb in readings:
            try:
                res = self.store.write(rb)
            except TimeSeriesError as exc:
                raise StorageError(f"time-series store failed: {exc}") from exc
            stored += res.stored
            duplicates += res.duplicates
        self.metrics.readings.inc(stored)
        self.metrics.reading_duplicates.inc(duplicates)
        return stored, duplicates

    def _commit(
        self,
        batch: UplinkBatch,
        gateway_id: str,
        stored: int,
        duplicates: int,
        screened: Screened,
    ) -> tuple[UplinkAck, list[AlertEvent]]:
        seqs = _sequences(screened.telemetry)  # before the write lock: it needs no stored state
        now = self.clock.now()
        if self.db.is_sqlite and not screened.alerts:
            # every statement of a telemetry-only batch is driver-level already: the same transaction on a
            # pooled sqlite3 connection, without the ORM session around it (~0.14 ms per batch)
            with _driver_write(self.db) as dbapi:
                gaps, new_steps = self._commit_in(
                    dbapi, batch, gateway_id, stored, duplicates, screened, now, seqs
                )
        else:
            with self.db.write() as s:
                gaps, new_steps = self._commit_in(
                    s, batch, gateway_id, stored, duplicates, screened, now, seqs
                )
        return self._acked(batch, stored, duplicates, screened, gaps, new_steps)

    def _commit_in(
        self,
        s: Session | sqlite3.Connection,
        batch: UplinkBatch,
        gateway_id: str,
        stored: int,
        duplicates: int,
        screened: Screened,
        now: float,
        seqs: BatchSequences | None = None,
    ) -> tuple[int, list[AlertEvent]]:
        """One batch's rows inside the caller's transaction: returns (sequence gaps, new alert steps).

        ``s``: the write session, or on SQLite for a batch without alert steps the sqlite3 connection of a
        :func:`_driver_write` transaction (the same statements, in the same order)."""
        conn = s if isinstance(s, sqlite3.Connection) else s.connection()
        mark = "?" if isinstance(conn, sqlite3.Connection) else _mark(conn.dialect.paramstyle)
        # a concurrent duplicate fails here (unique key), before any other work
        _driver_sql(
            conn,
            "INSERT INTO ingested_batches (gateway_id, batch_id, received_at, sent_at, telemetry_stored, "
            f"telemetry_duplicates, alerts_stored) VALUES ({', '.join([mark] * 6)}, 0)",
            (gateway_id, batch.batch_id, now, batch.sent_at, stored, duplicates),
        )
        gaps = self._update_devices(conn, screened.telemetry, now, locked=True, seqs=seqs)  # after batch row
        new_steps: list[AlertEvent] = []
        if screened.alerts:
            if not isinstance(s, Session) or isinstance(conn, sqlite3.Connection):
                raise TypeError("alert steps need the write session")
            new_steps = store_alert_steps(s, screened.alerts, source=gateway_id, received_at=now)
        if new_steps:
            assert isinstance(s, Session) and not isinstance(conn, sqlite3.Connection)
            s.flush()
            conn.exec_driver_sql(
                f"UPDATE ingested_batches SET alerts_stored = {mark} WHERE gateway_id = {mark} "
                f"AND batch_id = {mark}",
                (len(new_steps), gateway_id, batch.batch_id),
            )
        self._gateway_row(conn, mark, batch, gateway_id, now)
        return gaps, new_steps

    @staticmethod
    def _gateway_row(
        conn: Connection | sqlite3.Connection, mark: str, batch: UplinkBatch, gateway_id: str, now: float
    ) -> None:
        """The gateway's row: one UPDATE (the row lock is the UPDATE's own), at the driver level like the
        rest: the ORM's UPDATE cost ~1 ms of CPU per batch (statement cache key, session synchronisation)."""
        sql = f"UPDATE gateways SET last_seen = {mark}, batches_total = COALESCE(batches_total, 0) + 1"
        args: tuple[object, ...] = (now,)
        if batch.status is not None:
            json_mark = mark if mark == "?" else f"CAST({mark} AS JSON)"
            sql += f", last_status = {json_mark}"
            args += (json.dumps(batch.status.model_dump()),)
        _driver_sql(conn, f"{sql} WHERE gateway_id = {mark}", (*args, gateway_id))

    def _acked(
        self,
        batch: UplinkBatch,
        stored: int,
        duplicates: int,
        screened: Screened,
        gaps: int,
        new_steps: list[AlertEvent],
    ) -> tuple[UplinkAck, list[AlertEvent]]:
        """The ack of a committed batch (and its metrics)."""
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
            telemetry_refused=screened.telemetry_refused,
            alerts_refused=screened.alerts_refused,
            refused=screened.refused,
        )
        return ack, new_steps

    def _update_devices(
        self,
        conn: Connection | sqlite3.Connection,
        readings: Sequence[ReadingBatch],
        now: float,
        *,
        locked: bool = False,
        seqs: BatchSequences | None = None,
    ) -> int:
        """Each device's last seen / sequence / battery, lost-frame and reading counts; returns the batch's
        lost frames.

        What the batch says on its own (per-device counts, gaps between its own frames, first and last
        frame: :func:`~cloud.sequence.batch_sequences`) is computed first, so only the stored state is read
        here: one ``SELECT`` of the batch's devices (on PostgreSQL locking, in device-id order: two workers'
        batches lock shared devices in the same order and cannot deadlock), then the updates at the driver
        level (the ORM's bulk UPDATE built every row's parameters in Python: ~40 % of the ingest thread at
        5,000 readings per batch).

        ``locked``: the caller's transaction already holds SQLite's write lock (it wrote the batch row
        first), so no row can move between the ``SELECT`` and the ``UPDATE``s, which then find each row by
        the ``rowid`` the ``SELECT`` returned instead of a second search of the ``device_id`` index
        (~10 % less CPU for the two statements, isolated). Without it (the overlapped transaction reads
        first), by ``device_id`` as before.

        ``seqs``: ``readings``' :func:`_sequences`, computed by the caller before it took the write lock
        (the summary needs no stored state; ~1 ms of CPU per 2,000-reading batch that then no longer holds
        the process's one SQLite writer); computed here when not given."""
        if not readings:
            return 0
        b = seqs if seqs is not None else _sequences(readings)
        assert b is not None
        names = b.device_id
        k = len(names)
        where = {d: i for i, d in enumerate(names)}
        by_rowid = locked and not self.db.for_update()
        head = (
            "SELECT device_id, last_seq, last_seen, seq_gaps_total, readings_total"
            f"{', rowid' if by_rowid else ''} FROM devices WHERE "
        )
        if not isinstance(conn, sqlite3.Connection) and self.db.for_update():  # one array parameter
            found = conn.exec_driver_sql(
                f"{head}device_id = ANY(%s) ORDER BY device_id FOR UPDATE", (names,)
            ).all()
        else:  # straight on the driver's connection (same transaction): no per-statement SQLAlchemy work
            dbapi = conn if isinstance(conn, sqlite3.Connection) else _sqlite_dbapi(conn)
            found = []
            for i in range(0, k, _CHUNK):
                chunk = names[i : i + _CHUNK]
                sql = f"{head}device_id IN ({', '.join(['?'] * len(chunk))})"
                found.extend(_sqlite_call(dbapi.execute, sql, chunk).fetchall())
        # the stored state, parallel to names: -1 / NaN where none (or the device is gone: not updated)
        present = np.zeros(k, dtype=bool)
        prev_seq = np.full(k, -1, dtype=np.int64)
        prev_seen = np.full(k, np.nan)
        gaps_total = np.zeros(k, dtype=np.int64)
        readings_total = np.zeros(k, dtype=np.int64)
        keys: list[Any] = list(names)  # what each device's UPDATE finds its row by (device_id or rowid)
        for dev_id, last_seq, last_seen, g_total, r_total, *rowid in found:
            i = where[dev_id]
            present[i] = True
            if rowid:
                keys[i] = rowid[0]
            if last_seq is not None:
                prev_seq[i] = last_seq
            if last_seen is not None:
                prev_seen[i] = last_seen
            gaps_total[i] = g_total or 0
            readings_total[i] = r_total or 0
        gaps = b.gaps + first_frame_gaps(b, prev_seq, prev_seen)
        # "newer": the batch holds the device's newest reading, so last seen / seq / battery move (a batch
        # of only late readings moves the counts, never last seen back)
        newer = np.isnan(prev_seen) | (b.last_time >= prev_seen)
        cols = (gaps_total + gaps, readings_total + b.count, b.last_time, b.last_seq, b.last_battery)
        if not self.db.for_update():
            # SQLite: the driver's executemany steps a prepared UPDATE per device in C; one UPDATE .. FROM
            # (VALUES ..), or one executemany with CASE for late readings, measured no cheaper (3.3-3.7 vs
            # 2.9-3.6 ms CPU per commit of a 2,000-reading, 200-device batch), so the plain statements stay
            set_counts = "UPDATE devices SET seq_gaps_total = ?, readings_total = ?, last_received_at = ?"
            key = "rowid" if by_rowid else "device_id"
            pick = present & newer
            if pick.any():
                if pick.all():  # the usual batch: every device known, none with only late readings
                    g, n, t, q, bt = (c.tolist() for c in cols)
                    ids = keys
                else:
                    g, n, t, q, bt = (c[pick].tolist() for c in cols)
                    ids = [d for d, p in zip(keys, pick.tolist(), strict=True) if p]
                _sqlite_call(
                    dbapi.executemany,
                    f"{set_counts}, last_seen = ?, last_seq = ?, last_battery_pct = ? WHERE {key} = ?",
                    zip(g, n, repeat(now), t, q, bt, ids),
                )
            pick = present & ~newer
            if pick.any():
                g, n = (c[pick].tolist() for c in cols[:2])
                ids = [d for d, p in zip(keys, pick.tolist(), strict=True) if p]
                _sqlite_call(dbapi.executemany, f"{set_counts} WHERE {key} = ?", zip(g, n, repeat(now), ids))
        elif present.any() and not isinstance(conn, sqlite3.Connection):
            # PostgreSQL: one set-based UPDATE over arrays (7 parameters, dumped in C) instead of a pipelined
            # executemany (one statement per device: ~50 us of Python each in psycopg, and one plan per row on
            # the server)
            ids = [d for d, p in zip(names, present.tolist(), strict=True) if p]
            g, n, t, q, bt = (c[present].tolist() for c in cols)
            conn.exec_driver_sql(
                "UPDATE devices SET seq_gaps_total = v.gaps, readings_total = v.n, last_received_at = %s, "
                "last_seen = CASE WHEN v.newer THEN v.t ELSE devices.last_seen END, "
                "last_seq = CASE WHEN v.newer THEN v.q ELSE devices.last_seq END, "
                "last_battery_pct = CASE WHEN v.newer THEN v.b ELSE devices.last_battery_pct END "
                "FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::boolean[], %s::float8[], "
                "%s::bigint[], %s::float8[]) AS v (device_id, gaps, n, newer, t, q, b) "
                "WHERE devices.device_id = v.device_id",
                (now, ids, g, n, newer[present].tolist(), t, q, bt),
            )
        return int(gaps.sum())


def _sequences(readings: Sequence[ReadingBatch]) -> BatchSequences | None:
    """The batch's own per-device counts, gaps and first / last frames (:func:`batch_sequences`), None for
    no readings: a function of the readings alone, so callers compute it before taking the write lock."""
    if not readings:
        return None
    if len(readings) == 1:
        rb = readings[0]
        return batch_sequences(rb.device_id, rb.seq, rb.time, rb.battery_pct)
    return batch_sequences(
        np.concatenate([rb.device_id for rb in readings]),
        np.concatenate([rb.seq.astype(np.int64) for rb in readings]),
        np.concatenate([rb.time for rb in readings]),
        np.concatenate([rb.battery_pct for rb in readings]),
    )


class _ReadingsFailed(Exception):
    """Rolls the overlapped transaction back: the batch's readings were not stored (the caller reports
    the time-series error itself)."""


def _sqlite_dbapi(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under ``conn`` (inside the session's transaction)."""
    dbapi = conn.connection.dbapi_connection
    assert isinstance(dbapi, sqlite3.Connection)
    return dbapi


def _sqlite_call(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` on the sqlite3 connection, its errors as SQLAlchemy's (as ``exec_driver_sql`` raises
    them), so the callers' translation into :class:`StorageError` / :class:`ConflictError` holds."""
    what = str(args[0])[:200] if args else getattr(fn, "__name__", "sqlite3")
    try:
        return fn(*args)
    except sqlite3.IntegrityError as exc:
        raise IntegrityError(what, None, exc) from exc
    except sqlite3.Error as exc:
        raise DBAPIError(what, None, exc) from exc


def _driver_sql(conn: Connection | sqlite3.Connection, sql: str, args: tuple[object, ...]) -> None:
    """One statement in ``conn``'s transaction: on SQLite straight on the driver's connection (SQLAlchemy's
    statement handling costs ~20 us per statement), elsewhere through ``exec_driver_sql``."""
    if isinstance(conn, sqlite3.Connection):
        _sqlite_call(conn.execute, sql, args)
    elif conn.dialect.paramstyle == "qmark":
        _sqlite_call(_sqlite_dbapi(conn).execute, sql, args)
    else:
        conn.exec_driver_sql(sql, args)


@contextmanager
def _driver_read(db: Database) -> Iterator[sqlite3.Connection]:
    """A pooled sqlite3 connection for driver-level reads, without an ORM session (sqlite3 opens no
    transaction for a ``SELECT``: each read sees the latest commit, as in a read session)."""
    try:
        pooled = db.engine.raw_connection()
    except SQLAlchemyError as exc:
        raise StorageError(f"database read failed: {type(exc).__name__}") from exc
    try:
        dbapi = pooled.driver_connection
        assert isinstance(dbapi, sqlite3.Connection)
        yield dbapi
    finally:
        pooled.close()  # back to the pool (which resets it, as after a session)


@contextmanager
def _driver_write(db: Database) -> Iterator[sqlite3.Connection]:
    """:meth:`Database.write`'s discipline on a pooled sqlite3 connection, without an ORM session: the
    process's SQLite write lock held throughout, commit on success (``synchronous=FULL``: durable when this
    returns), rollback on any exception, and the same translation of errors (a unique-key violation is a
    :class:`ConflictError`, a value SQLite cannot store a :class:`BadRequestError`, anything else a
    :class:`StorageError`). sqlite3 opens the transaction itself at the first write (as under the session,
    which runs the same driver connection)."""
    try:
        with db._write_lock or nullcontext():
            pooled = db.engine.raw_connection()
            try:
                dbapi = pooled.driver_connection
                assert isinstance(dbapi, sqlite3.Connection)
                try:
                    yield dbapi
                    _sqlite_call(dbapi.commit)
                except BaseException:
                    with suppress(sqlite3.Error):
                        dbapi.rollback()
                    raise
            finally:
                pooled.close()  # back to the pool (which resets it, as after a session)
    except IntegrityError as exc:
        raise ConflictError(f"conflicting write: {_first_line(exc)}") from exc
    except DataError as exc:
        raise BadRequestError(f"value cannot be stored: {_first_line(exc)}") from exc
    except SQLAlchemyError as exc:
        raise StorageError(f"database write failed: {type(exc).__name__}") from exc


def _first_line(exc: SQLAlchemyError) -> str:
    """The driver's message without SQL or parameters (as ``cloud.db.session`` words it)."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else type(exc).__name__
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _mark(paramstyle: str) -> str:
    """The driver's placeholder: ``?`` for sqlite3, ``%s`` for psycopg."""
    return "?" if paramstyle == "qmark" else "%s"


__all__ = [
    "SEQ_MODULUS",
    "AlertSink",
    "IngestService",
    "NullAlertSink",
    "SeqSummary",
    "sequence_summary",
    "store_alert_steps",
]
