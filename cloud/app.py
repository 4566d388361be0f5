"""The FastAPI application factory of the Vigil cloud service.

``create_app(settings)`` builds everything eagerly (migrations on the embedded default, the key file,
the database and time-series handles) so a bad configuration fails at start with a clear message, not
on the first request. The lifespan runs the background tasks (the connectivity monitor) in one
``asyncio.TaskGroup`` with named tasks and closes every resource at shutdown.

Cross-cutting concerns live here, once: the request body limit (413 before the body is read), the
translation of :mod:`cloud.errors` and validation errors into JSON 4xx bodies with a reason, and the
request metrics (``vigil_cloud_http_requests_total`` by route template, never by raw path, so ids do not
explode the label set).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud import operator_push, refusallog, retention
from cloud.api import alerts, auth, devices, gateways, ingest
from cloud.api import console as console_api
from cloud.api import links as links_api
from cloud.api import notify as notify_api
from cloud.api import risk as risk_api
from cloud.api.state import CloudState
from cloud.errors import CloudError
from cloud.ingest import AlertSink
from cloud.loop import wiring as loop_wiring
from cloud.metrics import CloudMetrics
from cloud.notify.config import NotifyConfig
from cloud.notify.service import NotifyService
from cloud.settings import CloudSettings
from firmware_bridge.kernel.clock import Clock

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestMetrics:
    """Pure ASGI middleware: count and time every HTTP request by its route template and status.

    Counted when the response starts (a stream such as the console's live feed is timed to its first byte,
    not to its end); a request whose handler raised before answering is counted as 500. Starlette's
    ``@app.middleware("http")`` did the same through a second request object and a task per request:
    ~830 us of CPU per request, this ~580 (measured with ingest stubbed out, bench/bench_ingest.py's app).
    """

    def __init__(self, app: ASGIApp, *, metrics: CloudMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.http_requests.labels(route, str(status)).inc()
            self.metrics.http_seconds.labels(route).observe(time.perf_counter() - t0)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not counted:
                count(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            if not counted:
                count(500)
            raise


class BodyLimit:
    """Pure ASGI middleware: refuse bodies over ``max_bytes`` with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, metrics: CloudMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.max_bytes:
                    await self._reject(send, declared)
                    return
        seen = 0
        response_started = rejected = False

        async def limited_receive() -> Message:
            # Over the limit: answer 413 ourselves and tell the app the client went away. (Raising here
            # would not work: FastAPI turns any error while reading the body into a 400.)
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    rejected = True
                    if not response_started:
                        await self._reject(send, seen)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if rejected:
                return  # the 413 is already sent; drop whatever the app answers to the "disconnect"
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)

    async def _reject(self, send: Send, size: int) -> None:
        self.metrics.rejects.labels("too_large").inc()
        body = json.dumps(
            {"error": "payload_too_large", "detail": f"request body over the {self.max_bytes}-byte limit"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app(
    settings: CloudSettings | None = None,
    *,
    sink: AlertSink | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """Build the app; ``sink`` gets committed alert steps (dispatch hook), ``clock`` may be accelerated."""
    settings = settings or CloudSettings.from_env()
    loop_sink = loop_wiring.LoopSink(sink)  # the closed loop sees every committed alert step (docs/loop.md)
    state = CloudState.build(settings, sink=loop_sink, clock=clock)
    metrics = state.metrics
    # deletes / erases personal data past its retention period, one process at a time (docs/privacy.md)
    retention.install(state, settings)
    refusallog.install_refusal_log(state)  # nginx's refusals missed while down (docs/mtls.md)
    notify = NotifyService.build(  # channels, outbox, links (docs/notifications.md)
        db=state.db,
        key_file=settings.secret_key_file,
        clock=state.clock,
        registry=metrics.registry,
        config=NotifyConfig.load(settings.notify_config_file),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with asyncio.TaskGroup() as tg:
                # the loop's intake queue, drained off the request in large batches (docs/loop.md)
                tasks = [tg.create_task(loop_sink.run(), name="loop-intake")]
                if settings.run_jobs and state.jobs.jobs:  # connectivity + registered jobs, under leases
                    tasks.append(tg.create_task(state.jobs.run(), name="periodic-jobs"))
                if settings.run_jobs:  # every process may deliver: the outbox's claims never send twice
                    tasks.append(tg.create_task(notify.run(), name="notify-delivery"))
                log.info(
                    "vigil cloud started",
                    extra={
                        "database": state.db.engine.url.get_backend_name(),
                        "background_tasks": [t.get_name() for t in tasks],
                    },
                )
                yield
                for t in tasks:
                    t.cancel()
        finally:
            await notify.aclose()
            await asyncio.to_thread(state.close)

    app = FastAPI(
        title="Vigil cloud",
        version="1",
        summary="Ingest, registry and alerts of the Vigil neighbourhood-safety system",
        description="Gateway-to-cloud contract: see docs/contract.md. Auth: `Authorization: Bearer <token>`.",
        lifespan=lifespan,
    )
    app.state.vigil = state
    app.state.notify = notify

    @app.exception_handler(CloudError)
    async def _cloud_error(request: Request, exc: CloudError) -> JSONResponse:
        if exc.status_code < 500:
            metrics.rejects.labels(exc.code).inc()
        else:
            log.error(
                "request failed", extra={"path": request.url.path, "error": exc.code, "detail": exc.detail}
            )
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        retry_after = getattr(exc, "retry_after_s", None)  # 429 (cloud.limits.RateLimitedError)
        if retry_after is not None:
            headers = {"Retry-After": str(max(1, round(retry_after)))}
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.rejects.labels("validation").inc()
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()[:50]]
        return JSONResponse(
            {"error": "validation", "detail": "request does not match the schema", "errors": errors},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        metrics.rejects.labels(f"http_{exc.status_code}").inc()
        return JSONResponse(
            {"error": f"http_{exc.status_code}", "detail": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.get("/healthz", tags=["ops"], summary="Liveness and database reachability")
    async def healthz() -> dict[str, object]:
        ok = await asyncio.to_thread(_db_ok, state)
        if not ok:
            return JSONResponse({"status": "unhealthy", "database": False}, status_code=503)  # type: ignore[return-value]
        return {"status": "ok", "database": True}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    for module in (ingest, devices, gateways, alerts, auth, operator_push):
        app.include_router(module.router)
    app.include_router(notify_api.router)
    app.include_router(links_api.router)
    app.include_router(risk_api.router)  # risk hot spots and patrol plans (docs/risk.md)
    console_api.install(app)  # live stream + the console at /console (docs/console.md)
    loop_wiring.install(app, loop_sink)  # incidents, work orders, escalation job, loop API (docs/loop.md)
    notify.connect_loop(app.state.loop, loop_sink)  # the loop's intents in, link / SMS actions out
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    return app


def _db_ok(state: CloudState) -> bool:
    from sqlalchemy import text

    try:
        with state.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # health probe: any failure means unhealthy, reported not raised
        return False
    return True
