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

Batches are the whole-path rows' of ``bench/bench_ingest.py``: 2,000 manhole readings (8 channels) of 200
devices, 1 % missing values. Per implementation and phase:

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
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

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


def make_batches(
    n_batches: int, batch_size: int, n_devices: int, *, prefix: str, seed: int
) -> list[ReadingBatch]:
    """As ``bench_ingest.make_batches``: each device's readings 60 s apart, devices interleaved."""
    rng = np.random.default_rng(seed)
    n_ch = len(spec(KIND).channels)
    devices = np.array([f"{prefix}{i:06d}" for i in range(n_devices)])
    per_dev = batch_size // n_devices
    out = []
    for b in range(n_batches):
        dev = np.tile(devices, per_dev)
        k = np.repeat(np.arange(per_dev), n_devices) + b * per_dev
        vals = rng.normal(10, 3, size=(len(dev), n_ch))
        vals[rng.random(vals.shape) < 0.01] = np.nan
        out.append(
            ReadingBatch(
                kind=KIND,
                device_id=dev,
                seq=(k % 65536).astype(np.uint32),
                time=T0 + k * 60.0 + rng.random(len(dev)),
                battery_pct=np.full(len(dev), 87.5),
                flags=np.zeros(len(dev), np.uint32),
                values=vals,
                fw_version=np.full(len(dev), 258, np.uint16),
            )
        )
    return out


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


IMPLS = {  # name: (store class, collation of device_id in the tables)
    "old": (OldPostgresStore, "default"),  # as the old store made them: the database's collation
    "new": (PostgresStore, "C"),
    "new, database collation": (PostgresStore, "default"),  # a table made by the old store, not upgraded
    "new, ICU en-US": (PostgresStore, "en-US-x-icu"),  # a database created with an en_US locale
}


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
    finally:
        store.close()
    return out


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
    args = ap.parse_args(argv)
    from tests.servers import start_postgres

    fresh = make_batches(args.warmup + args.batches, 2000, 200, prefix="70b3d57eff", seed=0)
    extra = make_batches(args.dup_batches, 2000, 200, prefix="70b3d57ee0", seed=1)
    half = np.arange(1000)
    mixed = [
        ReadingBatch.concat([fresh[args.warmup + i].take(half), extra[i].take(half)])
        for i in range(args.dup_batches)
    ]
    data = {"fresh": fresh, "mixed": mixed}
    pg = start_postgres()
    runs: list[dict[str, Any]] = []
    load0 = os.getloadavg()
    try:
        order = list(IMPLS) if args.layouts else ["old", "new"]
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
                    f"{r['mixed']['server_cpu_ms_per_batch']} ms",
                    flush=True,
                )
    finally:
        pg.stop()
        shutil.rmtree(pg.directory, ignore_errors=True)
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
            for phase in ("fresh", "redelivered", "mixed")
        }
    for impl in order:
        for phase in ("fresh", "redelivered", "mixed"):
            s = summary[impl][phase]
            print(
                f"median {impl:23s} {phase:11s}: client {s['client_cpu_ms_per_batch']:6.2f} ms  server "
                f"{s['server_cpu_ms_per_batch']:6.2f} ms CPU/batch  {s['readings_per_server_cpu_s']:>9,} "
                f"readings/server CPU-s  wall {s['wall_ms_per_batch']:6.2f} ms"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
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
    print(f"results: {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
