"""rate_limit_buckets: rate limits shared by every ``vigil cloud`` worker on PostgreSQL

One row per limited key (``<limit>:<key>``: a responder link's position reads, a client address's
certificate-refusal reports, ...): the token bucket's level, when it was computed, when it is full again
(rows past that are swept) and whether the last take was admitted. Read and written by
``cloud.limits.SharedBuckets`` in one upsert per limited request. UNLOGGED on PostgreSQL: no WAL per
request; after a database crash the table is empty and every key starts with a full bucket once. Created on
SQLite too (one schema), where nothing uses it: the embedded cloud is one process and limits in memory.
See docs/security.md, "Limits shared by the workers".

Revision ID: 0020_rate_limit_buckets
Revises: 0019_incident_outcome
Create Date: 2026-11-27 01:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_rate_limit_buckets"
down_revision = "0019_incident_outcome"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_buckets",
        sa.Column("key", sa.String(length=200), primary_key=True),
        sa.Column("level", sa.Float(), nullable=False),
        sa.Column("t", sa.Float(), nullable=False),
        sa.Column("full_at", sa.Float(), nullable=False),
        sa.Column("admitted", sa.Boolean(), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE rate_limit_buckets SET UNLOGGED")


def downgrade() -> None:
    op.drop_table("rate_limit_buckets")
