"""Cloud-side detection (cloud/detect_worker.py): readings of devices without a Vigil gateway are queued
at ingest, detected once by the leased ``detect`` job, and a detector that restarts or loses its lease
neither loses nor re-pages anything. On SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from cloud.db import Alert
from cloud.detect_worker import CloudDetector, concat, detect_inbox, pack_batch, unpack_batch
from cloud.jobs import JobContext
from cloud.lease import Lease, LeaseLost, open_lease
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import GW1, GW2, MANHOLE_1, MANHOLE_2, RecordingSink, batch, make_settings, readings
from tests.cloud.cloudkit import start_cloud as _start_cloud

M = DeviceKind.MANHOLE


def test_batches_round_trip_through_the_inbox_format() -> None:
    b = readings(M, MANHOLE_2, [1, 2, 3])
    back = unpack_batch(M, pack_batch(b))
    for c in ("device_id", "seq", "time", "battery_pct", "flags", "values", "fw_version"):
        np.testing.assert_array_equal(getattr(back, c), getattr(b, c))
    assert len(concat(M, [b, back])) == 6


def _ctx(lease: Lease, tick: int, now: float) -> JobContext:
    grant = lease.acquire("detect", 30.0)
    token = grant.token if grant is not None else 1
    return JobContext("detect", tick, token, now, now, now + 1.0, lease)


def _inbox(state) -> int:  # type: ignore[no-untyped-def]
    with state.db.read() as s:
        return int(s.execute(select(func.count()).select_from(detect_inbox)).scalar_one())


def _cloud_alerts(state) -> list[str]:  # type: ignore[no-untyped-def]
    with state.db.read() as s:
        return sorted(s.scalars(select(Alert.alert_id).where(Alert.device_id == MANHOLE_2)))


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
async def test_pushed_readings_are_detected_once_across_restarts(db: str, request, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    settings = make_settings(tmp_path, url, detect_gateways=GW2, run_jobs=False)
    async with _start_cloud(settings) as c:
        st = c.state
        t = c.clock.now()
        mh2 = readings(M, MANHOLE_2, list(range(1, 11)), t0=t)
        await st.ingest.ingest(batch("batch-gw2-0001", mh2, gateway_id=GW2), gateway_id=GW2)
        await st.ingest.ingest(batch("batch-gw1-0001", readings(M, MANHOLE_1, [1, 2], t0=t)), gateway_id=GW1)
        assert _inbox(st) == 1  # only the device behind GW2 (no Vigil detection there)

        sink = RecordingSink()
        lease = open_lease(st.db)
        det = CloudDetector(st.db, sink=sink, clock=c.clock)
        await det.job(_ctx(lease, 1, c.clock.now()))
        raised = _cloud_alerts(st)
        assert raised and _inbox(st) == 0
        assert sink.calls and {s.device_id for s in sink.calls[0][1]} == {MANHOLE_2}

        # the same readings again (a batch retried after its telemetry write), to a *restarted* detector:
        # it resumes from the saved state and raises nothing new
        st.store.write(mh2)
        assert _inbox(st) == 1
        lease2 = open_lease(st.db)
        det2 = CloudDetector(st.db, sink=sink, clock=c.clock)
        if hasattr(lease, "release"):
            lease.release("detect", 1)
        await det2.job(_ctx(lease2, 2, c.clock.now()))
        assert _inbox(st) == 0 and _cloud_alerts(st) == raised
        assert len(sink.calls) == 1

        # a detector that lost its lease commits nothing: the queue keeps the readings
        st.store.write(readings(M, MANHOLE_2, [11, 12], t0=t + 700))
        stale = JobContext("detect", 3, 999, t, t, t + 1, lease2)
        with pytest.raises(LeaseLost):
            await det2.job(stale)
        assert _inbox(st) == 1
