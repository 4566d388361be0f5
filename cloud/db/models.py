"""Operational tables (SQLAlchemy 2 declarative), identical on SQLite and PostgreSQL.

Telemetry is *not* here: it lives in the time-series store (``cloud.timeseries``). These tables hold the
registry, credentials, ingest bookkeeping and alerts. All times are UTC epoch seconds (``Float``), the
project-wide convention, so SQLite and PostgreSQL store and compare them identically.

Personal data (wearer name and phone, emergency contact) and LoRa session keys are stored only as a
Fernet token in ``devices.private_enc`` (see :mod:`cloud.crypto`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiToken(Base):
    """A user's bearer token, stored as SHA-256 of a 256-bit random token (see docs/cloud.md)."""

    __tablename__ = "api_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Gateway(Base):
    __tablename__ = "gateways"

    gateway_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prev_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    prev_token_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_status: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    batches_total: Mapped[int] = mapped_column(BigInteger, default=0)


class Device(Base):
    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    address: Mapped[str] = mapped_column(String(256), default="")
    grid: Mapped[str] = mapped_column(String(64), default="")
    community: Mapped[str] = mapped_column(String(64), default="")
    street: Mapped[str] = mapped_column(String(64), default="")
    on_road: Mapped[bool] = mapped_column(Boolean, default=False)
    gateway_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    profile: Mapped[str] = mapped_column(String(64), default="default")
    interval_s: Mapped[float] = mapped_column(Float)
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dev_addr: Mapped[str] = mapped_column(String(16), default="")
    private_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    # ingest bookkeeping
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_received_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_battery_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    seq_gaps_total: Mapped[int] = mapped_column(BigInteger, default=0)
    readings_total: Mapped[int] = mapped_column(BigInteger, default=0)


class RegistryGeneration(Base):
    """One row: a counter that every change of a device's identity, gateway or kind moves on.

    Bumped by database triggers (migration ``0017_registry_generation``) in the transaction that inserts,
    deletes or re-assigns a device, whoever makes the change (the API, the CLI, a migration, SQL by hand).
    Ingest workers cache the devices' ``(gateway, kind)`` and read this one row per batch: an unchanged
    generation means the cache is current, in every worker process (:class:`cloud.screening.DeviceCache`).
    """

    __tablename__ = "registry_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(BigInteger)


class IngestedBatch(Base):
    """One row per accepted batch: the idempotency record (a retry finds it and gets ``duplicate=true``)."""

    __tablename__ = "ingested_batches"
    __table_args__ = (UniqueConstraint("gateway_id", "batch_id", name="uq_batch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gateway_id: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float, index=True)
    sent_at: Mapped[float] = mapped_column(Float)
    telemetry_stored: Mapped[int] = mapped_column(Integer, default=0)
    telemetry_duplicates: Mapped[int] = mapped_column(Integer, default=0)
    alerts_stored: Mapped[int] = mapped_column(Integer, default=0)


class Alert(Base):
    """Current state of one alert episode, keyed by the stable ``alert_id``."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_updated", "updated_time"),)

    alert_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(32), index=True)
    severity: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16), index=True)
    episode_ms: Mapped[int] = mapped_column(BigInteger)
    raised_time: Mapped[float] = mapped_column(Float)
    raised_frame_time: Mapped[float] = mapped_column(Float)
    updated_time: Mapped[float] = mapped_column(Float)
    frame_time: Mapped[float] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str] = mapped_column(String(500), default="")
    source: Mapped[str] = mapped_column(String(64))  # gateway id, or "cloud" for connectivity alerts
    received_at: Mapped[float] = mapped_column(Float)


class AlertStep(Base):
    """Every lifecycle step (raised / updated / cleared) of every alert, append-only."""

    __tablename__ = "alert_events"
    __table_args__ = (UniqueConstraint("alert_id", "phase", "time", name="uq_alert_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(String(160), index=True)
    device_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(32))
    severity: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16))
    episode_ms: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[float] = mapped_column(Float)
    frame_time: Mapped[float] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str] = mapped_column(String(500), default="")
    source: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float, index=True)
