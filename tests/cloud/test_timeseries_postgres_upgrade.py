"""Tables made by an older store (device ids compared in the database's collation): a small one gets the
bytewise ``COLLATE "C"`` key of new tables when the store opens; a big one keeps working as it is, the
store says how to upgrade it, and ``vigil cloud timeseries-upgrade`` (:func:`upgrade_command`) does it,
refusing while writers are connected unless forced and giving up on a table a long transaction holds.
After the upgrade the data, the duplicate detection and the reads are unchanged."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from cloud.timeseries import postgres as pgstore
from cloud.timeseries.base import BackendError, table_name
from cloud.timeseries.postgres import (
    PostgresStore,
    UpgradeRefusedError,
    collation_upgrade_sql,
    upgrade_collation,
    upgrade_command,
)
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


def test_an_old_table_works_as_it_is_then_after_the_upgrade_command(
    pg_url: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kind = DeviceKind.MANHOLE
    old = make_batch(kind, ["mh-1", "MH-2", "井盖-3"], 20, seed=11)
    new = make_batch(kind, ["mh-1", "MH-2", "井盖-3"], 20, seed=12, t0=T0 + 1e6)
    default = _old_store_with(pg_url, kind, old)
    assert default != "C"
    monkeypatch.setattr(pgstore, "AUTO_UPGRADE_ROWS", 10)  # the 60 readings count as a big table
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cloud.timeseries.postgres"):
        store = PostgresStore(pg_url)
    try:
        assert collation_upgrade_sql(kind) in caplog.text  # the hint names the statement and the command
        assert "vigil cloud timeseries-upgrade" in caplog.text
        assert "ts_wristband" not in caplog.text  # tables created by this store need nothing
        r = store.write(ReadingBatch.concat([old.take(np.arange(10)), new]))
        assert (r.stored, r.duplicates) == (60, 10)
        before = {d: store.query(d, kind, T0 - 1, T0 + 2e6) for d in ("mh-1", "MH-2", "井盖-3")}
    finally:
        store.close()
    with psycopg.connect(_dsn(pg_url), autocommit=True) as conn:
        assert _collations(conn)[table_name(kind)] == default  # above the threshold: left as it is
    capsys.readouterr()
    seen: list[pgstore.CollationUpgrade] = []
    assert upgrade_command(pg_url, on_upgraded=seen.append) == 0  # the CLI audits each one
    assert [(r.table, r.state) for r in seen] == [("ts_manhole", "upgraded")]
    assert seen[0].rows in (-1, 60)  # the planner's estimate: -1 until the table is first analysed
    out = capsys.readouterr().out
    assert "ts_manhole: 已升级 / upgraded" in out and "writes blocked" in out
    assert "ts_wristband: 无需升级 / already bytewise" in out
    with psycopg.connect(_dsn(pg_url), autocommit=True) as conn:
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


def _old_store_with(pg_url: str, kind: DeviceKind, batch: ReadingBatch) -> str:
    """An old-layout ``kind`` table holding ``batch`` (written by the store, which leaves it as it is
    while the threshold is patched to -1); returns the table's collation."""
    with psycopg.connect(_dsn(pg_url), autocommit=True) as conn:
        conn.execute(_old_ddl(kind))
        default = _collations(conn)[table_name(kind)]
    saved = pgstore.AUTO_UPGRADE_ROWS
    pgstore.AUTO_UPGRADE_ROWS = -1
    try:
        with PostgresStore(pg_url) as store:
            assert store.write(batch).stored == len(batch)
    finally:
        pgstore.AUTO_UPGRADE_ROWS = saved
    return default


def test_a_small_old_table_is_upgraded_when_the_store_opens(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    kind = DeviceKind.WRISTBAND
    old = make_batch(kind, ["band-1", "BAND-2"], 50, seed=3)
    default = _old_store_with(pg_url, kind, old)
    assert default != "C"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cloud.timeseries.postgres"):
        store = PostgresStore(pg_url)
    try:
        assert "ts_wristband (100 readings) now compares device ids bytewise" in caplog.text
        assert "ALTER TABLE" not in caplog.text  # nothing left for the operator
        with psycopg.connect(_dsn(pg_url)) as conn:
            assert _collations(conn) == {table_name(k): "C" for k in KINDS}
        r = store.write(old)
        assert (r.stored, r.duplicates) == (0, 100)  # the key still finds every reading
        assert len(store.query("band-1", kind, T0 - 1, T0 + 1e6)) == 50
    finally:
        store.close()


def test_the_upgrade_refuses_while_a_store_is_connected_unless_forced(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind = DeviceKind.MANHOLE
    monkeypatch.setattr(pgstore, "AUTO_UPGRADE_ROWS", -1)
    first = make_batch(kind, ["mh-1", "mh-2"], 200, seed=5)
    default = _old_store_with(pg_url, kind, first)
    store = PostgresStore(pg_url)  # a worker that keeps writing
    try:
        with pytest.raises(UpgradeRefusedError, match="vigil-timeseries"):
            upgrade_collation(pg_url)
        with psycopg.connect(_dsn(pg_url)) as conn:
            assert _collations(conn)[table_name(kind)] == default  # nothing changed
        # forced: the worker's writes during the rebuild wait for it, none is lost or doubled
        more = [
            make_batch(kind, ["mh-1", "mh-2"], 20, seed=100 + i, t0=T0 + 1e6 * (i + 1)) for i in range(10)
        ]
        stored: list[int] = []
        stop = threading.Event()

        def writer() -> None:
            for b in more:
                stored.append(store.write(b).stored)
                time.sleep(0.01)
            stop.set()

        th = threading.Thread(target=writer)
        th.start()
        results = upgrade_collation(pg_url, force=True)
        th.join(30)
        assert stop.is_set() and stored == [40] * 10
        assert [(r.table, r.state) for r in results if r.state == "upgraded"] == [("ts_manhole", "upgraded")]
        [r] = [r for r in results if r.table == "ts_manhole"]
        assert r.locked_s >= 0 and r.index_bytes > 0
        with psycopg.connect(_dsn(pg_url)) as conn:
            assert _collations(conn)[table_name(kind)] == "C"
            assert conn.execute("SELECT count(*) FROM ts_manhole").fetchone() == (400 + 400,)
        assert store.write(first).stored == 0  # duplicates still found, through the rebuilt key
        assert all(r.state in ("already", "upgraded") for r in upgrade_collation(pg_url, force=True))
    finally:
        store.close()


def test_the_upgrade_gives_up_on_a_table_a_long_transaction_holds(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kind = DeviceKind.SMOKE_ALARM
    monkeypatch.setattr(pgstore, "AUTO_UPGRADE_ROWS", -1)
    default = _old_store_with(pg_url, kind, make_batch(kind, ["sa-1"], 10, seed=7))
    with psycopg.connect(_dsn(pg_url)) as holder:  # a report reading the table in one long transaction
        holder.execute("SELECT count(*) FROM ts_smoke_alarm").fetchone()
        t0 = time.monotonic()
        with pytest.raises(BackendError, match=r"could not lock the table within 0\.3 s"):
            upgrade_collation(pg_url, [kind], force=True, lock_timeout_s=0.3)
        assert time.monotonic() - t0 < 10
        assert upgrade_command(pg_url, force=True, lock_timeout_s=0.3) == 1
        assert "could not lock" in capsys.readouterr().err
        holder.rollback()
    with psycopg.connect(_dsn(pg_url)) as conn:
        assert _collations(conn)[table_name(kind)] == default
    assert upgrade_collation(pg_url, [kind])[0].state == "upgraded"  # free again: it goes through


def test_the_command_says_other_stores_need_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert upgrade_command("sqlite:///ts.db") == 1
    assert "not PostgreSQL" in capsys.readouterr().err


def test_the_vigil_command_upgrades_and_audits_each_table(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``vigil cloud timeseries-upgrade`` as an operator types it: the old table upgraded, one audit row
    naming the table and the operator; a second run changes nothing and audits nothing."""
    import vigil_cli

    kind = DeviceKind.MANHOLE
    monkeypatch.setattr(pgstore, "AUTO_UPGRADE_ROWS", 10)
    _old_store_with(pg_url, kind, make_batch(kind, ["mh-1", "MH-2"], 20, seed=5))
    db = f"sqlite:///{tmp_path}/v.db"
    argv = ["cloud", "timeseries-upgrade", "--timeseries-url", pg_url, "--database-url", db,
            "--secret-key-file", str(tmp_path / "k.key")]  # fmt: skip
    capsys.readouterr()
    assert vigil_cli.main(argv) == 0
    assert "ts_manhole: 已升级 / upgraded" in capsys.readouterr().out
    with psycopg.connect(_dsn(pg_url), autocommit=True) as conn:
        assert _collations(conn)[table_name(kind)] == "C"
    assert vigil_cli.main(argv) == 0
    assert "ts_manhole: 无需升级 / already bytewise" in capsys.readouterr().out
    import sqlite3

    with sqlite3.connect(tmp_path / "v.db") as conn:
        rows = conn.execute("SELECT actor, action, target FROM loop_audit").fetchall()
    assert len(rows) == 1
    actor, action, target = rows[0]
    assert (action, target) == ("timeseries.upgrade", "ts_manhole") and actor.startswith("cli:")
