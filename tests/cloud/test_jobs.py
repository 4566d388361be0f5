"""Periodic jobs under leases (cloud/jobs.py, cloud/lease.py): ticks in order, fencing, takeover.

The takeover test kills the holding *process* with SIGKILL (no clean-up, no release, a transaction left
open) and shows that a standby process runs the tick the dead one was in, once, and carries on.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from cloud.connectivity import ConnectivityMonitor
from cloud.db import Database, upgrade_head
from cloud.jobs import JobContext, JobRunner
from cloud.lease import LeaseLost, LocalLease, SqlLease
from firmware_bridge.kernel.events import EventType
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import RecordingSink, make_settings, start_cloud

ROOT = Path(__file__).resolve().parents[2]


async def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# --- the runner, in process ---------------------------------------------------------------------------
async def test_ticks_run_in_order_on_their_interval() -> None:
    runner = JobRunner(LocalLease(), ttl_s=1.0, poll_s=0.01)
    seen: list[JobContext] = []

    async def job(ctx: JobContext) -> None:
        seen.append(ctx)

    runner.register("beat", 0.05, job)
    task = asyncio.create_task(runner.run())
    await _until(lambda: len(seen) >= 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [c.tick for c in seen[:5]] == [1, 2, 3, 4, 5]
    gaps = [b.scheduled_at - a.scheduled_at for a, b in itertools.pairwise(seen[:5])]
    assert all(g == pytest.approx(0.05, abs=0.03) for g in gaps), gaps
    assert not runner.holds("beat")  # released on the way out


async def test_a_failing_job_is_counted_and_the_next_tick_runs() -> None:
    runner = JobRunner(LocalLease(), ttl_s=1.0, poll_s=0.01)
    ticks: list[int] = []

    async def job(ctx: JobContext) -> None:
        ticks.append(ctx.tick)
        if ctx.tick == 1:
            raise RuntimeError("boom")

    runner.register("flaky", 0.02, job)
    task = asyncio.create_task(runner.run())
    await _until(lambda: len(ticks) >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ticks[:3] == [1, 2, 3]
    assert runner.metrics.runs.labels("flaky", "failed")._value.get() == 1


async def test_a_fenced_off_tick_is_not_lost() -> None:
    """The lease is taken away while a tick runs: the tick's fence refuses, and it runs again (same tick
    number) once the lease is back, instead of being counted as done."""
    lease = LocalLease()
    runner = JobRunner(lease, ttl_s=1.0, poll_s=0.01)
    done: list[int] = []
    attempts: list[int] = []

    async def job(ctx: JobContext) -> None:
        attempts.append(ctx.tick)
        if len(attempts) == 2:
            lease.release(ctx.name, ctx.token)  # another holder "took" it
        ctx.fence(None)  # type: ignore[arg-type]  # LocalLease does not use the session
        done.append(ctx.tick)

    runner.register("fenced", 0.02, job)
    task = asyncio.create_task(runner.run())
    await _until(lambda: len(done) >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts[:4] == [1, 2, 2, 3]
    assert done[:3] == [1, 2, 3]
    assert runner.metrics.runs.labels("fenced", "lease_lost")._value.get() == 1


def test_register_checks_its_arguments() -> None:
    runner = JobRunner(LocalLease())

    async def job(ctx: JobContext) -> None:
        return None

    runner.register("a", 1.0, job)
    with pytest.raises(ValueError, match="already"):
        runner.register("a", 1.0, job)
    with pytest.raises(ValueError, match="interval"):
        runner.register("b", 0, job)
    with pytest.raises(ValueError, match="name"):
        runner.register("", 1.0, job)
    assert runner.jobs == ["a"]


# --- PostgreSQL leases --------------------------------------------------------------------------------
def test_sql_lease_tokens_expiry_and_fencing(pg_url: str) -> None:
    upgrade_head(pg_url)
    db = Database(pg_url)
    try:
        a, b = SqlLease(db, holder="a"), SqlLease(db, holder="b")
        ga = a.acquire("job", 0.3)
        assert ga is not None and ga.token == 1 and ga.done_tick == 0 and ga.next_due is None
        assert b.acquire("job", 0.3) is None  # held
        assert a.renew({"job": 1}, 0.3) == {"job"}
        assert a.complete("job", 1, 1, 100.0)
        time.sleep(0.4)  # a stops renewing: expired
        gb = b.acquire("job", 5.0)
        assert gb is not None and gb.token == 2 and gb.done_tick == 1 and gb.next_due == 100.0
        assert a.renew({"job": 1}, 0.3) == set()
        assert not a.complete("job", 1, 2, 200.0)
        # a's late write is fenced off and rolled back with the fence
        with db.write() as s:
            s.execute(text("CREATE TABLE effects (who text)"))
        with pytest.raises(LeaseLost), db.write() as s:
            s.execute(text("INSERT INTO effects VALUES ('a')"))
            a.fence(s, "job", 1, 2, 200.0)
        with db.write() as s:
            b.fence(s, "job", 2, 2, 200.0)
            s.execute(text("INSERT INTO effects VALUES ('b')"))
        with db.read() as s:
            assert [r[0] for r in s.execute(text("SELECT who FROM effects"))] == ["b"]
        # a clean release hands over at once
        b.release("job", 2)
        gc = a.acquire("job", 5.0)
        assert gc is not None and gc.token == 3 and gc.done_tick == 2
    finally:
        db.close()


async def test_two_processes_page_once_and_a_standby_carries_on(tmp_path: Path, pg_url: str) -> None:
    """Two runners (as in two cloud processes) over one database run the connectivity job: each silent
    device is raised once, and after the holder stops the standby takes the next tick, not the same one."""
    settings = make_settings(tmp_path, pg_url, connectivity_check_s=0)
    async with start_cloud(settings) as c:
        sink = RecordingSink()
        dbs = [Database(pg_url), Database(pg_url)]
        runners, tasks = [], []
        ticks: list[tuple[int, int]] = []
        for i, db in enumerate(dbs):
            mon = ConnectivityMonitor(
                db,
                silent_factor=2.5,
                gateway_offline_s=1e9,
                reminder_interval_s=3600.0,
                sink=sink,
                clock=c.clock,
            )

            async def job(ctx: JobContext, mon: ConnectivityMonitor = mon, i: int = i) -> None:
                await mon.job(ctx)
                ticks.append((i, ctx.tick))

            r = JobRunner(SqlLease(db, holder=f"p{i}"), clock=c.clock, ttl_s=2.0, poll_s=0.02)
            r.register("connectivity", 60.0, job)
            runners.append(r)
        try:
            c.clock.advance(30 * 86400)  # every device long silent
            tasks = [asyncio.create_task(r.run()) for r in runners]
            await _until(lambda: len(ticks) >= 1)
            await asyncio.sleep(0.3)
            assert len(ticks) == 1
            holder = ticks[0][0]
            c.clock.advance(3600.0)  # the reminder is due at the next tick
            tasks[holder].cancel()  # clean stop: released, the standby takes over at once
            await asyncio.gather(tasks[holder], return_exceptions=True)
            await _until(lambda: len(ticks) >= 2)
            await asyncio.sleep(0.3)
            assert ticks == [(holder, 1), (1 - holder, 2)]
            steps = [s for _, batch in sink.calls for s in batch if s.event_type == EventType.DEVICE_SILENT]
            per_device: dict[str, list[str]] = {}
            for s in steps:
                per_device.setdefault(s.device_id, []).append(s.phase.value)
            assert per_device and all(v == ["raised", "updated"] for v in per_device.values()), per_device
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for db in dbs:
                db.close()


# --- kill -9 ------------------------------------------------------------------------------------------
def _holder(
    url: str, name: str, ttl: float, interval: float, work: float, log: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.cloud.job_holder", url, name, str(ttl), str(interval), str(work)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def test_holder_killed_with_sigkill_mid_tick_is_replaced_without_double_or_lost_tick(
    pg_url: str, tmp_path: Path
) -> None:
    from tests.cloud.job_holder import SCHEMA

    upgrade_head(pg_url)
    db = Database(pg_url)
    ttl, interval, work = 1.5, 0.4, 0.25
    procs: list[subprocess.Popen[bytes]] = []

    def rows(sql: str) -> list[tuple[int, ...]]:
        with db.read() as s:
            return [tuple(r) for r in s.execute(text(sql))]

    def wait(cond: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            for p in procs:
                if p.poll() is not None and p.returncode != -signal.SIGKILL:
                    logs = [f.read_text(errors="replace")[-2000:] for f in tmp_path.glob("*.log")]
                    raise AssertionError(f"a holder exited: {logs}")
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            time.sleep(0.01)

    try:
        with db.write() as s:
            for stmt in SCHEMA:
                s.execute(text(stmt))
        a = _holder(pg_url, "kill-test", ttl, interval, work, tmp_path / "a.log")
        procs.append(a)
        wait(lambda: len(rows("SELECT tick FROM tick_log")) >= 3)
        b = _holder(pg_url, "kill-test", ttl, interval, work, tmp_path / "b.log")
        procs.append(b)
        time.sleep(2.0)  # b is up and standing by
        # kill a while it is inside a tick: started, its fenced transaction open, not recorded
        in_flight = "SELECT max(tick) FROM tick_start WHERE tick NOT IN (SELECT tick FROM tick_log)"
        wait(lambda: rows(in_flight)[0][0] is not None)
        a.send_signal(signal.SIGKILL)
        a.wait()
        killed_at = time.time()
        killed_tick = rows(in_flight)[0][0]
        assert killed_tick is not None
        wait(lambda: len(rows(f"SELECT tick FROM tick_log WHERE pid = {b.pid}")) >= 3)
        b.send_signal(signal.SIGTERM)
        b.wait(10)

        log = rows("SELECT tick, token, pid, started, finished FROM tick_log ORDER BY tick")
        ticks = [r[0] for r in log]
        assert len(ticks) == len(set(ticks)), f"a tick ran twice: {ticks}"
        assert ticks == list(range(1, len(ticks) + 1)), f"a tick was lost: {ticks}"
        assert {r[2] for r in log if r[0] < killed_tick} == {a.pid}  # b only stood by
        assert {r[2] for r in log if r[0] >= killed_tick} == {b.pid}
        assert next(r[0] for r in log if r[2] == b.pid) == killed_tick  # b re-ran the interrupted tick
        assert min(r[1] for r in log if r[2] == b.pid) > max(r[1] for r in log if r[2] == a.pid)
        first_b = min(r[3] for r in log if r[2] == b.pid)
        assert first_b - killed_at < ttl + interval + 2.0  # the timer went on: taken over within ~TTL
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        db.close()
