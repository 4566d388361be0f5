"""The ``loop`` job's idle gate (embedded SQLite, cloud/loop/idle.py): idle ticks skip ``reconcile`` and
``run_due``, and work is still done at the same tick as without the gate: a timer that becomes due with
no commit at all fires at the first tick at or after its ``due_at``; an alert committed without its sink
call (a crash between ingest's commit and the drain) is reconciled once it is older than the grace, with
no further commit; a commit runs the next tick's passes; a full pass runs at least every ``max_skip_s``."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from cloud.alertstore import store_alert_steps
from cloud.loop.idle import LoopIdleGate
from cloud.loop.models import AlertLink, Timer
from cloud.loop.service import LoopService
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import BAND_1, GW1, SMOKE_1, T0, Cloud, alert_step
from tests.cloud.loop.test_end_to_end import ingest, loop


class Ctx:
    def __init__(self) -> None:
        self.fenced = 0

    def fence(self, session: object) -> None:
        self.fenced += 1


class Counted:
    """Counts the passes the job really runs (the service's methods, wrapped on the instance)."""

    def __init__(self, svc: LoopService) -> None:
        self.reconcile = self.run_due = 0
        real_rec, real_due = svc.reconcile, svc.run_due

        def rec(*a: object, **k: object) -> int:
            self.reconcile += 1
            return real_rec(*a, **k)  # type: ignore[arg-type]

        def due(*a: object, **k: object) -> int:
            self.run_due += 1
            return real_due(*a, **k)  # type: ignore[arg-type]

        svc.reconcile = rec  # type: ignore[method-assign]
        svc.run_due = due  # type: ignore[method-assign]


async def _quiet(svc: LoopService, n: Counted) -> None:
    """Tick until a tick skips both passes (background commits, e.g. the notifier settling the pages the
    ingest just made, run the passes until they stop): fails if the gate never skips within 3 s."""
    for _ in range(150):
        before = (n.reconcile, n.run_due)
        await svc.job(Ctx())
        if (n.reconcile, n.run_due) == before:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the idle gate never skipped a tick")


def _pending(c: Cloud) -> float:
    with c.state.db.read() as s:
        due = s.scalar(select(func.min(Timer.due_at)).where(Timer.state == "pending"))
    assert due is not None
    return float(due)


def _timer_states(c: Cloud) -> dict[str, int]:
    with c.state.db.read() as s:
        rows = s.execute(select(Timer.state, func.count()).group_by(Timer.state)).all()
    return {str(st): int(k) for st, k in rows}


async def test_a_timer_due_with_no_commit_fires_at_its_tick(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    assert BAND_1 is not None
    await ingest(c, alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, T0 - 2))
    svc = loop(c)
    n = Counted(svc)
    await svc.job(Ctx())
    assert svc._gate is not None  # the embedded file: gated
    await _quiet(svc, n)
    skipped = dict(svc._gate.skipped)
    for _ in range(5):  # nothing committed, nothing due: every tick skips both passes
        before = (n.reconcile, n.run_due)
        await svc.job(Ctx())
        assert (n.reconcile, n.run_due) == before
    assert svc._gate.skipped["timers"] >= skipped["timers"] + 5

    due = _pending(c)
    done = _timer_states(c).get("done", 0)
    c.clock.t = due - 0.01  # a tick just before the timer: skipped, nothing fired
    await svc.job(Ctx())
    assert _timer_states(c).get("done", 0) == done
    c.clock.t = due  # time alone (no commit anywhere): the tick at its due_at fires it
    ctx = Ctx()
    await svc.job(ctx)
    assert _timer_states(c).get("done", 0) > done
    assert ctx.fenced == 1


async def test_an_alert_the_sink_missed_is_reconciled_by_time_alone(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    svc = loop(c)
    n = Counted(svc)
    await svc.job(Ctx())
    await _quiet(svc, n)
    step = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 1)
    with c.state.db.write() as s:  # ingest's commit, then the process dies before the sink is called
        store_alert_steps(s, [step], source=GW1, received_at=T0)
    rec = n.reconcile
    await svc.job(Ctx())  # the commit runs the pass: the step is younger than the grace, not taken yet
    assert n.reconcile == rec + 1
    with c.state.db.read() as s:
        assert s.get(AlertLink, step.alert_id) is None
    rec = n.reconcile
    c.clock.t = T0 + 4.9  # still within the grace: nothing to take, skipped
    await svc.job(Ctx())
    assert n.reconcile == rec
    c.clock.t = T0 + 5.0  # the step is now the reconciler's, with no commit since: the pass runs
    await svc.job(Ctx())
    assert n.reconcile == rec + 1
    with c.state.db.read() as s:
        link = s.get(AlertLink, step.alert_id)
        assert link is not None and link.incident_id is not None


async def test_without_the_gate_every_tick_runs_both_passes(lc_sqlite: Cloud) -> None:
    """The baseline (and the switch that turns the gate off)."""
    c = lc_sqlite
    svc = loop(c)
    svc.gate_idle = False
    n = Counted(svc)
    for _ in range(3):
        await svc.job(Ctx())
    assert (n.reconcile, n.run_due) == (3, 3) and svc._gate is None


def test_the_gate_reads_every_stored_instant(tmp_path: Path) -> None:
    """The gate's own reads (minimal copies of the two tables' columns) and its safety net."""
    path = tmp_path / "g.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE loop_timers (state TEXT, due_at REAL)")
    db.execute("CREATE TABLE alert_events (received_at REAL)")
    mono = [0.0]
    gate = LoopIdleGate(str(path), max_skip_s=5.0, monotonic=lambda: mono[0])
    try:
        v = gate.version()
        gate.after_timers(v, fired=0)
        assert gate.skip_timers(1e12, v)  # nothing pending: only the safety net
        mono[0] = 5.0
        assert not gate.skip_timers(100.0, gate.version())  # a full pass every 5 s
        db.execute("INSERT INTO loop_timers VALUES ('pending', 103.0), ('done', 50.0)")
        assert not gate.skip_timers(100.0, gate.version())  # committed since: the next pass runs
        v = gate.version()
        gate.after_timers(v, fired=0)
        assert gate.skip_timers(102.99, v) and not gate.skip_timers(103.0, v)  # due at 103
        gate.after_timers(v, fired=1)
        assert not gate.skip_timers(100.0, v)  # a pass that fired: the next runs

        v = gate.version()
        gate.after_reconcile(v, took=0, upto=95.0, grace=5.0)
        assert gate.skip_reconcile(1e12, v)  # no step at all
        db.execute("INSERT INTO alert_events VALUES (94.0)")
        assert not gate.skip_reconcile(100.0, gate.version())
        v = gate.version()
        gate.after_reconcile(v, took=0, upto=95.0, grace=5.0)
        assert gate.skip_reconcile(1e12, v)  # the newest step was below the pass's bound: seen
        db.execute("INSERT INTO alert_events VALUES (97.0)")
        v = gate.version()
        gate.after_reconcile(v, took=0, upto=95.0, grace=5.0)
        assert gate.skip_reconcile(101.99, v) and not gate.skip_reconcile(102.0, v)  # 97 + grace
        gate.after_reconcile(v, took=0, upto=None, grace=5.0)
        assert not gate.skip_reconcile(100.0, v)  # the pass hit its limit
        gate.after_reconcile(v, took=3, upto=95.0, grace=5.0)
        assert not gate.skip_reconcile(100.0, v)  # the pass took alerts
        gate.after_reconcile(None, took=0, upto=95.0, grace=5.0)
        assert not gate.skip_reconcile(100.0, None)  # the version could not be read
        gate.after_timers(v, fired=0)
        gate.forget()
        assert not gate.skip_timers(100.0, v)  # a failed pass: the next tick runs both
    finally:
        gate.close()
        db.close()


_CLOSE_WHILE_READING = r"""
import os, sqlite3, sys, tempfile, threading
from cloud.loop.idle import LoopIdleGate
from cloud.notify.worker import IdleGate
path = os.path.join(tempfile.mkdtemp(), "v.db")
c = sqlite3.connect(path)
c.execute("CREATE TABLE alert_events (received_at REAL)")
c.execute("CREATE TABLE loop_timers (due_at REAL, state TEXT)")
c.execute("CREATE TABLE notify_deliveries (next_at REAL, lease_until REAL, status TEXT)")
c.execute("CREATE TABLE notification_intents (updated_at REAL, state TEXT)")
c.executemany("INSERT INTO alert_events VALUES (?)", [(float(i),) for i in range(20000)])
c.commit()
for _ in range(150):
    for gate in (LoopIdleGate(path), IdleGate(path, intent_lease_s=30.0)):
        stop = False
        def reads():
            while not stop:
                gate.version()
                if isinstance(gate, LoopIdleGate):
                    gate.after_reconcile(1, 0, 10.0, 1.0)
                    gate.after_timers(1, 0)
                else:
                    gate.after_round(1, found=False, now=0.0)
        threads = [threading.Thread(target=reads) for _ in range(3)]
        for t in threads:
            t.start()
        gate.close()  # the app stopping while a cancelled tick's thread is still inside a read
        stop = True
        for t in threads:
            t.join()
        assert gate.version() is None  # closed: "run the pass"
print("survived")
"""


def test_closing_the_gate_while_a_thread_reads_it_does_not_crash_the_process() -> None:
    """The app's shutdown closes the gate while ``asyncio.to_thread`` may still be inside a read (a
    cancelled tick's thread goes on). Without the gate's lock CPython's sqlite3 frees the connection under
    the reader: the process dies with SIGSEGV (a CI run did, at 40 % of the suite). In a child process so
    that a crash fails this test instead of killing the run."""
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", _CLOSE_WHILE_READING],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.strip() == "survived"
