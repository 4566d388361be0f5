"""Request dependencies: the app state and the authenticated caller.

A gateway's token is bound to its client certificate (docs/mtls.md): :data:`bearer` reads, besides the
token, what the connection says about the client certificate (the cloud's own TLS handshake, or a trusted
proxy's headers; :func:`cloud.tls.request_certificate`), and :func:`get_principal` refuses a gateway token
that comes with another gateway's certificate, or with none where one is required (403, audited as
``auth.gateway_certificate_refused``, counted in ``vigil_cloud_gateway_certificate_refusals_total``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.state import CloudState
from cloud.auth import (
    USER_ROLES,
    GatewayCertificateError,
    Principal,
    Role,
    check_gateway_certificate,
    require,
)
from cloud.certrefusals import record_certificate_refusal
from cloud.errors import AuthenticationError
from cloud.tls import ConnectionCertificate, GatewayBinding, request_certificate

log = logging.getLogger(__name__)


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


class ConnectionCredentials(HTTPAuthorizationCredentials):
    """The bearer token and what the connection says about the client certificate."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    certificate: ConnectionCertificate = ConnectionCertificate(None, required=False)


class CertificateBearer(HTTPBearer):
    """``Authorization: Bearer`` plus the connection's client certificate (:class:`ConnectionCredentials`).

    The binding settings (:class:`~cloud.tls.GatewayBinding`, from the environment; ``vigil cloud``
    validates them at start through :func:`cloud.tls.uvicorn_tls_options`) are read once per app.
    """

    async def __call__(self, request: Request) -> ConnectionCredentials | None:  # type: ignore[override]
        creds = await super().__call__(request)
        if creds is None:
            return None
        binding: GatewayBinding | None = getattr(request.app.state, "vigil_gateway_binding", None)
        if binding is None:
            binding = GatewayBinding.from_env()
            request.app.state.vigil_gateway_binding = binding
        client_ca = get_state(request).settings.tls_client_ca is not None
        cert = request_certificate(request.scope, request.headers, binding, client_ca=client_ca)
        return ConnectionCredentials(scheme=creds.scheme, credentials=creds.credentials, certificate=cert)


bearer = CertificateBearer(
    auto_error=False,
    scheme_name="HTTPBearer",  # the OpenAPI name it had as a plain HTTPBearer
    description="`vgw_...` gateway token or `vus_...` user token",
)


def get_state(request: Request) -> CloudState:
    state: CloudState = request.app.state.vigil
    return state


State = Annotated[CloudState, Depends(get_state)]


async def get_principal(
    state: State, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise AuthenticationError("missing bearer token (Authorization: Bearer <token>)")
    principal = await asyncio.to_thread(
        state.credentials.principal_for_token, creds.credentials, now=state.clock.now()
    )
    if principal.is_gateway:
        cert = creds.certificate if isinstance(creds, ConnectionCredentials) else None
        identity = cert.identity if cert is not None else None
        try:
            check_gateway_certificate(
                principal,
                identity.gateway_id if identity is not None else None,
                identity.subject if identity is not None else None,
                required=cert.required if cert is not None else False,
            )
        except GatewayCertificateError as exc:
            await record_certificate_refusal(state, exc, identity.source if identity is not None else None)
            raise
    return principal


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
