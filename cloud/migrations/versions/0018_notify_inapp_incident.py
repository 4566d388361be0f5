"""notify_inapp_incident: index the in-app notices by incident (the console's incident page lists them)

``GET /api/v1/notify/inapp?incident_id=`` (docs/notifications.md, "In-app list") filters the caller's
notices and the operators' queue by incident on every incident page view. Without an index the
operators' queue (every failure, every desk or call task with nobody on duty) is scanned: 12.5 ms of CPU
per request at 100,000 operator-wide rows on SQLite (measured once, load average ~16).

Revision ID: 0018_notify_inapp_incident
Revises: 0017_registry_generation
Create Date: 2026-11-26 23:05:00
"""

from __future__ import annotations

from alembic import op

revision = "0018_notify_inapp_incident"
down_revision = "0017_registry_generation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_notify_inapp_incident", "notify_inapp", ["incident_id"])


def downgrade() -> None:
    op.drop_index("ix_notify_inapp_incident", table_name="notify_inapp")
