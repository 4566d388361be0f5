"""The ``loop`` job's idle gate (embedded SQLite): skip a tick's passes that would find nothing, exactly.

An idle tick cost ~3.8 ms of thread CPU (``reconcile`` ~1.9 ms + ``run_due`` ~1.9 ms: the ORM reads, two
thread hand-offs), ~60 % of an idle cloud's CPU. Work for either pass appears in two ways only:

- a **commit** by another connection (a new alert step, link or timer, in this process or another): it
  moves SQLite's ``PRAGMA data_version`` as seen from the gate's own read-only connection (~4 us to read);
- **time**: a pending timer becomes due at its ``due_at``; an alert step becomes the reconciler's once it
  is older than the grace period (``received_at <= now - grace``). The earliest such instant is read once
  after each pass (one indexed ``MIN`` / ``MAX``).

So a pass is skipped only when nothing was committed since the last pass began and its instant has not
come: a skipped pass would have found nothing, and timers fire at the same tick as without the gate. A
full pass still runs at least every ``max_skip_s`` real seconds (a safety net for anything the two rules
miss). PostgreSQL (several processes, another invalidation story) is not gated. Any error of the gate
means: run the pass.

The gate's connection is read from the job's worker thread (``after_*``) and from the event loop, and it
is closed by the app's shutdown while a cancelled tick's thread may still be inside a read: every read
and the close take one lock, and a closed gate answers "run the pass". (Closing a ``sqlite3`` connection
while another thread is inside it is a use-after-free in CPython: it crashed a CI run with SIGSEGV.)
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: a full pass of each kind runs at least this often (real seconds), whatever the gate says
MAX_SKIP_S = 5.0


class LoopIdleGate:
    def __init__(
        self,
        path: str,
        *,
        max_skip_s: float = MAX_SKIP_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conn = sqlite3.connect(
            Path(path).resolve().as_uri() + "?mode=ro",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
        )
        self._lock = threading.Lock()
        self._closed = False
        self._max_skip_s = max_skip_s
        self._mono = monotonic
        # per pass: data_version when the last empty pass began (None: do not skip), the clock instant
        # from which the pass may find work again, the monotonic time of the last full pass
        self._rec_version: int | None = None
        self._rec_until = -math.inf
        self._rec_at = -math.inf
        self._tim_version: int | None = None
        self._tim_until = -math.inf
        self._tim_at = -math.inf
        self.skipped = {"reconcile": 0, "timers": 0}  # counted for tests and the bench

    def _one(self, sql: str) -> tuple[bool, Any]:
        """``(True, first column)`` of a one-row read, ``(False, None)`` when closed or on an error."""
        with self._lock:
            if self._closed:
                return False, None
            try:
                return True, self._conn.execute(sql).fetchone()[0]
            except sqlite3.Error:
                return False, None

    def version(self) -> int | None:
        ok, value = self._one("PRAGMA data_version")
        return int(value) if ok and value is not None else None

    def _skip(self, kept: int | None, until: float, at: float, now: float, version: int | None) -> bool:
        return kept is not None and version == kept and now < until and self._mono() - at < self._max_skip_s

    def skip_reconcile(self, now: float, version: int | None) -> bool:
        if self._skip(self._rec_version, self._rec_until, self._rec_at, now, version):
            self.skipped["reconcile"] += 1
            return True
        return False

    def skip_timers(self, now: float, version: int | None) -> bool:
        if self._skip(self._tim_version, self._tim_until, self._tim_at, now, version):
            self.skipped["timers"] += 1
            return True
        return False

    def after_reconcile(self, began: int | None, took: int, upto: float | None, grace: float) -> None:
        """After a reconcile pass. ``began``: :meth:`version` before it; ``took``: alerts it handed to the
        loop; ``upto``: the pass's upper bound if it read everything below it (None: it hit its limit);
        ``grace``: the grace period in clock seconds. The next pass may skip until the newest stored step
        is older than the grace, or forever (up to ``max_skip_s``) when that step was already below
        ``upto``."""
        self._rec_version = None
        self._rec_at = self._mono()
        if began is None or took or upto is None:
            return
        ok, newest = self._one("SELECT MAX(received_at) FROM alert_events")
        if not ok:
            return
        self._rec_until = math.inf if newest is None or newest <= upto else float(newest) + grace
        self._rec_version = began

    def after_timers(self, began: int | None, fired: int) -> None:
        """After a ``run_due`` pass that fired ``fired`` timers: the next may skip until the earliest
        pending timer's ``due_at`` (none pending: only the safety net)."""
        self._tim_version = None
        self._tim_at = self._mono()
        if began is None or fired:
            return
        ok, due = self._one("SELECT MIN(due_at) FROM loop_timers WHERE state = 'pending'")
        if not ok:
            return
        self._tim_until = math.inf if due is None else float(due)
        self._tim_version = began

    def forget(self) -> None:
        """The next tick runs both passes (a pass failed)."""
        self._rec_version = self._tim_version = None

    def close(self) -> None:
        """Close the connection once no thread is inside it; later reads answer "run the pass"."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


def gate_for(db: object) -> LoopIdleGate | None:
    """The gate for an embedded database file, or None (PostgreSQL, in-memory, a URI path)."""
    if not getattr(db, "is_sqlite", False):
        return None
    engine = getattr(db, "engine", None)
    path = engine.url.database if engine is not None else None
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    try:
        return LoopIdleGate(path)
    except sqlite3.Error:
        return None
