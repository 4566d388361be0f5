"""What the embedded database's one writer is held for during ingest: the transaction, not work that needs
no stored state.

The per-batch sequence summary (``batch_sequences``: per-device counts, gaps, first / last frame) depends on
the readings alone, so it is computed before the process's SQLite write lock is taken: a concurrent
request's transaction waits only for the statements and the commit. The bookkeeping it feeds is checked in
``test_ingest_bookkeeping.py``; here: where the work happens, and that the result is the same.
"""

from __future__ import annotations

from typing import Any

import pytest

import cloud.ingest as ingest_mod
from cloud.db import Database
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import GW1, MANHOLE_1, T0, Cloud, batch, readings

M = DeviceKind.MANHOLE


def _spy_summary(monkeypatch: pytest.MonkeyPatch, db: Database) -> list[bool]:
    """For each call of the sequence summary: whether the write lock was held at that moment."""
    lock = db._write_lock
    assert lock is not None  # SQLite
    held: list[bool] = []
    real_summary = ingest_mod.batch_sequences  # type: ignore[attr-defined]

    def summary(*args: Any) -> Any:
        held.append(lock.locked())
        return real_summary(*args)

    monkeypatch.setattr(ingest_mod, "batch_sequences", summary)
    return held


async def test_sequence_summary_runs_outside_the_write_lock(
    cloud_sqlite: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _spy_summary(monkeypatch, cloud_sqlite.state.db)
    svc = cloud_sqlite.state.ingest
    ack = await svc.ingest(batch("batch-lock-01", readings(M, MANHOLE_1, [1, 2, 5])), gateway_id=GW1)
    assert (ack.duplicate, ack.telemetry_stored) == (False, 3)
    assert held == [False]  # computed once, before the transaction
    dev = cloud_sqlite.state.registry.get(MANHOLE_1, "admin")
    assert (dev.readings_total, dev.seq_gaps_total, dev.last_seq) == (3, 2, 5)
    again = await svc.ingest(batch("batch-lock-01", readings(M, MANHOLE_1, [1, 2, 5])), gateway_id=GW1)
    assert again.duplicate
    assert held == [False]  # a duplicate is answered before any summary


async def test_ingest_many_computes_each_summary_outside_the_transaction(
    cloud_sqlite: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _spy_summary(monkeypatch, cloud_sqlite.state.db)
    svc = cloud_sqlite.state.ingest
    out = await svc.ingest_many(
        [
            (batch("batch-lock-11", readings(M, MANHOLE_1, [10, 11])), GW1),
            (batch("batch-lock-12", readings(M, MANHOLE_1, [14], t0=T0 + 600)), GW1),
        ]
    )
    assert [getattr(a, "telemetry_stored", None) for a in out] == [2, 1]
    assert held == [False, False]
    dev = cloud_sqlite.state.registry.get(MANHOLE_1, "admin")
    assert (dev.readings_total, dev.seq_gaps_total, dev.last_seq) == (3, 2, 14)
