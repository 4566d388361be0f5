"""The PostgreSQL store's write path: the binary ``COPY`` stream built with numpy, the fast path (``COPY``
straight into the table) and the redelivery path it falls back to on a duplicate key.

The stream is checked against psycopg's own binary ``COPY`` row writer (``BinaryFormatter.write_row``,
which implements PostgreSQL's documented format: https://www.postgresql.org/docs/15/sql-copy.html, "Binary
Format") and then against what the server stores."""

from __future__ import annotations

import threading

import numpy as np
import psycopg
import pytest
from psycopg import postgres
from psycopg._copy_base import BinaryFormatter
from psycopg.adapt import Transformer
from psycopg.pq import Format

from cloud.timeseries import open_timeseries
from cloud.timeseries.base import time_ms_column
from cloud.timeseries.postgres import PostgresStore, copy_binary
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import spec
from tests.cloud.test_timeseries import T0, make_batch
from tests.servers import PostgresServer


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _awkward_batch() -> ReadingBatch:
    """Ids of different lengths (one byte to 22 UTF-8 bytes, non-ASCII), NaN in the battery and in the
    channels (a whole row of NaN too), infinities, -0.0 and the extremes of the unsigned columns."""
    ids = ["a", "mh-000001", "井盖-东区-01", "mh-000001", "x" * 17, "a"]
    n, k = len(ids), len(spec(DeviceKind.MANHOLE).channels)
    values = np.linspace(-5.5, 9.25, n * k).reshape(n, k)
    values[0, 0] = np.nan
    values[2, :] = np.nan
    values[3, k - 1] = np.inf
    values[4, 1] = -np.inf
    values[5, 2] = -0.0
    return ReadingBatch(
        kind=DeviceKind.MANHOLE,
        device_id=np.array(ids),
        seq=np.array([0, 1, 2, 3, 4294967295, 5], dtype=np.uint32),
        time=T0 + np.arange(n, dtype=np.float64) * 1.0005,
        battery_pct=np.array([88.5, np.nan, 0.0, 100.0, np.nan, 12.25]),
        flags=np.array([0, 4294967295, 1, 2, 3, 8], dtype=np.uint32),
        values=values,
        fw_version=np.array([0, 65535, 3, 3, 258, 1], dtype=np.uint16),
    )


def _rows(b: ReadingBatch) -> list[tuple[object, ...]]:
    """The batch as the rows the table should hold (NaN as None), in the table's column order."""
    t = time_ms_column(b)

    def f(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    return [
        (
            str(b.device_id[i]),
            int(t[i]),
            int(b.seq[i]),
            f(b.battery_pct[i]),
            int(b.flags[i]),
            int(b.fw_version[i]),
            *(f(v) for v in b.values[i]),
        )
        for i in range(len(b))
    ]


@pytest.mark.parametrize("which", ["awkward", "plain", "no_nan_same_length"])
def test_stream_is_what_psycopg_write_row_sends(which: str) -> None:
    if which == "awkward":
        b = _awkward_batch()
    else:
        b = make_batch(DeviceKind.SMOKE_ALARM, ["sa-1", "sa-2", "sa-333"], 40, seed=5)
        if which == "no_nan_same_length":  # the path that skips the byte mask
            b = make_batch(DeviceKind.WRISTBAND, ["wb-1", "wb-2"], 30, seed=6, nan_fraction=0.0)
    assert copy_binary(b) == _psycopg_stream(b)


def _psycopg_stream(b: ReadingBatch) -> bytes:
    tx = Transformer()
    oids = [postgres.types[t].oid for t in ("text", "int8", "int8", "float8", "int8", "int4")]
    oids += [postgres.types["float8"].oid] * b.values.shape[1]
    tx.set_dumper_types(oids, Format.BINARY)
    fmt = BinaryFormatter(tx)
    expected = bytearray()
    for row in _rows(b):
        expected += fmt.write_row(row)
    expected += fmt.end()
    return bytes(expected)


def test_reused_buffers_carry_nothing_from_one_batch_to_the_next() -> None:
    """The encoder reuses its buffers: a long batch, then shorter ones with NULLs and short ids, then a
    batch of another kind, each must come out exactly as psycopg writes it."""
    long_ = make_batch(DeviceKind.MANHOLE, [f"mh-long-device-{i}" for i in range(30)], 40, nan_fraction=0.0)
    for b in (
        long_,
        _awkward_batch(),
        make_batch(DeviceKind.SMOKE_ALARM, ["s", "sa-22"], 7, seed=9, nan_fraction=0.3),
        make_batch(DeviceKind.WRISTBAND, ["wb-1"], 3, seed=10, nan_fraction=0.0),
        long_,
    ):
        assert copy_binary(b) == _psycopg_stream(b)


def test_awkward_batch_round_trips_through_the_server(pg_url: str) -> None:
    b = _awkward_batch()
    with open_timeseries(pg_url) as store:  # type: ignore[attr-defined]
        r = store.write(b)
        assert (r.stored, r.duplicates) == (6, 0)
    cols = ", ".join(f'"{c}"' for c in spec(DeviceKind.MANHOLE).channel_names)
    with psycopg.connect(_dsn(pg_url)) as conn:
        got = conn.execute(
            f"SELECT device_id, time_ms, seq, battery_pct, flags, fw_version, {cols} FROM ts_manhole "
            "ORDER BY time_ms"
        ).fetchall()
    assert got == sorted(_rows(b), key=lambda r: int(r[1]))  # type: ignore[call-overload]
    assert str(got[5][8]) == "-0.0"  # the sign of zero survives


def test_a_fresh_batch_takes_the_copy_path_and_a_redelivery_the_merge_path(pg_url: str) -> None:
    """A batch of new readings never touches the staging table; a re-sent one (whole or in part) is
    merged: only its new readings are stored, each reading once."""
    first = make_batch(DeviceKind.MANHOLE, ["mh-1", "mh-2", "mh-3"], 50, seed=7)
    later = make_batch(DeviceKind.MANHOLE, ["mh-1", "mh-2", "mh-3"], 50, seed=8, t0=T0 + 1e6)
    with open_timeseries(pg_url) as store:  # type: ignore[attr-defined]
        assert isinstance(store, PostgresStore)
        r = store.write(first)
        assert (r.stored, r.duplicates) == (150, 0)
        staged = store._conn.execute("SELECT to_regclass('pg_temp.stage_ts_manhole')").fetchone()
        assert staged == (None,)  # the fast path: no staging table was needed
        r = store.write(first)  # the whole batch again (a lost ack)
        assert (r.stored, r.duplicates) == (0, 150)
        mixed = ReadingBatch.concat([later.take(np.arange(60)), first.take(np.arange(30, 90))])
        r = store.write(mixed)  # a gateway's retry that holds old and new readings
        assert (r.stored, r.duplicates) == (60, 60)
        r = store.write(later)
        assert (r.stored, r.duplicates) == (90, 60)
        assert store.write(later).stored == 0
    with psycopg.connect(_dsn(pg_url)) as conn:
        counts = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT (device_id, time_ms, seq)) FROM ts_manhole"
        ).fetchone()
    assert counts == (300, 300)


def test_two_stores_writing_overlapping_batches_at_once_store_each_reading_once(pg_url: str) -> None:
    """Two workers given the same readings at the same time (a redelivery racing the original): one
    ``COPY`` waits for the other's transaction on the first shared key, then merges."""
    rounds = 6
    batches = [
        make_batch(DeviceKind.MANHOLE, [f"mh-{j}" for j in range(20)], 20, seed=10 + i, t0=T0 + i * 1e6)
        for i in range(rounds)
    ]
    # each worker gets 3/4 of a round's batch, overlapping in the middle half, in the same order
    n = len(batches[0])
    parts = [(b.take(np.arange(0, 3 * n // 4)), b.take(np.arange(n // 4, n))) for b in batches]
    stored = [0, 0]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(w: int) -> None:
        try:
            with open_timeseries(pg_url) as store:  # type: ignore[attr-defined]
                for p in parts:
                    barrier.wait(timeout=30)
                    stored[w] += store.write(p[w]).stored
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sum(stored) == rounds * n
    with psycopg.connect(_dsn(pg_url)) as conn:
        counts = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT (device_id, time_ms, seq)) FROM ts_manhole"
        ).fetchone()
    assert counts == (rounds * n, rounds * n)


def test_workers_opening_a_new_database_at_once_all_start(pg_server: PostgresServer) -> None:
    """Ingest workers started together on an empty database each create the schema if it is missing;
    unserialised, ``CREATE TABLE IF NOT EXISTS`` lets all but one fail on ``pg_type``'s unique index."""
    for _ in range(3):
        url = pg_server.create_database()
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_one(
            u: str = url, b: threading.Barrier = barrier, errors: list[BaseException] = errors
        ) -> None:
            b.wait(timeout=30)
            try:
                PostgresStore(u).close()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors


def _next_xid(conn: psycopg.Connection) -> int:
    """The server's next transaction id (read without taking one): each write transaction takes one."""
    row = conn.execute("SELECT txid_snapshot_xmax(txid_current_snapshot())").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("merge_first", [True, False])
def test_in_a_redelivery_storm_batches_whose_first_reading_is_stored_skip_the_copy(
    pg_url: str, merge_first: bool
) -> None:
    """After a batch met a duplicate, the next batches of its kind probe their first reading's key: a
    re-sent one goes straight to the merge (one transaction, not a failed ``COPY`` and then the merge), a
    new one still takes the ``COPY``; the counts are those of the plain path either way."""
    devices = ["mh-1", "mh-2", "mh-3"]
    sent = [make_batch(DeviceKind.MANHOLE, devices, 20, seed=s, t0=T0 + 1e5 * s) for s in range(8)]
    new = [make_batch(DeviceKind.MANHOLE, devices, 20, seed=s, t0=T0 + 1e5 * s) for s in range(8, 12)]
    with PostgresStore(pg_url) as store, psycopg.connect(_dsn(pg_url), autocommit=True) as watch:
        store.merge_first = merge_first
        for b in sent:
            assert store.write(b).stored == 60
        x0 = _next_xid(watch)
        results = [store.write(b) for b in sent]  # the storm: every batch again
        x1 = _next_xid(watch)
        # among the storm, new batches, and retries holding old and new readings
        half = np.arange(30)
        results += [
            store.write(new[0]),
            store.write(ReadingBatch.concat([sent[0].take(half), new[1].take(half)])),
            store.write(ReadingBatch.concat([new[2].take(half), sent[1].take(half)])),
            store.write(new[3]),
        ]
        x2 = _next_xid(watch)
    assert [(r.stored, r.duplicates) for r in results] == [(0, 60)] * 8 + [
        (60, 0),
        (30, 30),
        (30, 30),
        (60, 0),
    ]
    # transactions that took an xid: the storm's first batch fails its COPY, then merges; with the probe
    # the other seven merge at once, without it each fails its COPY first
    assert x1 - x0 == (2 + 7 if merge_first else 2 * 8)
    # then: a new batch (COPY), old+new (probe: merge), new+old (COPY fails, merge), a new one (COPY)
    assert x2 - x1 == (5 if merge_first else 6)
    with psycopg.connect(_dsn(pg_url)) as conn:
        counts = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT (device_id, time_ms, seq)) FROM ts_manhole"
        ).fetchone()
    assert counts == (8 * 60 + 4 * 60 - 60, 8 * 60 + 4 * 60 - 60)
