"""Leases with fencing tokens: which process runs a periodic job, and proof that it still does.

A lease is one row per job name in ``job_leases`` (PostgreSQL): ``holder``, a ``token`` that grows by one
at every change of holder, ``expires_at`` (the database server's clock, so hosts with skewed clocks agree),
and the job's durable schedule, ``done_tick`` (the last completed tick) and ``next_due``. A holder renews
its lease every third of the TTL; a process that dies stops renewing and, once the lease has expired,
another process acquires it with ``token + 1`` and finds the schedule where the dead one left it (no timer
is lost: a tick that was due and not completed is run by the new holder).

**Fencing.** A holder may be paused (GC, swap, a partitioned network) past its expiry without knowing.
:meth:`Lease.fence`, called inside the job's own database transaction, marks the tick done *only if the
token is still the current one* (``UPDATE .. WHERE token = :mine AND done_tick < :tick``) and otherwise
raises :class:`LeaseLost`, which rolls the job's writes back. On PostgreSQL the row lock taken by that
``UPDATE`` also keeps a new holder from acquiring until the transaction ends. A job whose writes go
through ``fence`` therefore takes effect exactly once per tick, even across a ``kill -9``.

:class:`LocalLease` is the in-process fallback for the embedded single-box deployment (SQLite, one
process by design): always granted to this process, the schedule kept in memory.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import BigInteger, Column, Float, String, Table, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cloud.db import Base, Database
from cloud.errors import CloudError, StorageError

#: the lease table (created by migration ``0012_job_leases``), on the models' metadata so the
#: migrations-match-the-models check covers it
job_leases = Table(
    "job_leases",
    Base.metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(160), nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("done_tick", BigInteger, nullable=False),
    Column("next_due", Float, nullable=True),
)


class LeaseLost(CloudError):
    """This process no longer holds the job's lease (another holder has a newer token)."""

    status_code = 409
    code = "lease_lost"


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease just acquired: the token to fence with and the job's durable schedule."""

    name: str
    token: int
    done_tick: int
    #: when tick ``done_tick + 1`` is due (the job's clock); ``None`` = never run, due now
    next_due: float | None


class Lease(Protocol):
    """What :class:`cloud.jobs.JobRunner` needs; blocking calls (the runner runs them in threads)."""

    holder: str

    def acquire(self, name: str, ttl_s: float) -> Grant | None:
        """Take the lease if it is free or expired; ``None`` if another holder has it."""
        ...

    def renew(self, tokens: Mapping[str, int], ttl_s: float) -> set[str]:
        """Extend the leases held with these tokens; returns the names still held."""
        ...

    def complete(self, name: str, token: int, tick: int, next_due: float) -> bool:
        """Record ``tick`` as done (if the job did not already, through ``fence``); False = lease lost."""
        ...

    def fence(self, session: Session, name: str, token: int, tick: int, next_due: float) -> None:
        """In the job's transaction: mark ``tick`` done if ``token`` is current, else :class:`LeaseLost`."""
        ...

    def release(self, name: str, token: int) -> None:
        """Give the lease up now (a clean stop), so a standby takes over without waiting for expiry."""
        ...


def holder_id(prefix: str = "") -> str:
    """``host:pid:random``: unique per process start, readable in the table."""
    base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return f"{prefix}{base}"[:160]


def open_lease(db: Database, *, holder: str | None = None) -> Lease:
    """The lease that fits the database: rows on PostgreSQL, in-process on the embedded SQLite."""
    if db.is_sqlite:
        return LocalLease(holder=holder)
    return SqlLease(db, holder=holder)


# --- PostgreSQL -----------------------------------------------------------------------------------------
_NOW = "EXTRACT(EPOCH FROM clock_timestamp())"
_ACQUIRE = text(
    f"""
    INSERT INTO job_leases (name, holder, token, expires_at, done_tick, next_due)
    VALUES (:name, :holder, 1, {_NOW} + :ttl, 0, NULL)
    ON CONFLICT (name) DO UPDATE
        SET holder = EXCLUDED.holder, token = job_leases.token + 1, expires_at = EXCLUDED.expires_at
        WHERE job_leases.expires_at < {_NOW}
    RETURNING token, done_tick, next_due
    """
)
_RENEW = text(
    f"UPDATE job_leases SET expires_at = {_NOW} + :ttl "
    "WHERE name = :name AND token = :token AND holder = :holder RETURNING name"
)
_MARK = text(
    "UPDATE job_leases SET done_tick = :tick, next_due = :next_due "
    "WHERE name = :name AND token = :token AND holder = :holder AND done_tick < :tick"
)
_CURRENT = text("SELECT token, holder, done_tick FROM job_leases WHERE name = :name")
_RELEASE = text(
    "UPDATE job_leases SET expires_at = 0 WHERE name = :name AND token = :token AND holder = :holder"
)


class SqlLease:
    """Lease rows in the operational PostgreSQL database (see the module docstring)."""

    def __init__(self, db: Database, *, holder: str | None = None) -> None:
        if db.is_sqlite:
            raise ValueError("SqlLease needs PostgreSQL; use LocalLease (open_lease) on SQLite")
        self.db = db
        self.holder = holder or holder_id()

    def acquire(self, name: str, ttl_s: float) -> Grant | None:
        with self.db.write() as s:
            row = s.execute(_ACQUIRE, {"name": name, "holder": self.holder, "ttl": ttl_s}).first()
        if row is None:
            return None
        return Grant(name, int(row.token), int(row.done_tick), _opt_float(row.next_due))

    def renew(self, tokens: Mapping[str, int], ttl_s: float) -> set[str]:
        held: set[str] = set()
        with self.db.write() as s:
            for name, token in tokens.items():
                p = {"name": name, "token": token, "holder": self.holder, "ttl": ttl_s}
                if s.execute(_RENEW, p).first() is not None:
                    held.add(name)
        return held

    def complete(self, name: str, token: int, tick: int, next_due: float) -> bool:
        with self.db.write() as s:
            p = {"name": name, "token": token, "holder": self.holder, "tick": tick, "next_due": next_due}
            if _rowcount(s.execute(_MARK, p)) == 1:
                return True
            row = s.execute(_CURRENT, {"name": name}).first()
        # already marked by the job's own fence in its transaction: still ours
        return row is not None and int(row.token) == token and row.holder == self.holder

    def fence(self, session: Session, name: str, token: int, tick: int, next_due: float) -> None:
        p = {"name": name, "token": token, "holder": self.holder, "tick": tick, "next_due": next_due}
        try:
            n = _rowcount(session.execute(_MARK, p))
        except SQLAlchemyError as exc:
            raise StorageError(f"lease fence failed: {type(exc).__name__}") from exc
        if n != 1:
            raise LeaseLost(f"job {name!r}: lease token {token} is no longer current (tick {tick})")

    def release(self, name: str, token: int) -> None:
        with self.db.write() as s:
            s.execute(_RELEASE, {"name": name, "token": token, "holder": self.holder})


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


# --- in-process ------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Row:
    holder: str
    token: int
    done_tick: int
    next_due: float | None
    held: bool


class LocalLease:
    """One process: the lease is always this process's; schedule in memory (lost at restart: a job
    then runs at start, which is what a restarted single box should do anyway)."""

    def __init__(self, *, holder: str | None = None) -> None:
        self.holder = holder or holder_id()
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()

    def acquire(self, name: str, ttl_s: float) -> Grant | None:
        with self._lock:
            row = self._rows.get(name)
            if row is None:
                row = self._rows[name] = _Row(self.holder, 0, 0, None, False)
            if row.held:
                return None
            row.held, row.token = True, row.token + 1
            return Grant(name, row.token, row.done_tick, row.next_due)

    def renew(self, tokens: Mapping[str, int], ttl_s: float) -> set[str]:
        with self._lock:
            return {n for n, t in tokens.items() if (r := self._rows.get(n)) and r.held and r.token == t}

    def _mark(self, name: str, token: int, tick: int, next_due: float) -> bool:
        row = self._rows.get(name)
        if row is None or not row.held or row.token != token:
            return False
        if row.done_tick < tick:
            row.done_tick, row.next_due = tick, next_due
        return True

    def complete(self, name: str, token: int, tick: int, next_due: float) -> bool:
        with self._lock:
            return self._mark(name, token, tick, next_due)

    def fence(self, session: Session, name: str, token: int, tick: int, next_due: float) -> None:
        with self._lock:
            if not self._mark(name, token, tick, next_due):
                raise LeaseLost(f"job {name!r}: lease token {token} is no longer current (tick {tick})")

    def release(self, name: str, token: int) -> None:
        with self._lock:
            row = self._rows.get(name)
            if row is not None and row.token == token:
                row.held = False


__all__ = [
    "Grant",
    "Lease",
    "LeaseLost",
    "LocalLease",
    "SqlLease",
    "holder_id",
    "job_leases",
    "open_lease",
]
