"""InfluxDB backend against a real InfluxDB 1.6 (Debian 12's ``influxdb``), beyond the shared contract
(which ``test_timeseries.py`` runs on it too): the server's version, and its errors arriving typed."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.timeseries import BackendError, UnsupportedURLError, open_timeseries
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.test_timeseries import T0, make_batch, uniq
from tests.servers import InfluxServer


def test_the_server_is_influxdb_1x(influxdb: InfluxServer) -> None:
    assert influxdb.version().startswith("1.")  # what docs/timeseries.md says the v1 path is tested with


def test_a_missing_database_is_a_backend_error_on_write_and_read(influxdb: InfluxServer) -> None:
    store = open_timeseries(f"influx://{influxdb.host}:{influxdb.port}?bucket=nope_{uniq('x')[2:]}&api=v1")
    try:
        with pytest.raises(BackendError, match="v1 write"):
            store.write(make_batch(DeviceKind.MANHOLE, ["mh-1"], 3))
        with pytest.raises(BackendError, match="database not found"):
            store.query("mh-1", DeviceKind.MANHOLE, T0, T0 + 10)
    finally:
        store.close()


def test_retention_policy_in_the_bucket_name(influxdb: InfluxServer) -> None:
    db = uniq("vigil").replace("-", "_")
    influxdb.create_database(db)
    store = open_timeseries(f"influx://{influxdb.host}:{influxdb.port}?bucket={db}/autogen&api=v1")
    try:
        batch = make_batch(DeviceKind.SMOKE_ALARM, ["sa-1"], 12, seed=9)
        assert store.write(batch).stored == 12
        s = store.query("sa-1", DeviceKind.SMOKE_ALARM, T0, T0 + 1000)
        np.testing.assert_allclose(s.time, np.sort(np.rint(batch.time * 1000) / 1000))
    finally:
        store.close()


def test_api_parameter_is_checked() -> None:
    with pytest.raises(UnsupportedURLError, match="api"):
        open_timeseries("influx://localhost:8086?bucket=b&api=v3")
