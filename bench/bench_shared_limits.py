"""The cost of a rate limit shared by every worker (cloud.limits.SharedBuckets) per limited request.

Run: ``.venv/bin/python bench/bench_shared_limits.py [--takes 5000] [--database URL]``.

Starts a PostgreSQL (tests/servers.py) unless ``--database`` names one, migrates it, then times one
``take`` (one position read through a responder link, one certificate-refusal report): in memory (the
embedded SQLite default, :class:`cloud.limits.TokenBuckets`), and in the shared table, on one hot key
(every take updates one row) and on fresh keys (every take inserts). Wall and client CPU per take,
PostgreSQL backend CPU per take (``/proc/<pid>/stat`` of the client backends), and two processes taking
one key concurrently on a standing clock (together they must admit the burst, 12, not 24). Writes
``bench/results/bench_shared_limits.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from cloud.db import Database, upgrade_head
from cloud.limits import SharedBuckets, TokenBuckets

TICK = os.sysconf("SC_CLK_TCK")


def backend_cpu_s(db: Database) -> float:
    """CPU seconds used so far by every backend of this database's server (client backends)."""
    with db.engine.connect() as conn:
        pids = list(
            conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'")
            ).scalars()
        )
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def run(label: str, take: Any, n: int, db: Database | None) -> dict[str, Any]:
    for i in range(50):  # warm: connections, plans
        take(i)
    srv0 = backend_cpu_s(db) if db is not None else 0.0
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(n):
        take(i)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    srv = (backend_cpu_s(db) - srv0) if db is not None else 0.0
    out = {
        "case": label,
        "takes": n,
        "wall_us_per_take": round(wall / n * 1e6, 1),
        "client_cpu_us_per_take": round(cpu / n * 1e6, 1),
        "server_cpu_us_per_take": round(srv / n * 1e6, 1) if db is not None else 0.0,
    }
    print(json.dumps(out))
    return out


def _concurrent(url: str, n: int, start: float, q: Any) -> None:
    db = Database(url)
    s = SharedBuckets(db, now=lambda: start)  # the clock stands still: only the burst can be admitted
    admitted = sum(1 for _ in range(n) if s.take("bench", "one-link", 1, 0.1, 12) == 0.0)
    db.close()
    q.put(admitted)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--takes", type=int, default=5000)
    ap.add_argument("--database", default=None)
    args = ap.parse_args()
    server = None
    url = args.database
    if url is None:
        from tests.servers import start_postgres

        server = start_postgres()
        url = server.create_database("bench_limits")
    try:
        upgrade_head(url)
        db = Database(url)
        n = args.takes
        results = []
        mem = TokenBuckets()
        results.append(run("memory, one key (SQLite default)", lambda i: mem.take("k", 1, 0.1, 12), n, None))
        shared = SharedBuckets(db)
        results.append(run("shared, one hot key", lambda i: shared.take("b", "hot", 1, 0.1, 12), n, db))
        results.append(
            run(
                "shared, a new key each",
                lambda i: shared.take("b", f"new{i}", 1, 0.1, 12),
                n,
                db,
            )
        )

        # two processes, one key, a standing clock: together they admit the burst (12), not 24
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        start = time.time() + 10_000
        procs = [ctx.Process(target=_concurrent, args=(url, 2000, start, q)) for _ in range(2)]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        admitted = [q.get(), q.get()]
        two = {
            "case": "two processes, 2,000 takes each, one key",
            "admitted": admitted,
            "admitted_total": sum(admitted),
            "wall_s": round(time.perf_counter() - t0, 2),
        }
        print(json.dumps(two))
        results.append(two)
        db.close()
    finally:
        if server is not None:
            server.stop()
    out = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_after": os.getloadavg(),
        "results": results,
    }
    Path(__file__).with_name("results").mkdir(exist_ok=True)
    Path(__file__).with_name("results").joinpath("bench_shared_limits.json").write_text(
        json.dumps(out, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
