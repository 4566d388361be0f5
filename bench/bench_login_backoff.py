"""The shared login back-off's cost under a flood of failed logins, with and without its audit indexes.

Run: ``.venv/bin/python bench/bench_login_backoff.py [--failures 100000] [--database URL]``.

``cloud.auth.LoginThrottle`` (with a database) counts ``auth.login_failed`` audit rows per username and per
client address within a day, on every login. This fills the audit log with ``--failures`` failed logins
(10 % of them for one attacked username, addresses random), then times ``retry_after`` for that username:
first with the indexes of migration ``0016_audit_lookup``, then, as the baseline in the same run, after
dropping them (the audit log's time index only, as before 0016). Writes
``bench/results/bench_login_backoff.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert, text

from cloud.auth import LoginThrottle
from cloud.db import Database, upgrade_head
from cloud.loop.models import AuditEntry

NOW = 1_790_000_000.0
KEYS = ("user:victim", "addr:10.0.1.1")


def timed(throttle: LoginThrottle, rounds: int = 30) -> dict[str, float]:
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        throttle.retry_after(KEYS, now=NOW)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return {"median_ms": round(ts[len(ts) // 2] * 1000, 2), "max_ms": round(ts[-1] * 1000, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--failures", type=int, default=100_000)
    ap.add_argument("--database", default=None, help="default: a SQLite file in a temporary directory")
    args = ap.parse_args()
    rng = random.Random(11)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{tmp}/vigil.db"
        upgrade_head(url)
        db = Database(url)
        rows = [
            {
                "at": NOW - rng.uniform(0, 80_000),
                "actor": "victim" if i % 10 == 0 else f"user{rng.randrange(5000)}",
                "role": "",
                "action": "auth.login_failed",
                "target": f"addr:10.0.{rng.randrange(256)}.{rng.randrange(256)}",
                "detail": {},
            }
            for i in range(args.failures)
        ]
        with db.write() as s:
            s.execute(insert(AuditEntry), rows)
        throttle = LoginThrottle(db)
        indexed = timed(throttle)
        with db.write() as s:
            s.execute(text("DROP INDEX ix_loop_audit_action_actor_at"))
            s.execute(text("DROP INDEX ix_loop_audit_action_target_at"))
        baseline = timed(throttle)
        db.close()
    out = {
        "benchmark": "bench_login_backoff",
        "database": "sqlite" if args.database is None else args.database.split(":", 1)[0],
        "failures_in_window": args.failures,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "retry_after_with_0016_indexes": indexed,
        "retry_after_baseline_time_index_only": baseline,
    }
    title = f"retry_after, {args.failures} failures in the window"
    print(f"{title:<48} {'median ms':>10} {'max ms':>10}")
    print(f"{'with the 0016 indexes (ours)':<48} {indexed['median_ms']:>10} {indexed['max_ms']:>10}")
    print(f"{'baseline: time index only':<48} {baseline['median_ms']:>10} {baseline['max_ms']:>10}")
    print(f"load average {out['load_average_1m']}")
    res = Path(__file__).resolve().parent / "results" / "bench_login_backoff.json"
    res.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
