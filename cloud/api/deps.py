"""Request dependencies: the app state and the authenticated caller."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.state import CloudState
from cloud.auth import USER_ROLES, Principal, Role, require
from cloud.errors import AuthenticationError


class ErrorOut(BaseModel):
    """Every error body (:mod:`cloud.errors`, validation, HTTP): a code and a sentence naming the problem.

    Some errors add fields: ``rows`` (CSV import), ``device_ids`` (ingest), ``errors`` (validation),
    ``retry_after_s`` (429).
    """

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="machine-readable code: unauthenticated, forbidden, validation ...")
    detail: str


#: declared on every router, so the OpenAPI spec says what the app's error handlers really answer (a 4xx is
#: ``{"error", "detail", ...}``, not FastAPI's default ``HTTPValidationError``); schemathesis checks it
_ERROR_BODY = {"application/json": {"schema": ErrorOut.model_json_schema()}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    # ``content`` rather than ``model``: FastAPI would file a model under the route's own media type
    # (text/plain for the OneNET check, text/csv ...), but every error is JSON
    "4XX": {
        "content": _ERROR_BODY,
        "description": "refused: 400 bad request, 401 no or bad token, 403 role or device not allowed, "
        "404 not found, 409 conflict, 413 too large, 422 does not match the schema, 429 slow down",
    },
    503: {"content": _ERROR_BODY, "description": "storage unavailable; retry later"},
}

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
