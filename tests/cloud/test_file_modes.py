"""Databases and key files are never world-readable (issue 11): created 0600 in 0700 directories."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import sqlalchemy as sa

from cloud.crypto import load_or_create_key
from cloud.db import Database
from cloud.db.migrate import upgrade_head


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_new_sqlite_database_and_its_directory_are_private(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "vigil.db"
    upgrade_head(f"sqlite:///{path}")
    db = Database(f"sqlite:///{path}")
    with db.write() as s:
        s.execute(sa.text("SELECT 1"))
    db.engine.dispose()
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    for extra in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        if extra.exists():
            assert _mode(extra) & 0o077 == 0


def test_existing_world_readable_database_loses_others_access(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    path.touch()
    os.chmod(path, 0o644)
    Database(f"sqlite:///{path}").engine.dispose()
    assert _mode(path) == 0o640


def test_key_file_is_created_private(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "secret.key"
    load_or_create_key(key)
    assert _mode(key) == 0o600 and _mode(key.parent) == 0o700
