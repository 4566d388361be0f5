"""Tables of the closed loop (migration ``0002_loop``), on the shared declarative ``Base``.

- ``loop_incidents``: one row per incident = one work order (its stage, owner, clocks, escalation state);
  ``row_version`` increases on every change (optimistic check for API callers: ``If-Match``-style).
- ``loop_alert_links``: every alert the loop has seen and what it decided (incident, silenced, inhibited,
  pending, ignored), with the last phase handled: the reconciler finds committed alerts the sink never saw.
- ``loop_incident_events``: the append-only timeline and audit trail (who, when, why, through which
  channel); ``idempotency_key`` makes a retried action a no-op.
- ``loop_timers``: escalation and SLA timers with the escalation snapshot version (fencing).
- ``notification_intents``: the outbox the notifier consumes (:class:`alerts.loop.NotificationIntent`).
- ``loop_documents``: routing tree, roster, escalation policies, grouping, SLA as versioned JSON.
- ``loop_silences``, ``loop_photos``, ``loop_audit``.

All times are UTC epoch seconds.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from cloud.db.models import Base

#: the responder's verdict on a handled case: value -> (中文, English) label
OUTCOMES: dict[str, tuple[str, str]] = {
    "real": ("真实事件", "real event"),
    "nuisance": ("扰动（烹饪、蒸汽等）", "nuisance (cooking, steam, ...)"),
    "false_alarm": ("误报", "false alarm"),
}


class Incident(Base):
    __tablename__ = "loop_incidents"
    __table_args__ = (Index("ix_loop_incidents_open_key", "group_key", "is_open"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_key: Mapped[str] = mapped_column(String(300))
    group_rule: Mapped[str] = mapped_column(String(64))
    is_open: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    stage: Mapped[str] = mapped_column(String(16), index=True)
    source: Mapped[str] = mapped_column(String(16))  # gateway / cloud / manual
    kind: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(64))
    grade: Mapped[int] = mapped_column(Integer)
    urgency: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(String(2000), default="")
    device_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    gateway_id: Mapped[str] = mapped_column(String(64), default="")
    grid: Mapped[str] = mapped_column(String(64), default="")
    street: Mapped[str] = mapped_column(String(64), default="")
    community: Mapped[str] = mapped_column(String(64), default="")
    address: Mapped[str] = mapped_column(String(256), default="")
    on_road: Mapped[bool] = mapped_column(Boolean, default=False)
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    reporter: Mapped[str] = mapped_column(String(64), default="")  # manual reports: who reported
    reporter_contact_enc: Mapped[str | None] = mapped_column(Text, nullable=True)  # sealed (SecretBox)
    # routing decision
    route_rule: Mapped[str] = mapped_column(String(300), default="")
    department: Mapped[str] = mapped_column(String(32), default="", index=True)
    receivers: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # work order
    assignee: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event_start: Mapped[float | None] = mapped_column(Float, nullable=True)
    alert_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    stage_entered_at: Mapped[float] = mapped_column(Float)
    registered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    dispatched_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    first_notified_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    accepted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    arrived_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    handled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    verified_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    rated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the responder's verdict when handling (OUTCOMES; migration 0019): NULL until said
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    parked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    paused_s: Mapped[float] = mapped_column(Float, default=0.0)
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    rework: Mapped[bool] = mapped_column(Boolean, default=False)
    returned_reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    last_action: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_actor: Mapped[str] = mapped_column(String(64), default="")
    stage_deadline: Mapped[float | None] = mapped_column(Float, nullable=True)
    case_deadline: Mapped[float | None] = mapped_column(Float, nullable=True)
    overdue: Mapped[list[str]] = mapped_column(JSON, default=list)
    # alerts
    alert_count: Mapped[int] = mapped_column(Integer, default=0)
    alerts_open: Mapped[int] = mapped_column(Integer, default=0)
    # escalation (the frozen snapshot and where it is)
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    snapshot_version: Mapped[int] = mapped_column(Integer, default=0)
    esc_step: Mapped[int] = mapped_column(Integer, default=0)
    esc_loop: Mapped[int] = mapped_column(Integer, default=0)
    esc_done: Mapped[bool] = mapped_column(Boolean, default=False)
    esc_reason: Mapped[str] = mapped_column(String(32), default="")
    confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    row_version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[float] = mapped_column(Float, index=True)


class AlertLink(Base):
    __tablename__ = "loop_alert_links"

    alert_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    incident_id: Mapped[int | None] = mapped_column(
        ForeignKey("loop_incidents.id", ondelete="SET NULL"), nullable=True, index=True
    )
    verdict: Mapped[str] = mapped_column(String(16))
    event: Mapped[str] = mapped_column(String(64), index=True)
    group_key: Mapped[str] = mapped_column(String(300), index=True)
    reason: Mapped[str] = mapped_column(String(300), default="")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    phase: Mapped[str] = mapped_column(String(16))  # the last phase the loop handled
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    first_seen: Mapped[float] = mapped_column(Float, index=True)
    updated_at: Mapped[float] = mapped_column(Float)


class IncidentEvent(Base):
    __tablename__ = "loop_incident_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("loop_incidents.id", ondelete="CASCADE"), index=True)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))  # api, link, sms, system, telemetry ...
    action: Mapped[str] = mapped_column(String(32))
    from_stage: Mapped[str] = mapped_column(String(16), default="")
    to_stage: Mapped[str] = mapped_column(String(16), default="")
    reason: Mapped[str] = mapped_column(String(1000), default="")
    #: why, as a stable code and its parameters (alerts.loop.reasons; 0020): the words are put on it when
    #: read, in the reader's language. "" for a person's own reason and for rows older than the codes
    reason_code: Mapped[str] = mapped_column(String(48), default="", server_default="")
    reason_params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True, unique=True)


class Timer(Base):
    __tablename__ = "loop_timers"
    __table_args__ = (Index("ix_loop_timers_due", "state", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("loop_incidents.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))  # escalation / sla
    step: Mapped[int] = mapped_column(Integer, default=0)
    loop: Mapped[int] = mapped_column(Integer, default=0)
    snapshot_version: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending / done / stale
    created_at: Mapped[float] = mapped_column(Float)
    fired_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class NotificationIntentRow(Base):
    """The outbox of :class:`alerts.loop.NotificationIntent` (see docs/loop.md for the consumer contract)."""

    __tablename__ = "notification_intents"
    __table_args__ = (Index("ix_notification_intents_state", "state", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("loop_incidents.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    target_kind: Mapped[str] = mapped_column(String(8))  # user / role / group
    target_id: Mapped[str] = mapped_column(String(64))
    channel_hint: Mapped[str] = mapped_column(String(64), default="")
    department: Mapped[str] = mapped_column(String(32), default="")
    summary: Mapped[str] = mapped_column(String(300), default="")
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    updated_at: Mapped[float] = mapped_column(Float)


class Document(Base):
    __tablename__ = "loop_documents"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(64))


class SilenceRow(Base):
    __tablename__ = "loop_silences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    matchers: Mapped[dict[str, Any]] = mapped_column(JSON)
    starts_at: Mapped[float] = mapped_column(Float)
    ends_at: Mapped[float] = mapped_column(Float, index=True)
    created_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[float] = mapped_column(Float)
    expired_early_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Photo(Base):
    __tablename__ = "loop_photos"
    __table_args__ = (UniqueConstraint("incident_id", "sha256", name="uq_loop_photo"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("loop_incidents.id", ondelete="CASCADE"), index=True)
    content_type: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_by: Mapped[str] = mapped_column(String(64))
    uploaded_at: Mapped[float] = mapped_column(Float)


class AuditEntry(Base):
    """Every administrative action (configuration, silences, manual registration...), append-only."""

    __tablename__ = "loop_audit"
    __table_args__ = (
        # the shared login back-off counts failures per username (actor) and per address (target)
        Index("ix_loop_audit_action_actor_at", "action", "actor", "at"),
        Index("ix_loop_audit_action_target_at", "action", "target", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
