"""Engine and session handling for SQLite (embedded) and PostgreSQL (production).

The service is asyncio, SQLAlchemy sessions here are synchronous: every database call runs in a worker
thread (``asyncio.to_thread``) so the event loop never blocks on I/O. That keeps one code path for both
databases (psycopg 3 and sqlite3) and lets the same functions serve the CLI.

SQLite allows one writer at a time. Rather than let concurrent writers fail with ``database is locked``
halfway through a transaction, :meth:`Database.write` serialises writers of this process with a lock
(the embedded deployment is one process by design); WAL mode keeps readers concurrent with the writer.
On PostgreSQL writers run in parallel and rows that are read-modified-written are locked with
``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import BadRequestError, ConfigError, ConflictError, StorageError


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` as psycopg 3 URLs."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Database:
    """One engine, a session factory, and the write discipline described above."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalise_url(url)
        try:
            parsed = make_url(self.url)
        except Exception as exc:  # sqlalchemy raises ArgumentError, but any parse failure is a config error
            raise ConfigError(f"invalid database URL: {exc}") from exc
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                private_sqlite_file(Path(parsed.database))
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=10)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock() if self.is_sqlite else None
        # helpers holding connections of their own to this database (cloud.limits.SharedBuckets): closed
        # with it, so an app's shutdown leaves no connection open until a garbage collection finds it
        self._dependents: weakref.WeakSet[Any] = weakref.WeakSet()

    @contextmanager
    def read(self) -> Iterator[Session]:
        try:
            with self._sessions() as session:
                yield session
        except SQLAlchemyError as exc:
            raise StorageError(f"database read failed: {type(exc).__name__}") from exc

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session inside a transaction; commits on success, rolls back on any exception.

        Database errors are translated here, once: a unique-key violation becomes
        :class:`ConflictError`, a value the database cannot store (e.g. a NUL character on PostgreSQL)
        :class:`BadRequestError`, anything else :class:`StorageError`.
        """
        try:
            with self._write_lock or nullcontext(), self._sessions() as session, session.begin():
                yield session
        except IntegrityError as exc:
            raise ConflictError(f"conflicting write: {_first_line(exc)}") from exc
        except DataError as exc:
            raise BadRequestError(f"value cannot be stored: {_first_line(exc)}") from exc
        except SQLAlchemyError as exc:
            raise StorageError(f"database write failed: {type(exc).__name__}") from exc

    def for_update(self) -> bool:
        """Whether to add ``FOR UPDATE`` to read-modify-write selects (PostgreSQL only)."""
        return not self.is_sqlite

    def closes_with(self, dependent: Any) -> None:
        """Close ``dependent`` (anything with ``close()``) when this database is closed; held weakly."""
        self._dependents.add(dependent)

    def close(self) -> None:
        for dependent in list(self._dependents):
            dependent.close()
        self.engine.dispose()


def _first_line(exc: SQLAlchemyError) -> str:
    """The driver's message without SQL or parameters (which may hold personal data)."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else type(exc).__name__
    return text.splitlines()[0][:200] if text else type(exc).__name__


def private_sqlite_file(path: Path) -> None:
    """Create a SQLite database file readable by its owner only (0600, new directories 0700).

    SQLite gives its ``-wal`` and ``-shm`` files the database file's mode. An existing file keeps its
    mode except that access for others is removed (personal data must never be world-readable).
    """
    if str(path).startswith("file:"):  # a URI filename: SQLite decides
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o007:
            with suppress(PermissionError):  # not our file: SQLite still opens it as before
                os.chmod(path, mode & 0o770)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the gateway's ack. With WAL, NORMAL survives kill -9 but a power cut
    # or kernel crash may lose the last commits: acknowledged alert steps, batch ids, device bookkeeping.
    # The cost is one more fsync per write transaction (bench/bench_ingest.py measures it).
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
