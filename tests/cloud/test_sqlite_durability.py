"""The embedded operational database commits durably: an acknowledged alert step survives a power cut,
not only a ``kill -9`` (``PRAGMA synchronous=FULL`` with WAL; NORMAL may lose the last commits)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from cloud.db import Database


def test_every_connection_commits_with_synchronous_full(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/vigil.db")
    try:
        for session in (db.read, db.write):
            with session() as s:
                assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                assert s.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    finally:
        db.close()
