"""Tables of the notification feature (migration ``0003_notify``), on the shared declarative ``Base``.

Times are UTC epoch seconds like every other table. Personal data: phone numbers and e-mail addresses
are stored only sealed (:class:`cloud.crypto.SecretBox`), plus a keyed hash of the phone number (a blind
index) so an inbound SMS can find its sender without decrypting every row. Nothing personal goes into a
delivery row, an attempt row or a link: those hold user ids and reasons only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloud.db.models import Base


class Contact(Base):
    """How to reach one platform user: WeCom / DingTalk accounts, phone, e-mail, duty roles."""

    __tablename__ = "notify_contacts"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(64), default="")
    #: the roster responder id (alerts.loop.rosters) this user answers for, if any
    responder_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    wecom_userid: Mapped[str] = mapped_column(String(64), default="")
    dingtalk_userid: Mapped[str] = mapped_column(String(64), default="")
    private_enc: Mapped[str | None] = mapped_column(Text, nullable=True)  # {"phone": ..., "email": ...}
    phone_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    lang: Mapped[str] = mapped_column(String(2), default="zh")
    channels: Mapped[list[str]] = mapped_column(JSON, default=list)  # preferred order; [] = defaults
    duty_roles: Mapped[list[str]] = mapped_column(JSON, default=list)  # grid_worker, municipal, doctor ...
    updated_at: Mapped[float] = mapped_column(Float)


class Group(Base):
    __tablename__ = "notify_groups"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(128), default="")
    robot: Mapped[str] = mapped_column(String(64), default="")  # a robot name from the notify config


class GroupMember(Base):
    __tablename__ = "notify_group_members"

    group: Mapped[str] = mapped_column(ForeignKey("notify_groups.name", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class Delivery(Base):
    """One notification to one recipient over one channel: the outbox row and the dedup record.

    ``dedup_key`` = ``{incident}/{step}/{recipient}/{channel}``: a second enqueue of the same key (another
    worker, a replayed escalation step) finds the row and adds nothing. ``status``: ``pending`` ->
    ``sending`` (claimed, ``lease_until``) -> ``delivered`` | ``pending`` (retry at ``next_at``) |
    ``failed`` (gave up; the next channel in ``fallback`` gets its own row) | ``cancelled``.
    """

    __tablename__ = "notify_deliveries"
    __table_args__ = (
        UniqueConstraint("dedup_key", name="uq_notify_delivery"),
        Index("ix_notify_due", "status", "next_at"),
        Index("ix_notify_incident", "incident_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(255))
    intent_key: Mapped[str] = mapped_column(String(255), default="")  # the loop's intent, if any
    incident_id: Mapped[str] = mapped_column(String(128))
    step: Mapped[int] = mapped_column(Integer, default=0)
    recipient: Mapped[str] = mapped_column(String(96))  # "user:<id>", "group:<name>", "webhook:<name>"
    channel: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(96), default="")  # robot/webhook name (rate-limit key)
    fallback: Mapped[list[str]] = mapped_column(JSON, default=list)
    notice: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    reply_ref: Mapped[str] = mapped_column(String(8), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[float] = mapped_column(Float)
    lease_owner: Mapped[str] = mapped_column(String(64), default="")
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)
    last_error: Mapped[str] = mapped_column(String(300), default="")
    provider_id: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Attempt(Base):
    """Every send attempt, written *before* the send (``in_flight``) and completed after it."""

    __tablename__ = "notify_attempts"
    __table_args__ = (Index("ix_notify_attempts_target", "target", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("notify_deliveries.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(96), default="")
    worker: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), default="in_flight")  # delivered/retry/give_up/lost
    detail: Mapped[str] = mapped_column(String(300), default="")


class InApp(Base):
    """An in-app notification; ``user_id`` NULL = for every operator (delivery failures land here)."""

    __tablename__ = "notify_inapp"
    __table_args__ = (
        Index("ix_notify_inapp_user", "user_id", "created_at"),
        Index("ix_notify_inapp_incident", "incident_id"),  # the incident page's list (0018)
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)
    incident_id: Mapped[str] = mapped_column(String(128), default="")
    kind: Mapped[str] = mapped_column(String(16), default="notice")  # notice | failure
    notice: Mapped[dict[str, Any]] = mapped_column(JSON)
    dedup_key: Mapped[str | None] = mapped_column(String(255), nullable=True, unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    read_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class LinkUse(Base):
    """A single-use link that was used (its nonce), so a second use changes nothing."""

    __tablename__ = "notify_link_uses"

    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))
    incident_id: Mapped[str] = mapped_column(String(128))
    actor: Mapped[str] = mapped_column(String(96))
    used_at: Mapped[float] = mapped_column(Float)


class ResponderAction(Base):
    """What a responder did from a message (link, SMS reply, action-card button): the audit trail."""

    __tablename__ = "notify_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(96))
    via: Mapped[str] = mapped_column(String(16))  # link | sms
    note: Mapped[str] = mapped_column(String(1000), default="")
    photo_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    at: Mapped[float] = mapped_column(Float)


class Photo(Base):
    __tablename__ = "notify_photos"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    incident_id: Mapped[str] = mapped_column(String(128), default="", index=True)
    content_type: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class Rating(Base):
    """A resident's rating of how their case was handled: one per case (the Nanjing rule)."""

    __tablename__ = "notify_ratings"

    incident_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    score: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(String(1000), default="")
    department: Mapped[str] = mapped_column(String(64), default="", index=True)
    created_at: Mapped[float] = mapped_column(Float)


class Report(Base):
    """A resident's report of a problem, with its case number and the promised response time."""

    __tablename__ = "notify_reports"

    case_number: Mapped[str] = mapped_column(String(32), primary_key=True)
    category: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(2000))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    photo_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    incident_id: Mapped[str] = mapped_column(String(128), default="")
    client_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    promised_by: Mapped[float] = mapped_column(Float)
    first_response_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reopened: Mapped[int] = mapped_column(Integer, default=0)


class InboundSms(Base):
    """Every inbound SMS reply and what it did (``result``); the number only as its keyed hash."""

    __tablename__ = "notify_sms_inbound"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(16))
    phone_hash: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(String(160))
    received_at: Mapped[float] = mapped_column(Float)
    result: Mapped[str] = mapped_column(String(200))
