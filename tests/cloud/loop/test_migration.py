"""Migration 0002_loop: a head of its own on 0001, reversible, and matching the loop's models."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from cloud.db import Base, upgrade_head
from cloud.db.migrate import alembic_config

LOOP_TABLES = {
    "loop_alert_links", "loop_audit", "loop_documents", "loop_incident_events", "loop_incidents",
    "loop_photos", "loop_silences", "loop_timers", "notification_intents",
}  # fmt: skip


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_loop_migration_is_reversible_and_matches_its_models(db_url: str) -> None:
    upgrade_head(db_url)
    assert _tables(db_url) >= LOOP_TABLES
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    ours = [d for d in diff if any(t in repr(d) for t in LOOP_TABLES)]
    assert ours == []
    command.downgrade(alembic_config(db_url), "0002_loop@0001")
    assert not LOOP_TABLES & _tables(db_url)
    upgrade_head(db_url)
    assert _tables(db_url) >= LOOP_TABLES
