"""Alerts: current state of every episode, and each episode's lifecycle steps.

``GET /api/v1/alerts`` answers ``{"alerts": [AlertEvent JSON, ...]}``; every item validates as
:class:`alerts.contract.AlertEvent` (``vigil score --cloud`` relies on that). One item per alert episode:
``phase``, ``severity``, ``value`` and ``message`` are its *current* state, ``time`` and ``frame_time`` are
those of the *raising* step (so a scorer measures detection latency from them). ``?view=steps`` returns
every lifecycle step instead, oldest first.

A wristband's alert value and message are health data (heart rate, SpO2 ...): roles outside
:data:`cloud.auth.PERSONAL_DATA_ROLES` get ``value = null`` and an empty message (docs/privacy.md).

Gateway alerts (GATEWAY_OFFLINE, ``kind = "gateway"``) are not device alerts and would not validate as
an AlertEvent; they are listed only with ``?kind=gateway``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from cloud.api.deps import ERROR_RESPONSES, State, User
from cloud.auth import PERSONAL_DATA_ROLES, Principal
from cloud.db import Alert, AlertStep
from cloud.errors import NotFoundError
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"], responses=ERROR_RESPONSES)


class AlertOut(BaseModel):
    """:class:`alerts.contract.AlertEvent`'s fields; ``kind`` may also be ``"gateway"``."""

    alert_id: str
    device_id: str
    kind: DeviceKind | Literal["gateway"]
    event_type: EventType
    severity: int
    phase: AlertPhase
    episode_ms: int
    time: float
    frame_time: float
    value: float | None
    message: str


class AlertList(BaseModel):
    alerts: list[AlertOut]


class AlertDetail(BaseModel):
    alert: AlertOut
    source: str = Field(description="gateway id that raised it, or 'cloud' (connectivity alerts)")
    raised_time: float
    updated_time: float
    steps: list[AlertOut]


#: kinds whose alert values are health data (a person wears the device)
HEALTH_KINDS = frozenset({DeviceKind.WRISTBAND.value})


def _out(a: Alert | AlertStep, time: float, frame_time: float, health: bool) -> AlertOut:
    hidden = not health and a.kind in HEALTH_KINDS
    return AlertOut(
        alert_id=a.alert_id,
        device_id=a.device_id,
        kind=cast(Any, a.kind),  # a DeviceKind value or "gateway"
        event_type=EventType(a.event_type),
        severity=a.severity,
        phase=AlertPhase(a.phase),
        episode_ms=a.episode_ms,
        time=time,
        frame_time=frame_time,
        value=None if hidden else a.value,
        message="" if hidden else a.message,
    )


def _current(a: Alert, health: bool) -> AlertOut:
    """The alert's current phase, stamped with its *raising* step's times (so latency can be measured)."""
    return _out(a, a.raised_time, a.raised_frame_time, health)


def _step(a: AlertStep, health: bool) -> AlertOut:
    return _out(a, a.time, a.frame_time, health)


def _may_see_health(caller: Principal) -> bool:
    return caller.role in PERSONAL_DATA_ROLES


def _list(
    state: State,
    health: bool,
    since: float | None,
    phase: str | None,
    kind: str | None,
    event_type: str | None,
    view: str,
    limit: int,
) -> AlertList:
    table = AlertStep if view == "steps" else Alert
    q = select(table)
    t_col = AlertStep.time if view == "steps" else Alert.updated_time
    if since is not None:
        q = q.where(t_col >= since)
    if phase == "open":
        q = q.where(table.phase != AlertPhase.CLEARED.value)
    elif phase is not None:
        q = q.where(table.phase == phase)
    q = q.where(table.kind == kind) if kind else q.where(table.kind != "gateway")
    if event_type:
        q = q.where(table.event_type == event_type)
    q = q.order_by(t_col, table.alert_id).limit(limit)
    with state.db.read() as s:
        rows = list(s.scalars(q))
        items = (
            [_step(r, health) for r in rows]  # type: ignore[arg-type]
            if view == "steps"
            else [_current(r, health) for r in rows]  # type: ignore[arg-type]
        )
    return AlertList(alerts=items)


@router.get("", response_model=AlertList)
async def list_alerts(
    caller: User,
    state: State,
    since: Annotated[
        float | None,
        Query(ge=0, le=4_102_444_800, description="UTC s: alerts with a step at or after this time"),
    ] = None,
    state_: Annotated[
        Literal["open", "raised", "updated", "cleared"] | None,
        Query(alias="state", description="open = not cleared"),
    ] = None,
    kind: DeviceKind | Literal["gateway"] | None = None,
    event_type: EventType | None = None,
    view: Literal["current", "steps"] = "current",
    limit: Annotated[int, Query(ge=1, le=200_000)] = 50_000,
) -> AlertList:
    return await asyncio.to_thread(
        _list,
        state,
        _may_see_health(caller),
        since,
        state_,
        kind.value if isinstance(kind, DeviceKind) else kind,
        event_type.value if event_type else None,
        view,
        limit,
    )


def _detail(state: State, alert_id: str, health: bool) -> AlertDetail:
    with state.db.read() as s:
        a = s.get(Alert, alert_id)
        if a is None:
            raise NotFoundError(f"no alert {alert_id!r}")
        steps = list(
            s.scalars(
                select(AlertStep).where(AlertStep.alert_id == alert_id).order_by(AlertStep.time, AlertStep.id)
            )
        )
        return AlertDetail(
            alert=_current(a, health),
            source=a.source,
            raised_time=a.raised_time,
            updated_time=a.updated_time,
            steps=[_step(x, health) for x in steps],
        )


@router.get("/{alert_id:path}", response_model=AlertDetail, summary="One alert with all its lifecycle steps")
async def get_alert(
    alert_id: Annotated[str, Path(min_length=3, max_length=160)], caller: User, state: State
) -> AlertDetail:
    return await asyncio.to_thread(_detail, state, alert_id, _may_see_health(caller))
