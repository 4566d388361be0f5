"""Gateways: provisioning, token rotation and revocation (admin), state (any user)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from sqlalchemy import select

from cloud.api.deps import ERROR_RESPONSES, Admin, State, User
from cloud.db import Gateway
from cloud.errors import NotFoundError

router = APIRouter(prefix="/api/v1/gateways", tags=["gateways"], responses=ERROR_RESPONSES)
GatewayId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")]


class GatewayIn(BaseModel):
    gateway_id: str = Field(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")
    name: str = Field(default="", max_length=128)


class GatewayToken(BaseModel):
    gateway_id: str
    token: str = Field(description="shown once; only its SHA-256 is stored")
    previous_token_valid_until: float | None = None


class GatewayOut(BaseModel):
    gateway_id: str
    name: str
    created_at: float
    revoked: bool
    last_seen: float | None = Field(description="when its newest batch was committed (UTC s)")
    online: bool | None = Field(description="a batch within gateway_offline_s; null if never heard from")
    batches_total: int
    status: dict[str, Any] | None


def _out(g: Gateway, now: float, offline_s: float) -> GatewayOut:
    online = None if g.last_seen is None else (now - g.last_seen) <= offline_s and g.revoked_at is None
    return GatewayOut(
        gateway_id=g.gateway_id,
        name=g.name,
        created_at=g.created_at,
        revoked=g.revoked_at is not None,
        last_seen=g.last_seen,
        online=online,
        batches_total=g.batches_total or 0,
        status=g.last_status,
    )


def _list(state: Any) -> list[GatewayOut]:
    with state.db.read() as s:
        return [
            _out(g, state.clock.now(), state.settings.gateway_offline_s)
            for g in s.scalars(select(Gateway).order_by(Gateway.gateway_id))
        ]


def _get(state: Any, gateway_id: str) -> GatewayOut:
    with state.db.read() as s:
        g = s.get(Gateway, gateway_id)
        if g is None:
            raise NotFoundError(f"no gateway {gateway_id!r}")
        return _out(g, state.clock.now(), state.settings.gateway_offline_s)


@router.get("", response_model=list[GatewayOut])
async def list_gateways(caller: User, state: State) -> list[GatewayOut]:
    return await asyncio.to_thread(_list, state)


@router.get("/{gateway_id}", response_model=GatewayOut)
async def get_gateway(gateway_id: GatewayId, caller: User, state: State) -> GatewayOut:
    return await asyncio.to_thread(_get, state, gateway_id)


@router.post(
    "", response_model=GatewayToken, status_code=201, summary="Provision a gateway; returns its token once"
)
async def add_gateway(body: GatewayIn, caller: Admin, state: State) -> GatewayToken:
    token = await asyncio.to_thread(
        state.credentials.add_gateway, body.gateway_id, name=body.name, now=state.clock.now()
    )
    return GatewayToken(gateway_id=body.gateway_id, token=token)


@router.post(
    "/{gateway_id}/rotate",
    response_model=GatewayToken,
    summary="New token; the previous one stays valid for the configured grace period",
)
async def rotate_gateway(gateway_id: GatewayId, caller: Admin, state: State) -> GatewayToken:
    now = state.clock.now()
    token = await asyncio.to_thread(state.credentials.rotate_gateway, gateway_id, now=now)
    grace = state.settings.gateway_rotation_grace_s
    return GatewayToken(
        gateway_id=gateway_id, token=token, previous_token_valid_until=now + grace if grace else None
    )


@router.post(
    "/{gateway_id}/revoke", response_model=GatewayOut, summary="Invalidate every token of the gateway now"
)
async def revoke_gateway(gateway_id: GatewayId, caller: Admin, state: State) -> GatewayOut:
    await asyncio.to_thread(state.credentials.revoke_gateway, gateway_id, now=state.clock.now())
    return await asyncio.to_thread(_get, state, gateway_id)
