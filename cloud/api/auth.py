"""Login (password -> bearer token) and ``whoami``."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field

from cloud.api.deps import ERROR_RESPONSES, Caller, State, User, bearer
from cloud.auth import LoginThrottle
from cloud.errors import AuthenticationError
from cloud.limits import RateLimitedError
from cloud.loop.config import audit

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], responses=ERROR_RESPONSES)
LOGIN_TTL_S = 12 * 3600.0


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class TokenOut(BaseModel):
    token: str
    expires_at: float


class WhoAmI(BaseModel):
    role: str
    name: str


def _throttle(request: Request, state: State) -> LoginThrottle:
    """One per app; its counts come from the audit log, shared by every worker and kept across restarts."""
    throttle = getattr(request.app.state, "login_throttle", None)
    if throttle is None:
        throttle = request.app.state.login_throttle = LoginThrottle(state.db)
    return throttle


def _audit_login(state: State, username: str, address: str, action: str, now: float) -> None:
    """Logins and failed logins go to the administrative audit log (``GET /api/v1/loop/audit``)."""
    with state.db.write() as s:
        audit(s, actor=username[:64], role="", action=action, target=f"addr:{address}"[:128], now=now)


@router.post(
    "/login",
    response_model=TokenOut,
    responses={
        401: {"description": "wrong username or password"},
        429: {"description": "too many failed logins for this username or address; retry later"},
    },
)
async def login(body: LoginIn, state: State, request: Request) -> TokenOut:
    now = state.clock.now()
    address = request.client.host if request.client else "unknown"
    throttle = _throttle(request, state)
    keys = throttle.keys(body.username, address)
    wait = await asyncio.to_thread(throttle.retry_after, keys, now=now)
    if wait > 0:
        await asyncio.to_thread(_audit_login, state, body.username, address, "auth.login_throttled", now)
        raise RateLimitedError("too many failed logins; wait before trying again", retry_after_s=wait)
    try:
        token = await asyncio.to_thread(
            state.credentials.login, body.username, body.password, now=now, ttl_s=LOGIN_TTL_S
        )
    except AuthenticationError:
        throttle.failed(keys, now=now)
        await asyncio.to_thread(_audit_login, state, body.username, address, "auth.login_failed", now)
        raise
    throttle.succeeded(keys)
    await asyncio.to_thread(_audit_login, state, body.username, address, "auth.login", now)
    return TokenOut(token=token, expires_at=now + LOGIN_TTL_S)


@router.post("/logout", status_code=204, summary="Revoke the user token used for this request")
async def logout(
    caller: User, state: State, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Response:
    assert creds is not None  # `User` already required a valid bearer token
    await asyncio.to_thread(state.credentials.revoke_user_token, creds.credentials)
    return Response(status_code=204)


@router.get("/whoami", response_model=WhoAmI)
async def whoami(caller: Caller) -> WhoAmI:
    return WhoAmI(role=caller.role.value, name=caller.name)
