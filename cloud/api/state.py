"""Everything a request handler needs, built once per app (``app.state.vigil``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloud.auth import Credentials
from cloud.connectivity import ConnectivityMonitor
from cloud.crypto import SecretBox, load_or_create_key
from cloud.db import Database, upgrade_head
from cloud.detect_worker import JOB_NAME as DETECT_JOB
from cloud.detect_worker import CloudDetector, InboxTap
from cloud.ingest import AlertSink, IngestService, NullAlertSink
from cloud.jobs import JobMetrics, JobRunner
from cloud.lease import open_lease
from cloud.metrics import CloudMetrics
from cloud.privacy import MinimisingStore, OpenAlarms
from cloud.registry import Registry
from cloud.settings import CloudSettings
from cloud.timeseries import TimeSeriesStore, open_timeseries
from firmware_bridge.kernel.clock import Clock, SystemClock


@dataclass
class CloudState:
    settings: CloudSettings
    db: Database
    store: TimeSeriesStore
    credentials: Credentials
    registry: Registry
    ingest: IngestService
    monitor: ConnectivityMonitor
    metrics: CloudMetrics
    clock: Clock
    #: periodic jobs, each run by one process at a time; register yours before the app starts
    jobs: JobRunner
    closed: bool = field(default=False)

    @classmethod
    def build(
        cls,
        settings: CloudSettings,
        *,
        sink: AlertSink | None = None,
        clock: Clock | None = None,
        metrics: CloudMetrics | None = None,
    ) -> CloudState:
        clock = clock or SystemClock()
        metrics = metrics or CloudMetrics()
        sink = sink or NullAlertSink()
        box = SecretBox(load_or_create_key(settings.secret_key_file))
        db = Database(settings.database_url)  # creates the SQLite file's directory
        try:
            if settings.should_migrate:
                upgrade_head(settings.database_url, secret_key_file=settings.secret_key_file)
            # a wristband's GPS fix on the ~100 m grid unless a responder may need it (docs/privacy.md)
            store: TimeSeriesStore = MinimisingStore(open_timeseries(settings.timeseries_url), OpenAlarms(db))
            if settings.detect_gateway_ids:  # cloud-side detection: queue those devices' readings
                store = InboxTap(store, db, gateways=settings.detect_gateway_ids)
        except Exception:
            db.close()
            raise
        monitor = ConnectivityMonitor(
            db,
            silent_factor=settings.silent_factor,
            gateway_offline_s=settings.gateway_offline_s,
            reminder_interval_s=settings.reminder_interval_s,
            metrics=metrics,
            sink=sink,
            clock=clock,
        )
        jobs = JobRunner(
            open_lease(db),
            clock=clock,
            ttl_s=settings.job_lease_ttl_s,
            metrics=JobMetrics(metrics.registry),
            only=settings.jobs_selected,
        )
        if settings.connectivity_check_s > 0:
            jobs.register("connectivity", settings.connectivity_check_s, monitor.job)
        if settings.detect_gateway_ids:
            detector = CloudDetector(db, sink=sink, clock=clock, batch_max=settings.detect_batch_max)
            jobs.register(DETECT_JOB, settings.detect_interval_s, detector.job)
        return cls(
            settings=settings,
            db=db,
            store=store,
            credentials=Credentials(db, rotation_grace_s=settings.gateway_rotation_grace_s),
            registry=Registry(db, box),
            ingest=IngestService(
                db, store, metrics=metrics, sink=sink, clock=clock, overlap=settings.ingest_overlap
            ),
            monitor=monitor,
            metrics=metrics,
            clock=clock,
            jobs=jobs,
        )

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.ingest.close()  # the ingest service's transaction threads, before the stores
            self.store.close()
        finally:
            self.db.close()
