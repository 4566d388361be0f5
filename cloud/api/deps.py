"""Request dependencies: the app state and the authenticated caller."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud.api.state import CloudState
from cloud.auth import USER_ROLES, Principal, Role, require
from cloud.errors import AuthenticationError

bearer = HTTPBearer(auto_error=False, description="`vgw_...` gateway token or `vus_...` user token")


def get_state(request: Request) -> CloudState:
    state: CloudState = request.app.state.vigil
    return state


State = Annotated[CloudState, Depends(get_state)]


async def get_principal(
    state: State, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise AuthenticationError("missing bearer token (Authorization: Bearer <token>)")
    return await asyncio.to_thread(
        state.credentials.principal_for_token, creds.credentials, now=state.clock.now()
    )


Caller = Annotated[Principal, Depends(get_principal)]


async def get_user(caller: Caller) -> Principal:
    require(caller, *USER_ROLES)
    return caller


async def get_admin(caller: Caller) -> Principal:
    require(caller, Role.ADMIN)
    return caller


async def get_gateway(caller: Caller) -> Principal:
    require(caller, Role.GATEWAY)
    return caller


User = Annotated[Principal, Depends(get_user)]
Admin = Annotated[Principal, Depends(get_admin)]
GatewayCaller = Annotated[Principal, Depends(get_gateway)]
