"""merge the 0014 / 0015 heads; index loop_audit for the shared login back-off's lookups

The login back-off (``cloud.auth.LoginThrottle``) counts ``auth.login_failed`` rows per username
(``actor``) and per client address (``target``) since the last ``auth.login``; without these indexes each
login scanned every audit row of the day (416 ms with 100,000 rows on SQLite under load).

Revision ID: 0016_audit_lookup
Revises: 0014_device_id_case, 0015_pii_at_rest
Create Date: 2026-11-26 14:50:00
"""

from __future__ import annotations

from alembic import op

revision = "0016_audit_lookup"
down_revision = ("0014_device_id_case", "0015_pii_at_rest")
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_loop_audit_action_actor_at", "loop_audit", ["action", "actor", "at"])
    op.create_index("ix_loop_audit_action_target_at", "loop_audit", ["action", "target", "at"])


def downgrade() -> None:
    op.drop_index("ix_loop_audit_action_target_at", table_name="loop_audit")
    op.drop_index("ix_loop_audit_action_actor_at", table_name="loop_audit")
