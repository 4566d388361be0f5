"""Incidents and their work orders: list, detail with timeline, actions, confirmation, photos, intents.

Reading needs any user role; acting needs admin, dispatcher or operator (an operator acts for a responder
who phoned in with ``on_behalf_of``); confirming a fire and reading notification intents needs admin or
dispatcher. Errors name the problem: 404 unknown incident, 409 a second accept (``detail`` names the
owner), 400 an action the stage does not allow or a missing reason. ``idempotency_key`` makes a retried
action a no-op.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, func, select

from alerts.loop.stages import Action, Command
from cloud.api.deps import Caller, State, User
from cloud.auth import Principal, Role, require
from cloud.errors import NotFoundError
from cloud.loop.models import Incident, IncidentEvent, NotificationIntentRow, Photo
from cloud.loop.service import PHOTO_MAX_BYTES, LoopService
from cloud.loop.views import event_out, incident_out, intent_out, responder_names
from firmware_bridge.kernel.locale import lang

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])
IncidentId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def get_loop(request: Request) -> LoopService:
    svc: LoopService = request.app.state.loop
    return svc


Loop = Annotated[LoopService, Depends(get_loop)]


async def get_staff(caller: Caller) -> Principal:
    require(caller, Role.ADMIN, Role.DISPATCHER, Role.OPERATOR)
    return caller


async def get_desk(caller: Caller) -> Principal:
    require(caller, Role.ADMIN, Role.DISPATCHER)
    return caller


Staff = Annotated[Principal, Depends(get_staff)]
Desk = Annotated[Principal, Depends(get_desk)]
Outcome = Literal["real", "nuisance", "false_alarm"]  # cloud.loop.models.OUTCOMES
Language = Annotated[Literal["zh", "en"] | None, Query(description="label language; default from the locale")]


class ActionIn(BaseModel):
    action: Action
    reason: str = Field(default="", max_length=1000)
    assignee: str | None = Field(default=None, max_length=64)
    department: str | None = Field(default=None, max_length=32)
    rating: int | None = Field(default=None, ge=1, le=5)
    outcome: Outcome | None = Field(
        default=None,
        description="with handle only: the responder's verdict: real 真实事件, "
        "nuisance 扰动（烹饪、蒸汽等）, false_alarm 误报",
    )
    on_behalf_of: str | None = Field(default=None, max_length=64, description="responder id who phoned in")
    idempotency_key: str | None = Field(default=None, min_length=8, max_length=128)


def _read(
    state: Any, loop: LoopService, incident_id: int, who: Principal, language: str | None
) -> dict[str, Any]:
    with state.db.read() as s:
        row = s.get(Incident, incident_id)
        if row is None:
            raise NotFoundError(f"no incident {incident_id}")
        events = s.scalars(
            select(IncidentEvent).where(IncidentEvent.incident_id == incident_id).order_by(IncidentEvent.id)
        )
        photos = s.scalars(select(Photo.id).where(Photo.incident_id == incident_id).order_by(Photo.id))
        return {
            "incident": incident_out(row, who, loop.box, lang(language), responder_names(s)),
            "timeline": [event_out(e) for e in events],
            "photos": list(photos),
        }


@router.get("", summary="Incidents, newest first or most urgent first")
async def list_incidents(
    state: State,
    loop: Loop,
    who: User,
    open: bool | None = None,
    stage: str | None = Query(default=None, max_length=16),
    department: str | None = Query(default=None, max_length=32),
    sort: Literal["newest", "grade"] = Query(
        default="newest", description="newest first, or highest grade first (then newest): the queue's order"
    ),
    limit: int = Query(default=100, ge=1, le=1000),
    language: Language = None,
) -> dict[str, Any]:
    """``total`` counts every incident the filters match, so a client showing ``limit`` of them can say
    how many it leaves out; with ``sort=grade`` what is left out is never more urgent than what is shown."""

    def run() -> dict[str, Any]:
        with state.db.read() as s:
            where: list[ColumnElement[bool]] = []
            if open is not None:
                where.append(Incident.is_open.is_(open))
            if stage:
                where.append(Incident.stage == stage)
            if department:
                where.append(Incident.department == department)
            order = (Incident.grade.desc(), Incident.id.desc()) if sort == "grade" else (Incident.id.desc(),)
            q = select(Incident).where(*where).order_by(*order).limit(limit)
            total = s.scalar(select(func.count()).select_from(Incident).where(*where)) or 0
            names = responder_names(s)
            return {
                "incidents": [incident_out(r, who, loop.box, lang(language), names) for r in s.scalars(q)],
                "total": int(total),
            }

    return await asyncio.to_thread(run)


@router.get("/{incident_id}", summary="One incident with its timeline (the audit trail)")
async def get_incident(
    incident_id: IncidentId, state: State, loop: Loop, who: User, language: Language = None
) -> dict[str, Any]:
    return await asyncio.to_thread(_read, state, loop, incident_id, who, language)


@router.post(
    "/{incident_id}/actions",
    summary="Move the work order: register, dispatch, accept, arrive, handle, verify, close, rate, ...",
    responses={400: {"description": "not allowed in this stage"}, 409: {"description": "already accepted"}},
)
async def act(
    incident_id: IncidentId, body: ActionIn, state: State, loop: Loop, who: Staff, language: Language = None
) -> dict[str, Any]:
    actor = body.on_behalf_of or who.name
    cmd = Command(
        body.action,
        actor,
        reason=body.reason,
        assignee=body.assignee,
        department=body.department,
        rating=body.rating,
    )
    channel = "phone" if body.on_behalf_of else "api"
    await asyncio.to_thread(
        loop.act,
        incident_id,
        cmd,
        channel=channel,
        idempotency_key=body.idempotency_key,
        outcome=body.outcome,
    )
    return await asyncio.to_thread(_read, state, loop, incident_id, who, language)


@router.post("/{incident_id}/confirm", summary="The call taker confirmed it with the site: escalate now")
async def confirm(incident_id: IncidentId, state: State, loop: Loop, who: Desk) -> dict[str, Any]:
    await asyncio.to_thread(loop.confirm, incident_id, who.name)
    return await asyncio.to_thread(_read, state, loop, incident_id, who, None)


@router.post(
    "/{incident_id}/photos",
    status_code=201,
    summary=f"Attach a photo: raw JPEG, PNG or WebP body, at most {PHOTO_MAX_BYTES // 2**20} MB",
)
async def add_photo(incident_id: IncidentId, request: Request, loop: Loop, who: Staff) -> dict[str, int]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > PHOTO_MAX_BYTES:
            break
    photo_id = await asyncio.to_thread(loop.add_photo, incident_id, data, ctype, actor=who.name)
    return {"photo_id": photo_id}


@router.get("/{incident_id}/photos/{photo_id}", response_class=Response)
async def get_photo(incident_id: IncidentId, photo_id: IncidentId, state: State, who: User) -> Response:
    def run() -> tuple[bytes, str]:
        with state.db.read() as s:
            p = s.get(Photo, photo_id)
            if p is None or p.incident_id != incident_id:
                raise NotFoundError(f"no photo {photo_id} on incident {incident_id}")
            return p.data, p.content_type

    data, ctype = await asyncio.to_thread(run)
    return Response(data, media_type=ctype)


@router.get("/{incident_id}/intents", summary="Notification intents written for this incident")
async def incident_intents(incident_id: IncidentId, state: State, who: Desk) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with state.db.read() as s:
            q = select(NotificationIntentRow).where(NotificationIntentRow.incident_id == incident_id)
            return {"intents": [intent_out(i) for i in s.scalars(q.order_by(NotificationIntentRow.id))]}

    return await asyncio.to_thread(run)
