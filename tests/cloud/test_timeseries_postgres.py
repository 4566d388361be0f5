"""PostgreSQL store specifics against a real server (``pg_url``): NULL for missing values, duplicates inside
one batch, the staging table staying empty, URL forms, typed errors."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from cloud.timeseries import BackendError, open_timeseries
from cloud.timeseries.postgres import PostgresStore
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from tests.cloud.test_timeseries import T0, make_batch


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def test_nan_is_null_and_in_batch_duplicates_are_counted(pg_url: str) -> None:
    b = make_batch(DeviceKind.SMOKE_ALARM, ["sa-1"], 5, seed=3, nan_fraction=0.0)
    values = b.values.copy()
    values[0, 1] = np.nan
    b = ReadingBatch(
        kind=b.kind,
        device_id=b.device_id,
        seq=b.seq,
        time=b.time,
        battery_pct=b.battery_pct,
        flags=b.flags,
        values=values,
        fw_version=b.fw_version,
    )
    with open_timeseries(pg_url) as store:  # type: ignore[attr-defined]
        assert isinstance(store, PostgresStore)
        r = store.write(ReadingBatch.concat([b, b.take(np.arange(2))]))
        assert (r.stored, r.duplicates) == (5, 2)
        r2 = store.write(b)
        assert (r2.stored, r2.duplicates) == (0, 5)
    with psycopg.connect(_dsn(pg_url)) as conn:
        nulls = conn.execute("SELECT COUNT(*) FROM ts_smoke_alarm WHERE temperature_c IS NULL").fetchone()
        nans = conn.execute("SELECT COUNT(*) FROM ts_smoke_alarm WHERE temperature_c = 'NaN'").fetchone()
    assert nulls == (1,) and nans == (0,)


def test_reopen_keeps_data_and_plain_postgresql_url_works(pg_url: str) -> None:
    b = make_batch(DeviceKind.WRISTBAND, ["wb-1"], 7, seed=4)
    with open_timeseries(pg_url) as s:  # type: ignore[attr-defined]
        s.write(b)
    with open_timeseries(_dsn(pg_url)) as s:  # type: ignore[attr-defined]
        assert len(s.query("wb-1", DeviceKind.WRISTBAND, T0, T0 + 1e4)) == 7
        assert s.write(b).duplicates == 7  # the staging table was emptied by the commit


def test_unreachable_server_and_closed_store_raise_backend_error(pg_url: str) -> None:
    from tests.servers import free_port

    with pytest.raises(BackendError):
        PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout=2)
    s = PostgresStore(pg_url)
    s.close()
    with pytest.raises(BackendError):
        s.write(make_batch(DeviceKind.MANHOLE, ["mh-1"], 1))
