"""The time-series store contract (``cloud/timeseries/base.py``), checked on every backend we can run here:
embedded SQLite (memory and file), PostgreSQL (``pg_url``), a real VictoriaMetrics (``victoria``) and a
real InfluxDB 1.6 (``influxdb``, Debian 12's package: ``influx://..?api=v1``, InfluxQL reads).

Reference results are computed with numpy from the same arrays that were written, so every assertion
compares the store with an independent implementation of the documented semantics (half-open ranges,
buckets of ``ceil(range / max_points)`` ms stamped with their start, mean/min/max, NaN = missing).
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from cloud.timeseries import (
    InvalidRangeError,
    TimeSeriesStore,
    UnknownChannelError,
    open_timeseries,
)
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import spec

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def make_batch(
    kind: DeviceKind,
    devices: list[str],
    n_per_device: int,
    *,
    seed: int = 0,
    nan_fraction: float = 0.05,
    t0: float = T0,
) -> ReadingBatch:
    """Irregularly spaced readings (millisecond times) with some missing values, devices interleaved."""
    rng = np.random.default_rng(seed)
    n_ch = len(spec(kind).channels)
    ids, times, seqs = [], [], []
    for d in devices:
        steps = rng.integers(200, 5000, size=n_per_device)  # ms between readings
        times.append(t0 + np.cumsum(steps) / 1000.0)
        ids.extend([d] * n_per_device)
        seqs.append(np.arange(n_per_device, dtype=np.uint32))
    n = len(ids)
    values = rng.normal(20.0, 5.0, size=(n, n_ch)).round(3)
    values[rng.random((n, n_ch)) < nan_fraction] = np.nan
    order = rng.permutation(n)  # gateways send devices interleaved, not sorted
    return ReadingBatch(
        kind=kind,
        device_id=np.array(ids)[order],
        seq=np.concatenate(seqs)[order],
        time=np.concatenate(times)[order],
        battery_pct=rng.uniform(10, 100, n).round(1)[order],
        flags=rng.integers(0, 64, n).astype(np.uint32)[order],
        values=values[order],
        fw_version=np.full(n, 3, dtype=np.uint16),
    )


def reference(
    batch: ReadingBatch, device: str, start: float, end: float, max_points: int
) -> dict[str, object]:
    """The documented query semantics, in numpy."""
    t_ms = np.rint(batch.time * 1000).astype(np.int64)
    s_ms, e_ms = round(start * 1000), round(end * 1000)
    sel = (batch.device_id == device) & (t_ms >= s_ms) & (t_ms < e_ms)
    t, v = t_ms[sel], batch.values[sel]
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if len(t) <= max_points:
        return {"downsampled": False, "time": t / 1000.0, "values": v}
    bucket = -(-(e_ms - s_ms) // max_points)
    b = (t - s_ms) // bucket
    keys = np.unique(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing bucket is NaN, as in the stores
        mean = np.array([np.nanmean(v[b == k], axis=0) for k in keys])
        mn = np.array([np.nanmin(v[b == k], axis=0) for k in keys])
        mx = np.array([np.nanmax(v[b == k], axis=0) for k in keys])
    return {
        "downsampled": True,
        "time": (s_ms + keys * bucket) / 1000.0,
        "values": mean,
        "min": mn,
        "max": mx,
        "bucket_s": bucket / 1000.0,
    }


@dataclass
class Backend:
    name: str
    store: TimeSeriesStore
    flush: Callable[[], None]
    counts_duplicates: bool


@pytest.fixture(params=["sqlite-memory", "sqlite-file", "postgresql", "victoria", "influxdb-1.6"])
def backend(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Backend]:
    name = request.param
    if name == "sqlite-memory":
        b = Backend(name, open_timeseries("sqlite://"), lambda: None, True)
    elif name == "sqlite-file":
        b = Backend(name, open_timeseries(f"sqlite:///{tmp_path}/ts.db"), lambda: None, True)
    elif name == "postgresql":
        url = request.getfixturevalue("pg_url")
        b = Backend(name, open_timeseries(url), lambda: None, True)
    elif name == "victoria":
        vm = request.getfixturevalue("victoria")
        b = Backend(name, open_timeseries(f"victoria://{vm.host}:{vm.port}"), vm.force_flush, False)
    else:  # one fresh database per test on the session's server
        influx = request.getfixturevalue("influxdb")
        db = uniq("vigil").replace("-", "_")
        influx.create_database(db)
        url = f"influx://{influx.host}:{influx.port}?bucket={db}&api=v1"
        b = Backend(name, open_timeseries(url), lambda: None, False)
    try:
        yield b
    finally:
        b.store.close()


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"  # the VictoriaMetrics server is shared by the session


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b)), "missing values must stay missing, and only those"
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-9, atol=1e-9)


# --- the contract, on every backend ------------------------------------------------------------------------
def test_write_then_read_full_resolution(backend: Backend) -> None:
    devs = [uniq("mh") for _ in range(3)]
    batch = make_batch(DeviceKind.MANHOLE, devs, 40, seed=1)
    res = backend.store.write(batch)
    assert (res.stored, res.duplicates) == (120, 0)
    backend.flush()
    names = spec(DeviceKind.MANHOLE).channel_names
    for d in devs:
        s = backend.store.query(d, DeviceKind.MANHOLE, T0, T0 + 10_000)
        ref = reference(batch, d, T0, T0 + 10_000, 1000)
        assert not s.downsampled and s.bucket_s is None
        np.testing.assert_array_equal(s.time, ref["time"])
        for j, n in enumerate(names):
            assert_same(s.values[n], ref["values"][:, j])  # type: ignore[index]


def test_rewrite_is_stored_once(backend: Backend) -> None:
    d = uniq("sa")
    batch = make_batch(DeviceKind.SMOKE_ALARM, [d], 50, seed=2)
    backend.store.write(batch)
    again = backend.store.write(batch.take(np.arange(10, 30)))  # a gateway retry of part of the batch
    if backend.counts_duplicates:
        assert (again.stored, again.duplicates) == (0, 20)
    else:  # Influx/VM overwrite the same point and cannot tell (documented)
        assert (again.stored, again.duplicates) == (20, 0)
    backend.flush()
    s = backend.store.query(d, DeviceKind.SMOKE_ALARM, T0, T0 + 10_000)
    assert len(s) == 50
    assert len(np.unique(s.time)) == 50


def test_downsampling_matches_numpy_reference(backend: Backend) -> None:
    d = uniq("wb")
    batch = make_batch(DeviceKind.WRISTBAND, [d], 600, seed=3, nan_fraction=0.02)
    backend.store.write(batch)
    backend.flush()
    start, end = T0 + 1.5, T0 + 1_000.25  # deliberately not aligned to anything
    chans = ["heart_rate_bpm", "spo2_pct", "accel_peak_g"]
    s = backend.store.query(d, DeviceKind.WRISTBAND, start, end, channels=chans, max_points=37)
    ref = reference(batch, d, start, end, 37)
    assert ref["downsampled"] and s.downsampled
    assert s.bucket_s == pytest.approx(ref["bucket_s"])
    assert len(s) <= 37
    np.testing.assert_allclose(s.time, ref["time"], rtol=0, atol=1e-6)  # type: ignore[call-overload]
    idx = [spec(DeviceKind.WRISTBAND).channel_index(c) for c in chans]
    for j, c in zip(idx, chans, strict=True):
        assert_same(s.values[c], ref["values"][:, j])  # type: ignore[index]
        assert_same(s.values_min[c], ref["min"][:, j])  # type: ignore[index]
        assert_same(s.values_max[c], ref["max"][:, j])  # type: ignore[index]
    assert set(s.values) == set(chans)


def test_range_is_half_open_and_exact_to_the_millisecond(backend: Backend) -> None:
    d = uniq("mh")
    times = T0 + np.array([0.0, 0.999, 1.0, 1.001, 2.0])
    n = len(times)
    batch = ReadingBatch(
        kind=DeviceKind.MANHOLE,
        device_id=np.array([d] * n),
        seq=np.arange(n, dtype=np.uint32),
        time=times,
        battery_pct=np.full(n, 50.0),
        flags=np.zeros(n, np.uint32),
        values=np.arange(n * 8, dtype=float).reshape(n, 8),
        fw_version=np.zeros(n, np.uint16),
    )
    backend.store.write(batch)
    backend.flush()
    s = backend.store.query(d, DeviceKind.MANHOLE, T0 + 0.999, T0 + 2.0, channels=["tilt_deg"])
    np.testing.assert_allclose(s.time, times[1:4])
    np.testing.assert_array_equal(s.values["tilt_deg"], [8.0, 16.0, 24.0])
    empty = backend.store.query(d, DeviceKind.MANHOLE, T0 + 3, T0 + 4)
    assert len(empty) == 0 and not empty.downsampled
    assert set(empty.values) == set(spec(DeviceKind.MANHOLE).channel_names)


def test_latest_returns_last_time_per_device_across_kinds(backend: Backend) -> None:
    mh, sa, absent = uniq("mh"), uniq("sa"), uniq("none")
    b1 = make_batch(DeviceKind.MANHOLE, [mh], 20, seed=4)
    b2 = make_batch(DeviceKind.SMOKE_ALARM, [sa], 30, seed=5)
    backend.store.write(b1)
    backend.store.write(b2)
    backend.flush()
    got = backend.store.latest([mh, sa, absent])
    assert set(got) == {mh, sa}
    assert got[mh] == pytest.approx(round(b1.time.max() * 1000) / 1000, abs=1e-3)
    assert got[sa] == pytest.approx(round(b2.time.max() * 1000) / 1000, abs=1e-3)
    assert backend.store.latest([]) == {}


def test_query_errors_are_typed(backend: Backend) -> None:
    with pytest.raises(UnknownChannelError, match="co_ppm"):
        backend.store.query("x", DeviceKind.MANHOLE, T0, T0 + 1, channels=["co_ppm"])
    with pytest.raises(InvalidRangeError):
        backend.store.query("x", DeviceKind.MANHOLE, T0 + 1, T0)
    with pytest.raises(InvalidRangeError):
        backend.store.query("x", DeviceKind.MANHOLE, T0, float("nan"))
    with pytest.raises(InvalidRangeError):
        backend.store.query("x", DeviceKind.MANHOLE, T0, T0 + 1, max_points=0)


def test_battery_is_queryable_and_empty_batch_is_a_no_op(backend: Backend) -> None:
    d = uniq("mh")
    batch = make_batch(DeviceKind.MANHOLE, [d], 10, seed=6)
    empty = backend.store.write(batch.take(np.zeros(0, dtype=int)))
    assert (empty.stored, empty.duplicates) == (0, 0)
    backend.store.write(batch)
    backend.flush()
    s = backend.store.query(d, DeviceKind.MANHOLE, T0, T0 + 1000, channels=["battery_pct"])
    np.testing.assert_allclose(s.values["battery_pct"], batch.battery_pct[np.argsort(batch.time)])
