"""incident_outcome: the responder's verdict on a handled case (real event / nuisance / false alarm)

``loop_incidents.outcome`` is ``real`` (真实事件), ``nuisance`` (扰动：烹饪、蒸汽等) or
``false_alarm`` (误报), set by the ``handle`` action (a responder's resolved link, the console's action);
NULL until then or when the responder did not say. The KPIs count false-alarm and nuisance rates from
it (docs/loop.md, "KPIs").

Revision ID: 0019_incident_outcome
Revises: 0018_notify_inapp_incident
Create Date: 2026-11-27 00:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_incident_outcome"
down_revision = "0018_notify_inapp_incident"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loop_incidents") as batch:
        batch.add_column(sa.Column("outcome", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("loop_incidents") as batch:
        batch.drop_column("outcome")
