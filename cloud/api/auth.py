"""Login (password -> bearer token) and ``whoami``."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field

from cloud.api.deps import Caller, State, User, bearer

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
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


@router.post(
    "/login", response_model=TokenOut, responses={401: {"description": "wrong username or password"}}
)
async def login(body: LoginIn, state: State) -> TokenOut:
    now = state.clock.now()
    token = await asyncio.to_thread(
        state.credentials.login, body.username, body.password, now=now, ttl_s=LOGIN_TTL_S
    )
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
