"""Automatic retention (cloud/retention.py, docs/privacy.md "Retention"): exactly what is due goes.

Operational database on SQLite and PostgreSQL, time-series store on SQLite and PostgreSQL: a wristband's
readings past their days are deleted (other devices' and newer ones are not), closed incidents past
theirs lose the reporter's contact (open and recent ones keep it), a wristband's cleared alerts past theirs
lose their health values (open ones and other kinds keep them), old audit rows are deleted; batches
are bounded and the rest follows at the next run; the job runs under the job lease and audits itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from cloud.crypto import SecretBox, load_or_create_key
from cloud.db import Database, upgrade_head
from cloud.db.models import Alert, AlertStep, IngestedBatch
from cloud.jobs import JobRunner
from cloud.lease import open_lease
from cloud.loop.models import AuditEntry, Incident
from cloud.retention import DAY_S, JOB_NAME, Retention, RetentionPolicy
from cloud.timeseries import TimeSeriesStore, open_timeseries
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import make_settings, readings, start_cloud

NOW = 1_800_000_000.0
POLICY = RetentionPolicy(wristband_readings_days=180, incident_personal_days=365, audit_days=730)
BANDS = ("band-a", "band-b", "band-c")


class World:
    def __init__(self, db: Database, store: TimeSeriesStore, ts_url: str) -> None:
        self.db, self.store, self.ts_url = db, store, ts_url

    def count(self, kind: DeviceKind, device_id: str) -> int:
        return len(self.store.query(device_id, kind, 0.0, NOW + DAY_S, max_points=100_000))

    def contacts(self) -> dict[str, bool]:
        with self.db.read() as s:
            rows = s.execute(select(Incident.group_key, Incident.reporter_contact_enc)).all()
        return {k: enc is not None for k, enc in rows}

    def alert_values(self) -> dict[str, tuple[int, int]]:
        """Per alert: (alert row with a value, steps with a value)."""
        with self.db.read() as s:
            rows = {
                a.alert_id: (int(a.value is not None and a.message != ""), 0)
                for a in s.scalars(select(Alert))
            }
            for st in s.scalars(select(AlertStep)):
                if st.value is not None or st.message:
                    rows[st.alert_id] = (rows[st.alert_id][0], rows[st.alert_id][1] + 1)
        return rows

    def audit_ats(self) -> list[float]:
        with self.db.read() as s:
            return sorted(s.scalars(select(AuditEntry.at).where(AuditEntry.action != "retention.run")))


@pytest.fixture(params=["ts-sqlite", "ts-postgres"])
def world(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[World]:
    """Readings of three bands (one a day for 400 days) and a manhole, incidents and audit rows."""
    ts_url = (
        f"sqlite:///{tmp_path}/ts.db"
        if request.param == "ts-sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    key_file = tmp_path / "key"
    upgrade_head(db_url, secret_key_file=key_file)
    db = Database(db_url)
    store = open_timeseries(ts_url)
    try:  # closed also when the set-up fails (an open connection left to the GC warns)
        days = [NOW - d * DAY_S for d in range(400, 0, -1)]  # 400 .. 1 days old
        for band in BANDS:
            store.write(readings(DeviceKind.WRISTBAND, band, range(400), t0=days[0], step=DAY_S))
        store.write(readings(DeviceKind.MANHOLE, "manhole-1", range(400), t0=days[0], step=DAY_S))
        box = SecretBox(load_or_create_key(key_file))
        with db.write() as s:
            for key, stage, closed_days, updated_days in (
                ("closed-long-ago", "closed", 400, 400), ("closed-366", "closed", 366, 1),
                ("closed-recently", "closed", 30, 30), ("open-old", "dispatched", None, 400),
                ("dismissed-old", "dismissed", None, 400), ("dismissed-recently", "dismissed", None, 30),
            ):  # fmt: skip
                s.add(
                    Incident(
                        group_key=key, group_rule="r", stage=stage, source="manual", kind="report",
                        event_type="report", grade=3, urgency="normal", created_at=NOW - 500 * DAY_S,
                        stage_entered_at=NOW, updated_at=NOW - updated_days * DAY_S,
                        is_open=stage == "dispatched",
                        closed_at=None if closed_days is None else NOW - closed_days * DAY_S,
                        reporter_contact_enc=box.seal({"phone": "13900001111"}),
                    )
                )  # fmt: skip
            for alert_id, kind, phase, age in (
                ("band-cleared-old", "wristband", "cleared", 400),
                ("band-open-old", "wristband", "raised", 400),
                ("band-cleared-recently", "wristband", "cleared", 30),
                ("manhole-cleared-old", "manhole", "cleared", 400),
            ):  # fmt: skip
                t = NOW - age * DAY_S
                common = dict(
                    alert_id=alert_id, device_id=alert_id, kind=kind, event_type="heart_rate_low", severity=2,
                    episode_ms=1, frame_time=t, source="gw", value=35.0, message="heart rate 35",
                )  # fmt: skip
                s.add(Alert(phase=phase, raised_time=t - 60, raised_frame_time=t - 60, updated_time=t,
                            received_at=t, **common))  # fmt: skip
                s.add(AlertStep(phase="raised", time=t - 60, received_at=t - 60, **common))
                if phase == "cleared":
                    s.add(AlertStep(phase="cleared", time=t, received_at=t, **common))
            for age in (1000, 800, 731, 729, 10):
                at = NOW - age * DAY_S
                s.add(AuditEntry(at=at, actor="u", role="admin", action="x", target="", detail={}))
        yield World(db, store, ts_url)
    finally:
        store.close()
        db.close()


def _retention(w: World, policy: RetentionPolicy = POLICY) -> Retention:
    return Retention(w.db, timeseries_url=w.ts_url, policy=policy, registry=CollectorRegistry())


def test_deletes_exactly_what_is_due(world: World) -> None:
    job = _retention(world)
    try:
        done = job.run(NOW)
    finally:
        job.close()
    # readings 400..181 days old go (220 per band); 180..1 days old stay; the manhole is not personal
    assert done == {
        "wristband_readings": 3 * 220,
        "incident_personal": 3,
        "wristband_alert_values": 3,
        "audit": 3,
        "batch_ids": 0,
    }
    for band in BANDS:
        assert world.count(DeviceKind.WRISTBAND, band) == 180
        oldest = world.store.query(band, DeviceKind.WRISTBAND, 0.0, NOW, max_points=1000).time.min()
        assert oldest == NOW - 180 * DAY_S
    assert world.count(DeviceKind.MANHOLE, "manhole-1") == 400
    assert world.contacts() == {
        "closed-long-ago": False,
        "closed-366": False,
        "closed-recently": True,
        "open-old": True,  # an open case keeps its reporter's contact, however old
        "dismissed-old": False,  # no closed_at: its last change counts
        "dismissed-recently": True,
    }
    assert world.alert_values() == {
        "band-cleared-old": (0, 0),  # its value (heart rate 35) erased from the alert and both steps
        "band-open-old": (1, 1),  # still open: kept however old
        "band-cleared-recently": (1, 2),
        "manhole-cleared-old": (1, 2),  # not health data
    }
    with world.db.read() as s:
        assert s.get(Alert, "band-cleared-old").event_type == "heart_rate_low"  # type: ignore[union-attr]
    assert world.audit_ats() == [NOW - 729 * DAY_S, NOW - 10 * DAY_S]
    with world.db.read() as s:
        runs = s.scalars(select(AuditEntry.detail).where(AuditEntry.action == "retention.run")).all()
    assert runs == [done]
    assert job.metrics.rows.labels("wristband_readings")._value.get() == 660

    again = _retention(world)  # a second run (another process taking over) finds nothing more
    try:
        assert not any(again.run(NOW).values())
    finally:
        again.close()


def test_batches_are_bounded_and_the_rest_follows(world: World) -> None:
    policy = RetentionPolicy(
        wristband_readings_days=180, incident_personal_days=365, audit_days=730, batch=100, max_batches=3
    )
    job = _retention(world, policy)
    try:
        first = job.run(NOW)
        # three batches of at most 100: band-a's 220 due readings (100 + 100 + 20)
        assert first == {
            "wristband_readings": 220,
            "incident_personal": 3,
            "wristband_alert_values": 3,
            "audit": 3,
            "batch_ids": 0,
        }
        assert [world.count(DeviceKind.WRISTBAND, b) for b in BANDS] == [180, 400, 400]
        runs = [first["wristband_readings"]]
        while runs[-1]:
            runs.append(job.run(NOW)["wristband_readings"])
    finally:
        job.close()
    assert runs == [220, 220, 220, 0]
    assert [world.count(DeviceKind.WRISTBAND, b) for b in BANDS] == [180, 180, 180]


def test_zero_days_keeps_everything(world: World) -> None:
    keep = RetentionPolicy(
        wristband_readings_days=0, incident_personal_days=0, wristband_alert_values_days=0, audit_days=0
    )
    job = _retention(world, keep)
    try:
        assert not any(job.run(NOW).values())
    finally:
        job.close()
    assert world.count(DeviceKind.WRISTBAND, "band-a") == 400


def test_batch_ids_outlive_every_retry_and_empty_ones_go_soon(db_url: str, tmp_path: Path) -> None:
    """Idempotency records: a heartbeat's (stored nothing) after 2 days, any after 100 days (beyond the
    gateway's 90-day outbox), nothing younger; the rule is idempotent."""
    upgrade_head(db_url, secret_key_file=tmp_path / "key")
    db = Database(db_url)
    rows = {  # batch id: (days old, telemetry stored, duplicates, alert steps stored)
        "heartbeat-3d": (3, 0, 0, 0),
        "heartbeat-1d": (1, 0, 0, 0),
        "duplicates-only-3d": (3, 0, 5, 0),  # stored nothing new, but not empty: kept like any batch
        "readings-50d": (50, 2000, 0, 0),
        "alerts-99d": (99, 0, 0, 3),
        "readings-101d": (101, 2000, 0, 0),
        "heartbeat-200d": (200, 0, 0, 0),
    }
    with db.write() as s:
        for bid, (days, stored, dups, alerts) in rows.items():
            at = NOW - days * DAY_S
            s.add(
                IngestedBatch(
                    gateway_id="gw-1",
                    batch_id=f"{bid}-0000",
                    received_at=at,
                    sent_at=at,
                    telemetry_stored=stored,
                    telemetry_duplicates=dups,
                    alerts_stored=alerts,
                )
            )
    job = Retention(db, timeseries_url="sqlite:///:memory:", policy=RetentionPolicy(batch=2))
    try:
        assert job.run(NOW)["batch_ids"] == 3
        assert job.run(NOW)["batch_ids"] == 0
    finally:
        job.close()
    with db.read() as s:
        left = sorted(b.removesuffix("-0000") for b in s.scalars(select(IngestedBatch.batch_id)))
    db.close()
    assert left == ["alerts-99d", "duplicates-only-3d", "heartbeat-1d", "readings-50d"]


async def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_runs_as_a_leased_job_and_audits_each_run(db_url: str, tmp_path: Path) -> None:
    upgrade_head(db_url)
    db = Database(db_url)
    now = time.time()
    with db.write() as s:
        s.add(AuditEntry(at=now - 800 * DAY_S, actor="u", role="admin", action="x", target="", detail={}))
    job = Retention(
        db, timeseries_url=f"sqlite:///{tmp_path}/ts.db", policy=POLICY, registry=CollectorRegistry()
    )
    runner = JobRunner(open_lease(db), ttl_s=1.0, poll_s=0.01)
    runner.register(JOB_NAME, 0.05, job.job)
    task = asyncio.create_task(runner.run())
    try:
        await _until(lambda: runner.metrics.runs.labels(JOB_NAME, "ok")._value.get() >= 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        job.close()
    with db.read() as s:
        actions = s.scalars(select(AuditEntry.action)).all()
    db.close()
    assert actions == ["retention.run"]  # the old row went, once; empty runs are not audited


async def test_a_cancelled_job_returns_only_after_its_run_ended(db_url: str, tmp_path: Path) -> None:
    """The runner stopping mid-run (the task cancelled) waits for the run's thread before the cancellation
    reaches the caller, who then closes the databases with no session still in use behind its back (a run
    left going after ``db.close()`` opened a connection nobody closed: psycopg's "connection deleted while
    open" warning at garbage collection, seen under load)."""
    upgrade_head(db_url)
    db = Database(db_url)
    job = Retention(
        db, timeseries_url=f"sqlite:///{tmp_path}/ts.db", policy=POLICY, registry=CollectorRegistry()
    )
    started, release = threading.Event(), threading.Event()
    finished: list[dict[str, int]] = []
    run = job.run

    def slow_run(now: float, ctx: Any = None) -> dict[str, int]:
        started.set()
        release.wait(10)
        done = run(now, ctx)  # the rules, then the run's own audit write: a database session each
        finished.append(done)
        return done

    job.run = slow_run  # type: ignore[method-assign]
    ctx = SimpleNamespace(now=NOW, fence=lambda s: None)
    task = asyncio.create_task(job.job(ctx))  # type: ignore[arg-type]
    try:
        assert await asyncio.to_thread(started.wait, 10)
        task.cancel()
        asyncio.get_running_loop().call_later(0.3, release.set)
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        assert len(finished) == 1  # the whole run was over, its last session closed
    finally:
        release.set()
        job.close()
        db.close()


async def test_the_app_registers_the_job_from_settings(tmp_path: Path, sqlite_url: str) -> None:
    on = make_settings(tmp_path, sqlite_url, run_jobs=False)
    async with start_cloud(on) as c:
        assert JOB_NAME in c.state.jobs.jobs
    (tmp_path / "off").mkdir()
    off = make_settings(
        tmp_path / "off", f"sqlite:///{tmp_path}/off/vigil.db", run_jobs=False, retention_interval_s=0
    )
    async with start_cloud(off) as c:
        assert JOB_NAME not in c.state.jobs.jobs


def test_audit_is_kept_at_least_six_months(tmp_path: Path) -> None:
    from cloud.errors import ConfigError
    from cloud.settings import CloudSettings

    with pytest.raises(ConfigError, match="at least 180"):
        CloudSettings.from_env({"VIGIL_CLOUD_RETENTION_AUDIT_DAYS": "90"})
    assert CloudSettings.from_env({"VIGIL_CLOUD_RETENTION_AUDIT_DAYS": "0"}).retention_audit_days == 0
