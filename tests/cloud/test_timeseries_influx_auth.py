"""InfluxDB 1.x with authentication on (``auth-enabled = true``), a real Debian 12 ``influxdb`` 1.6: the
admin user is created through the HTTP API, the cloud's store is given a user and password in its URL
(``influx://user:password@host:port?...&api=v1``, or ``token=user:password``), writes and the InfluxQL
reads work, and wrong or missing credentials fail with an error that names the setting to fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from cloud.timeseries import BackendError, UnsupportedURLError, open_timeseries
from cloud.timeseries.influx import InfluxAuthError, InfluxStore
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.test_timeseries import T0, make_batch, uniq
from tests.servers import InfluxServer, start_influxdb


@pytest.fixture(scope="module")
def influx_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = start_influxdb(Path(tmp_path_factory.mktemp("influx-auth")), auth=True)
    yield server
    server.stop()


@pytest.fixture
def db(influx_auth: InfluxServer) -> str:
    name = uniq("vigil").replace("-", "_")
    influx_auth.create_database(name)
    return name


def url(server: InfluxServer, db: str, user: str, password: str) -> str:
    return f"influx://{quote(user)}:{quote(password, safe='')}@{server.host}:{server.port}?bucket={db}&api=v1"


def test_auth_is_really_on(influx_auth: InfluxServer, db: str) -> None:
    anonymous = open_timeseries(f"influx://{influx_auth.host}:{influx_auth.port}?bucket={db}&api=v1")
    try:
        with pytest.raises(InfluxAuthError, match="VIGIL_CLOUD_TIMESERIES_URL") as err:
            anonymous.write(make_batch(DeviceKind.MANHOLE, ["mh-1"], 3))
        assert "no credentials" in str(err.value) and "401" in str(err.value)
        with pytest.raises(InfluxAuthError, match="no credentials"):
            anonymous.query("mh-1", DeviceKind.MANHOLE, T0, T0 + 10)
    finally:
        anonymous.close()


@pytest.mark.parametrize("form", ["userinfo", "token"])
def test_writes_and_influxql_reads_with_a_user_and_password(
    influx_auth: InfluxServer, db: str, form: str
) -> None:
    # a password with URL-reserved characters, given percent-encoded in the userinfo form
    user, password = f"writer_{form}", "s3cr@t:/?#x"
    influx_auth.query(f"CREATE USER \"{user}\" WITH PASSWORD '{password}'")
    influx_auth.query(f'GRANT ALL ON "{db}" TO "{user}"')
    if form == "userinfo":
        store = open_timeseries(url(influx_auth, db, user, password))
    else:
        token = quote(f"{user}:{password}", safe=":")
        store = open_timeseries(
            f"influx://{influx_auth.host}:{influx_auth.port}?bucket={db}&api=v1&token={token}"
        )
    assert isinstance(store, InfluxStore) and store.username == user
    try:
        batch = make_batch(DeviceKind.SMOKE_ALARM, ["sa-1", "sa-2"], 600, seed=3)
        assert store.write(batch).stored == 1200
        raw = store.query("sa-1", DeviceKind.SMOKE_ALARM, T0, T0 + 10_000, max_points=1000)
        mine = batch.device_id == "sa-1"
        assert len(raw) == int(mine.sum()) and not raw.downsampled
        np.testing.assert_allclose(raw.time, np.sort(np.rint(batch.time[mine] * 1000) / 1000))
        down = store.query("sa-1", DeviceKind.SMOKE_ALARM, T0, T0 + 10_000, max_points=50)
        assert down.downsampled and 0 < len(down) <= 50
        latest = store.latest(["sa-1", "sa-2", "nope"])
        assert set(latest) == {"sa-1", "sa-2"}
        assert latest["sa-1"] == pytest.approx(np.rint(batch.time[mine].max() * 1000) / 1000)
    finally:
        store.close()


def test_wrong_password_is_an_error_naming_the_setting_without_the_password(
    influx_auth: InfluxServer, db: str
) -> None:
    assert influx_auth.username is not None
    store = open_timeseries(url(influx_auth, db, influx_auth.username, "not-the-password"))
    try:
        with pytest.raises(InfluxAuthError) as err:
            store.write(make_batch(DeviceKind.MANHOLE, ["mh-1"], 3))
        msg = str(err.value)
        assert "VIGIL_CLOUD_TIMESERIES_URL" in msg and "401" in msg and influx_auth.username in msg
        assert "not-the-password" not in msg
        assert isinstance(err.value, BackendError)  # ingest turns it into a StorageError: the gateway retries
        with pytest.raises(InfluxAuthError, match="VIGIL_CLOUD_TIMESERIES_URL"):
            store.query("mh-1", DeviceKind.MANHOLE, T0, T0 + 10)
    finally:
        store.close()


def test_a_user_without_privileges_on_the_database_is_refused_by_name(
    influx_auth: InfluxServer, db: str
) -> None:
    influx_auth.query("CREATE USER \"reader_nowhere\" WITH PASSWORD 'pw-reader'")
    store = open_timeseries(url(influx_auth, db, "reader_nowhere", "pw-reader"))
    try:
        with pytest.raises(InfluxAuthError, match="403") as err:
            store.write(make_batch(DeviceKind.MANHOLE, ["mh-1"], 3))
        assert "reader_nowhere" in str(err.value) and db in str(err.value)
        with pytest.raises(InfluxAuthError, match="VIGIL_CLOUD_TIMESERIES_URL"):
            store.query("mh-1", DeviceKind.MANHOLE, T0, T0 + 10)
    finally:
        store.close()


def test_credentials_twice_in_the_url_are_refused() -> None:
    with pytest.raises(UnsupportedURLError, match="not both"):
        open_timeseries("influx://u:p@h:8086?bucket=b&api=v1&token=u:p")
    with pytest.raises(UnsupportedURLError, match="user:password"):
        open_timeseries("victoria://u:p@h:8428")
