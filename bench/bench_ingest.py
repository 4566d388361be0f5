"""Ingest throughput (readings/s) and batch latency of the time-series stores and of the whole ingest path,
each next to a baseline measured in the same run.

Run: ``.venv/bin/python bench/bench_ingest.py`` (about 40-60 s on a 2-core box; ``--quick`` for a smoke run).

What is measured (every row says which):

* ``store`` rows: ``TimeSeriesStore.write(ReadingBatch)`` directly, 5,000 manhole readings (8 channels) per
  batch, 500 devices, 1 % missing values; latency = one ``write`` call = batch handed over -> committed.
  - ``sqlite wide multi-row INSERT (ours, synchronous=FULL)`` the embedded default (128 readings per
    ``INSERT .. VALUES``); also ``synchronous=NORMAL``.
  - baseline ``sqlite narrow table`` one row per (reading, channel), rows built with numpy too, so the
    difference is the layout; baseline ``sqlite per-row INSERT`` one ``execute`` per reading.
  - ``postgresql COPY (merge on duplicate) (ours)`` vs baseline ``postgresql executemany INSERT ON
    CONFLICT`` (psycopg 3 pipelines executemany, so it is a strong baseline).
  - ``x2 threads``: two threads writing through one store object (what the ingest service does; the
    SQLite store group-commits concurrent batches: one transaction and one fsync for several batches).
  - ``x2 processes``: two worker processes writing disjoint devices at once into the same store.
  - ``small batches``: 100 readings per batch (a small gateway flushing often), one thread committing
    each batch vs 8 threads sharing commits (group commit), both with ``synchronous=FULL``.
* ``store only .. the http rows' batches``: the same store call on batches shaped like the http rows'
  (2,000 readings, 200 devices). The denominator of "whole path / store" printed at the end is a *paired*
  run of it: each sqlite 1-poster whole-path run is preceded by its own store-only run on the same
  batches (``paired_store_*`` and ``whole_over_paired_store_*`` in that row), so both sides share the
  machine's moment; the ratio is the median over the ``--repeat`` pairs (each pair's in ``.._each``), not
  the best run's pair; the ratio of the separate rows' bests is printed and kept as ``.._unpaired``.
* ``http`` rows: the real cloud app (``cloud.app.create_app`` and its IngestService: body decoding and
  validation, device authorisation, time-series write, device bookkeeping, ack after commit) called as an
  ASGI app in-process (no HTTP server, no client library: neither is the app's cost), 2,000 readings per
  batch, each row twice: the JSON body and the columnar msgpack body (``alerts.uplink_body``, rows named
  ``.., msgpack body``; bodies encoded before the clock starts); latency = POST sent -> ack received.
  ``x2 posters`` = two concurrent posters in one process (the app runs the blocking work in threads);
  ``N worker process(es)`` = N separate app processes over one PostgreSQL (as N ``vigil cloud`` workers
  behind a balancer), each with its own poster and gateway, started together: wall = start -> last ack.
  These rows also report the PostgreSQL server's CPU over the same span (``server_cpu_s``,
  ``readings_per_server_cpu_s``: the backends serving the row's databases, from ``/proc``; background
  work such as autovacuum is not in it): with one core per worker's Python and the server needing about
  as much again, 2 workers on 2 cores are bound by CPU.
* every row also reports ``readings_per_client_cpu_s``: readings per CPU-second of this process and its
  finished children (never the database server's), and ``load_1m_at_start``, the machine's load average
  when its best run started. On a machine shared with other work, CPU time moves far less than wall time,
  so it is the figure to compare code changes by.

PostgreSQL runs as our own child process in a temp dir (``tests.servers.start_postgres``) with
``fsync=off`` (test-server settings): PostgreSQL figures are therefore an upper bound for a production
server, while the SQLite default pays a real fsync per commit. Results: ``bench/results/bench_ingest.json``.

At the end, the three throughput aims of issue 12 are printed as a table: whole path / store on the same
batches (>= 0.70, by wall time and by CPU), whole-path readings/s on the embedded store (>= 150,000), and
PostgreSQL 2 worker processes / 1 (>= 1.8), each beside the figure of the results file this run replaces
(the previous run, with its load average), so a change is read as before/after. Both go into the JSON
(``aims``, ``previous_run``). Wall-time figures on a shared 2-core machine move with its load; compare
runs by the CPU figures, and quote the load average with any wall-time figure.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing as mp
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from cloud.timeseries import open_timeseries
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import spec

RESULTS = Path(__file__).resolve().parent / "results" / "bench_ingest.json"
KIND = DeviceKind.MANHOLE
T0 = 1_790_000_000.0


def make_batches(
    n_batches: int, batch_size: int, n_devices: int, *, prefix: str = "mh", seed: int = 0
) -> list[ReadingBatch]:
    """Batches as a gateway would send them: each device's readings 60 s apart, devices interleaved."""
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


def summarise(
    name: str, what: str, n_readings: int, wall_s: float, lat_s: Sequence[float], **extra: Any
) -> dict[str, Any]:
    lat = np.asarray(lat_s) * 1000.0
    return {
        "name": name,
        "measured": what,
        "readings": n_readings,
        "seconds": round(wall_s, 3),
        "readings_per_s": round(n_readings / wall_s),
        "batch_p50_ms": round(float(np.percentile(lat, 50)), 2),
        "batch_p99_ms": round(float(np.percentile(lat, 99)), 2),
        **extra,
    }


def _backend_cpu(server_dsn: str, databases: Sequence[str]) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to ``databases`` (from ``/proc``; the
    backends of other rows' databases, and the server's own background work, are not counted)."""
    import psycopg

    with psycopg.connect(server_dsn, autocommit=True) as c:
        pids = [
            int(r[0])
            for r in c.execute("SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s)", (list(databases),))
        ]
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def _cpu_seconds() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# --- store level --------------------------------------------------------------------------------
def run_store(
    url: str, batches: list[ReadingBatch], warmup: int = 0
) -> tuple[float, list[float], int, float]:
    """Write ``batches`` through the store; the first ``warmup`` are written before the clock starts (a
    steady state: the WAL allocated, pages cached, as in a store that has been running). Returns wall
    seconds, latencies, readings and the CPU seconds of the timed writes only (as the http rows count
    theirs: the warm-up batches and opening the store are in neither)."""
    store = open_timeseries(url)
    try:
        for b in batches[:warmup]:
            store.write(b)
        batches = batches[warmup:]
        lat = []
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            s = time.perf_counter()
            store.write(b)
            lat.append(time.perf_counter() - s)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        store.close()
    return wall, lat, sum(len(b) for b in batches), cpu


def run_store_threads(url: str, parts: list[list[ReadingBatch]]) -> tuple[float, list[float], int]:
    """Several threads writing through one store object, as the ingest service does (group commit)."""
    import threading

    store = open_timeseries(url)
    lat: list[float] = []

    def work(batches: list[ReadingBatch]) -> None:
        for b in batches:
            s = time.perf_counter()
            store.write(b)
            lat.append(time.perf_counter() - s)

    try:
        threads = [threading.Thread(target=work, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        store.close()
    return wall, lat, sum(len(b) for p in parts for b in p)


def _worker(url: str, batches: list[ReadingBatch], start: Any, out: Any) -> None:
    start.wait()
    _wall, lat, n, _cpu = run_store(url, batches)
    out.put((time.perf_counter(), lat, n))


def run_store_parallel(url: str, parts: list[list[ReadingBatch]]) -> tuple[float, list[float], int]:
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    open_timeseries(url).close()  # create the schema once, before the race
    procs = [ctx.Process(target=_worker, args=(url, p, start, out)) for p in parts]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let both processes import and open the store before the clock starts
    t0 = time.perf_counter()
    start.set()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(r[0] for r in results) - t0
    return wall, [x for r in results for x in r[1]], sum(r[2] for r in results)


def _same_pragmas(c: sqlite3.Connection) -> None:
    """The store's own settings (cloud/timeseries/sqlite.py), so a baseline differs only in what it tests."""
    for p in ("synchronous=FULL", "wal_autocheckpoint=16384", "cache_size=-65536", "mmap_size=268435456"):
        c.execute(f"PRAGMA {p}")


def sqlite_narrow_baseline(path: str, batches: list[ReadingBatch]) -> tuple[float, list[float], int]:
    """One row per (reading, channel), built column-wise with numpy (so only the layout differs)."""
    names = np.array(spec(KIND).channel_names)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    _same_pragmas(c)
    c.execute(
        "CREATE TABLE narrow (device_id TEXT, time_ms INTEGER, seq INTEGER, channel TEXT, value REAL, "
        "PRIMARY KEY (device_id, time_ms, seq, channel)) WITHOUT ROWID"
    )
    lat = []
    t0 = time.perf_counter()
    for b in batches:
        s = time.perf_counter()
        k = len(names)
        t_ms = np.rint(b.time * 1000).astype(np.int64)
        rows = zip(
            np.repeat(b.device_id, k).tolist(),
            np.repeat(t_ms, k).tolist(),
            np.repeat(b.seq, k).tolist(),
            np.tile(names, len(b)).tolist(),
            b.values.ravel().tolist(),
            strict=True,
        )
        c.execute("BEGIN")
        c.executemany("INSERT OR IGNORE INTO narrow VALUES (?, ?, ?, ?, ?)", rows)
        c.execute("COMMIT")
        lat.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    c.close()
    return wall, lat, sum(len(b) for b in batches)


def sqlite_per_row_baseline(path: str, batches: list[ReadingBatch]) -> tuple[float, list[float], int]:
    """The same wide table, one ``execute`` per reading with per-value conversion (the naive loop)."""
    store = open_timeseries(f"sqlite:///{path}")  # creates the schema
    store.close()
    names = spec(KIND).channel_names
    c = sqlite3.connect(path, isolation_level=None)
    _same_pragmas(c)
    sql = (
        f"INSERT OR IGNORE INTO ts_manhole (device_id, time_ms, seq, battery_pct, flags, fw_version, "
        f"{', '.join(names)}) VALUES ({', '.join('?' * (6 + len(names)))})"
    )
    lat = []
    t0 = time.perf_counter()
    for b in batches:
        s = time.perf_counter()
        c.execute("BEGIN")
        for r in b.readings():
            c.execute(
                sql,
                (
                    r.device_id,
                    round(r.time * 1000),
                    r.seq,
                    r.battery_pct,
                    r.flags,
                    r.fw_version,
                    *[None if v != v else v for v in r.values],
                ),
            )
        c.execute("COMMIT")
        lat.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    c.close()
    return wall, lat, sum(len(b) for b in batches)


def pg_executemany_baseline(dsn: str, batches: list[ReadingBatch]) -> tuple[float, list[float], int]:
    import psycopg

    open_timeseries(dsn).close()  # creates the schema
    names = spec(KIND).channel_names
    sql = (
        "INSERT INTO ts_manhole (device_id, time_ms, seq, battery_pct, flags, fw_version, "
        f"{', '.join(names)}) "
        f"VALUES ({', '.join(['%s'] * (6 + len(names)))}) ON CONFLICT DO NOTHING"
    )
    lat = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        for b in batches:
            s = time.perf_counter()
            vals = np.where(np.isnan(b.values), None, b.values).tolist()  # type: ignore[call-overload]  # NULL
            rows = [
                (d, t, q, bp, f, fw, *v)
                for d, t, q, bp, f, fw, v in zip(
                    b.device_id.tolist(),
                    np.rint(b.time * 1000).astype(np.int64).tolist(),
                    b.seq.tolist(),
                    b.battery_pct.tolist(),
                    b.flags.tolist(),
                    b.fw_version.tolist(),
                    vals,
                    strict=True,
                )
            ]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)
            lat.append(time.perf_counter() - s)
        wall = time.perf_counter() - t0
    return wall, lat, sum(len(b) for b in batches)


# --- whole ingest path over HTTP ---------------------------------------------------------------------------
def http_ingest(
    tmp: Path,
    database_url: str,
    ts_url: str,
    n_batches: int,
    batch_size: int,
    n_devices: int,
    posters: int,
    body: str = "json",
    warmup: int = 1,
    overlap: bool | None = None,
) -> tuple[float, list[float], int, float]:
    return asyncio.run(
        _http_ingest(
            tmp,
            database_url,
            ts_url,
            n_batches,
            batch_size,
            n_devices,
            posters,
            body=body,
            warmup=warmup,
            overlap=overlap,
        )
    )


async def _http_ingest(
    tmp: Path,
    database_url: str,
    ts_url: str,
    n_batches: int,
    batch_size: int,
    n_devices: int,
    posters: int,
    *,
    first: int = 0,
    ready: Any = None,
    start: Any = None,
    done: tuple[Any, Any] | None = None,
    body: str = "json",
    warmup: int = 1,
    overlap: bool | None = None,
) -> tuple[float, list[float], int, float]:
    """``body``: ``json`` (application/json) or ``msgpack`` (the columnar binary body,
    ``alerts.uplink_body``); encoded before the clock starts (the gateway's work, not the cloud's).
    ``warmup``: batches each poster sends before the clock starts (first-request costs; with more, the
    databases' steady state), besides the ``n_batches`` timed. ``overlap``: force the ingest service's
    transaction beside the time-series write on (True) or off (False); None = the service's default."""
    from alerts.contract import HTTP_PATH, TelemetryBlock, UplinkBatch
    from alerts.uplink_body import JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE, encode_batch
    from cloud.app import create_app

    def encode(b: UplinkBatch) -> bytes:
        return encode_batch(b) if body == "msgpack" else b.model_dump_json().encode()

    content_type = (MSGPACK_CONTENT_TYPE if body == "msgpack" else JSON_CONTENT_TYPE).encode()
    from cloud.settings import CloudSettings

    settings = CloudSettings.model_validate(
        dict(
            database_url=database_url,
            timeseries_url=ts_url,
            secret_key_file=tmp / "keys" / "secret.key",
            migrate_on_start=ready is None,  # worker processes: migrated once by the parent
            connectivity_check_s=0,
            json_logs=False,
        )
    )
    app = await asyncio.to_thread(create_app, settings)
    header = (
        "device_id,kind,name,lat,lon,address,grid,community,street,on_road,gateway_id,profile,dev_addr,"
        "nwk_skey,app_skey,wearer_name,wearer_phone,emergency_contact_phone"
    )
    bodies: list[list[bytes]] = []
    async with app.router.lifespan_context(app):
        st = app.state.vigil
        if overlap is not None:
            st.ingest.overlap = overlap
        tokens = []
        for p in range(posters):
            gw = f"gw-bench-{first + p}"
            tokens.append(await asyncio.to_thread(st.credentials.add_gateway, gw, now=time.time()))
            prefix = f"70b3d57e{first + p:02x}"  # + 6 digits: a DevEUI, lower-case as gateways send it
            rows = [f"{prefix}{i:06d},manhole,,39.9,116.3,,,,,false,{gw},,,,,,," for i in range(n_devices)]
            await asyncio.to_thread(
                st.registry.import_csv, "\n".join([header, *rows]) + "\n", now=time.time()
            )
            per = n_batches // posters + warmup
            bodies.append(
                [
                    encode(
                        UplinkBatch(
                            batch_id=f"bench-{p}-{i:06d}",
                            gateway_id=gw,
                            sent_at=T0,
                            telemetry=[TelemetryBlock.from_batch(b)],
                        )
                    )
                    for i, b in enumerate(make_batches(per, batch_size, n_devices, prefix=prefix, seed=p))
                ]
            )
        lat: list[float] = []

        async def post(token: str, body: bytes) -> tuple[int, bytes]:
            """One POST straight into the ASGI app: an HTTP server's part (h11/httptools) and the
            poster's (a gateway elsewhere) are not counted, everything of the app is."""
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": HTTP_PATH,
                "raw_path": HTTP_PATH.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": [
                    (b"host", b"bench"),
                    (b"authorization", f"Bearer {token}".encode()),
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                ],
                "client": ("127.0.0.1", 50000),
                "server": ("bench", 80),
            }
            sent = False
            status, chunks = 0, []

            async def receive() -> MutableMapping[str, Any]:
                nonlocal sent
                if sent:
                    await asyncio.Event().wait()  # no disconnect while the app works
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: MutableMapping[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                elif message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))

            await app(scope, receive, send)
            return status, b"".join(chunks)

        async def post_all(token: str, items: list[bytes]) -> None:
            for body in items:
                s = time.perf_counter()
                status, answer = await post(token, body)
                lat.append(time.perf_counter() - s)
                if status != 200:
                    raise RuntimeError(f"ingest failed: {status} {answer[:300]!r}")

        for p in range(posters):  # warm-up, not timed
            await post_all(tokens[p], bodies[p][:warmup])
        lat.clear()
        if ready is not None:  # a worker process: wait for the others, start together
            ready.put(first)
            await asyncio.to_thread(start.wait)
        t0, c0 = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as tg:
            for p in range(posters):
                tg.create_task(post_all(tokens[p], bodies[p][warmup:]), name=f"poster-{p}")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = sum(len(x) - warmup for x in bodies) * batch_size
        if done is not None:  # a worker process: report while its connections are open, then wait
            done[0].put((time.perf_counter(), lat, n, cpu))
            await asyncio.to_thread(done[1].wait)
    return wall, lat, n, cpu


def _http_child(
    tmp: Path,
    database_url: str,
    ts_url: str,
    n_batches: int,
    sizes: tuple[int, int],
    k: int,
    sync: tuple[Any, Any, Any, Any],
    body: str,
) -> None:
    """One cloud worker process with one poster (as two `vigil cloud` processes behind a balancer): it
    reports (end time, latencies, readings, CPU) when its last ack arrived and closes only when released."""
    ready, start, out, release = sync
    asyncio.run(
        _http_ingest(
            tmp,
            database_url,
            ts_url,
            n_batches,
            *sizes,
            1,
            first=k,
            ready=ready,
            start=start,
            done=(out, release),
            body=body,
        )
    )


def http_ingest_procs(
    tmp: Path,
    database_url: str,
    ts_url: str,
    n_batches: int,
    batch_size: int,
    n_devices: int,
    procs: int,
    body: str = "json",
    server_dsn: str | None = None,
) -> tuple[float, list[float], int, float, float | None]:
    """``procs`` worker processes over one database, each with its own gateway; wall = start -> last ack.
    With ``server_dsn`` (PostgreSQL) also the CPU seconds of the backends serving these two databases
    over the same span."""
    from cloud.db import upgrade_head

    upgrade_head(database_url)  # migrate once, before the workers race (as `vigil cloud migrate` does)
    open_timeseries(ts_url).close()
    ctx = mp.get_context("fork")
    sync = (ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event())
    ps = [
        ctx.Process(
            target=_http_child,
            args=(tmp / f"p{k}", database_url, ts_url, n_batches, (batch_size, n_devices), k, sync, body),
        )
        for k in range(procs)
    ]
    for p in ps:
        p.start()
    for _ in ps:
        sync[0].get(timeout=300)
    names = [u.rsplit("/", 1)[-1].split("?")[0] for u in (database_url, ts_url)]
    s0 = _backend_cpu(server_dsn, names) if server_dsn else {}
    t0 = time.perf_counter()
    sync[1].set()
    results = [sync[2].get(timeout=600) for _ in ps]
    # read before the workers close their pools: a backend's CPU is only visible while it lives
    s1 = _backend_cpu(server_dsn, names) if server_dsn else {}
    server = sum(c - s0.get(pid, 0.0) for pid, c in s1.items()) if server_dsn else None
    sync[3].set()
    for p in ps:
        p.join()
    wall = max(r[0] for r in results) - t0
    lat = [x for r in results for x in r[1]]
    return wall, lat, sum(r[2] for r in results), sum(r[3] for r in results), server


# --- the three throughput aims of issue 12, beside the previous run's figures -------------------------------
#: the whole-path rows' body formats: row-name suffix of each (JSON rows keep their earlier names)
BODIES = {"json": "", "msgpack": ", msgpack body"}
SAME_SQLITE = "store only, sqlite, the http rows' batches (2,000 readings)"
HTTP_SQLITE_1 = "http ingest, sqlite db + sqlite ts, 1 poster"
HTTP_SQLITE_2 = "http ingest, sqlite db + sqlite ts, x2 posters"
PG_PROCS_1 = "http ingest, postgresql db + ts, 1 worker process(es), 1 poster each"
PG_PROCS_2 = "http ingest, postgresql db + ts, 2 worker process(es), 1 poster each"
AIMS = tuple(
    (key + suffix.replace(", msgpack body", "_msgpack"), label + suffix, target)
    for suffix in BODIES.values()
    for key, label, target in (
        ("whole_over_store_wall", "whole path / store, sqlite, same batches, paired (wall)", 0.70),
        ("whole_over_store_cpu", "whole path / store, sqlite, same batches, paired (CPU)", 0.70),
        ("whole_path_readings_per_s", "whole path readings/s, embedded, 1 poster", 150_000),
        ("whole_path_x2_readings_per_s", "whole path readings/s, embedded, x2 posters", 150_000),
        ("postgres_2_over_1_workers", "postgresql whole path, 2 worker processes / 1", 1.8),
    )
)


def _paired(store: tuple[Any, ...], whole: tuple[Any, ...]) -> dict[str, float]:
    """A whole-path run beside the store-only run made right before it on the same batches (each
    ``(wall, latencies, readings, cpu)``): both rates and the two ratios of the aims.

    Why paired: the separate ``store only`` row is measured once, minutes before the whole-path rows and
    in a run half as long (a shorter run catches a quiet moment of a shared machine more often, and best-
    of-N picks it), so a ratio of the two rows' bests compared different moments, mostly against the whole
    path. A pair shares the moment; the aims read the pair of the row's best run."""
    sw, _sl, sn, sc = store[:4]
    ww, _wl, wn, wc = whole[:4]
    return {
        "paired_store_readings_per_s": round(sn / sw),
        "paired_store_readings_per_client_cpu_s": round(sn / sc),
        "whole_over_paired_store_wall": round((wn / ww) / (sn / sw), 3),
        "whole_over_paired_store_cpu": round((wn / wc) / (sn / sc), 3),
    }


def issue12_aims(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The aims' figures from one run's rows (``None`` where a row was not run). Whole / store comes from
    the 1-poster row's paired store run (:func:`_paired`) where it has one; the ratio of the separate rows
    is kept beside it (``.._unpaired``)."""
    by = {r["name"]: r for r in rows}

    def get(name: str, key: str = "readings_per_s") -> float | None:
        v = by.get(name, {}).get(key)
        return float(v) if v else None

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    out: dict[str, float | None] = {}
    for suffix in BODIES.values():
        key = suffix.replace(", msgpack body", "_msgpack")
        one, two = HTTP_SQLITE_1 + suffix, HTTP_SQLITE_2 + suffix
        cpu = "readings_per_client_cpu_s"
        unpaired_wall, unpaired_cpu = (
            div(get(one), get(SAME_SQLITE)),
            div(get(one, cpu), get(SAME_SQLITE, cpu)),
        )
        paired_wall, paired_cpu = (
            get(one, "whole_over_paired_store_wall"),
            get(one, "whole_over_paired_store_cpu"),
        )
        out["whole_over_store_wall" + key] = paired_wall if paired_wall is not None else unpaired_wall
        out["whole_over_store_cpu" + key] = paired_cpu if paired_cpu is not None else unpaired_cpu
        out["whole_over_store_wall_unpaired" + key] = unpaired_wall
        out["whole_over_store_cpu_unpaired" + key] = unpaired_cpu
        out["whole_path_readings_per_s" + key] = get(one)
        out["whole_path_x2_readings_per_s" + key] = get(two)
        out["postgres_2_over_1_workers" + key] = div(get(PG_PROCS_2 + suffix), get(PG_PROCS_1 + suffix))
    return out


def _previous_aims() -> dict[str, Any] | None:
    """The figures of the results file this run replaces (the "before" of a change), with its load."""
    try:
        old = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        return None
    return {
        "aims": old.get("aims") or issue12_aims(old.get("results", [])),
        "load_average_1m": old.get("load_average_1m"),
        "quick": old.get("quick"),
    }


def print_aims(
    aims: dict[str, float | None], previous: dict[str, Any] | None, load: tuple[float, float]
) -> None:
    def fmt(v: float | None, target: float) -> str:
        if v is None:
            return "n/a"
        return f"{v:,.0f}" if target > 100 else f"{v:.2f}"

    prev = (previous or {}).get("aims") or {}
    pload = (previous or {}).get("load_average_1m") or ["?", "?"]
    print(f"\n{'issue 12 aim':<64} {'target':>10} {'this run':>10} {'previous run':>13}")
    for key, label, target in AIMS:
        v = aims.get(key)
        ok = "" if v is None else ("  met" if v >= target else "  NOT met")
        print(
            f"{label:<64} {fmt(target, target):>10} {fmt(v, target):>10} {fmt(prev.get(key), target):>13}{ok}"
        )
    for suffix in BODIES.values():
        key = suffix.replace(", msgpack body", "_msgpack")
        w, c = (
            aims.get("whole_over_store_wall_unpaired" + key),
            aims.get("whole_over_store_cpu_unpaired" + key),
        )
        if w is not None and c is not None:
            print(f"  (the separate rows' bests, not paired{suffix}: wall {w:.2f}, CPU {c:.2f})")
    print(
        f"load avg (1 min) before/after: {load[0]:.1f} / {load[1]:.1f} "
        f"(previous run: {pload[0]} / {pload[1]}), {os.cpu_count()} CPUs"
    )


# --- interleaved A/B of the overlapped ingest transaction --------------------------------------------------
def overlap_ab(
    rounds: int, warmup: int, bodies: Sequence[str] = ("msgpack", "json"), posters: int = 1
) -> None:
    """Per round: the store-only row, then the whole path serial, then overlapped, for each body (the
    SQLite rows' batches, 100 timed after ``warmup``); medians and whole / store ratios by wall and by CPU
    (timed batches only). Prints only; the results file is not touched. How the overlap was chosen:
    docs/deploy-district.md, "Whole path / store on the embedded default"."""
    import statistics

    hb, hn, n = 2000, 200, 100
    same = make_batches(n + warmup, hb, hn, prefix="70b3d57eff")
    runs: dict[str, list[tuple[float, float]]] = {}
    for r in range(rounds):
        for name in ["store", *(f"{m}, {b}" for b in bodies for m in ("serial", "overlapped"))]:
            with tempfile.TemporaryDirectory(prefix="vigil-bench-ab-") as tmpd:
                tmp, load = Path(tmpd), os.getloadavg()[0]
                if name == "store":
                    wall, _lat, k, cpu = run_store(f"sqlite:///{tmp}/s.db", same, warmup=warmup)
                else:
                    mode, body = name.split(", ")
                    wall, _lat, k, cpu = http_ingest(
                        tmp / "h",
                        f"sqlite:///{tmp}/h.db",
                        f"sqlite:///{tmp}/h-ts.db",
                        n,
                        hb,
                        hn,
                        posters,
                        body,
                        warmup=warmup,
                        overlap=mode == "overlapped",
                    )
            runs.setdefault(name, []).append((k / wall, k / cpu))
            print(
                f"  round {r} {name:<20} {k / wall:>9,.0f} readings/s  {k / cpu:>9,.0f} /cpu-s  "
                f"load {load:.1f}",
                flush=True,
            )
    sw = statistics.median(w for w, _ in runs["store"])
    sc = statistics.median(c for _, c in runs["store"])
    print(f"\nmedians of {rounds} rounds, {posters} poster(s)      wall   / store      cpu   / store")
    for name, xs in runs.items():
        w, c = statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)
        print(f"  {name:<20} {w:>12,.0f} {w / sw:>8.2f} {c:>12,.0f} {c / sc:>8.2f}")


# --- main --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds, for CI smoke runs")
    ap.add_argument("--repeat", type=int, default=1, help="best of N runs per row (fresh database each run)")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="batches written untimed before the store-only and the sqlite whole-path rows on the 2,000-"
        "reading batches (steady state: WAL files allocated, caches warm; both sides of the ratio alike)",
    )
    ap.add_argument(
        "--overlap-ab",
        type=int,
        metavar="ROUNDS",
        default=0,
        help="instead of the rows: ROUNDS interleaved rounds of store only / whole path serial / overlapped "
        "(embedded SQLite, 1 poster; --posters for more), medians printed, results file untouched",
    )
    ap.add_argument("--posters", type=int, default=1, help="posters for --overlap-ab")
    args = ap.parse_args(argv)
    if args.overlap_ab:
        overlap_ab(args.overlap_ab, args.warmup, posters=args.posters)
        return 0
    scale = 0.1 if args.quick else 1.0
    bs, ndev = 5000, 500
    nb = max(4, int(40 * scale))
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    run_id = iter(range(10**6))

    def add(name: str, what: str, fn: Callable[[int], tuple[Any, ...]], **extra: Any) -> None:
        best: dict[str, Any] | None = None
        pairs: list[dict[str, float]] = []
        for _ in range(max(1, args.repeat)):
            load = os.getloadavg()[0]
            cpu0 = _cpu_seconds()
            res = fn(next(run_id))
            cpu = res[3] if len(res) > 3 else _cpu_seconds() - cpu0
            row = summarise(name, what, res[2], res[0], res[1], **extra)
            # CPU of this process and its finished children (not of a database server): robust to the
            # machine's load, unlike wall time, and what the Python side of each path costs
            row["client_cpu_s"] = round(cpu, 3)
            row["readings_per_client_cpu_s"] = round(res[2] / cpu) if cpu > 0 else None
            row["load_1m_at_start"] = round(load, 2)
            if len(res) > 4 and res[4]:  # the database server's CPU over the same span (PostgreSQL rows)
                row["server_cpu_s"] = round(res[4], 3)
                row["readings_per_server_cpu_s"] = round(res[2] / res[4])
            if len(res) > 5 and res[5]:  # the paired store-only run of a whole-path row (see _paired)
                row.update(res[5])
                pairs.append(res[5])
            if best is None or row["readings_per_s"] > best["readings_per_s"]:
                best = row
        assert best is not None
        if pairs:
            # the ratio is the median over every pair, not the best run's pair: a pair whose store run
            # happened to be slow must not decide the aim (one did, at 0.97 wall, on a loaded machine)
            for k in ("whole_over_paired_store_wall", "whole_over_paired_store_cpu"):
                vals = [p[k] for p in pairs]
                best[k] = round(statistics.median(vals), 3)
                best[k + "_each"] = vals
        rows.append(best)
        print(
            f"  {name:<82} {best['readings_per_s']:>9,} readings/s   p50 {best['batch_p50_ms']:>7.1f} ms   "
            f"p99 {best['batch_p99_ms']:>7.1f} ms   {best['readings_per_client_cpu_s'] or 0:>9,} /cpu-s"
            + (f"  server {best['readings_per_server_cpu_s']:,} /cpu-s" if "server_cpu_s" in best else ""),
            flush=True,
        )

    batches = make_batches(nb, bs, ndev)
    half = [make_batches(nb // 2, bs, ndev, prefix=f"w{k}mh", seed=10 + k) for k in range(2)]
    with tempfile.TemporaryDirectory(prefix="vigil-bench-ingest-") as tmpd:
        tmp = Path(tmpd)
        print(f"store level: {bs:,} manhole readings per batch, {ndev} devices, best of {args.repeat}")
        add(
            "sqlite wide multi-row INSERT (ours, synchronous=FULL)",
            "store",
            lambda i: run_store(f"sqlite:///{tmp}/full{i}.db", batches),
        )
        add(
            "sqlite wide multi-row INSERT (synchronous=NORMAL)",
            "store",
            lambda i: run_store(f"sqlite:///{tmp}/normal{i}.db?synchronous=normal", batches),
        )
        add(
            "sqlite wide multi-row INSERT x2 threads, one store (group commit)",
            "store",
            lambda i: run_store_threads(f"sqlite:///{tmp}/thr{i}.db", half),
        )
        add(
            "sqlite wide multi-row INSERT x2 processes (one file)",
            "store",
            lambda i: run_store_parallel(f"sqlite:///{tmp}/par{i}.db", half),
        )
        small = make_batches(max(40, int(400 * scale)), 100, 50, prefix="sm")
        add(
            "small batches (100 readings), 1 thread: one commit each",
            "store",
            lambda i: run_store(f"sqlite:///{tmp}/small1-{i}.db", small),
        )
        add(
            "small batches (100 readings), 8 threads, one store (group commit)",
            "store",
            lambda i: run_store_threads(f"sqlite:///{tmp}/small8-{i}.db", [small[k::8] for k in range(8)]),
        )
        add(
            "baseline: sqlite narrow table (row per channel)",
            "store",
            lambda i: sqlite_narrow_baseline(str(tmp / f"narrow{i}.db"), batches[: max(2, nb // 4)]),
            note="a quarter of the batches (a smaller database, which favours it)",
        )
        add(
            "baseline: sqlite per-row INSERT",
            "store",
            lambda i: sqlite_per_row_baseline(str(tmp / f"perrow{i}.db"), batches),
        )
        pg = None
        if not args.no_postgres:
            from tests.servers import start_postgres

            pg = start_postgres()  # its own temp dir: the server runs as another user when we are root
        try:
            if pg is not None:
                srv = pg
                add(
                    "postgresql COPY (merge on duplicate) (ours)",
                    "store",
                    lambda i: run_store(srv.create_database(f"bench_a{i}"), batches[: max(4, nb // 2)]),
                )
                add(
                    "postgresql COPY x2 processes",
                    "store",
                    lambda i: run_store_parallel(
                        srv.create_database(f"bench_b{i}"), [h[: max(2, len(h) // 2)] for h in half]
                    ),
                )
                add(
                    "baseline: postgresql executemany INSERT ON CONFLICT",
                    "store",
                    lambda i: pg_executemany_baseline(
                        srv.create_database(f"bench_c{i}").replace("+psycopg", ""), batches[: max(4, nb // 2)]
                    ),
                )
            if not args.no_http:
                hb, hn = 2000, 200
                n_http = max(4, int(100 * scale))
                print(f"whole ingest path: cloud app over ASGI, {hb:,} readings per batch")
                warm = args.warmup
                same = make_batches(n_http + warm, hb, hn, prefix="70b3d57eff")
                add(
                    "store only, sqlite, the http rows' batches (2,000 readings)",
                    "store",
                    lambda i: run_store(f"sqlite:///{tmp}/same-{i}.db", same, warmup=warm),
                    warmup_batches=warm,
                )
                for body in BODIES:

                    def run_sqlite(i: int, posters: int, body: str) -> tuple[Any, ...]:
                        name = f"h{posters}{body[0]}-{i}"
                        # 1 poster: the store-only run on the same batches right before each whole-path run,
                        # so both sides of "whole / store" share the machine's moment (_paired)
                        paired = (
                            run_store(f"sqlite:///{tmp}/{name}-store.db", same, warmup=warm)
                            if posters == 1
                            else None
                        )
                        res = http_ingest(
                            tmp / name,
                            f"sqlite:///{tmp}/{name}.db",
                            f"sqlite:///{tmp}/{name}-ts.db",
                            n_http,
                            hb,
                            hn,
                            posters,
                            body,
                            warmup=warm,
                        )
                        return (*res, None, _paired(paired, res) if paired else None)

                    for posters, label in ((1, "1 poster"), (2, "x2 posters")):
                        add(
                            f"http ingest, sqlite db + sqlite ts, {label}{BODIES[body]}",
                            "http",
                            functools.partial(run_sqlite, posters=posters, body=body),
                            body=body,
                            warmup_batches=warm,
                        )
                if pg is not None:
                    srv = pg
                    add(
                        "store only, postgresql, the http rows' batches (2,000 readings)",
                        "store",
                        lambda i: run_store(srv.create_database(f"bench_same{i}"), same),
                    )

                    def run_procs(
                        i: int, procs: int, body: str
                    ) -> tuple[float, list[float], int, float, float | None]:
                        return http_ingest_procs(
                            tmp / f"hp{procs}{body[0]}-{i}",
                            srv.create_database(f"bench_hp{procs}{body[0]}_{i}"),
                            srv.create_database(f"bench_hp{procs}{body[0]}_ts{i}"),
                            n_http // 2 + 1,  # per process: 2 processes post twice as much in all
                            hb,
                            hn,
                            procs,
                            body,
                            srv.dsn(),
                        )

                    for body in BODIES:
                        for procs in (1, 2):
                            add(
                                f"http ingest, postgresql db + ts, {procs} worker process(es), 1 poster each"
                                + BODIES[body],
                                "http",
                                functools.partial(run_procs, procs=procs, body=body),
                                body=body,
                            )
                    add(
                        "http ingest, postgresql db + postgresql ts, x2 posters",
                        "http",
                        lambda i: http_ingest(
                            tmp / f"h3-{i}",
                            srv.create_database(f"bench_http{i}"),
                            srv.create_database(f"bench_http_ts{i}"),
                            n_http,
                            hb,
                            hn,
                            2,
                        ),
                    )
        finally:
            if pg is not None:
                pg.stop()
                shutil.rmtree(pg.directory, ignore_errors=True)
    ours = next(r for r in rows if r["name"].startswith("sqlite wide multi-row INSERT (ours"))
    base = next(r for r in rows if r["name"] == "baseline: sqlite per-row INSERT")
    load_after = os.getloadavg()
    print(
        f"\nembedded store: {ours['readings_per_s']:,} readings/s vs per-row baseline "
        f"{base['readings_per_s']:,} ({ours['readings_per_s'] / base['readings_per_s']:.1f}x); aim >= 100,000"
    )
    aims = issue12_aims(rows)
    previous = _previous_aims()
    print_aims(aims, previous, (load_before[0], load_after[0]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "bench_ingest",
        "quick": args.quick,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "kind": KIND.value,
        "channels": len(spec(KIND).channels),
        "batch_readings": bs,
        "devices": ndev,
        "aims": aims,
        "previous_run": previous,
        "results": rows,
    }
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
