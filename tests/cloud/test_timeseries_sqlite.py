"""Embedded SQLite store specifics: URL forms, durability settings, NULL storage, concurrency, chunking."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.timeseries import BackendError, UnsupportedURLError, WriteResult, open_timeseries
from cloud.timeseries.sqlite import SQLiteStore
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import spec
from tests.cloud.test_timeseries import T0, assert_same, make_batch, reference


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = open_timeseries("sqlite:///rel.db")
    absolute = open_timeseries(f"sqlite:///{tmp_path}/abs.db?synchronous=normal")
    mem = open_timeseries("sqlite://")
    try:
        assert isinstance(rel, SQLiteStore) and Path(rel.path).resolve() == (tmp_path / "rel.db").resolve()
        assert isinstance(absolute, SQLiteStore) and absolute.path == f"{tmp_path}/abs.db"
        assert absolute.synchronous == "NORMAL"
        assert isinstance(mem, SQLiteStore) and mem.path == ":memory:"
    finally:
        for s in (rel, absolute, mem):
            s.close()
    for bad in (
        "sqlite:///x.db?synchronous=sometimes",
        "sqlite:///x.db?cache=1",
        "mysql://h/db",
        "sqlite://host/x.db",
        "influx://h:1",
        "victoria://",
    ):
        with pytest.raises(UnsupportedURLError):
            open_timeseries(bad)


def test_file_store_is_wal_with_full_sync_and_survives_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ts.db"
    batch = make_batch(DeviceKind.MANHOLE, ["mh-1"], 25, seed=7)
    with open_timeseries(url) as s:  # type: ignore[attr-defined]
        assert s.write(batch).stored == 25
        assert s._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert (
            s._writer.execute("PRAGMA synchronous").fetchone()[0] == 2
        )  # FULL: acked data survives power loss
    with open_timeseries(url) as s:  # type: ignore[attr-defined]
        assert s.write(batch).duplicates == 25
        assert len(s.query("mh-1", DeviceKind.MANHOLE, T0, T0 + 1e4)) == 25


def test_nan_is_stored_as_null(tmp_path: Path) -> None:
    path = tmp_path / "ts.db"
    batch = make_batch(DeviceKind.SMOKE_ALARM, ["sa-1"], 1, seed=8, nan_fraction=0.0)
    values = batch.values.copy()
    values[0, 2] = np.nan
    b = ReadingBatch(
        kind=batch.kind,
        device_id=batch.device_id,
        seq=batch.seq,
        time=batch.time,
        battery_pct=np.array([np.nan]),
        flags=batch.flags,
        values=values,
        fw_version=batch.fw_version,
    )
    with SQLiteStore(path) as s:
        s.write(b)
    with sqlite3.connect(path) as raw:
        row = raw.execute(
            "SELECT co_ppm IS NULL, battery_pct IS NULL, smoke_db_m IS NULL FROM ts_smoke_alarm"
        ).fetchone()
    raw.close()
    assert row == (1, 1, 0)


def test_duplicates_inside_one_batch_are_counted() -> None:
    batch = make_batch(DeviceKind.WRISTBAND, ["wb-1"], 10, seed=9)
    doubled = ReadingBatch.concat([batch, batch.take(np.arange(4))])
    with SQLiteStore(":memory:") as s:
        r = s.write(doubled)
    assert (r.stored, r.duplicates) == (10, 4)


def test_same_time_different_seq_are_two_readings() -> None:
    b = make_batch(DeviceKind.MANHOLE, ["mh-1"], 1, seed=10)
    b2 = ReadingBatch(
        kind=b.kind,
        device_id=b.device_id,
        seq=b.seq + 1,
        time=b.time,
        battery_pct=b.battery_pct,
        flags=b.flags,
        values=b.values,
        fw_version=b.fw_version,
    )
    with SQLiteStore(":memory:") as s:
        assert s.write(ReadingBatch.concat([b, b2])).stored == 2


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    batches = [
        make_batch(DeviceKind.MANHOLE, [f"mh-{k}-{i}" for i in range(5)], 40, seed=k) for k in range(6)
    ]
    with SQLiteStore(tmp_path / "ts.db") as s:
        results: list[int] = []
        lock = threading.Lock()

        def work(b: ReadingBatch) -> None:
            r = s.write(b)
            r2 = s.write(b)
            with lock:
                results.extend([r.stored, r2.stored])

        threads = [threading.Thread(target=work, args=(b,)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [0] * 6 + [200] * 6
        (count,) = s._reader.execute("SELECT COUNT(*) FROM ts_manhole").fetchone()
        assert count == 1200


def test_latest_chunks_many_device_ids() -> None:
    devs = [f"sa-{i:04d}" for i in range(1200)]  # more than one IN (...) chunk
    batch = make_batch(DeviceKind.SMOKE_ALARM, devs, 2, seed=11)
    with SQLiteStore(":memory:") as s:
        s.write(batch)
        got = s.latest(devs)
    assert len(got) == 1200
    for d in ("sa-0000", "sa-0777", "sa-1199"):
        assert got[d] == pytest.approx(round(batch.time[batch.device_id == d].max() * 1000) / 1000)


def test_all_missing_bucket_is_nan_and_single_point_query() -> None:
    n = 10
    values = np.full((n, 8), np.nan)
    values[5:, 0] = np.arange(5.0)
    b = ReadingBatch(
        kind=DeviceKind.MANHOLE,
        device_id=np.array(["mh-1"] * n),
        seq=np.arange(n, dtype=np.uint32),
        time=T0 + np.arange(n, dtype=float),
        battery_pct=np.full(n, 80.0),
        flags=np.zeros(n, np.uint32),
        values=values,
        fw_version=np.zeros(n, np.uint16),
    )
    with SQLiteStore(":memory:") as s:
        s.write(b)
        ds = s.query("mh-1", DeviceKind.MANHOLE, T0, T0 + 10, channels=["tilt_deg"], max_points=2)
        one = s.query("mh-1", DeviceKind.MANHOLE, T0 + 7, T0 + 7.001, channels=["tilt_deg"], max_points=1)
    assert ds.downsampled and ds.bucket_s == 5.0
    np.testing.assert_array_equal(ds.time, [T0, T0 + 5])
    assert np.isnan(ds.values["tilt_deg"][0]) and ds.values["tilt_deg"][1] == 2.0
    assert (ds.values_min["tilt_deg"][1], ds.values_max["tilt_deg"][1]) == (0.0, 4.0)
    assert not one.downsampled and one.values["tilt_deg"].tolist() == [2.0]


def test_closed_store_raises_typed_error() -> None:
    s = SQLiteStore(":memory:")
    s.close()
    s.close()  # idempotent
    with pytest.raises(BackendError):
        s.write(make_batch(DeviceKind.MANHOLE, ["mh-1"], 1))
    with pytest.raises(BackendError):
        s.latest(["mh-1"])


def test_unopenable_path_is_a_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError):
        SQLiteStore(tmp_path / "missing-dir" / "ts.db")


@settings(max_examples=60)
@given(
    offsets_ms=st.lists(st.integers(0, 100_000), min_size=1, max_size=120, unique=True),
    values=st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)), min_size=120, max_size=120),
    start_ms=st.integers(-5_000, 50_000),
    span_ms=st.integers(1, 120_000),
    max_points=st.integers(1, 150),
)
def test_query_matches_reference_for_any_range(
    offsets_ms: list[int], values: list[float | None], start_ms: int, span_ms: int, max_points: int
) -> None:
    """Property: for any data, range and max_points, the store equals the numpy reference semantics."""
    n = len(offsets_ms)
    v = np.array([np.nan if x is None else x for x in values[:n]])
    vals = np.full((n, 4), 1.0)
    vals[:, 0] = v
    b = ReadingBatch(
        kind=DeviceKind.SMOKE_ALARM,
        device_id=np.array(["sa-1"] * n),
        seq=np.zeros(n, np.uint32),
        time=T0 + np.array(offsets_ms) / 1000.0,
        battery_pct=np.full(n, 50.0),
        flags=np.zeros(n, np.uint32),
        values=vals,
        fw_version=np.zeros(n, np.uint16),
    )
    start, end = T0 + start_ms / 1000.0, T0 + (start_ms + span_ms) / 1000.0
    with SQLiteStore(":memory:") as s:
        s.write(b)
        got = s.query(
            "sa-1", DeviceKind.SMOKE_ALARM, start, end, channels=["smoke_db_m"], max_points=max_points
        )
    ref = reference(b, "sa-1", start, end, max_points)
    assert got.downsampled == ref["downsampled"]
    np.testing.assert_allclose(got.time, np.asarray(ref["time"], dtype=np.float64), rtol=0, atol=1e-6)
    assert_same(got.values["smoke_db_m"], ref["values"][:, 0])  # type: ignore[index]
    if got.downsampled:
        assert len(got) <= max_points
        assert_same(got.values_min["smoke_db_m"], ref["min"][:, 0])  # type: ignore[index]
        assert_same(got.values_max["smoke_db_m"], ref["max"][:, 0])  # type: ignore[index]


def test_concurrent_writes_are_group_committed(tmp_path: Path) -> None:
    """Batches queued while a commit is running share the next transaction (one fsync), and every caller
    still gets its own stored/duplicates count."""
    store = SQLiteStore(tmp_path / "ts.db")
    statements: list[str] = []
    store._writer.set_trace_callback(statements.append)
    first = make_batch(DeviceKind.MANHOLE, ["mh-a"], 10, seed=1)
    others = [make_batch(DeviceKind.MANHOLE, [f"mh-{k}"], 10, seed=k) for k in range(3)]
    results: dict[str, tuple[int, int]] = {}

    def write(name: str, b: ReadingBatch) -> None:
        r = store.write(b)
        results[name] = (r.stored, r.duplicates)

    try:
        store._write_lock.acquire()  # a commit "in progress": the first writer leads and waits for the lock
        t_first = threading.Thread(target=write, args=("first", first))
        t_first.start()
        deadline = time.monotonic() + 10
        while not store._leader and time.monotonic() < deadline:
            time.sleep(0.001)  # waiting for an observable state, not for time to pass
        threads = [threading.Thread(target=write, args=(f"o{k}", b)) for k, b in enumerate(others)]
        threads.append(threading.Thread(target=write, args=("dup", first.take(np.arange(4)))))
        for t in threads:
            t.start()
        while len(store._pending) < 4 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(store._pending) == 4
        store._write_lock.release()
        for t in [t_first, *threads]:
            t.join(10)
    finally:
        store.close()
    assert results == {"first": (10, 0), "o0": (10, 0), "o1": (10, 0), "o2": (10, 0), "dup": (0, 4)}
    assert sum(1 for s in statements if s == "COMMIT") == 2  # 5 batches, 2 transactions


@pytest.mark.parametrize("variable_limit", [999, 32766])
def test_batch_spanning_several_insert_statements_is_counted_exactly(
    tmp_path: Path, variable_limit: int
) -> None:
    """Readings go in as multi-row INSERTs of at most 128 rows (fewer when the SQLite build allows fewer
    bound parameters, as before 3.32): a batch spanning several statements, with duplicates falling into
    different statements and missing values, stores each reading once, counts exactly and reads back."""
    full = make_batch(DeviceKind.MANHOLE, ["mh-a", "mh-b", "mh-c"], 100, seed=21)  # 300, 5 % NaN
    with SQLiteStore(tmp_path / "ts.db") as s:
        s._writer.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variable_limit)
        s._max_variables = s._writer.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        assert s.write(full.take(np.arange(0, 300, 2))) == WriteResult(150, 0)
        # all 300: the even half again (spread over every statement) and the odd half new
        assert s.write(full) == WriteResult(150, 150)
        got = {d: s.query(d, DeviceKind.MANHOLE, 0, 4e9, max_points=1000) for d in ("mh-a", "mh-b", "mh-c")}
    for d, series in got.items():
        mine = full.take(full.device_id == d)
        order = np.argsort(mine.time)
        assert len(series) == 100
        np.testing.assert_allclose(series.time, mine.time[order], atol=1e-3)
        for j, ch in enumerate(spec(DeviceKind.MANHOLE).channel_names):
            np.testing.assert_array_equal(series.values[ch], mine.values[order, j])  # NaN where missing
