"""A process that takes part in one periodic job, for the kill -9 test in ``test_jobs.py``.

``python -m tests.cloud.job_holder <database-url> <name> <ttl_s> <interval_s> <work_s>``

The job writes a start marker (its own transaction), then inside one fenced transaction holds the work
for ``work_s`` seconds and records the tick in ``tick_log``. A tick started and never recorded is a tick
its holder died in.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from sqlalchemy import text

from cloud.db import Database
from cloud.jobs import JobContext, JobRunner
from cloud.lease import SqlLease

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS tick_start (tick bigint, token bigint, pid int, at double precision)",
    "CREATE TABLE IF NOT EXISTS tick_log (tick bigint, token bigint, pid int, started double precision,"
    " finished double precision)",
)


def _work(db: Database, ctx: JobContext, work_s: float) -> None:
    started = time.time()
    with db.write() as s:
        s.execute(
            text("INSERT INTO tick_start VALUES (:t, :k, :p, :a)"),
            {"t": ctx.tick, "k": ctx.token, "p": os.getpid(), "a": started},
        )
    with db.write() as s:
        ctx.fence(s)  # this tick commits with these writes, or not at all
        time.sleep(work_s)
        s.execute(
            text("INSERT INTO tick_log VALUES (:t, :k, :p, :s, :f)"),
            {"t": ctx.tick, "k": ctx.token, "p": os.getpid(), "s": started, "f": time.time()},
        )


async def main(url: str, name: str, ttl_s: float, interval_s: float, work_s: float) -> None:
    db = Database(url)
    runner = JobRunner(SqlLease(db), ttl_s=ttl_s, poll_s=min(0.2, ttl_s / 3))

    async def tick(ctx: JobContext) -> None:
        await asyncio.to_thread(_work, db, ctx, work_s)

    runner.register(name, interval_s, tick)
    try:
        await runner.run()
    finally:
        db.close()


if __name__ == "__main__":
    u, n, ttl, iv, w = sys.argv[1:6]
    asyncio.run(main(u, n, float(ttl), float(iv), float(w)))
