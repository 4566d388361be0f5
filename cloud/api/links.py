"""Public endpoints behind the links in messages, and residents' reports. No login: the link is the key.

Responder links (``accept`` / ``decline`` / ``on_the_way`` / ``arrived`` / ``resolved``)::

    GET  /api/v1/links/{token}            what the link does, whether it can still be used, the case
    POST /api/v1/links/{token}            do it: {"note": "...", "photo_b64": "<base64 JPEG/PNG/WebP>"}
    GET  /api/v1/links/{token}/position   a personal link's live wearer position (the page's refresh)

Resident case links (``case``)::

    GET  /api/v1/links/{token}            the case: status, promise, rating
    POST /api/v1/links/{token}/rating     {"score": 1-5, "comment": "..."}  (once)
    POST /api/v1/links/{token}/reopen     {"reason": "..."}                  (within the window)

    POST /api/v1/reports                  {"category", "description", "lat", "lon", "photo_b64"?}

Forged, expired, reused or wrong-purpose links answer 403 / 400 / 409 with a reason and change nothing.

Reads that can show where a wristband wearer is (``GET /links/{token}`` of a personal responder link, and
``.../position``) are limited per link (:func:`limit_position_reads`, :func:`cloud.limits.link_read_limit`:
6 a minute, 12 at once): over it, 429 ``{"reason": "link_reads"}`` with ``Retry-After``, counted in
``vigil_cloud_rate_limited_requests_total{limit="link_reads"}``; docs/security.md says why the other link
endpoints need no such limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cloud.api.deps import ERROR_RESPONSES, State
from cloud.api.notify import get_notify
from cloud.errors import BadRequestError
from cloud.limits import GuardMetrics, KeyedRateLimit, link_read_limit
from cloud.notify.actions import POSITION_PURPOSES
from cloud.notify.links import LinkClaims, Purpose
from cloud.tls import ProxyReports, proxy_refusal

router = APIRouter(prefix="/api/v1", tags=["links"], responses=ERROR_RESPONSES)


class ActIn(BaseModel):
    note: str = Field(default="", max_length=1000)
    photo_b64: str | None = Field(default=None, description="a JPEG, PNG or WebP photo, base64")
    outcome: Literal["real", "nuisance", "false_alarm"] | None = Field(
        default=None,
        description="a resolved link only: the responder's verdict: real 真实事件, "
        "nuisance 扰动（烹饪、蒸汽等）, false_alarm 误报",
    )


class RateIn(BaseModel):
    score: int = Field(ge=1, le=5)
    comment: str = Field(default="", max_length=500)


class ReopenIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


class ReportIn(BaseModel):
    category: str = Field(min_length=1, max_length=32)
    description: str = Field(min_length=1, max_length=2000)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    photo_b64: str | None = None


def _photo(b64: str | None) -> bytes | None:
    if not b64:
        return None
    try:
        return base64.b64decode(b64.split(",", 1)[-1], validate=True)  # accepts a data: URL too
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError("photo_b64 is not valid base64") from exc


def limit_position_reads(request: Request, state: State, claims: LinkClaims) -> None:
    """429 if this link (its verified nonce) read the wearer's position too often (:func:`link_read_limit`).

    Keyed by the nonce of a link whose signature was checked: a forger cannot mint keys to flush the
    buckets. One limit per app (``app.state.vigil_link_reads``), per process, on the cloud's clock (the
    one the links' expiry is checked with; a clock set back adds no tokens)."""
    limit: KeyedRateLimit | None = getattr(request.app.state, "vigil_link_reads", None)
    if limit is None:
        limit = request.app.state.vigil_link_reads = link_read_limit(monotonic=state.clock.now, db=state.db)
    limit.check(("link", claims.nonce), GuardMetrics.for_registry(state.metrics.registry))


def _shows_position(claims: LinkClaims) -> bool:
    """A personal responder link: its page shows the wearer's position (ResponderDesk.link_state)."""
    return claims.purpose in POSITION_PURPOSES and claims.actor.startswith("user:")


@router.get("/links/{token}", summary="What a link does and whether it can still be used")
async def show_link(token: str, request: Request, state: State) -> dict[str, Any]:
    notify = get_notify(request)
    now = state.clock.now()
    claims = notify.links.verify(token, now=now)
    if _shows_position(claims):
        await asyncio.to_thread(limit_position_reads, request, state, claims)  # PostgreSQL: a round trip
    if claims.purpose is Purpose.CASE:
        return {"purpose": "case", **await asyncio.to_thread(notify.residents.case, token, now=now)}
    return await asyncio.to_thread(notify.responders.link_state, token, now=now, store=state.store)


@router.post("/links/{token}", summary="Do what a responder link says (accept, arrived, resolved ...)")
async def use_link(token: str, body: ActIn, request: Request, state: State) -> dict[str, Any]:
    notify = get_notify(request)
    photo = _photo(body.photo_b64)
    done = await asyncio.to_thread(
        notify.responders.act_by_link,
        token,
        note=body.note,
        photo=photo,
        now=state.clock.now(),
        outcome=body.outcome,
    )
    return done.to_json()


@router.post("/links/{token}/rating", summary="A resident rates the handling of their case (once)")
async def rate(token: str, body: RateIn, request: Request, state: State) -> dict[str, Any]:
    notify = get_notify(request)
    return await asyncio.to_thread(
        notify.residents.rate, token, score=body.score, comment=body.comment, now=state.clock.now()
    )


@router.post("/links/{token}/reopen", summary="A resident reopens their case within the window")
async def reopen(token: str, body: ReopenIn, request: Request, state: State) -> dict[str, Any]:
    notify = get_notify(request)
    return await asyncio.to_thread(notify.residents.reopen, token, reason=body.reason, now=state.clock.now())


@router.post("/reports", status_code=201, summary="A resident reports a problem; answers a case number")
async def report(body: ReportIn, request: Request, state: State) -> dict[str, Any]:
    notify = get_notify(request)
    client = request.client.host if request.client else "unknown"
    return await asyncio.to_thread(
        notify.residents.report,
        category=body.category,
        description=body.description,
        lat=body.lat,
        lon=body.lon,
        client=client,
        photo=_photo(body.photo_b64),
        now=state.clock.now(),
    )


@router.get(
    "/links/{token}/position",
    summary="Where the wearer of an open wristband case is now, for the personal link's page (refresh)",
)
async def link_position(token: str, request: Request, state: State) -> JSONResponse:
    """``{"open", "live", "position", "refresh_s"}`` (:meth:`ResponderDesk.live_position`); never cached."""
    notify = get_notify(request)
    now = state.clock.now()
    claims = notify.links.verify(token, now=now)  # a forged or expired link: 403 before any limit
    await asyncio.to_thread(limit_position_reads, request, state, claims)  # PostgreSQL: a round trip
    body = await asyncio.to_thread(notify.responders.live_position, token, now=now, store=state.store)
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Referrer-Policy": "same-origin"})


@router.post(
    "/internal/certificate-refusals",
    status_code=403,
    summary="Internal: the reverse proxy reports a client certificate it refused (shared secret, loopback)",
    tags=["internal"],
)
async def proxy_certificate_refusal(request: Request, state: State) -> JSONResponse:
    """nginx's ``@certificate_refused`` location (deploy/nginx/vigil-cloud.conf) reports a certificate it
    refused (495 / 496); recorded like the cloud's own refusals and answered with their 403 and reason
    (:func:`cloud.tls.proxy_refusal`). Not from a trusted proxy with ``X-Vigil-Proxy-Secret``:
    403 ``proxy_unauthenticated``, nothing recorded. Here because this router is wired into the app;
    docs/mtls.md describes it."""
    reports: ProxyReports | None = getattr(request.app.state, "vigil_proxy_reports", None)
    if reports is None:
        reports = request.app.state.vigil_proxy_reports = ProxyReports.from_env(state.db)
    exc = await proxy_refusal(state, reports, request.scope, request.headers)
    return JSONResponse(exc.body(), status_code=403)  # nginx closes the client's connection after a 495
