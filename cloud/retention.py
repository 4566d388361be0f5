"""Automatic retention of personal data: the ``retention`` periodic job.

Rules (defaults and why: docs/privacy.md "Retention"; settings ``VIGIL_CLOUD_RETENTION_*``):

==========================  ==========================================================================
``wristband_readings``      a wristband's readings (heart rate, SpO2, position) older than
                            ``retention_wristband_readings_days`` are deleted from the time-series store
``incident_personal``       the resident reporter's sealed contact of an incident closed (or dismissed)
                            more than ``retention_incident_personal_days`` ago is erased (the case stays)
``wristband_alert_values``  the value and message (e.g. "heart rate 35") of a wristband's cleared alert
                            and of its steps older than ``retention_wristband_alert_values_days`` are
                            erased; the alert's type and times stay (the record of what happened)
``audit``                   audit rows older than ``retention_audit_days`` are deleted
``batch_ids``               the idempotency records of ingested batches (``ingested_batches``): those
                            that stored nothing (a gateway's heartbeat, a batch refused whole) after
                            ``retention_empty_batch_ids_days``, all after ``retention_batch_ids_days``
==========================  ==========================================================================

``batch_ids`` is not personal data but an idle gateway's heartbeat adds a row a minute (docs/gateway.md
"Heartbeat"). A batch id must outlive every retry of its batch, or a late retry is stored twice: a gateway
retries at most as long as its outbox keeps the batch (``outbox.alert_max_age_s``, 90 days by default),
so ``retention_batch_ids_days`` (default 100) must stay above it. A retry of a batch that stored nothing
stores nothing again (a heartbeat) or is refused again, so those rows may go after 2 days.

Each rule works in transactions of ``retention_batch`` rows and at most ``retention_max_batches`` of them
per run, so a first run over years of data neither holds a lock for minutes nor runs for hours: the rest
is due at the next run. The job runs under the job lease (:mod:`cloud.jobs`), so one process at a time;
every rule is idempotent (it removes only what is past its cutoff, and removing it twice removes nothing
more), so a holder that dies mid-run and the one that takes over cannot delete anything that was not due.
The run's totals are written to the audit log (``retention.run``) in the tick's fenced transaction and
counted in ``vigil_cloud_retention_rows_total{rule}``.

The time-series store is reached with its own connection, by SQL, because the store protocol has no
delete: SQLite and PostgreSQL stores are supported (per device, along their ``(device_id, time_ms, seq)``
key, so no extra index is needed). InfluxDB and VictoriaMetrics have no such path here: set the server's
own retention (an InfluxDB bucket retention period, VictoriaMetrics ``-retentionPeriod``); the job logs
that once and skips the rule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Engine, create_engine, delete, func, or_, select, text, update
from sqlalchemy.pool import NullPool

from cloud.db import Database
from cloud.db.models import Alert, AlertStep, IngestedBatch
from cloud.db.session import normalise_url
from cloud.jobs import JobContext
from cloud.jobs import _finish as finish_in_thread
from cloud.loop.config import audit
from cloud.loop.models import AuditEntry, Incident
from cloud.settings import CloudSettings

log = logging.getLogger(__name__)

JOB_NAME = "retention"
DAY_S = 86400.0
WRISTBAND_TABLE = "ts_wristband"
WRISTBAND = "wristband"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days each rule keeps (0 = keep forever) and the batch bounds."""

    wristband_readings_days: float = 180.0
    incident_personal_days: float = 365.0
    wristband_alert_values_days: float = 365.0
    audit_days: float = 730.0
    batch_ids_days: float = 100.0
    empty_batch_ids_days: float = 2.0
    batch: int = 5000
    max_batches: int = 20

    @classmethod
    def from_settings(cls, s: CloudSettings) -> RetentionPolicy:
        return cls(
            wristband_readings_days=s.retention_wristband_readings_days,
            incident_personal_days=s.retention_incident_personal_days,
            wristband_alert_values_days=s.retention_wristband_alert_values_days,
            audit_days=s.retention_audit_days,
            batch_ids_days=s.retention_batch_ids_days,
            empty_batch_ids_days=s.retention_empty_batch_ids_days,
            batch=s.retention_batch,
            max_batches=s.retention_max_batches,
        )


class RetentionMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.rows = Counter(
            "vigil_cloud_retention_rows_total",
            "Rows deleted or anonymised by the retention job, by rule",
            ["rule"],
            registry=registry,
        )


def timeseries_engine(url: str) -> Engine | None:
    """An engine on the time-series store for deletes; ``None`` when it is not SQL (or in memory)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        path = url.split("://", 1)[1].split("?", 1)[0]
        if path in ("", "/", "/:memory:"):
            return None  # a private in-memory store: no other connection can see it
        return create_engine("sqlite://" + path, poolclass=NullPool, connect_args={"timeout": 30})
    if scheme.startswith("postgres"):
        return create_engine(normalise_url(url), poolclass=NullPool)
    return None


class Retention:
    """The job; ``run(now)`` is one pass (also callable directly, e.g. from a test or the CLI)."""

    def __init__(
        self,
        db: Database,
        *,
        timeseries_url: str,
        policy: RetentionPolicy,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.db = db
        self.policy = policy
        self.metrics = RetentionMetrics(registry)
        self._ts = timeseries_engine(timeseries_url)
        if self._ts is None and policy.wristband_readings_days > 0:
            log.warning(
                "时序库不支持自动删除：请在服务器上设置保留期 / the time-series store has no delete path "
                "here: set the server's retention (InfluxDB bucket retention, VictoriaMetrics "
                "-retentionPeriod)",
                extra={"store": timeseries_url.split("://", 1)[0]},
            )

    def close(self) -> None:
        if self._ts is not None:
            self._ts.dispose()

    async def job(self, ctx: JobContext) -> None:
        """One run in a worker thread. Cancelled meanwhile (the runner stopping), it waits for the thread's
        run to end before re-raising (as the runner's own lease calls do): a thread cannot be stopped, and a
        run left going after the caller went on to close the databases opened a fresh connection on the
        disposed engine that nobody closed (psycopg's "connection deleted while open" warning at garbage
        collection, seen in tests under load)."""
        await finish_in_thread(self.run, ctx.now, ctx)

    def run(self, now: float, ctx: JobContext | None = None) -> dict[str, int]:
        p = self.policy
        done = {
            "wristband_readings": self._readings(now - p.wristband_readings_days * DAY_S)
            if p.wristband_readings_days > 0
            else 0,
            "incident_personal": self._incidents(now - p.incident_personal_days * DAY_S)
            if p.incident_personal_days > 0
            else 0,
            "wristband_alert_values": self._alert_values(now - p.wristband_alert_values_days * DAY_S)
            if p.wristband_alert_values_days > 0
            else 0,
            "audit": self._audit(now - p.audit_days * DAY_S) if p.audit_days > 0 else 0,
            "batch_ids": self._batch_ids(
                now - p.batch_ids_days * DAY_S if p.batch_ids_days > 0 else None,
                now - p.empty_batch_ids_days * DAY_S if p.empty_batch_ids_days > 0 else None,
            ),
        }
        for rule, n in done.items():
            self.metrics.rows.labels(rule).inc(n)
        with self.db.write() as s:
            if any(done.values()):
                audit(
                    s,
                    actor="system:retention",
                    role="system",
                    action="retention.run",
                    target="",
                    now=now,
                    **done,
                )
            if ctx is not None:
                ctx.fence(s)
        return done

    # -- rules -----------------------------------------------------------------------------------------------
    def _readings(self, cutoff_s: float) -> int:
        if self._ts is None:
            return 0
        cutoff_ms = round(cutoff_s * 1000.0)
        sqlite = self._ts.dialect.name == "sqlite"
        row = "rowid" if sqlite else "ctid"
        # one device at a time along the (device_id, time_ms, seq) key: no scan of the whole table
        devices_sql = text(
            f"WITH RECURSIVE d(id) AS (SELECT min(device_id) FROM {WRISTBAND_TABLE} UNION ALL "
            f"SELECT (SELECT min(device_id) FROM {WRISTBAND_TABLE} WHERE device_id > d.id) FROM d "
            "WHERE d.id IS NOT NULL) SELECT id FROM d WHERE id IS NOT NULL"
        )
        delete_sql = text(
            f"DELETE FROM {WRISTBAND_TABLE} WHERE {row} IN (SELECT {row} FROM {WRISTBAND_TABLE} "
            "WHERE device_id = :d AND time_ms < :cutoff LIMIT :n)"
        )
        total = batches = 0
        with self._ts.connect() as conn:
            if not _has_table(conn, WRISTBAND_TABLE):
                return 0
            devices = [r[0] for r in conn.execute(devices_sql)]
            conn.commit()
            for dev in devices:
                while batches < self.policy.max_batches:
                    n = _rowcount(
                        conn.execute(delete_sql, {"d": dev, "cutoff": cutoff_ms, "n": self.policy.batch})
                    )
                    conn.commit()
                    batches += n > 0  # a device with nothing due costs one index probe, not a batch
                    total += n
                    if n < self.policy.batch:
                        break
                else:
                    break
        return total

    def _in_batches(self, pk: Any, where: Sequence[Any], change: Callable[[list[Any]], Any]) -> int:
        """Rows matching ``where``, in transactions of ``policy.batch`` ids (in ``pk`` order), each changed by
        the statement ``change(ids)`` returns; at most ``policy.max_batches`` per run. Returns the count."""
        total = 0
        for _ in range(self.policy.max_batches):
            with self.db.write() as s:
                ids = list(
                    s.execute(select(pk).where(*where).order_by(pk).limit(self.policy.batch)).scalars()
                )
                if ids:
                    s.execute(change(ids), execution_options={"synchronize_session": False})
            total += len(ids)
            if len(ids) < self.policy.batch:
                break
        return total

    def _incidents(self, cutoff_s: float) -> int:
        return self._in_batches(
            Incident.id,
            (
                Incident.is_open.is_(False),
                # closed; a dismissed case has no closed_at: its last change counts
                func.coalesce(Incident.closed_at, Incident.updated_at) < cutoff_s,
                Incident.reporter_contact_enc.is_not(None),
            ),
            lambda ids: update(Incident).where(Incident.id.in_(ids)).values(reporter_contact_enc=None),
        )

    def _alert_values(self, cutoff_s: float) -> int:
        cleared = select(Alert.alert_id).where(Alert.kind == WRISTBAND, Alert.phase == "cleared")
        targets = (
            (Alert.alert_id, Alert.updated_time < cutoff_s, Alert.phase == "cleared"),
            (AlertStep.id, AlertStep.time < cutoff_s, AlertStep.alert_id.in_(cleared)),
        )
        total = 0
        for pk, older, done_with in targets:
            model = pk.class_

            def erase(ids: list[Any], model: Any = model, pk: Any = pk) -> Any:
                return update(model).where(pk.in_(ids)).values(value=None, message="")

            has_value = or_(model.value.is_not(None), model.message != "")
            total += self._in_batches(pk, (model.kind == WRISTBAND, older, done_with, has_value), erase)
        return total

    def _audit(self, cutoff_s: float) -> int:
        def drop(ids: list[Any]) -> Any:
            return delete(AuditEntry).where(AuditEntry.id.in_(ids))

        return self._in_batches(AuditEntry.id, (AuditEntry.at < cutoff_s,), drop)

    def _batch_ids(self, all_before: float | None, empty_before: float | None) -> int:
        rule = _batch_ids_rule(all_before, empty_before)
        if rule is None:
            return 0
        return self._in_batches(
            IngestedBatch.id, (rule,), lambda ids: delete(IngestedBatch).where(IngestedBatch.id.in_(ids))
        )


def _batch_ids_rule(all_before: float | None, empty_before: float | None) -> Any:
    """The ``ingested_batches`` rows ``batch_ids`` deletes (``None`` when both cutoffs are off)."""
    parts = []
    if all_before is not None:
        parts.append(IngestedBatch.received_at < all_before)
    if empty_before is not None:
        parts.append(
            (IngestedBatch.received_at < empty_before)
            & (IngestedBatch.telemetry_stored == 0)
            & (IngestedBatch.telemetry_duplicates == 0)
            & (IngestedBatch.alerts_stored == 0)
        )
    return or_(*parts) if parts else None


def _has_table(conn: Any, name: str) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(conn).has_table(name))


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def install(state: Any, settings: CloudSettings) -> Retention | None:
    """Register the ``retention`` job on ``state.jobs`` (``None`` when ``retention_interval_s`` is 0)."""
    if settings.retention_interval_s <= 0:
        return None
    job = Retention(
        state.db,
        timeseries_url=settings.timeseries_url,
        policy=RetentionPolicy.from_settings(settings),
        registry=state.metrics.registry,
    )
    state.jobs.register(JOB_NAME, settings.retention_interval_s, job.job)
    return job
