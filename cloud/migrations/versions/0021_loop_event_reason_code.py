"""loop_event_reason_code: timeline entries carry a stable reason code and its parameters

``loop_incident_events.reason_code`` (``grouped``, ``escalated``, ``dispatch_nearest``, ... see
``alerts.loop.reasons``) and ``reason_params`` (JSON) say why the loop did something; the console and the
API put words on them in the reader's language (Chinese first). ``reason`` keeps its English sentence;
older rows have no code and are mapped from that sentence when read (docs/loop.md, "Timeline reasons").

Revision ID: 0021_loop_event_reason_code
Revises: 0020_rate_limit_buckets
Create Date: 2026-11-27 01:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021_loop_event_reason_code"
down_revision = "0020_rate_limit_buckets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loop_incident_events") as batch:
        batch.add_column(sa.Column("reason_code", sa.String(length=48), nullable=False, server_default=""))
        batch.add_column(sa.Column("reason_params", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("loop_incident_events") as batch:
        batch.drop_column("reason_params")
        batch.drop_column("reason_code")
