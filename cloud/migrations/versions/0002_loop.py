"""the closed loop: incidents, alert links, timeline, timers, notification intents, documents (issue 8)

Revision ID: 0002_loop
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_loop"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loop_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("loop_audit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_loop_audit_at"), ["at"], unique=False)

    op.create_table(
        "loop_documents",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "loop_incidents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("group_key", sa.String(length=300), nullable=False),
        sa.Column("group_rule", sa.String(length=64), nullable=False),
        sa.Column("is_open", sa.Boolean(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("grade", sa.Integer(), nullable=False),
        sa.Column("urgency", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("grid", sa.String(length=64), nullable=False),
        sa.Column("street", sa.String(length=64), nullable=False),
        sa.Column("community", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=256), nullable=False),
        sa.Column("on_road", sa.Boolean(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=True),
        sa.Column("lon", sa.Float(), nullable=True),
        sa.Column("reporter", sa.String(length=64), nullable=False),
        sa.Column("reporter_contact_enc", sa.Text(), nullable=True),
        sa.Column("route_rule", sa.String(length=300), nullable=False),
        sa.Column("department", sa.String(length=32), nullable=False),
        sa.Column("receivers", sa.JSON(), nullable=False),
        sa.Column("assignee", sa.String(length=64), nullable=True),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("event_start", sa.Float(), nullable=True),
        sa.Column("alert_time", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("stage_entered_at", sa.Float(), nullable=False),
        sa.Column("registered_at", sa.Float(), nullable=True),
        sa.Column("dispatched_at", sa.Float(), nullable=True),
        sa.Column("first_notified_at", sa.Float(), nullable=True),
        sa.Column("accepted_at", sa.Float(), nullable=True),
        sa.Column("arrived_at", sa.Float(), nullable=True),
        sa.Column("handled_at", sa.Float(), nullable=True),
        sa.Column("verified_at", sa.Float(), nullable=True),
        sa.Column("closed_at", sa.Float(), nullable=True),
        sa.Column("rated_at", sa.Float(), nullable=True),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("parked_at", sa.Float(), nullable=True),
        sa.Column("paused_s", sa.Float(), nullable=False),
        sa.Column("reopen_count", sa.Integer(), nullable=False),
        sa.Column("rework", sa.Boolean(), nullable=False),
        sa.Column("returned_reasons", sa.JSON(), nullable=False),
        sa.Column("last_action", sa.String(length=16), nullable=True),
        sa.Column("last_actor", sa.String(length=64), nullable=False),
        sa.Column("stage_deadline", sa.Float(), nullable=True),
        sa.Column("case_deadline", sa.Float(), nullable=True),
        sa.Column("overdue", sa.JSON(), nullable=False),
        sa.Column("alert_count", sa.Integer(), nullable=False),
        sa.Column("alerts_open", sa.Integer(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=True),
        sa.Column("snapshot_version", sa.Integer(), nullable=False),
        sa.Column("esc_step", sa.Integer(), nullable=False),
        sa.Column("esc_loop", sa.Integer(), nullable=False),
        sa.Column("esc_done", sa.Boolean(), nullable=False),
        sa.Column("esc_reason", sa.String(length=32), nullable=False),
        sa.Column("confirmed", sa.Boolean(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("loop_incidents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_loop_incidents_assignee"), ["assignee"], unique=False)
        batch_op.create_index(batch_op.f("ix_loop_incidents_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_loop_incidents_department"), ["department"], unique=False)
        batch_op.create_index(batch_op.f("ix_loop_incidents_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_loop_incidents_is_open"), ["is_open"], unique=False)
        batch_op.create_index("ix_loop_incidents_open_key", ["group_key", "is_open"], unique=False)
        batch_op.create_index(batch_op.f("ix_loop_incidents_stage"), ["stage"], unique=False)
        batch_op.create_index(batch_op.f("ix_loop_incidents_updated_at"), ["updated_at"], unique=False)

    op.create_table(
        "loop_silences",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("matchers", sa.JSON(), nullable=False),
        sa.Column("starts_at", sa.Float(), nullable=False),
        sa.Column("ends_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expired_early_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("loop_silences", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_loop_silences_ends_at"), ["ends_at"], unique=False)

    op.create_table(
        "loop_alert_links",
        sa.Column("alert_id", sa.String(length=160), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("group_key", sa.String(length=300), nullable=False),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["loop_incidents.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("alert_id"),
    )
    with op.batch_alter_table("loop_alert_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_loop_alert_links_event"), ["event"], unique=False)
        batch_op.create_index(batch_op.f("ix_loop_alert_links_active"), ["active"], unique=False)
        batch_op.create_index(batch_op.f("ix_loop_alert_links_first_seen"), ["first_seen"], unique=False)
        batch_op.create_index(batch_op.f("ix_loop_alert_links_group_key"), ["group_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_loop_alert_links_incident_id"), ["incident_id"], unique=False)

    op.create_table(
        "loop_incident_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("from_stage", sa.String(length=16), nullable=False),
        sa.Column("to_stage", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["incident_id"], ["loop_incidents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("loop_incident_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_loop_incident_events_incident_id"), ["incident_id"], unique=False
        )

    op.create_table(
        "loop_photos",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("content_type", sa.String(length=32), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_by", sa.String(length=64), nullable=False),
        sa.Column("uploaded_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["loop_incidents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("incident_id", "sha256", name="uq_loop_photo"),
    )
    with op.batch_alter_table("loop_photos", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_loop_photos_incident_id"), ["incident_id"], unique=False)

    op.create_table(
        "loop_timers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("loop", sa.Integer(), nullable=False),
        sa.Column("snapshot_version", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("fired_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["incident_id"], ["loop_incidents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("loop_timers", schema=None) as batch_op:
        batch_op.create_index("ix_loop_timers_due", ["state", "due_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_loop_timers_incident_id"), ["incident_id"], unique=False)

    op.create_table(
        "notification_intents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("target_kind", sa.String(length=8), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column("channel_hint", sa.String(length=64), nullable=False),
        sa.Column("department", sa.String(length=32), nullable=False),
        sa.Column("summary", sa.String(length=300), nullable=False),
        sa.Column("dedup_key", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["loop_incidents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedup_key"),
    )
    with op.batch_alter_table("notification_intents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notification_intents_incident_id"), ["incident_id"], unique=False
        )
        batch_op.create_index("ix_notification_intents_state", ["state", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("notification_intents", schema=None) as batch_op:
        batch_op.drop_index("ix_notification_intents_state")
        batch_op.drop_index(batch_op.f("ix_notification_intents_incident_id"))

    op.drop_table("notification_intents")
    with op.batch_alter_table("loop_timers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loop_timers_incident_id"))
        batch_op.drop_index("ix_loop_timers_due")

    op.drop_table("loop_timers")
    with op.batch_alter_table("loop_photos", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loop_photos_incident_id"))

    op.drop_table("loop_photos")
    with op.batch_alter_table("loop_incident_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loop_incident_events_incident_id"))

    op.drop_table("loop_incident_events")
    with op.batch_alter_table("loop_alert_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loop_alert_links_event"))
        batch_op.drop_index(batch_op.f("ix_loop_alert_links_incident_id"))
        batch_op.drop_index(batch_op.f("ix_loop_alert_links_group_key"))
        batch_op.drop_index(batch_op.f("ix_loop_alert_links_first_seen"))
        batch_op.drop_index(batch_op.f("ix_loop_alert_links_active"))

    op.drop_table("loop_alert_links")
    with op.batch_alter_table("loop_silences", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loop_silences_ends_at"))

    op.drop_table("loop_silences")
    with op.batch_alter_table("loop_incidents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loop_incidents_updated_at"))
        batch_op.drop_index(batch_op.f("ix_loop_incidents_stage"))
        batch_op.drop_index("ix_loop_incidents_open_key")
        batch_op.drop_index(batch_op.f("ix_loop_incidents_is_open"))
        batch_op.drop_index(batch_op.f("ix_loop_incidents_device_id"))
        batch_op.drop_index(batch_op.f("ix_loop_incidents_department"))
        batch_op.drop_index(batch_op.f("ix_loop_incidents_created_at"))
        batch_op.drop_index(batch_op.f("ix_loop_incidents_assignee"))

    op.drop_table("loop_incidents")
    op.drop_table("loop_documents")
    with op.batch_alter_table("loop_audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loop_audit_at"))

    op.drop_table("loop_audit")
