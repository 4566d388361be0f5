"""Thread CPU per stage of the whole HTTP ingest path (embedded SQLite), per 2,000-reading batch.

Runs :func:`bench_ingest.http_ingest` (the ``http ..`` rows' app, batches and ASGI driver) with a thread-CPU
timer (``time.thread_time``) around the ingest service's stages, counted only while the timed batches run:
body decoding, token check, duplicate check, screening, the time-series write, the operational
transaction (device bookkeeping, its sequence summary and its two driver statements, the commit), and
prints what is left outside them (ASGI stack, thread hand-offs, the app's background loops). Before the
whole path it runs the store row on the same batches in the same process, and prints both sides' user /
system CPU and context switches (``getrusage``) and their ratio: the denominator measured beside the
numerator, and the system time a breakdown by stage cannot attribute. The SQLite store's write itself is
split the same way on both sides (its INSERT parameters, the INSERT statements, the ``COMMIT`` with its
fsync; thread CPU and wall time): where the in-path write differs from the store row's own.

    .venv/bin/python bench/bench_ingest_stages.py [--body msgpack|json] [--batches 200]
    .venv/bin/python bench/bench_ingest_stages.py --idle 10   # the idle app only: its loops' CPU

``--idle S``: no batches; the app (the same settings) idle for S seconds after 2 s of start, its process
CPU per second and the thread CPU of each function its background loops hand to a thread
(``asyncio.to_thread``), per second: which loop polls, and what each poll costs.

To compare two versions of the code, run it alternately from two checkouts with ``PYTHONPATH`` set to
each (the process CPU of a loaded machine varies by a fifth from run to run: interleave and repeat).
How the figures were used: docs/deploy-district.md, "Whole path / store on the embedded default".
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ingest as bi

import cloud.api.ingest as api_ingest
import cloud.auth
import cloud.ingest as ingest
from cloud.timeseries import open_timeseries

_acc: dict[str, float] = defaultdict(float)
_on = [False]
_idle = [0.0, 0.0]  # wall and process CPU seconds of the idle second before the timed batches
_rusage: dict[str, tuple[float, ...]] = {}  # process user / system CPU and context switches, timed batches
#: the SQLite store's write split into parts, per side ("store" row / "whole" path): part -> [wall, CPU]
_write_parts: dict[str, defaultdict[str, list[float]]] = {
    side: defaultdict(lambda: [0.0, 0.0]) for side in ("store", "whole")
}
_side = ["store"]
_store_on = [False]


def _ru() -> tuple[float, ...]:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime, r.ru_stime, float(r.ru_nvcsw), float(r.ru_nivcsw))


def _timed(owner: Any, name: str) -> None:
    fn: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            if _on[0]:
                _acc[name] += time.thread_time() - t

    setattr(owner, name, wrapper)


def _part(name: str, wall0: float, cpu0: float) -> None:
    if _store_on[0] or _on[0]:
        acc = _write_parts[_side[0]][name]
        acc[0] += time.perf_counter() - wall0
        acc[1] += time.thread_time() - cpu0


def _instrument_store() -> None:
    """Thread CPU and wall of the SQLite store's parts: parameters (in the caller's thread), the INSERTs and
    the COMMIT (in the group-commit leader's; one poster: the same thread)."""
    from cloud.timeseries import sqlite as ts_sqlite

    cls = ts_sqlite.SQLiteStore
    statements = cls._statements

    def timed_statements(self: Any, batch: Any) -> Any:
        w, c = time.perf_counter(), time.thread_time()
        try:
            return statements(self, batch)
        finally:
            _part("parameters (numpy -> Python, flat list)", w, c)

    def timed_commit_group(self: Any, group: Any) -> None:
        # cloud.timeseries.sqlite.SQLiteStore._commit_group with timers around its two parts (the error
        # handling of the original is not needed here: the bench stops at any error)
        with self._write_lock:
            self._check_open()
            conn = self._writer
            w, c = time.perf_counter(), time.thread_time()
            conn.execute("BEGIN IMMEDIATE")
            for p in group:
                p.stored = sum(conn.execute(sql, args).rowcount for sql, args in p.statements)
            _part("INSERT statements (SQLite, GIL released)", w, c)
            w, c = time.perf_counter(), time.thread_time()
            conn.execute("COMMIT")
            _part("COMMIT (WAL frames written + fsync)", w, c)

    cls._statements = timed_statements  # type: ignore[method-assign]
    cls._commit_group = timed_commit_group  # type: ignore[method-assign]


def _instrument() -> None:
    _instrument_store()
    svc = ingest.IngestService
    for name in (
        "_ingest_blocking",
        "_find_batch",
        "_screen",
        "_write_telemetry",
        "_commit",
        "_commit_in",
        "_update_devices",
    ):
        _timed(svc, name)
    _timed(ingest, "batch_sequences")
    _timed(api_ingest, "decode_batch")
    _timed(cloud.auth.Credentials, "principal_for_token")

    class TimedGroup(asyncio.TaskGroup):  # the bench's timed batches run in one TaskGroup
        async def __aenter__(self) -> TimedGroup:
            # the app idle for a second first: its background loops' CPU rate (subtracted from the
            # bench's wall and CPU below, which include this second)
            w0, c0 = time.perf_counter(), time.process_time()
            await asyncio.sleep(1.0)
            _idle[:] = [time.perf_counter() - w0, time.process_time() - c0]
            _side[0] = "whole"
            _on[0] = True
            _rusage["whole0"] = _ru()
            return await super().__aenter__()

        async def __aexit__(self, *exc: Any) -> None:
            await super().__aexit__(*exc)
            _rusage["whole1"] = _ru()
            _on[0] = False

    shim = type(sys)("asyncio_shim")
    shim.__dict__.update(asyncio.__dict__)
    shim.TaskGroup = TimedGroup  # type: ignore[attr-defined]
    bi.asyncio = shim  # type: ignore[attr-defined]


def idle(seconds: float) -> None:
    """The idle app's CPU, per background function (see the module docstring)."""
    counts: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    real_to_thread = asyncio.to_thread

    async def to_thread(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        name = getattr(fn, "__qualname__", repr(fn))

        def run() -> Any:
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                if _on[0]:
                    counts[name][0] += 1
                    counts[name][1] += time.thread_time() - t

        return await real_to_thread(run)

    async def go(tmp: Path) -> None:
        from cloud.app import create_app
        from cloud.settings import CloudSettings

        settings = CloudSettings.model_validate(
            dict(
                database_url=f"sqlite:///{tmp}/h.db",
                timeseries_url=f"sqlite:///{tmp}/h-ts.db",
                secret_key_file=tmp / "keys" / "secret.key",
                connectivity_check_s=0,
                json_logs=False,
            )
        )
        app = await real_to_thread(create_app, settings)
        async with app.router.lifespan_context(app):
            await asyncio.sleep(2.0)
            asyncio.to_thread = to_thread
            w0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
            _on[0] = True
            await asyncio.sleep(seconds)
            _on[0] = False
            wall, cpu, main = time.perf_counter() - w0, time.process_time() - c0, time.thread_time() - m0
            asyncio.to_thread = real_to_thread
        load = os.getloadavg()[0]
        print(f"idle app: {cpu / wall * 1e3:.2f} ms CPU per s over {wall:.1f} s, load {load:.1f}")
        print(f"  {'event loop thread':<40} {main / wall * 1e3:6.2f} ms/s")
        for name, (n, c) in sorted(counts.items(), key=lambda kv: -kv[1][1]):
            each = c / max(n, 1) * 1e6
            print(f"  {name:<40} {c / wall * 1e3:6.2f} ms/s  ({int(n)} calls, {each:.0f} us each)")

    with tempfile.TemporaryDirectory(prefix="vigil-bench-idle-") as d:
        asyncio.run(go(Path(d)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--body", choices=("msgpack", "json"), default="msgpack")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--idle", type=float, default=0.0, help="seconds of the idle app only (no batches)")
    args = ap.parse_args()
    if args.idle > 0:
        idle(args.idle)
        return 0
    # the bench's one gateway sends more than the default burst (500,000 readings) in a run
    os.environ.setdefault("VIGIL_CLOUD_LIMIT_READINGS_BURST", "1e9")
    _instrument()
    with tempfile.TemporaryDirectory(prefix="vigil-bench-stages-") as d:
        tmp = Path(d)
        # the store row's own write on the same batches, right before (the denominator of "whole / store")
        same = bi.make_batches(args.batches + 20, 2000, 200, prefix="70b3d57eff")
        store = open_timeseries(f"sqlite:///{tmp}/s.db")
        for b in same[:20]:
            store.write(b)
        r0, t0 = _ru(), time.thread_time()
        _store_on[0] = True
        for b in same[20:]:
            store.write(b)
        _store_on[0] = False
        store_thread, r1 = time.thread_time() - t0, _ru()
        store.close()
        wall, _lat, k, cpu = bi.http_ingest(
            tmp / "h",
            f"sqlite:///{tmp}/h.db",
            f"sqlite:///{tmp}/h-ts.db",
            args.batches,
            2000,
            200,
            1,
            args.body,
            warmup=20,
            overlap=False,
        )
    wall, cpu = wall - _idle[0], cpu - _idle[1]
    nb = k / 2000
    background = _idle[1] / _idle[0] * wall / nb * 1e3  # the idle rate over the timed batches' wall time
    ms = {name: v / nb * 1e3 for name, v in _acc.items()}
    total = cpu / nb * 1e3
    print(
        f"{args.body}: {k / wall:,.0f} readings/s, {k / cpu:,.0f} per CPU-second, {total:.2f} ms CPU per "
        f"batch, load {os.getloadavg()[0]:.1f}"
    )
    write = ms["_write_telemetry"]
    rows = [
        ("body decoding", ms["decode_batch"]),
        ("token check (its own thread)", ms["principal_for_token"]),
        ("duplicate check (+ the read session's checkout)", ms["_find_batch"]),
        ("screening", ms["_screen"]),
        ("time-series write", write),
        ("operational transaction incl. commit, summary", ms["_commit"]),
        ("  sequence summary (numpy; before the write lock)", ms["batch_sequences"]),
        ("  batch row, gateway row, device bookkeeping", ms["_commit_in"]),
        ("    of it the device bookkeeping (SELECT, UPDATEs)", ms["_update_devices"]),
        (
            "  the rest: pool checkout, COMMIT (WAL frames, fsync)",
            ms["_commit"] - ms["_commit_in"] - ms["batch_sequences"],
        ),
        (
            "rest of the worker thread",
            ms["_ingest_blocking"] - write - ms["_commit"] - ms["_screen"] - ms["_find_batch"],
        ),
        (
            "outside the worker thread: ASGI, hand-offs, background loops",
            total - ms["_ingest_blocking"] - ms["decode_batch"] - ms["principal_for_token"],
        ),
        ("  of it the app's background loops (idle rate x wall per batch)", background),
    ]
    for name, v in rows:
        print(f"  {name:<62} {v:6.2f} ms")
    print(f"  {'everything but the write':<62} {total - write:6.2f} ms  (0.70 needs <= {write * 3 / 7:.2f})")
    # the store row on the same batches, right before: its write's thread CPU and the process's user /
    # system split and context switches, beside the whole path's (system time and switches are where a
    # thread-CPU breakdown by stage cannot say which stage caused them: fsyncs, hand-offs, the GIL)
    w0, w1 = _rusage["whole0"], _rusage["whole1"]
    print(
        f"  store row's write on the same batches (thread CPU)              {store_thread / nb * 1e3:6.2f} ms"
    )
    for name, a, b_ in (("store row", r0, r1), ("whole path", w0, w1)):
        user, system, vcsw, ivcsw = ((y - x) / nb for x, y in zip(a, b_, strict=True))
        print(
            f"  {name + ': user / system CPU, context switches (vol. / invol.)':<62} {user * 1e3:6.2f} / "
            f"{system * 1e3:.2f} ms, {vcsw:.1f} / {ivcsw:.1f}"
        )
    print(f"  {'the SQLite write in parts, per batch: store row / in the path':<62} wall ms      CPU ms")
    for part in _write_parts["store"]:
        (sw, sc), (ww, wc) = _write_parts["store"][part], _write_parts["whole"][part]
        print(
            f"    {part:<60} {sw / nb * 1e3:5.2f} / {ww / nb * 1e3:5.2f}  "
            f"{sc / nb * 1e3:5.2f} / {wc / nb * 1e3:5.2f}"
        )
    s_cpu = sum(r1[:2]) - sum(r0[:2])
    w_cpu = sum(w1[:2]) - sum(w0[:2])
    label = "whole / store by process CPU (user + system), this run"
    print(f"  {label:<62} {s_cpu / w_cpu:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
