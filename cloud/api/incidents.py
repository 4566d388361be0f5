"""Incidents and their work orders: list, detail with timeline, actions, confirmation, photos, intents.

Reading needs any user role; acting needs admin, dispatcher or operator (an operator acts for a responder
who phoned in with ``on_behalf_of``); confirming a fire and reading notification intents needs admin or
dispatcher. Errors name the problem: 404 unknown incident, 409 a second accept (``detail`` names the
owner), 400 an action the stage does not allow or a missing reason. ``idempotency_key`` makes a retried
action a no-op.

``/family-call``: the desk's call to a wristband wearer's family (请致电家属): admin, dispatcher, and an
operator who handles calls (holds the call task, or a call taker / not a field responder in the roster);
a viewer or a field responder gets 403, 409 a case with no family to call, 422 an unknown outcome.

``/rule-out``: the desk's "no fire" after calling the site (核警), admin or dispatcher as ``/confirm``:
stops the 119 / 120 escalation, 409 when CO, dense smoke or a second alarm in the building forbid it.
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
from cloud.db.models import Alert
from cloud.errors import NotFoundError, PermissionDeniedError
from cloud.loop.models import AlertLink, Incident, IncidentEvent, NotificationIntentRow, Photo
from cloud.loop.service import FAMILY_NOTE_MAX, PHOTO_MAX_BYTES, RULE_OUT_NOTE_MAX, LoopService
from cloud.loop.views import event_out, incident_out, intent_out, responder_names
from cloud.notify.family import call_task_view
from cloud.registry import DEVICE_ID_RE, canonical_device_id
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


class RuleOutIn(BaseModel):
    reason: Literal["nuisance", "false_alarm"] = Field(
        description="nuisance 扰动（烹饪油烟、水蒸气等）, false_alarm 设备误报"
    )
    note: str = Field(default="", max_length=RULE_OUT_NOTE_MAX, description="what the site said, short")
    stand_down: bool = Field(
        default=False,
        description="also stand the local responder down (their pages not yet sent are cancelled); by "
        "default they still go: someone resets the alarm and looks for smouldering",
    )


class FamilyCallIn(BaseModel):
    outcome: Literal["reached", "not_reached", "wrong_number"] = Field(
        description="reached 已接通, not_reached 未接通 (the desk is reminded to call again), "
        "wrong_number 号码有误 (check the contact, send the grid worker)"
    )
    note: str = Field(default="", max_length=FAMILY_NOTE_MAX, description="the call taker's short note")


def _family_call_view(state: Any, loop: LoopService, incident_id: int) -> dict[str, Any]:
    """The call task's holders (:func:`cloud.notify.family.call_task_view`) and the desk's calls."""
    calls = loop.call_state(incident_id)
    return {**call_task_view(state.db, str(incident_id)), **calls}


def _may_call(loop: LoopService, incident_id: int, who: Principal) -> None:
    if who.role is Role.OPERATOR and not loop.may_call(incident_id, who.name):
        raise PermissionDeniedError(
            "只有值班接警员、调度员或管理员可以登记致电家属的结果。"
            " / Only call takers, dispatchers or administrators record a call to the family."
        )


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
        names = responder_names(s)
        return {
            "incident": incident_out(row, who, loop.box, lang(language), names),
            "timeline": [event_out(e, lang(language), names) for e in events],
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
    device_id: str | None = Query(
        default=None,
        pattern=DEVICE_ID_RE.pattern,
        description="only incidents any of this device's alerts is linked to (DevEUI, IMEI or serial)",
    ),
    limit: int = Query(default=100, ge=1, le=1000),
    language: Language = None,
) -> dict[str, Any]:
    """``total`` counts every incident the filters match, so a client showing ``limit`` of them can say
    how many it leaves out; with ``sort=grade`` what is left out is never more urgent than what is shown.

    ``device_id``: the incidents any alert of that device is linked to (``loop_alert_links`` joined to
    ``alerts`` on ``alert_id``, both by primary key / ``ix_alerts_device_id``), combinable with the other
    filters; the id is taken in its canonical spelling, as the registry stores it."""

    def run() -> dict[str, Any]:
        with state.db.read() as s:
            where: list[ColumnElement[bool]] = []
            if open is not None:
                where.append(Incident.is_open.is_(open))
            if stage:
                where.append(Incident.stage == stage)
            if department:
                where.append(Incident.department == department)
            if device_id is not None:
                linked = (
                    select(AlertLink.incident_id)
                    .join(Alert, Alert.alert_id == AlertLink.alert_id)
                    .where(
                        Alert.device_id == canonical_device_id(device_id), AlertLink.incident_id.is_not(None)
                    )
                )
                where.append(Incident.id.in_(linked))
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
    "/{incident_id}/rule-out",
    summary="The call taker checked with the site: no fire (核警：非火情); stop the 119 / 120 escalation",
    responses={
        403: {"description": "not admin or dispatcher (as confirm)"},
        409: {"description": "refused: CO or dense smoke, a second alarm in the building, confirmed, closed"},
    },
)
async def rule_out(
    incident_id: IncidentId, body: RuleOutIn, state: State, loop: Loop, who: Desk, language: Language = None
) -> dict[str, Any]:
    """Stops the pending escalation (timeline ``rule_out`` + ``escalation_stopped``, audited
    ``incident.rule_out``), sets ``outcome``; a repeat is a no-op. A new alarm afterwards escalates
    again. Answers the incident like ``GET``, plus ``rule_out`` (the escalation's state)."""
    await asyncio.to_thread(
        loop.rule_out,
        incident_id,
        who.name,
        body.reason,
        body.note,
        stand_down=body.stand_down,
        role=who.role.value,
    )
    out = await asyncio.to_thread(_read, state, loop, incident_id, who, language)
    out["rule_out"] = await asyncio.to_thread(loop.rule_out_state, incident_id)
    return out


@router.get("/{incident_id}/family-call", summary="The 请致电家属 task: whose it is now, the desk's calls")
async def family_call_state(incident_id: IncidentId, state: State, loop: Loop, who: Staff) -> dict[str, Any]:
    """``holders`` (roster ids; after a hand-over the incoming shift), ``handed_over_at``, ``read_at``,
    ``attempts``, ``last`` (``outcome``, ``at`` UTC epoch seconds, ``by``, ``note``), ``reached``,
    ``next_reminder_at``. No phone number."""
    return await asyncio.to_thread(_family_call_view, state, loop, incident_id)


@router.post(
    "/{incident_id}/family-call",
    summary="The desk's call to the family: reached, not reached or wrong number (请致电家属)",
    responses={
        403: {"description": "a viewer or a field responder"},
        409: {"description": "not a wristband case with a family contact"},
    },
)
async def family_call(
    incident_id: IncidentId,
    body: FamilyCallIn,
    state: State,
    loop: Loop,
    who: Staff,
    language: Language = None,
) -> dict[str, Any]:
    """Recorded on the timeline (``family_call``) and audited (``incident.family_call``); ``reached``
    closes the call task (no hand-over to the next shift), ``not_reached`` keeps it open and reminds the
    desk (the task's holders on duty, else the call takers' role) ``desk.family_call_retry_s`` later
    (loop configuration; ``VIGIL_CLOUD_FAMILY_RETRY_S`` overrides it). Answers the incident like ``GET``,
    plus ``family_call``."""
    await asyncio.to_thread(_may_call, loop, incident_id, who)
    await asyncio.to_thread(
        loop.record_call, incident_id, who.name, body.outcome, body.note, role=who.role.value
    )
    out = await asyncio.to_thread(_read, state, loop, incident_id, who, language)
    out["family_call"] = await asyncio.to_thread(_family_call_view, state, loop, incident_id)
    return out


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
