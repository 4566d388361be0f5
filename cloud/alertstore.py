"""Storing alert lifecycle steps and moving each alert's current state (shared by ingest and connectivity).

``alert_events`` is append-only, one row per step, de-duplicated on ``(alert_id, phase, time)`` so a
replayed step is never stored twice. ``alerts`` holds each episode's current state keyed by the stable
``alert_id``; it only moves forward in time (a late step is kept as a step but does not overwrite a newer
state), except that a ``cleared`` step always closes an open alert.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from alerts.contract import AlertEvent
from cloud.db import Alert, AlertStep
from firmware_bridge.kernel.events import AlertPhase

_CHUNK = 2000  # ids per IN (...) list: far below SQLite's and PostgreSQL's bound-parameter limits


def _v(x: object) -> str:
    """An enum's value or a plain string (gateway alerts carry ``kind="gateway"``, not a DeviceKind)."""
    return str(getattr(x, "value", x))


def store_alert_steps(
    s: Session, steps: Sequence[AlertEvent], *, source: str, received_at: float
) -> list[AlertEvent]:
    """Append new lifecycle steps and move each alert's current state; returns the steps that were new.

    Shared by the ingest path and the connectivity monitor. ``s`` is an open write session.
    """
    if not steps:
        return []
    alert_ids = sorted({a.alert_id for a in steps})
    existing: set[tuple[str, str, float]] = set()
    current: dict[str, Alert] = {}
    for i in range(0, len(alert_ids), _CHUNK):
        chunk = alert_ids[i : i + _CHUNK]
        for aid, phase, t in s.execute(
            select(AlertStep.alert_id, AlertStep.phase, AlertStep.time).where(AlertStep.alert_id.in_(chunk))
        ):
            existing.add((aid, phase, t))
        for row in s.scalars(select(Alert).where(Alert.alert_id.in_(chunk))):
            current[row.alert_id] = row
    new: list[AlertEvent] = []
    seen: set[tuple[str, str, float]] = set()
    for a in sorted(steps, key=lambda x: x.time):
        key = (a.alert_id, a.phase.value, a.time)
        if key in existing or key in seen:
            continue
        seen.add(key)
        new.append(a)
        s.add(
            AlertStep(
                alert_id=a.alert_id,
                device_id=a.device_id,
                kind=_v(a.kind),
                event_type=_v(a.event_type),
                severity=int(a.severity),
                phase=a.phase.value,
                episode_ms=a.episode_ms,
                time=a.time,
                frame_time=a.frame_time,
                value=a.value,
                message=a.message,
                source=source,
                received_at=received_at,
            )
        )
        found = current.get(a.alert_id)
        if found is None:
            row = Alert(
                alert_id=a.alert_id,
                device_id=a.device_id,
                kind=_v(a.kind),
                event_type=_v(a.event_type),
                severity=int(a.severity),
                phase=a.phase.value,
                episode_ms=a.episode_ms,
                raised_time=a.time,
                raised_frame_time=a.frame_time,
                updated_time=a.time,
                frame_time=a.frame_time,
                value=a.value,
                message=a.message,
                source=source,
                received_at=received_at,
            )
            s.add(row)
            current[a.alert_id] = row
        else:
            row = found
            if a.time >= row.updated_time or (
                a.phase is AlertPhase.CLEARED and row.phase != AlertPhase.CLEARED.value
            ):
                row.severity, row.phase, row.updated_time = int(a.severity), a.phase.value, a.time
                row.frame_time, row.value, row.message = a.frame_time, a.value, a.message
                row.received_at = received_at
        if a.phase is AlertPhase.RAISED and a.time < row.raised_time:
            row.raised_time, row.raised_frame_time = a.time, a.frame_time
    return new
