"""The delivery worker's idle gate (embedded SQLite): idle rounds that would find nothing are skipped, and
work still goes out on time: a commit by another connection (a new delivery) runs the next round; a retry
that becomes due with no commit at all (time only) runs the round at its ``next_at``; ``wake()`` always
runs one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select

from cloud.notify.models import Delivery
from cloud.notify.worker import DeliveryWorker
from tests.aio import cancel_and_wait
from tests.cloud.notify.kit import fake_config, notify_kit, page
from tests.fakes.wecom import FakeWeCom

POLL_S = 0.02


async def _eventually(cond, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, "not within the timeout"
        await asyncio.sleep(POLL_S)


def _count_rounds(w: DeliveryWorker) -> list[int]:
    """Count the worker's rounds from now on: ``[n]``, updated as each round starts."""
    rounds = [0]
    real_round = w.run_once

    async def counted() -> int:
        rounds[0] += 1
        return await real_round()

    w.run_once = counted  # type: ignore[method-assign]
    return rounds


async def test_idle_rounds_are_skipped_and_work_still_goes_out(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config(wecom=fake_wecom, poll_s=POLL_S)) as kit:
        kit.service.contacts.bind("grid1", now=kit.clock.now(), wecom_userid="zhangsan")
        w = kit.service.worker
        rounds = _count_rounds(w)
        task = asyncio.create_task(w.run())
        try:
            await asyncio.sleep(0.3)
            assert w.idle_gate is not None
            before = rounds[0]
            await asyncio.sleep(0.5)  # ~25 polls, nothing committed, nothing due
            assert rounds[0] - before <= 1, rounds[0] - before

            # a commit (a new delivery, enqueued by another connection): the next poll runs a round
            fake_wecom.fail_next("timeout")  # ... whose first send fails: a retry at next_at, 1-2 s on
            await w.submit([page()])

            def one() -> Delivery:
                with kit.db.read() as s:
                    return s.scalars(select(Delivery)).one()

            await _eventually(lambda: one().status == "pending" and one().attempts == 1)
            d = one()
            assert d.next_at > kit.clock.now()
            await asyncio.sleep(0.3)
            before = rounds[0]
            await asyncio.sleep(0.3)
            assert rounds[0] - before <= 1  # the retry is not due: skipped
            assert fake_wecom.messages == []

            # time alone makes the retry due (no commit anywhere): the round runs at its next_at
            kit.clock.advance(d.next_at - kit.clock.now() + 0.01)
            await _eventually(lambda: len(fake_wecom.messages) == 1)

            # wake() runs a round even when nothing changed
            before = rounds[0]
            w.wake()
            await _eventually(lambda: rounds[0] > before)
        finally:
            await cancel_and_wait(task)
        assert w.idle_gate is None  # closed with the worker


async def test_without_the_gate_every_idle_poll_runs_a_round(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom
) -> None:
    """The baseline the gate is measured against (and the switch that turns it off)."""
    async with notify_kit(tmp_path, sqlite_url, fake_config(wecom=fake_wecom, poll_s=POLL_S)) as kit:
        w = kit.service.worker
        w.gate_idle = False
        rounds = _count_rounds(w)
        task = asyncio.create_task(w.run())
        try:
            await asyncio.sleep(0.5)
            assert rounds[0] >= 5
        finally:
            await cancel_and_wait(task)


def test_the_gate_reads_every_stored_instant(tmp_path: Path) -> None:
    """The gate's own reads over the two tables (minimal copies of their columns): a pending intent
    forbids any skip, a claimed one allows it until its claim lease expires, a delivery until its
    ``next_at`` / ``lease_until``; a commit by another connection ends the skip."""
    import sqlite3

    from cloud.notify.worker import IdleGate

    path = tmp_path / "g.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE notify_deliveries (status TEXT, next_at REAL, lease_until REAL)")
    db.execute("CREATE TABLE notification_intents (state TEXT, updated_at REAL)")
    gate = IdleGate(str(path), intent_lease_s=60.0, max_skip_s=5.0)
    try:
        gate.after_round(gate.version(), found=False, now=100.0)
        assert gate.can_skip(104.9) and not gate.can_skip(105.0)  # nothing stored: the 5 s cap
        db.execute("INSERT INTO notification_intents VALUES ('claimed', 100.0)")
        db.execute("INSERT INTO notify_deliveries VALUES ('pending', 103.0, 0), ('sending', 0, 102.0)")
        assert not gate.can_skip(101.0)  # committed since: the next round runs
        gate.after_round(gate.version(), found=False, now=101.0)
        assert gate.can_skip(101.9) and not gate.can_skip(102.0)  # the sending lease expires at 102
        db.execute("DELETE FROM notify_deliveries")
        gate.after_round(gate.version(), found=False, now=101.0)
        assert gate.can_skip(105.9) and not gate.can_skip(106.0)  # the claim's lease (160) is past the cap
        db.execute("INSERT INTO notification_intents VALUES ('pending', 101.0)")
        gate.after_round(gate.version(), found=False, now=101.0)
        assert not gate.can_skip(101.0)  # a pending intent: never skipped
        gate.after_round(gate.version(), found=True, now=101.0)
        assert not gate.can_skip(101.0)  # a round that found work: the next runs
    finally:
        gate.close()
        db.close()
