"""job leases: one row per periodic job (holder, fencing token, expiry, durable schedule)

Revision ID: 0012_job_leases
Revises: 0001
Create Date: 2026-11-26 11:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_job_leases"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=160), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("done_tick", sa.BigInteger(), nullable=False),
        sa.Column("next_due", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
