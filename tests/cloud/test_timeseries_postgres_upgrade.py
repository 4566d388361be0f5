"""Tables made by an older store (device ids compared in the database's collation) keep working as they
are with the current store, which says how to give them the bytewise ``COLLATE "C"`` key of new tables;
after that statement the data, the duplicate detection and the reads are unchanged."""

from __future__ import annotations

import logging

import numpy as np
import psycopg
import pytest

from cloud.timeseries import open_timeseries
from cloud.timeseries.base import table_name
from cloud.timeseries.postgres import PostgresStore, collation_upgrade_sql
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import KINDS
from tests.cloud.test_timeseries import T0, make_batch


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _old_ddl(kind: DeviceKind) -> str:
    """The CREATE TABLE of the store as of commit 388ef80 (no collation on ``device_id``)."""
    chans = ", ".join(f'"{n}" double precision' for n in KINDS[kind].channel_names)
    return (
        f'CREATE TABLE "{table_name(kind)}" (device_id text NOT NULL, time_ms bigint NOT NULL, '
        f"seq bigint NOT NULL, battery_pct double precision, flags bigint NOT NULL, "
        f"fw_version integer NOT NULL, {chans}, PRIMARY KEY (device_id, time_ms, seq))"
    )


def _collations(conn: psycopg.Connection) -> dict[str, str]:
    rows = conn.execute(
        "SELECT c.relname, co.collname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_collation co ON co.oid = a.attcollation "
        "WHERE c.relname LIKE 'ts\\_%%' AND c.relkind = 'r' AND a.attname = 'device_id'"
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def test_a_new_database_gets_bytewise_device_ids_and_no_hint(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="cloud.timeseries.postgres"):
        PostgresStore(pg_url).close()
    with psycopg.connect(_dsn(pg_url)) as conn:
        assert _collations(conn) == {table_name(k): "C" for k in KINDS}
    assert "ALTER TABLE" not in caplog.text


def test_an_old_table_works_as_it_is_then_after_the_documented_statement(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    kind = DeviceKind.MANHOLE
    old = make_batch(kind, ["mh-1", "MH-2", "井盖-3"], 20, seed=11)
    new = make_batch(kind, ["mh-1", "MH-2", "井盖-3"], 20, seed=12, t0=T0 + 1e6)
    with psycopg.connect(_dsn(pg_url), autocommit=True) as conn:
        conn.execute(_old_ddl(kind))
        default = _collations(conn)[table_name(kind)]
        assert default != "C"
    with open_timeseries(pg_url) as store:  # type: ignore[attr-defined]
        assert store.write(old).stored == 60
    with caplog.at_level(logging.INFO, logger="cloud.timeseries.postgres"):
        store = PostgresStore(pg_url)
    try:
        assert collation_upgrade_sql(kind) in caplog.text  # the hint names the statement
        assert "ts_wristband" not in caplog.text  # tables created by this store need nothing
        r = store.write(ReadingBatch.concat([old.take(np.arange(10)), new]))
        assert (r.stored, r.duplicates) == (60, 10)
        before = {d: store.query(d, kind, T0 - 1, T0 + 2e6) for d in ("mh-1", "MH-2", "井盖-3")}
    finally:
        store.close()
    with psycopg.connect(_dsn(pg_url), autocommit=True) as conn:
        assert _collations(conn)[table_name(kind)] == default  # the store never rebuilds it by itself
        conn.execute(collation_upgrade_sql(kind))
        assert _collations(conn)[table_name(kind)] == "C"
        valid = conn.execute(
            "SELECT bool_and(indisvalid) FROM pg_index WHERE indrelid = %s::regclass", (table_name(kind),)
        ).fetchone()
        assert valid == (True,)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cloud.timeseries.postgres"):
        store = PostgresStore(pg_url)
    try:
        assert "ALTER TABLE" not in caplog.text
        r = store.write(ReadingBatch.concat([old, new.take(np.arange(5))]))
        assert (r.stored, r.duplicates) == (0, 65)
        for d, series in before.items():
            after = store.query(d, kind, T0 - 1, T0 + 2e6)
            assert len(after) == len(series) == 40
            assert np.array_equal(after.time, series.time)
            assert after.values.keys() == series.values.keys()
            for ch, v in series.values.items():
                assert np.array_equal(after.values[ch], v, equal_nan=True)
        assert store.latest(["mh-1", "井盖-3", "nobody"]) == {
            "mh-1": float(before["mh-1"].time[-1]),
            "井盖-3": float(before["井盖-3"].time[-1]),
        }
    finally:
        store.close()
