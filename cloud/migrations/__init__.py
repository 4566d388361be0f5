"""Alembic migrations of the cloud database; run with `vigil cloud migrate` (cloud.db.migrate)."""
