"""Console and admin endpoints of the notification feature, and the SMS providers' reply callback.

::

    GET  /api/v1/notify/status                           channels configured, deliveries by status
    GET  /api/v1/notify/inapp[?unread=true][&incident_id=][&mine=true][&since_id=]  the caller's in-app
                                                         notices (+ the operators' queue for admin /
                                                         dispatcher / operator unless mine=true);
                                                         since_id: only rows with a larger id
    POST /api/v1/notify/inapp/{id}/read
    GET  /api/v1/notify/incidents/{incident_id}/log      every delivery, every attempt, every action
    POST /api/v1/notify/send                             page a user / role / group / webhook now
    POST /api/v1/notify/incidents/{incident_id}/case-link   a resident's follow / rate / reopen link
    PUT  /api/v1/notify/contacts/{username}              bind WeCom / DingTalk / phone / e-mail (admin)
    GET  /api/v1/notify/contacts/{username}              (phone masked unless admin / dispatcher)
    PUT  /api/v1/notify/groups/{name}                    group: title, robot, members (admin)
    GET  /api/v1/notify/incidents/{incident_id}/family   a wearer's emergency contact for the call task
                                                         (masked; ?reveal=true: admin / dispatcher, audited)

Every administrative change here (contacts, groups), every manual send and every reveal of a family's
number is written to the audit log (``loop_audit``: actor, role, action, target, detail); the detail never
holds a phone number, an e-mail address or a message's words, only whether one is bound / its length.
    GET  /api/v1/notify/reports                          residents' reports, promise kept or not
    GET  /api/v1/notify/ratings                          ratings by department
    GET  /api/v1/notify/photos/{id}
    POST /api/v1/notify/sms/inbound/{provider}?token=    aliyun | tencent reply callbacks
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as FastPath
from pydantic import BaseModel, Field

from alerts.loop.routing import family_device
from cloud.api.deps import ERROR_RESPONSES, Admin, State, User
from cloud.api.state import CloudState
from cloud.auth import PERSONAL_DATA_ROLES, Principal, Role, require
from cloud.errors import AuthenticationError, BadRequestError, NotFoundError
from cloud.loop.config import audit
from cloud.loop.models import Incident
from cloud.loop.rows import incident_devices
from cloud.notify.family import desk_call
from cloud.notify.inapp import list_for, mark_read
from cloud.notify.planner import NotifyRequest
from cloud.notify.render import IncidentFacts
from cloud.notify.service import NotifyService

router = APIRouter(prefix="/api/v1/notify", tags=["notify"], responses=ERROR_RESPONSES)


def get_notify(request: Request) -> NotifyService:
    service: NotifyService | None = getattr(request.app.state, "notify", None)
    if service is None:
        raise NotFoundError("notifications are not enabled in this process")
    return service


class ContactIn(BaseModel):
    display_name: str = Field(default="", max_length=64)
    responder_id: str = Field(default="", max_length=64)
    wecom_userid: str = Field(default="", max_length=64)
    dingtalk_userid: str = Field(default="", max_length=64)
    phone: str = Field(default="", max_length=20)
    email: str = Field(default="", max_length=254)
    lang: Literal["zh", "en"] = "zh"
    channels: list[str] = Field(default_factory=list, max_length=8)
    duty_roles: list[str] = Field(default_factory=list, max_length=16)


class GroupIn(BaseModel):
    title: str = Field(default="", max_length=128)
    robot: str = Field(default="", max_length=64)
    members: list[str] = Field(default_factory=list, max_length=500)


class SendIn(BaseModel):
    incident_id: str = Field(min_length=1, max_length=128)
    target_kind: Literal["user", "role", "group", "webhook"]
    target_id: str = Field(min_length=1, max_length=96)
    step: int = Field(default=0, ge=-1, le=1000)
    severity: int = Field(default=3, ge=0, le=3)
    event_type: str = Field(default="", max_length=64)
    place: str = Field(default="", max_length=128)
    summary: str = Field(default="", max_length=200)
    department: str = Field(default="", max_length=64)
    opened_at: float | None = Field(default=None, ge=0, le=4_102_444_800)  # up to 2100-01-01
    channels: list[str] = Field(default_factory=list, max_length=8)


@router.get("/status")
async def status(request: Request, caller: User) -> dict[str, Any]:
    notify = get_notify(request)
    counts = await asyncio.to_thread(notify.outbox.counts)
    configured = sorted(set(notify.worker.channels) | {f"{n} (named)" for n in notify.worker.named})
    return {"channels": configured, "deliveries": counts}


#: the desk's staff: they see (and may mark read) the operators' in-app queue; a viewer sees their own only
STAFF_ROLES = frozenset({Role.ADMIN, Role.DISPATCHER, Role.OPERATOR})


@router.get("/inapp")
async def inapp(
    request: Request,
    caller: User,
    unread: bool = False,
    incident_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    mine: Annotated[
        bool, Query(description="only the caller's own notices, not the operators' shared queue")
    ] = False,
    since_id: Annotated[
        int | None,
        Query(ge=0, le=2**62, description="only notices with a larger id (the largest id seen last poll)"),
    ] = None,
) -> list[dict[str, Any]]:
    """The caller's own in-app notices and, for admin / dispatcher / operator, the operators' queue;
    ``incident_id`` keeps one incident's (the console's incident page). A phone polls with
    ``mine=true`` (its person's notices only: the operators' queue is the console's) and ``since_id``
    (the largest ``id`` it has: an empty list when nothing is new), newest first, at most 100."""
    notify = get_notify(request)
    uid = await asyncio.to_thread(notify.contacts.user_id, caller.name)
    rows = await asyncio.to_thread(
        list_for, notify.outbox.db, uid, unread_only=unread, incident_id=incident_id,
        operators=caller.role in STAFF_ROLES and not mine, since_id=since_id,
    )  # fmt: skip
    return rows


@router.post("/inapp/{item_id}/read", status_code=204)
async def inapp_read(
    item_id: Annotated[int, FastPath(ge=1, le=2**62)], request: Request, caller: User, state: State
) -> Response:
    notify = get_notify(request)
    uid = await asyncio.to_thread(notify.contacts.user_id, caller.name)
    staff = caller.role in STAFF_ROLES
    if not await asyncio.to_thread(
        mark_read, notify.outbox.db, uid, item_id, now=state.clock.now(), operators=staff
    ):
        raise NotFoundError(f"no unread notification {item_id} for you")
    return Response(status_code=204)


@router.get(
    "/incidents/{incident_id}/log", summary="Delivery log of an incident: deliveries, attempts, actions"
)
async def incident_log(incident_id: str, request: Request, caller: User) -> dict[str, Any]:
    notify = get_notify(request)
    deliveries = await asyncio.to_thread(notify.outbox.log, incident_id)
    actions = await asyncio.to_thread(notify.responders.actions, incident_id)
    return {"incident_id": incident_id, "deliveries": deliveries, "actions": actions}


@router.post("/send", summary="Page a target about an incident now (idempotent per incident/step/target)")
async def send(body: SendIn, request: Request, caller: User, state: State) -> dict[str, Any]:
    """Every manual page is audited (``notify.send``: who, which target, the channel hint, the lengths of
    the free text, never its words or a number) before it is planned: a send that cannot be audited is
    not sent. Paging a wearer's family (``role`` ``family_contact/<device>``) needs admin / dispatcher."""
    require(caller, Role.ADMIN, Role.DISPATCHER, Role.OPERATOR)
    family = body.target_kind == "role" and family_device(body.target_id) is not None
    if family and caller.role not in PERSONAL_DATA_ROLES:
        require(caller, *PERSONAL_DATA_ROLES)
    notify = get_notify(request)
    now = state.clock.now()
    req = NotifyRequest(
        facts=IncidentFacts(
            incident_id=body.incident_id,
            opened_at=body.opened_at if body.opened_at is not None else now,
            severity=body.severity,
            event_type=body.event_type,
            place=body.place,
            summary=body.summary,
            department=body.department,
        ),
        target_kind=body.target_kind,
        target_id=body.target_id,
        step=body.step,
        channel_hint=tuple(body.channels),
    )
    await asyncio.to_thread(
        _audit, state, caller, "notify.send", f"{body.target_kind}:{body.target_id}",
        incident_id=body.incident_id[:128], step=body.step, severity=body.severity,
        event_type=body.event_type[:64], channels=[c[:32] for c in body.channels], family=family,
        summary_len=len(body.summary), place_len=len(body.place),
    )  # fmt: skip
    added = await notify.worker.submit([req])
    return {"enqueued": added}


@router.post("/incidents/{incident_id}/case-link", summary="A link for the resident to follow, rate, reopen")
async def case_link(incident_id: str, request: Request, caller: User, state: State) -> dict[str, str]:
    require(caller, Role.ADMIN, Role.DISPATCHER, Role.OPERATOR)
    notify = get_notify(request)
    return {"url": notify.residents.case_link(incident_id, now=state.clock.now())}


def _audit(state: CloudState, caller: Principal, action: str, target: str, **detail: Any) -> None:
    """One audit row (``loop_audit``), written after the change succeeded; never a phone or an e-mail."""
    with state.db.write() as s:
        audit(
            s, actor=caller.name[:64], role=caller.role.value, action=action, target=target[:128],
            now=state.clock.now(), **detail,
        )  # fmt: skip


@router.put("/contacts/{username}", status_code=204)
async def bind(username: str, body: ContactIn, request: Request, caller: Admin, state: State) -> Response:
    notify = get_notify(request)
    await asyncio.to_thread(notify.contacts.bind, username, now=state.clock.now(), **body.model_dump())
    detail = body.model_dump(exclude={"phone", "email"})
    await asyncio.to_thread(
        _audit, state, caller, "notify.contact.bind", f"user:{username}",
        **detail, phone_bound=bool(body.phone), email_bound=bool(body.email),
    )  # fmt: skip
    return Response(status_code=204)


@router.get("/contacts/{username}")
async def contact(username: str, request: Request, caller: User) -> dict[str, Any]:
    notify = get_notify(request)
    reveal = caller.role in PERSONAL_DATA_ROLES
    view = await asyncio.to_thread(notify.contacts.view, username, reveal=reveal)
    return dataclasses.asdict(view)


@router.put("/groups/{name}", status_code=204)
async def group(name: str, body: GroupIn, request: Request, caller: Admin, state: State) -> Response:
    notify = get_notify(request)
    if body.robot and body.robot not in notify.config.robots:
        raise BadRequestError(
            f"robot {body.robot!r} is not in the notify config ({sorted(notify.config.robots)})"
        )
    await asyncio.to_thread(
        notify.contacts.set_group, name, title=body.title, robot=body.robot, members=body.members
    )
    await asyncio.to_thread(
        _audit, state, caller, "notify.group.set", f"group:{name}",
        title=body.title, robot=body.robot, members=list(dict.fromkeys(body.members)),
    )  # fmt: skip
    return Response(status_code=204)


@router.get(
    "/incidents/{incident_id}/family",
    summary="The emergency contacts of a wristband case's devices, for the 请致电家属 call task",
)
async def family(
    incident_id: Annotated[int, FastPath(ge=1, le=2**62)],
    request: Request,
    caller: User,
    state: State,
    reveal: bool = False,
) -> list[dict[str, Any]]:
    """Masked for everyone; ``reveal=true`` shows the full numbers to admin / dispatcher only
    (``PERSONAL_DATA_ROLES``, as the registry does) and writes one audit row per reveal. Each device's
    entry carries ``family_reached`` (:meth:`cloud.notify.outbox.Outbox.family_reached`): whether a text
    or call to that family was delivered, when (UTC epoch seconds) and over which channel; no number; and
    ``call``, the desk's own call (:func:`cloud.notify.family.desk_call`: ``outcome`` reached /
    not_reached / wrong_number, ``at``, ``attempts``; None before the first)."""
    notify = get_notify(request)
    require(caller, Role.ADMIN, Role.DISPATCHER, Role.OPERATOR)  # the desk's staff, not read-only viewers
    if reveal and caller.role not in PERSONAL_DATA_ROLES:
        require(caller, *PERSONAL_DATA_ROLES)

    def devices() -> list[str]:
        with state.db.read() as s:
            row = s.get(Incident, incident_id)
            if row is None:
                raise NotFoundError(f"no incident {incident_id}")
            return incident_devices(s, row)

    out = []
    # the desk's call (POST /api/v1/incidents/{id}/family-call): outcome, when, attempts; None before one
    call = await asyncio.to_thread(desk_call, state.db, str(incident_id))
    for device in await asyncio.to_thread(devices):
        try:
            view = await asyncio.to_thread(notify.contacts.family_view, device, reveal=reveal)
        except NotFoundError:
            continue  # no contact registered for this device
        reached = await asyncio.to_thread(notify.outbox.family_reached, str(incident_id), device)
        out.append({**dataclasses.asdict(view), "family_reached": {**reached, "call": call}})
    if reveal and out:
        await asyncio.to_thread(
            _audit, state, caller, "notify.family.reveal", f"incident:{incident_id}",
            devices=[v["device_id"] for v in out],
        )  # fmt: skip
    return out


@router.get("/reports")
async def reports(request: Request, caller: User, state: State) -> list[dict[str, Any]]:
    notify = get_notify(request)
    return await asyncio.to_thread(notify.residents.reports, now=state.clock.now())


@router.get("/ratings")
async def ratings(request: Request, caller: User) -> list[dict[str, Any]]:
    notify = get_notify(request)
    return await asyncio.to_thread(notify.residents.ratings_by_department)


@router.get("/photos/{photo_id}")
async def photo(photo_id: str, request: Request, caller: User) -> Response:
    notify = get_notify(request)
    content_type, data = await asyncio.to_thread(notify.photos.get, photo_id)
    return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=3600"})


@router.post("/sms/inbound/{provider}", summary="SMS reply callback (Aliyun batch push or Tencent callback)")
async def sms_inbound(
    provider: Literal["aliyun", "tencent"], request: Request, state: State, token: str = Query(default="")
) -> dict[str, Any]:
    notify = get_notify(request)
    expected = notify.config.sms_inbound_token
    if not expected or not hmac.compare_digest(token, expected):
        raise AuthenticationError("inbound SMS callback token missing or wrong")
    try:
        payload = await request.json()
    except ValueError as exc:
        raise BadRequestError("body is not JSON") from exc
    items = payload if isinstance(payload, list) else [payload]
    results = []
    for item in items[:100]:
        if not isinstance(item, dict):
            raise BadRequestError("each reply must be a JSON object")
        # Aliyun: phone_number / content; Tencent: mobile / text
        phone = str(item.get("phone_number") or item.get("mobile") or "")
        text = str(item.get("content") or item.get("text") or "")
        if not phone:
            results.append({"accepted": False, "reason": "no sender number in the callback"})
            continue
        results.append(
            await asyncio.to_thread(notify.responders.sms_reply, provider, phone, text, now=state.clock.now())
        )
    ack: dict[str, Any] = (
        {"code": 0, "msg": "接收成功"} if provider == "aliyun" else {"result": 0, "errmsg": "OK"}
    )
    return {**ack, "results": results}
