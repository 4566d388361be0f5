"""The embedded default builds a batch's database transaction while its readings are written, and commits
it only once they are durable (``IngestService._ingest_overlapped``).

The invariant: an ``ingested_batches`` row is never committed before that batch's readings are durable,
else a retry of a batch whose readings were lost is answered ``duplicate`` and the readings never come.
Shown here with the time-series write held (the transaction has done its work and waits: nothing of it
visible), failing after the transaction did its work (rolled back whole; the retry stores the readings),
and with the process killed (``SIGKILL``) between the durable readings and the commit (the retry is
stored, not answered duplicate).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from alerts.contract import UplinkAck, UplinkBatch
from cloud.errors import StorageError
from cloud.ingest import IngestService
from cloud.timeseries import BackendError
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import GW1, MANHOLE_1, T0, Cloud, alert_step, batch, readings

M = DeviceKind.MANHOLE
ROOT = Path(__file__).resolve().parents[2]


def _db_file(cloud: Cloud) -> str:
    return str(cloud.settings.database_url).removeprefix("sqlite:///")


def _ts_file(cloud: Cloud) -> str:
    return str(cloud.settings.timeseries_url).removeprefix("sqlite:///")


def transaction_done_hook(svc: IngestService) -> threading.Event:
    """An event set when the batch's transaction has done its work (device rows, alert steps, gateway row:
    the last step before it waits for the readings), uncommitted."""
    done = threading.Event()
    real = svc._gateway_row

    def gateway_row(*args: Any) -> None:
        real(*args)
        done.set()

    svc._gateway_row = gateway_row  # type: ignore[method-assign, assignment]
    return done


def committed_state(path: str, batch_id: str) -> tuple[int, int, float | None, int, int]:
    """What another connection sees: (batch rows, the device's readings_total, its last_seen, the
    gateway's batches_total, alert rows)."""
    c = sqlite3.connect(path)
    try:
        (rows,) = c.execute(
            "SELECT COUNT(*) FROM ingested_batches WHERE batch_id = ?", (batch_id,)
        ).fetchone()
        total, seen = c.execute(
            "SELECT readings_total, last_seen FROM devices WHERE device_id = ?", (MANHOLE_1,)
        ).fetchone()
        (gw,) = c.execute("SELECT batches_total FROM gateways WHERE gateway_id = ?", (GW1,)).fetchone()
        (alerts,) = c.execute("SELECT COUNT(*) FROM alerts").fetchone()
        return rows, total, seen, gw, alerts
    finally:
        c.close()


def stored_readings(path: str) -> int:
    c = sqlite3.connect(path)
    try:
        return int(
            c.execute("SELECT COUNT(*) FROM ts_manhole WHERE device_id = ?", (MANHOLE_1,)).fetchone()[0]
        )
    finally:
        c.close()


def a_batch(batch_id: str) -> UplinkBatch:
    return batch(
        batch_id,
        readings(M, MANHOLE_1, [1, 2, 3]),
        alerts=[alert_step(MANHOLE_1, M, EventType.COVER_OPEN, AlertPhase.RAISED, T0)],
    )


async def test_the_transaction_waits_for_durable_readings_before_it_commits(
    cloud_sqlite: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud = cloud_sqlite
    assert not cloud.state.ingest.overlap  # off by default (cloud/settings.py ingest_overlap)
    cloud.state.ingest.overlap = True
    store, db_file = cloud.state.store, _db_file(cloud)
    real_write, release = store.write, threading.Event()
    before = committed_state(db_file, "overlap-1")
    tx_done = transaction_done_hook(cloud.state.ingest)

    def held(b: ReadingBatch) -> object:
        # the transaction runs beside this write (on the serial path it would start after it: this waits)
        assert tx_done.wait(30), "the batch's transaction did not run beside the readings' write"
        assert release.wait(30)
        return real_write(b)

    monkeypatch.setattr(store, "write", held)
    task = asyncio.create_task(cloud.state.ingest.ingest(a_batch("overlap-1"), gateway_id=GW1))
    assert await asyncio.to_thread(tx_done.wait, 30)
    await asyncio.sleep(0.3)  # the transaction has had every chance to commit early
    assert committed_state(db_file, "overlap-1") == before  # nothing of it visible: no batch row
    assert stored_readings(_ts_file(cloud)) == 0
    assert not task.done()
    release.set()
    ack = await asyncio.wait_for(task, 30)
    assert isinstance(ack, UplinkAck)
    assert not ack.duplicate and ack.telemetry_stored == 3 and ack.alerts_stored == 1
    rows, total, seen, gw, alerts = committed_state(db_file, "overlap-1")
    assert (rows, total, seen, gw, alerts) == (1, before[1] + 3, T0 + 120, before[3] + 1, 1)
    assert stored_readings(_ts_file(cloud)) == 3


async def test_readings_failing_after_the_transaction_did_its_work_roll_it_back(
    cloud_sqlite: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud = cloud_sqlite
    cloud.state.ingest.overlap = True
    store, db_file = cloud.state.store, _db_file(cloud)
    real_write = store.write
    before = committed_state(db_file, "overlap-2")
    tx_done = transaction_done_hook(cloud.state.ingest)

    def failing(_b: ReadingBatch) -> object:
        assert tx_done.wait(30)  # the transaction has updated the device rows, uncommitted
        time.sleep(0.3)  # and has had every chance to commit early
        raise BackendError("disk full")

    monkeypatch.setattr(store, "write", failing)
    with pytest.raises(StorageError, match="disk full"):
        await cloud.state.ingest.ingest(a_batch("overlap-2"), gateway_id=GW1)
    assert committed_state(db_file, "overlap-2") == before  # no batch row, no bookkeeping, no alert
    assert cloud.sink.calls == []
    # the gateway's retry is stored, not answered duplicate
    monkeypatch.setattr(store, "write", real_write)
    ack = await cloud.state.ingest.ingest(a_batch("overlap-2"), gateway_id=GW1)
    assert not ack.duplicate and ack.telemetry_stored == 3 and ack.alerts_stored == 1
    assert committed_state(db_file, "overlap-2")[:2] == (1, before[1] + 3)
    assert stored_readings(_ts_file(cloud)) == 3


_CHILD = """
import sys, time
from pathlib import Path
from typing import Any
from dataclasses import replace
from cloud.db import Database
from cloud.ingest import IngestService
from cloud.limits import IngestLimits
from cloud.timeseries import open_timeseries
from tests.cloud.cloudkit import ManualClock
from tests.cloud.test_ingest_overlap import a_batch, GW1, transaction_done_hook
db_url, ts_url, marker = sys.argv[1:4]
store = open_timeseries(ts_url)

class Durable:
    '''Once the transaction has done its work: writes the readings (durable on return), says so, then
    never returns: the kill comes here.'''
    def write(self, b):
        assert tx_done.wait(30)
        res = store.write(b)
        Path(marker).write_text("durable")
        time.sleep(3600)
        return res

limits = replace(IngestLimits(), max_future_s=1e9)
svc = IngestService(Database(db_url), Durable(), clock=ManualClock(), limits=limits, overlap=True)
tx_done = transaction_done_hook(svc)
import asyncio
asyncio.run(svc.ingest(a_batch("overlap-kill"), gateway_id=GW1))
"""


async def test_kill_between_durable_readings_and_the_commit_loses_nothing(
    cloud_sqlite: Cloud, tmp_path: Path
) -> None:
    cloud = cloud_sqlite
    db_file, ts_file = _db_file(cloud), _ts_file(cloud)
    before = committed_state(db_file, "overlap-kill")
    marker = tmp_path / "durable"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(cloud.settings.database_url),
            str(cloud.settings.timeseries_url),
            str(marker),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the child ended before its readings were durable"
            assert time.monotonic() < deadline, "the child's readings never became durable"
            await asyncio.sleep(0.02)
        # readings durable, the transaction done and waiting to commit: kill (after a moment in which a
        # transaction that did not wait for the readings would have committed)
        await asyncio.sleep(0.3)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
    assert stored_readings(ts_file) == 3
    assert committed_state(db_file, "overlap-kill") == before  # no batch row: a retry is not a duplicate
    c = sqlite3.connect(db_file)
    try:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        c.close()
    ack = await cloud.state.ingest.ingest(a_batch("overlap-kill"), gateway_id=GW1)
    assert not ack.duplicate
    assert (ack.telemetry_stored, ack.telemetry_duplicates, ack.alerts_stored) == (0, 3, 1)
    assert committed_state(db_file, "overlap-kill")[:2] == (1, before[1] + 3)
    assert stored_readings(ts_file) == 3
