"""The PostgreSQL time-series store survives its server dropping the session (a restart, a failover, an
administrator's ``pg_terminate_backend``): the write that finds the connection dead fails with
:class:`BackendError` (the caller retries it: ingest answers 503, an MQTT worker does not ack), and the next
write reconnects and stores, instead of every write failing until the process is restarted."""

from __future__ import annotations

import psycopg
import pytest

from cloud.timeseries import BackendError, open_timeseries
from cloud.timeseries.postgres import PostgresStore
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.test_timeseries import T0, make_batch


def test_a_dropped_session_fails_one_write_then_the_store_reconnects(pg_url: str) -> None:
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    first = make_batch(DeviceKind.MANHOLE, ["mh-1"], 4, seed=1)
    second = make_batch(DeviceKind.MANHOLE, ["mh-2"], 4, seed=2)
    with open_timeseries(pg_url) as store:  # type: ignore[attr-defined]
        assert isinstance(store, PostgresStore)
        assert store.write(first).stored == 4
        with psycopg.connect(dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        with pytest.raises(BackendError):
            store.write(second)  # this one finds the connection dead; nothing of it is stored
        r = store.write(second)  # the retry reconnects (and recreates its staging table)
        assert (r.stored, r.duplicates) == (4, 0)
        assert len(store.query("mh-2", DeviceKind.MANHOLE, T0 - 1e6, T0 + 1e6)) == 4
        assert len(store.query("mh-1", DeviceKind.MANHOLE, T0 - 1e6, T0 + 1e6)) == 4
