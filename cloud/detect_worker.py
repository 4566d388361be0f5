"""Cloud-side detection for readings that arrive without a Vigil gateway (CTWing / OneNET pushes).

A Vigil gateway runs :class:`alerts.detection.engine.DetectionEngine` itself and sends alert steps with
its telemetry. A device on an operator platform reaches us only as readings, so the cloud runs the same
engine for it:

1. **Inbox.** :class:`InboxTap` wraps the time-series store: after each successful telemetry write it
   appends the readings of *cloud-detected* devices (those assigned to a gateway id in
   ``detect_gateways``, by default the operator platforms ``ctwing`` and ``onenet``) to the
   ``detect_inbox`` table, one row per batch and kind (columns as ``.npz``, no pickle). The ingest path
   is untouched; a retried batch may be enqueued twice, which the engine ignores (it skips a device's
   already-seen sequence numbers).
2. **Detector.** :class:`CloudDetector` is the periodic job ``detect`` under a lease (:mod:`cloud.jobs`):
   one process owns the engine's state at a time (``vigil cloud detect`` runs only this job; any process
   with ``run_jobs`` may hold it). Each tick drains up to
   ``batch_max`` readings from the inbox, runs them through the engine in one vectorised pass per kind,
   and in **one fenced transaction** stores the new alert steps, deletes the drained rows and saves the
   engine's snapshot. A detector killed mid-tick commits nothing; the standby restores the last
   snapshot and drains the same rows again: nothing lost, nothing paged twice.

Silence is the connectivity monitor's (it owns DEVICE_SILENT in the cloud); the engine's time-driven
steps (escalation of persisting warnings, reminders) are kept, its DEVICE_SILENT steps dropped.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    select,
)
from sqlalchemy.orm import Session

from alerts.contract import AlertEvent
from alerts.detection.engine import DetectionEngine, SnapshotError
from cloud.alertstore import store_alert_steps
from cloud.db import Base, Database, Device
from cloud.ingest import AlertSink, NullAlertSink
from cloud.jobs import JobContext
from cloud.timeseries import Series, TimeSeriesStore, WriteResult
from firmware_bridge.kernel.clock import Clock, SystemClock
from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch

log = logging.getLogger(__name__)
SOURCE = "cloud"
JOB_NAME = "detect"

# on the models' metadata, so the migrations-match-the-models check covers them (migration 0013)
detect_inbox = Table(
    "detect_inbox",
    Base.metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("n", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("enqueued_at", Float, nullable=False),
)
detect_state = Table(
    "detect_state",
    Base.metadata,
    Column("name", String(64), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("saved_at", Float, nullable=False),
)

_COLUMNS = ("device_id", "seq", "time", "battery_pct", "flags", "values", "fw_version")


def pack_batch(batch: ReadingBatch) -> bytes:
    buf = io.BytesIO()
    arrays: dict[str, Any] = {c: np.asarray(getattr(batch, c)) for c in _COLUMNS}
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def unpack_batch(kind: DeviceKind, data: bytes) -> ReadingBatch:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        cols = {c: z[c] for c in _COLUMNS}
    return ReadingBatch(kind=kind, **cols)


def concat(kind: DeviceKind, batches: Sequence[ReadingBatch]) -> ReadingBatch:
    return ReadingBatch(kind=kind, **{c: np.concatenate([getattr(b, c) for b in batches]) for c in _COLUMNS})


class InboxTap:
    """A :class:`TimeSeriesStore` that also enqueues cloud-detected devices' readings (see above)."""

    def __init__(
        self,
        store: TimeSeriesStore,
        db: Database,
        *,
        gateways: Iterable[str],
        refresh_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.db = db
        self.gateways = tuple(sorted(set(gateways)))
        self.refresh_s = refresh_s
        self._clock = clock
        self._devices: frozenset[str] = frozenset()
        self._loaded_at = -float("inf")

    def _cloud_devices(self) -> frozenset[str]:
        now = self._clock()
        if now - self._loaded_at >= self.refresh_s:
            with self.db.read() as s:
                ids = s.scalars(select(Device.device_id).where(Device.gateway_id.in_(self.gateways)))
                self._devices = frozenset(ids)
            self._loaded_at = now
        return self._devices

    def write(self, batch: ReadingBatch) -> WriteResult:
        result = self.store.write(batch)
        devices = self._cloud_devices()
        if devices and len(batch):
            mask = np.isin(batch.device_id, np.array(sorted(devices)))
            if mask.any():
                part = batch.take(np.flatnonzero(mask))
                with self.db.write() as s:
                    s.execute(
                        detect_inbox.insert().values(
                            kind=batch.kind.value, n=len(part), data=pack_batch(part), enqueued_at=time.time()
                        )
                    )
        return result

    def query(
        self,
        device_id: str,
        kind: DeviceKind,
        start: float,
        end: float,
        *,
        channels: Sequence[str] | None = None,
        max_points: int = 1000,
    ) -> Series:
        return self.store.query(device_id, kind, start, end, channels=channels, max_points=max_points)

    def latest(self, device_ids: Sequence[str]) -> dict[str, float]:
        return self.store.latest(device_ids)

    def close(self) -> None:
        self.store.close()


class CloudDetector:
    """The engine, its inbox and its persisted state; :meth:`job` is the leased periodic job."""

    def __init__(
        self,
        db: Database,
        *,
        sink: AlertSink | None = None,
        clock: Clock | None = None,
        batch_max: int = 50_000,
        engine_factory: Callable[[], DetectionEngine] = DetectionEngine,
    ) -> None:
        self.db = db
        self.sink: AlertSink = sink or NullAlertSink()
        self.clock: Clock = clock or SystemClock()
        self.batch_max = batch_max
        self._factory = engine_factory
        self._engine: DetectionEngine | None = None
        self._token: int | None = None
        self.frames_total = 0

    async def job(self, ctx: JobContext) -> None:
        steps = await asyncio.to_thread(self._tick, ctx)
        if steps:
            try:
                await self.sink.alerts_committed(steps, source=SOURCE)
            except Exception:  # supervisor boundary: the steps are committed whatever the sink does
                log.exception("alert sink failed on cloud detection alerts")

    def _load(self, s: Session) -> DetectionEngine:
        row = s.execute(select(detect_state.c.data).where(detect_state.c.name == JOB_NAME)).first()
        if row is None:
            return self._factory()
        try:
            return DetectionEngine.restore(bytes(row[0]))
        except SnapshotError:
            log.exception("detection snapshot unreadable; starting from an empty state")
            return self._factory()

    def _tick(self, ctx: JobContext) -> list[AlertEvent]:
        now = self.clock.now()
        with self.db.write() as s:
            ctx.fence(s)  # first: a stale holder stops here, and the row lock keeps others out
            if self._engine is None or self._token != ctx.token:
                self._engine, self._token = self._load(s), ctx.token  # (re)gained: resume from the DB
            engine = self._engine
            rows = s.execute(
                select(detect_inbox.c.id, detect_inbox.c.kind, detect_inbox.c.n, detect_inbox.c.data)
                .order_by(detect_inbox.c.id)
                .limit(1000)
            ).all()
            taken: list[int] = []
            by_kind: dict[DeviceKind, list[ReadingBatch]] = {}
            total = 0
            for r in rows:
                if taken and total + int(r.n) > self.batch_max:
                    break
                taken.append(int(r.id))
                total += int(r.n)
                kind = DeviceKind(r.kind)
                by_kind.setdefault(kind, []).append(unpack_batch(kind, bytes(r.data)))
            try:
                steps: list[AlertEvent] = []
                for kind, parts in by_kind.items():
                    steps += engine.process(concat(kind, parts), now)
                steps += [e for e in engine.tick(now) if e.event_type != EventType.DEVICE_SILENT]
                stored = store_alert_steps(s, steps, source=SOURCE, received_at=now)
                if taken:
                    s.execute(delete(detect_inbox).where(detect_inbox.c.id.in_(taken)))
                self._save(s, engine, now)
            except BaseException:
                self._engine = None  # the transaction rolls back: the in-memory state is ahead of the DB
                raise
        self.frames_total += total
        return stored

    def _save(self, s: Session, engine: DetectionEngine, now: float) -> None:
        data = engine.snapshot()
        res = s.execute(
            detect_state.update().where(detect_state.c.name == JOB_NAME).values(data=data, saved_at=now)
        )
        if not getattr(res, "rowcount", 0):
            s.execute(detect_state.insert().values(name=JOB_NAME, data=data, saved_at=now))


__all__ = ["JOB_NAME", "CloudDetector", "InboxTap", "pack_batch", "unpack_batch"]
