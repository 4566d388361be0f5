"""``POST /api/v1/ingest/batches``: the HTTP side of the gateway-to-cloud contract (docs/contract.md).

Two body formats, chosen by ``Content-Type`` (:mod:`alerts.uplink_body`): ``application/json`` (for ever:
third-party gateways, vendors, curl; also a missing header, as before) and the columnar binary body
``application/vnd.vigil.uplink+msgpack`` that Vigil gateways send (about 10x less CPU to read than JSON,
``bench/bench_wire.py``). Any other type is answered 415 before the body is read.

The gateway's token is checked *before* the body is read or parsed: FastAPI reads and validates a declared
body parameter before it runs any dependency, so this route uses :class:`AuthFirstRoute`, which
authenticates from the headers first, then negotiates the format, then reads and decodes the body itself
(:func:`~alerts.uplink_body.decode_batch`, the one decoder the MQTT workers use too) and calls the endpoint
with the batch. FastAPI's own body handling is not used for this route: the endpoint's ``batch`` parameter
documents the JSON schema in OpenAPI, and ``openapi_extra`` adds the binary media type. An unauthenticated
client therefore costs a header lookup, never a parse of up to ``max_body_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from alerts.contract import HTTP_PATH, UplinkAck, UplinkBatch
from alerts.uplink_body import CONTENT_TYPES, MSGPACK_CONTENT_TYPE, BodyError, decode_batch, media_type
from cloud.api.deps import ERROR_RESPONSES, State, bearer, get_principal, get_state
from cloud.auth import Principal, Role, require
from cloud.errors import CloudError


class UnsupportedMediaTypeError(CloudError):
    """415: a ``Content-Type`` the ingest route does not read; nothing was read or stored."""

    status_code = 415
    code = "unsupported_media_type"


class AuthFirstRoute(APIRoute):
    """The ingest route: token verified, then format negotiated, then the body read and decoded."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def auth_first(request: Request) -> Response:
            state = get_state(request)
            principal = await get_principal(state, await bearer(request))
            require(principal, Role.GATEWAY)
            content_type = request.headers.get("content-type")
            media = media_type(content_type)
            if media is None:
                raise UnsupportedMediaTypeError(
                    f"unsupported content type {content_type!r}; send one of {', '.join(CONTENT_TYPES)}"
                )
            try:
                body = await request.body()
            except ClientDisconnect:  # gone, or over the size limit: BodyLimit has answered 413 already
                return Response(status_code=400)
            try:
                batch = decode_batch(body, media)
            except BodyError as exc:  # 422 through the app's validation handler, like any schema error
                raise RequestValidationError(
                    [{"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors]
                ) from exc
            response: Response = await endpoint(batch, principal, state)
            return response

        return auth_first


def _gateway(request: Request) -> Principal:
    """Documentation only: :class:`AuthFirstRoute` authenticates and passes the principal itself."""
    raise NotImplementedError


Gateway = Annotated[Principal, Depends(_gateway)]
router = APIRouter(tags=["ingest"], route_class=AuthFirstRoute, responses=ERROR_RESPONSES)

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"description": "missing, unknown, rotated-out or revoked gateway token"},
    403: {"description": "the batch names another gateway than the token's; nothing was stored"},
    413: {"description": "body larger than the configured limit"},
    415: {"description": "a Content-Type other than application/json or " + MSGPACK_CONTENT_TYPE},
    422: {"description": "not a valid UplinkBatch (either format); `errors` names each field"},
    429: {"description": "the gateway is over its quota; nothing was stored, retry after `Retry-After`"},
    503: {"description": "storage unavailable; retry the same batch later"},
}
_BINARY_BODY = {
    "requestBody": {
        "content": {
            MSGPACK_CONTENT_TYPE: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "the same UplinkBatch as a msgpack map with typed binary columns "
                    "(byte layout: docs/contract.md, *Binary body*)",
                }
            }
        }
    }
}


@router.post(
    HTTP_PATH,
    response_model=UplinkAck,
    responses=_ERRORS,
    summary="Store an uplink batch; the ack is sent only after commit",
    description="Records the gateway may not write are not stored and are listed in `refused` "
    "(contract version 2; docs/contract.md). Body: `application/json`, or the columnar binary body "
    f"`{MSGPACK_CONTENT_TYPE}` (docs/contract.md).",
    dependencies=[Depends(bearer)],  # documents the bearer scheme in OpenAPI; checked by AuthFirstRoute
    openapi_extra=_BINARY_BODY,
)
async def ingest_batch(batch: UplinkBatch, caller: Gateway, state: State) -> Response:
    """Called by :class:`AuthFirstRoute` with the decoded batch, the authenticated gateway and the state
    (the annotations tell OpenAPI what the route takes; FastAPI does not resolve them)."""
    ack = await state.ingest.ingest(batch, gateway_id=caller.name)
    return JSONResponse(ack.for_version(batch.contract_version))
