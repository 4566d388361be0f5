"""CPU per batch of the PostgreSQL time-series store's write, the current code against the write it
replaced, interleaved in one run (old, new, new, old, ...; a fresh database for each run).

Run: ``.venv/bin/python bench/bench_pg_store.py`` (about a minute; ``--repeat N`` pairs of runs,
``--batches N`` timed batches). Results: ``bench/results/bench_pg_store.json``.

* ``old``: ``COPY`` of every batch (rows from psycopg's ``write_row``, one Python call per row) into a
  temporary ``ON COMMIT DELETE ROWS`` table, then ``INSERT .. SELECT NULLIF(..) .. ON CONFLICT DO
  NOTHING`` into the kind's table (the store as of commit 388ef80, frozen below).
* ``new``: :class:`cloud.timeseries.postgres.PostgresStore`: the binary stream built with numpy, ``COPY``
  straight into the table, the old path only after a unique violation, ``device_id`` ``COLLATE "C"``.
* with ``--layouts`` also ``new, database collation`` (the new write into a table made by the old store,
  not upgraded) and ``new, ICU en-US`` (as in a database created with an en_US locale): what the
  bytewise key alone is worth. ``old`` runs on the old layout (the database's collation).

* with ``--redelivery`` instead: the store against ``new, COPY first always`` (without the key probe
  after a duplicate; ``bench/results/bench_pg_redelivery.json``); a fourth phase ``interleaved``
  alternates a re-sent batch and a new one (a storm among normal traffic).
* with ``--alter 1000000,10000000`` instead: the time ``upgrade_collation`` holds the table's lock on an
  old-layout table of that many readings (``bench/results/bench_pg_alter.json``).

Batches are the whole-path rows' of ``bench/bench_ingest.py`` (its ``make_batches``): 2,000 manhole
readings (8 channels) of 200 devices, 1 % missing values. Per implementation and phase:

* ``fresh``: ``--warmup`` batches untimed, then ``--batches`` batches of new readings (nearly every batch
  in production);
* ``redelivered``: ``--dup-batches`` of those batches written again (every reading a duplicate: a lost
  ack);
* ``mixed``: ``--dup-batches`` batches whose first half was stored already (a retry holding old and new).

Figures: client CPU (this process, ``time.process_time``) and server CPU (the store's backend process,
``utime + stime`` from ``/proc``, so autovacuum and the WAL writer are not in it) per batch, and readings
per server CPU-second. CPU moves far less than wall time on a shared machine; the load average at the
start of every run is recorded. PostgreSQL is the test server (``tests.servers.start_postgres``:
``fsync=off``, ``synchronous_commit=off``), so commit costs are a lower bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from bench_ingest import make_batches  # the whole-path rows' batches

from cloud.timeseries.base import BackendError, WriteResult, table_name, time_ms_column
from cloud.timeseries.postgres import _BASE, PostgresStore, _q
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import KINDS, spec

RESULTS = Path(__file__).resolve().parent / "results" / "bench_pg_store.json"
KIND = DeviceKind.MANHOLE
T0 = 1_790_000_000.0


class OldPostgresStore(PostgresStore):
    """The write of commit 388ef80, unchanged: the baseline."""

    def write(self, batch: ReadingBatch) -> WriteResult:
        n = len(batch)
        if n == 0:
            return WriteResult(0, 0)
        names = spec(batch.kind).channel_names
        cols = (*_BASE, *names)
        collist = ", ".join(_q(c) for c in cols)
        t_ms = time_ms_column(batch)
        columns = [
            batch.device_id.tolist(),
            t_ms.tolist(),
            batch.seq.astype(np.int64).tolist(),
            batch.battery_pct.tolist(),
            batch.flags.astype(np.int64).tolist(),
            batch.fw_version.astype(np.int32).tolist(),
            *batch.values.T.tolist(),
        ]
        types = ["text", "int8", "int8", "float8", "int8", "int4", *(["float8"] * len(names))]
        select = ", ".join(
            f"NULLIF({_q(c)}, 'NaN'::float8)" if c == "battery_pct" or c in names else _q(c) for c in cols
        )
        with self._lock:
            self._check_open()
            try:
                with self._conn.transaction():
                    tmp = self._stage_table(batch.kind)
                    with self._conn.cursor() as cur:
                        with cur.copy(f"COPY {tmp} ({collist}) FROM STDIN (FORMAT BINARY)") as cp:
                            cp.set_types(types)
                            for row in zip(*columns, strict=True):
                                cp.write_row(row)
                        cur.execute(
                            f"INSERT INTO {_q(table_name(batch.kind))} ({collist}) "
                            f"SELECT {select} FROM {tmp} "
                            "ON CONFLICT DO NOTHING"
                        )
                        stored = cur.rowcount
            except self._psycopg.Error as exc:
                self._staged.clear()
                raise BackendError(f"write failed: {exc}") from exc
        return WriteResult(stored=stored, duplicates=n - stored)


def _backend_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(store: PostgresStore, batches: list[ReadingBatch]) -> dict[str, Any]:
    pid = store._conn.info.backend_pid
    c0, s0, t0 = time.process_time(), _backend_cpu(pid), time.perf_counter()
    stored = sum(store.write(b).stored for b in batches)
    c1, s1, t1 = time.process_time(), _backend_cpu(pid), time.perf_counter()
    n, readings = len(batches), sum(len(b) for b in batches)
    return {
        "batches": n,
        "readings": readings,
        "stored": stored,
        "client_cpu_ms_per_batch": round(1000 * (c1 - c0) / n, 2),
        "server_cpu_ms_per_batch": round(1000 * (s1 - s0) / n, 2),
        "wall_ms_per_batch": round(1000 * (t1 - t0) / n, 2),
        "readings_per_server_cpu_s": round(readings / (s1 - s0)) if s1 > s0 else None,
        "readings_per_cpu_s": round(readings / ((c1 - c0) + (s1 - s0))),
    }


class CopyFirstStore(PostgresStore):
    """The store without merge-first: every batch tries ``COPY`` first (commit 1ae2b43)."""

    merge_first = False


IMPLS = {  # name: (store class, collation of device_id in the tables)
    "old": (OldPostgresStore, "default"),  # as the old store made them: the database's collation
    "new": (PostgresStore, "C"),
    "new, COPY first always": (CopyFirstStore, "C"),
    "new, database collation": (PostgresStore, "default"),  # a table made by the old store, not upgraded
    "new, ICU en-US": (PostgresStore, "en-US-x-icu"),  # a database created with an en_US locale
}


PHASES = ("fresh", "redelivered", "mixed", "interleaved")


def run_once(impl: str, url: str, data: dict[str, list[ReadingBatch]], warmup: int) -> dict[str, Any]:
    import psycopg

    cls, collation = IMPLS[impl]
    out: dict[str, Any] = {"impl": impl, "load_1m_at_start": round(os.getloadavg()[0], 2)}
    PostgresStore(url).close()  # the tables
    if collation != "C":
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as c:
            for kind in KINDS:
                c.execute(
                    f"ALTER TABLE {_q(table_name(kind))} "
                    f'ALTER COLUMN device_id TYPE text COLLATE "{collation}"'
                )
    store = cls(url)
    try:
        for b in data["fresh"][:warmup]:
            store.write(b)
        out["fresh"] = _timed(store, data["fresh"][warmup:])
        out["redelivered"] = _timed(store, data["fresh"][warmup : warmup + len(data["mixed"])])
        out["mixed"] = _timed(store, data["mixed"])
        out["interleaved"] = _timed(store, data["interleaved"])
    finally:
        store.close()
    return out


def _fill_old_table(conn: Any, rows: int, devices: int) -> None:
    """``ts_manhole`` as the store of commit 388ef80 made it (``device_id`` in the database's collation)
    holding ``rows`` readings of ``devices`` devices (ids as the gateways' ``70b3d57eff000123``), one a
    minute each, made by the server (``generate_series``), then analysed as autovacuum would have."""
    t = _q(table_name(KIND))
    chans = ", ".join(_q(n) for n in spec(KIND).channel_names)
    gen = ", ".join("random() * 20" for _ in spec(KIND).channel_names)
    conn.execute(f"DROP TABLE IF EXISTS {t}")
    cols = ", ".join(f"{_q(n)} double precision" for n in spec(KIND).channel_names)
    conn.execute(
        f"CREATE TABLE {t} (device_id text NOT NULL, time_ms bigint NOT NULL, seq bigint NOT NULL, "
        f"battery_pct double precision, flags bigint NOT NULL, fw_version integer NOT NULL, {cols}, "
        "PRIMARY KEY (device_id, time_ms, seq))"
    )
    conn.execute(
        f"INSERT INTO {t} (device_id, time_ms, seq, battery_pct, flags, fw_version, {chans}) "
        f"SELECT '70b3d57eff' || lpad((i % {devices})::text, 6, '0'), "
        f"{int(T0 * 1000)} + (i / {devices}) * 60000, (i / {devices}) % 65536, 87.5, 0, 258, {gen} "
        f"FROM generate_series(0, {rows - 1}) i"
    )
    conn.execute(f"VACUUM ANALYZE {t}")


@contextlib.contextmanager
def _test_postgres() -> Iterator[Any]:
    """The test PostgreSQL server, removed afterwards."""
    from tests.servers import start_postgres

    pg = start_postgres()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(pg.directory, ignore_errors=True)


def alter_timings(sizes: list[int], devices: int) -> list[dict[str, Any]]:
    """``upgrade_collation`` of ``ts_manhole`` holding each of ``sizes`` readings: the time under the
    lock (wall) and the server CPU of the session that ran it (``/proc``)."""
    import psycopg

    from cloud.timeseries.postgres import upgrade_collation

    out = []
    with _test_postgres() as pg:
        for rows in sizes:
            url = pg.create_database(f"alter_{rows}")
            with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
                t0 = time.perf_counter()
                _fill_old_table(conn, rows, devices)
                fill_s = time.perf_counter() - t0
            time.sleep(1.0)  # the filling backend reaped
            load = round(os.getloadavg()[0], 2)
            procs0 = _server_cpu(pg.proc.pid if pg.proc else 0)
            [r] = upgrade_collation(url, [KIND])
            time.sleep(1.0)  # its backend reaped by the postmaster
            cpu = _server_cpu(pg.proc.pid if pg.proc else 0) - procs0
            row = {
                "rows": rows,
                "devices": devices,
                "load_1m_at_start": load,
                "index_mb": round(r.index_bytes / 2**20, 1),
                "lock_wait_s": round(r.lock_wait_s, 3),
                "locked_s": round(r.locked_s, 3),
                "server_cpu_s": round(cpu, 3),
                "fill_s": round(fill_s, 1),
            }
            out.append(row)
            print(
                f'ALTER .. COLLATE "C" on {rows:,} readings ({devices} devices, key index '
                f"{row['index_mb']} MB, load {load}): {r.locked_s:.2f} s under lock, server CPU "
                f"{cpu:.2f} s",
                flush=True,
            )
    return out


def _server_cpu(postmaster: int) -> float:
    """CPU of every process of the server (the backend that ran the ALTER has exited by the time this is
    read, so its time is in the postmaster's reaped-children fields: cutime + cstime)."""
    with open(f"/proc/{postmaster}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--repeat", type=int, default=3, help="pairs of runs (old+new), order alternating")
    ap.add_argument("--batches", type=int, default=100, help="timed batches of new readings per run")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--dup-batches", type=int, default=20)
    ap.add_argument(
        "--layouts",
        action="store_true",
        help="also the new write into tables whose device_id has the database's collation (an old table "
        "not upgraded) and an ICU en-US collation",
    )
    ap.add_argument(
        "--alter",
        metavar="ROWS[,ROWS..]",
        help='instead: time upgrade_collation (the ALTER to COLLATE "C") on an old-layout table of '
        "this many readings each (e.g. 1000000,10000000); results in bench/results/bench_pg_alter.json",
    )
    ap.add_argument(
        "--redelivery",
        action="store_true",
        help="compare the store with and without merge-first after a duplicate (instead of old/new)",
    )
    ap.add_argument("--alter-devices", type=int, default=2000, help="devices in the --alter table")
    args = ap.parse_args(argv)
    if args.alter:
        sizes = [int(x) for x in args.alter.split(",")]
        load0 = os.getloadavg()
        timings = alter_timings(sizes, args.alter_devices)
        path = RESULTS.with_name("bench_pg_alter.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "command": "bench/bench_pg_store.py "
                    + " ".join(argv if argv is not None else sys.argv[1:]),
                    "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "load_avg_start": [round(x, 2) for x in load0],
                    "load_avg_end": [round(x, 2) for x in os.getloadavg()],
                    "runs": timings,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"results: {path}")
        return 0

    fresh = make_batches(args.warmup + args.batches, 2000, 200, prefix="70b3d57eff", seed=0)
    extra = make_batches(args.dup_batches, 2000, 200, prefix="70b3d57ee0", seed=1)
    half = np.arange(1000)
    mixed = [
        ReadingBatch.concat([fresh[args.warmup + i].take(half), extra[i].take(half)])
        for i in range(args.dup_batches)
    ]
    # a storm among normal traffic: a batch sent again (all duplicates), then a new one, and so on
    again = fresh[args.warmup + args.dup_batches :]
    new_ones = make_batches(args.dup_batches, 2000, 200, prefix="70b3d57ee1", seed=2)
    interleaved = [b for i in range(args.dup_batches) for b in (again[i % len(again)], new_ones[i])]
    data = {"fresh": fresh, "mixed": mixed, "interleaved": interleaved}
    runs: list[dict[str, Any]] = []
    load0 = os.getloadavg()
    with _test_postgres() as pg:
        order = (
            list(IMPLS)
            if args.layouts
            else ["new", "new, COPY first always"]
            if args.redelivery
            else ["old", "new"]
        )
        for rep in range(args.repeat):
            for j, impl in enumerate(order if rep % 2 == 0 else order[::-1]):
                r = run_once(impl, pg.create_database(f"pgstore_{rep}_{j}"), data, args.warmup)
                runs.append(r)
                f = r["fresh"]
                print(
                    f"{impl} (load {r['load_1m_at_start']}): fresh client {f['client_cpu_ms_per_batch']} ms "
                    f"+ server {f['server_cpu_ms_per_batch']} ms CPU/batch, "
                    f"{f['readings_per_server_cpu_s']:,} readings/server CPU-s; redelivered server "
                    f"{r['redelivered']['server_cpu_ms_per_batch']} ms; mixed server "
                    f"{r['mixed']['server_cpu_ms_per_batch']} ms; interleaved server "
                    f"{r['interleaved']['server_cpu_ms_per_batch']} ms",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    for impl in order:
        mine = [r for r in runs if r["impl"] == impl]
        summary[impl] = {
            phase: {
                key: statistics.median(r[phase][key] for r in mine)
                for key in (
                    "client_cpu_ms_per_batch",
                    "server_cpu_ms_per_batch",
                    "wall_ms_per_batch",
                    "readings_per_server_cpu_s",
                    "readings_per_cpu_s",
                )
            }
            for phase in PHASES
        }
    for impl in order:
        for phase in PHASES:
            s = summary[impl][phase]
            print(
                f"median {impl:23s} {phase:12s}: client {s['client_cpu_ms_per_batch']:6.2f} ms  server "
                f"{s['server_cpu_ms_per_batch']:6.2f} ms CPU/batch  {s['readings_per_server_cpu_s']:>9,} "
                f"readings/server CPU-s  wall {s['wall_ms_per_batch']:6.2f} ms"
            )
    results = RESULTS.with_name("bench_pg_redelivery.json") if args.redelivery else RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(
        json.dumps(
            {
                "command": "bench/bench_pg_store.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "load_avg_start": [round(x, 2) for x in load0],
                "load_avg_end": [round(x, 2) for x in os.getloadavg()],
                "batch": "2,000 manhole readings, 200 devices, 1 % missing values",
                "median": summary,
                "runs": runs,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"results: {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
