"""The loop's configuration and people: routing tree, escalation policies, roster, SLA table, who is on
call, coverage gaps, overrides (leave, swaps), silences, and the audit log.

Reading needs any user role; changing needs admin (overrides and silences also dispatcher). A document
that does not validate is a 422 whose ``detail`` names the rule (``route(root).routes[1](manhole)...
roles: unknown role 'grid_wroker'``) and nothing changes. Every change is audited.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from alerts.loop.errors import InvalidConfig
from alerts.loop.incidents import matcher_from_dict
from alerts.loop.rosters import coverage_gaps, override_from_dict
from alerts.loop.routing import ROLES
from cloud.api.deps import Admin, State, User
from cloud.api.incidents import Desk, Loop
from cloud.errors import BadRequestError, CloudError, NotFoundError
from cloud.loop.config import DOCUMENTS, audit, load, raw_document, save
from cloud.loop.models import AuditEntry, SilenceRow
from firmware_bridge.kernel.locale import iso, parse_iso

router = APIRouter(prefix="/api/v1/loop", tags=["loop configuration"])
DocName = Annotated[Literal["routing", "escalation", "roster", "sla", "desk"], Path()]


class InvalidDocument(CloudError):
    status_code = 422
    code = "invalid_config"


def _when(text: str | None, default: float) -> float:
    if not text:
        return default
    try:
        return parse_iso(text)
    except ValueError:
        raise BadRequestError(f"not an ISO-8601 time: {text!r}") from None


@router.get("/config/{name}", summary="A configuration document and its version (0 = the shipped default)")
async def get_document(name: DocName, state: State, who: User) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with state.db.read() as s:
            body, version = raw_document(s, name)
        return {"name": name, "version": version, "body": body}

    return await asyncio.to_thread(run)


@router.put("/config/{name}", summary="Replace a document (validated with the others; audited)")
async def put_document(
    name: DocName, body: dict[str, Any], state: State, loop: Loop, who: Admin
) -> dict[str, Any]:
    def run() -> int:
        try:
            with state.db.write() as s:
                return save(s, name, body, actor=who.name, role=who.role.value, now=loop.clock.now())
        except InvalidConfig as exc:
            raise InvalidDocument(str(exc)) from exc

    assert name in DOCUMENTS
    return {"name": name, "version": await asyncio.to_thread(run)}


class OverrideIn(BaseModel):
    responder: str = Field(min_length=1, max_length=64)
    by: str | None = Field(default=None, max_length=64, description="replacement; null = on leave")
    start: str = Field(description="ISO-8601")
    end: str = Field(description="ISO-8601")
    reason: str = Field(default="", max_length=300)


@router.post("/overrides", status_code=201, summary="Leave or a swap: add a roster override (audited)")
async def add_override(body: OverrideIn, state: State, loop: Loop, who: Desk) -> dict[str, Any]:
    def run() -> int:
        now = loop.clock.now()
        with state.db.write() as s:
            doc, _ = raw_document(s, "roster")
            cfg = load(s)
            raw = {
                "responder": body.responder,
                "by": body.by,
                "start": _when(body.start, 0),
                "end": _when(body.end, 0),
                "reason": body.reason,
            }
            try:
                override_from_dict(raw, cfg.roster.responders, "override")
            except InvalidConfig as exc:
                raise InvalidDocument(str(exc)) from exc
            doc["overrides"] = [*doc.get("overrides", []), raw]
            return save(s, "roster", doc, actor=who.name, role=who.role.value, now=now)

    return {"roster_version": await asyncio.to_thread(run)}


@router.get("/oncall", summary="Who is on call for a role in a zone (grid cell) at an instant")
async def on_call(
    state: State,
    loop: Loop,
    who: User,
    role: str = Query(max_length=32),
    zone: str = Query(default="*", max_length=64),
    at: str | None = None,
) -> dict[str, Any]:
    if role not in ROLES:
        raise BadRequestError(f"unknown role {role!r}; roles: {sorted(ROLES)}")

    def run() -> dict[str, Any]:
        t = _when(at, loop.clock.now())
        with state.db.read() as s:
            people = load(s).roster.on_call(role, zone, t)
        return {
            "role": role,
            "zone": zone,
            "at": iso(t),
            "on_call": [{"id": p.id, "name": p.name} for p in people],
        }

    return await asyncio.to_thread(run)


@router.get("/coverage", summary="Coverage gaps: (role, zone) with nobody on call in the next days")
async def coverage(
    state: State, loop: Loop, who: User, days: float = Query(default=7, gt=0, le=31)
) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        now = loop.clock.now()
        with state.db.read() as s:
            cfg = load(s)
        needs = sorted({(r.role, r.zone) for r in cfg.roster.rotations})
        gaps = coverage_gaps(cfg.roster, needs, now, days * 86400)
        return {
            "from": iso(now),
            "days": days,
            "gaps": [
                {"role": g.role, "zone": g.zone, "start": iso(g.start), "end": iso(g.end)} for g in gaps
            ],
        }

    return await asyncio.to_thread(run)


class SilenceIn(BaseModel):
    match: dict[str, str | list[str]] = Field(description="labels: kind, event, grid, street, device_id ...")
    starts_at: str | None = None
    ends_at: str = Field(description="ISO-8601; a silence always expires")
    reason: str = Field(min_length=1, max_length=500)


@router.get("/silences", summary="Silences and maintenance windows still in force")
async def list_silences(state: State, loop: Loop, who: User) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with state.db.read() as s:
            q = select(SilenceRow).where(
                SilenceRow.ends_at > loop.clock.now(), SilenceRow.expired_early_at.is_(None)
            )
            return {"silences": [_silence_out(r) for r in s.scalars(q.order_by(SilenceRow.id))]}

    return await asyncio.to_thread(run)


def _silence_out(r: SilenceRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "match": r.matchers,
        "starts_at": iso(r.starts_at),
        "ends_at": iso(r.ends_at),
        "created_by": r.created_by,
        "reason": r.reason,
    }


@router.post("/silences", status_code=201, summary="Silence matching alerts until an expiry (roadworks ...)")
async def add_silence(body: SilenceIn, state: State, loop: Loop, who: Desk) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        now = loop.clock.now()
        start, end = _when(body.starts_at, now), _when(body.ends_at, now)
        if end <= start:
            raise BadRequestError("ends_at must be after starts_at")
        try:
            matcher_from_dict(body.match, "match")
        except InvalidConfig as exc:
            raise BadRequestError(str(exc)) from exc
        with state.db.write() as s:
            row = SilenceRow(
                matchers=dict(body.match),
                starts_at=start,
                ends_at=end,
                created_by=who.name,
                reason=body.reason,
                created_at=now,
            )
            s.add(row)
            s.flush()
            audit(
                s,
                actor=who.name,
                role=who.role.value,
                action="silence.add",
                target=f"silence:{row.id}",
                now=now,
                match=dict(body.match),
                reason=body.reason,
            )
            return _silence_out(row)

    return await asyncio.to_thread(run)


@router.delete("/silences/{silence_id}", status_code=204, summary="Expire a silence now (audited)")
async def expire_silence(
    silence_id: Annotated[int, Path(ge=1, le=2**62)], state: State, loop: Loop, who: Desk
) -> None:
    def run() -> None:
        now = loop.clock.now()
        with state.db.write() as s:
            row = s.get(SilenceRow, silence_id)
            if row is None:
                raise NotFoundError(f"no silence {silence_id}")
            row.expired_early_at = now
            audit(
                s,
                actor=who.name,
                role=who.role.value,
                action="silence.expire",
                target=f"silence:{silence_id}",
                now=now,
            )

    await asyncio.to_thread(run)


@router.get("/audit", summary="The audit log of administrative actions, newest first")
async def audit_log(
    state: State, who: Admin, limit: int = Query(default=200, ge=1, le=5000)
) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with state.db.read() as s:
            q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            return {
                "entries": [
                    {
                        "at": iso(e.at),
                        "actor": e.actor,
                        "role": e.role,
                        "action": e.action,
                        "target": e.target,
                        "detail": e.detail,
                    }
                    for e in s.scalars(q)
                ]
            }

    return await asyncio.to_thread(run)
