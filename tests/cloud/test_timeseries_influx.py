"""InfluxDB backend without a server: the line protocol we write and the InfluxQL we send, checked against
the documented formats; the HTTP layer is an ``httpx.MockTransport``. This covers what only InfluxDB
2.x / 3 do (the ``Token`` header, the 1.8 ``db/rp`` bucket); a real InfluxDB 1.6 runs the whole store
contract in ``test_timeseries.py`` and ``test_timeseries_influx_server.py``.

Formats: InfluxDB line protocol reference (docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/:
``measurement,tag=v field=1.5,n=3i 1700000000000``, escape ``,``/``=``/space in tag values, integers end
in ``i``); InfluxDB v1 ``/query`` response JSON (docs.influxdata.com/influxdb/v1/guides/query_data/:
``{"results":[{"statement_id":0,"series":[{"name":..,"columns":[..],"values":[[..]]}]}]}``, ``epoch=ms``
returns integer millisecond times, missing values are ``null``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from cloud.timeseries import BackendError, UnsupportedURLError, open_timeseries
from cloud.timeseries.influx import InfluxStore
from cloud.timeseries.lineproto import VictoriaStore, batch_to_lines
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch

T0_MS = 1_700_000_000_000


def one_reading(device: str, values: list[float], *, battery: float = 88.5) -> ReadingBatch:
    return ReadingBatch(
        kind=DeviceKind.SMOKE_ALARM,
        device_id=np.array([device]),
        seq=np.array([17], np.uint32),
        time=np.array([T0_MS / 1000]),
        battery_pct=np.array([battery]),
        flags=np.array([8], np.uint32),
        values=np.array([values]),
        fw_version=np.array([3], np.uint16),
    )


def test_line_protocol_point() -> None:
    lines = batch_to_lines(one_reading("sa-01", [0.05, 21.5, 0.0, 45.0]))
    assert lines == [
        "vigil_smoke_alarm,device_id=sa-01 seq=17i,flags=8i,fw_version=3i,battery_pct=88.5,"
        "smoke_db_m=0.05,temperature_c=21.5,co_ppm=0.0,humidity_pct=45.0 1700000000000"
    ]


def test_line_protocol_omits_missing_values_and_escapes_tags() -> None:
    (line,) = batch_to_lines(one_reading("odd id,x=1", [np.nan, 21.5, np.nan, np.nan], battery=np.nan))
    assert (
        line == "vigil_smoke_alarm,device_id=odd\\ id\\,x\\=1 seq=17i,flags=8i,fw_version=3i,"
        "temperature_c=21.5 1700000000000"
    )
    (line,) = batch_to_lines(one_reading("sa-02", [np.nan] * 4))
    assert line.endswith("battery_pct=88.5 1700000000000")


class FakeInflux:
    """Answers InfluxQL like InfluxDB 1.8/2.x/3's /query would for a fixed data set."""

    def __init__(self) -> None:
        self.queries: list[dict[str, str]] = []
        self.rows = [[T0_MS + 1000 * i, float(i), None if i == 2 else 20.0 + i] for i in range(5)]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/query"
        p = dict(request.url.params)
        self.queries.append(p)
        assert p["epoch"] == "ms" and p["db"] == "vigil"
        assert request.headers["Authorization"] == "Token s3cret"
        q = p["q"]
        if q.startswith('SELECT COUNT("seq")'):
            return self._series(["time", "count"], [[0, 5]])
        if "GROUP BY time" in q:
            return self._series(
                ["time", "mean", "min", "max"], [[T0_MS, 0.5, 0.0, 1.0], [T0_MS + 2000, 2.5, 2.0, 3.0]]
            )
        if q.startswith('SELECT LAST("seq")'):
            if "smoke_alarm" not in q:
                return httpx.Response(200, json={"results": [{"statement_id": 0}]})
            return httpx.Response(
                200,
                json={
                    "results": [
                        {
                            "statement_id": 0,
                            "series": [
                                {
                                    "name": "vigil_smoke_alarm",
                                    "tags": {"device_id": "sa-01"},
                                    "columns": ["time", "last"],
                                    "values": [[T0_MS + 4000, 4]],
                                }
                            ],
                        }
                    ]
                },
            )
        if q.startswith("SELECT"):
            return self._series(
                ["time", "seq", "smoke_db_m", "temperature_c"],
                [[r[0], i, r[1], r[2]] for i, r in enumerate(self.rows)],
            )
        return httpx.Response(400, json={"error": "unexpected"})

    @staticmethod
    def _series(columns: list[str], values: list[list[Any]]) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "results": [
                    {
                        "statement_id": 0,
                        "series": [{"name": "vigil_smoke_alarm", "columns": columns, "values": values}],
                    }
                ]
            },
        )


@pytest.fixture
def influx() -> Iterator[tuple[InfluxStore, FakeInflux]]:
    fake = FakeInflux()
    store = InfluxStore(
        "http://influx.invalid:8086",
        org="o",
        bucket="vigil",
        token="s3cret",
        timeout_s=5,
        transport=httpx.MockTransport(fake),
    )
    yield store, fake
    store.close()


def test_full_resolution_query(influx: tuple[InfluxStore, FakeInflux]) -> None:
    store, fake = influx
    s = store.query(
        "sa-01",
        DeviceKind.SMOKE_ALARM,
        T0_MS / 1000,
        T0_MS / 1000 + 10,
        channels=["smoke_db_m", "temperature_c"],
    )
    assert not s.downsampled
    np.testing.assert_array_equal(s.time, (T0_MS + 1000 * np.arange(5)) / 1000)
    np.testing.assert_array_equal(s.values["smoke_db_m"], [0, 1, 2, 3, 4])
    assert np.isnan(s.values["temperature_c"][2]) and s.values["temperature_c"][4] == 24.0
    q = fake.queries[-1]["q"]
    assert q == (
        'SELECT "seq", "smoke_db_m", "temperature_c" FROM "vigil_smoke_alarm" WHERE "device_id" = \'sa-01\' '
        f"AND time >= {T0_MS}ms AND time < {T0_MS + 10_000}ms"
    )


def test_downsampled_query_aligns_buckets_to_start(influx: tuple[InfluxStore, FakeInflux]) -> None:
    store, fake = influx
    start = T0_MS / 1000 + 0.25
    s = store.query("it's", DeviceKind.SMOKE_ALARM, start, start + 4, channels=["smoke_db_m"], max_points=2)
    assert s.downsampled and s.bucket_s == 2.0
    np.testing.assert_array_equal(s.values["smoke_db_m"], [0.5, 2.5])
    np.testing.assert_array_equal(s.values_max["smoke_db_m"], [1.0, 3.0])
    q = fake.queries[-1]["q"]
    assert "\"device_id\" = 'it\\'s'" in q  # InfluxQL string escaping
    assert q.endswith(f"GROUP BY time(2000ms, {(T0_MS + 250) % 2000}ms) fill(none)")
    assert 'MEAN("smoke_db_m"), MIN("smoke_db_m"), MAX("smoke_db_m")' in q


def test_latest(influx: tuple[InfluxStore, FakeInflux]) -> None:
    store, fake = influx
    assert store.latest(["sa-01", "nope"]) == {"sa-01": (T0_MS + 4000) / 1000}
    assert any("=~ /^(sa\\-01|nope)$/" in q["q"] for q in fake.queries)


def test_influxql_error_and_http_error_are_backend_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "COUNT" in request.url.params["q"]:
            return httpx.Response(
                200, json={"results": [{"statement_id": 0, "error": "database not found: vigil"}]}
            )
        return httpx.Response(401, json={"error": "unauthorized"})

    store = InfluxStore(
        "http://x.invalid",
        org="",
        bucket="vigil",
        token="",
        timeout_s=1,
        transport=httpx.MockTransport(handler),
    )
    try:
        with pytest.raises(BackendError, match="database not found"):
            store.query("a", DeviceKind.MANHOLE, 1, 2)
        with pytest.raises(BackendError, match="401"):
            store.latest(["a"])
    finally:
        store.close()


def test_open_influx_url_and_write_failure_is_typed() -> None:
    from tests.servers import free_port

    port = free_port()  # nothing listens there
    store = open_timeseries(f"influx://127.0.0.1:{port}?org=o&bucket=b&token=t&timeout=2")
    try:
        assert isinstance(store, InfluxStore) and store.bucket == "b" and store.org == "o"
        with pytest.raises(BackendError):
            store.write(one_reading("sa-01", [1.0, 2.0, 3.0, 4.0]))
    finally:
        store.close()
    vm = open_timeseries("victoria://127.0.0.1:1?tls=1")
    assert isinstance(vm, VictoriaStore) and vm.base_url == "https://127.0.0.1:1"
    vm.close()
    with pytest.raises(UnsupportedURLError):
        open_timeseries("influx://h:1?org=o")


def test_unreachable_victoria_is_a_backend_error() -> None:
    from tests.servers import free_port

    store = open_timeseries(f"victoria://127.0.0.1:{free_port()}?timeout=2")
    try:
        with pytest.raises(BackendError):
            store.query("a", DeviceKind.MANHOLE, 1, 2)
        with pytest.raises(BackendError):
            store.write(one_reading("sa-01", [1.0, 2.0, 3.0, 4.0]))
    finally:
        store.close()
    with pytest.raises(BackendError):
        store.latest(["a"])  # closed


def test_influxdb_18_bucket_is_split_into_db_and_rp() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        return httpx.Response(200, json={"results": [{"statement_id": 0}]})

    store = InfluxStore(
        "http://x.invalid",
        org="",
        bucket="vigil/autogen",
        token="u:p",
        timeout_s=1,
        transport=httpx.MockTransport(handler),
    )
    try:
        assert len(store.query("a", DeviceKind.MANHOLE, 1, 2)) == 0
    finally:
        store.close()
    assert (seen[0]["db"], seen[0]["rp"]) == ("vigil", "autogen")
