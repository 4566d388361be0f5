"""The console's needs from the cloud: a live change stream (server-sent events) and the console itself.

``install(app)`` does three things, so ``cloud/app.py`` needs one line:

1. an :class:`EventHub` tees the alert sink of ingest and of the connectivity monitor, so every committed
   alert step is announced to open streams right after its commit (the sink the incident loop plugs in
   keeps being called first, unchanged);
2. ``GET /api/v1/console/devices``: every device's map fields as compact rows (no personal data), and
   ``GET /api/v1/events/stream``: ``text/event-stream`` of ``changed`` events, authenticated by the
   bearer header *or* the console's HttpOnly session cookie (``EventSource`` cannot send headers);
3. mounts the console (``dashboards.create_console``) at ``/console`` with an ``httpx`` client bound to
   this app in-process (``httpx.ASGITransport``), so the console only ever uses the public HTTP API;
4. :class:`CloudNowHeader`: every ``/api/`` response says the cloud's current time (``X-Vigil-Now``, UTC
   seconds from ``state.clock``, accelerated in ``vigil demo``), so the console, in-process or remote,
   says "12 分钟前" against the cloud's clock and not its host's (docs/console.md).

The stream is a "something changed" signal, not a log: each subscriber has a bounded queue; when it
is full the event is dropped and counted (``vigil_cloud_console_events_dropped_total``) because the one
already queued makes the page re-read the current state anyway. A stream ends after ``STREAM_MAX_S``
(the browser reconnects within ``retry`` ms and re-reads), so a server shutdown never waits on it long.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from prometheus_client import Counter, Gauge
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from alerts.contract import AlertEvent
from cloud.api.deps import ERROR_RESPONSES, State, User
from cloud.api.state import CloudState
from cloud.auth import USER_ROLES, require
from cloud.db import AlertStep, Device
from cloud.errors import AuthenticationError, CloudError
from cloud.ingest import AlertSink
from cloud.loop.models import Incident, IncidentEvent
from dashboards import SESSION_COOKIE, create_console
from dashboards.client import NOW_HEADER
from firmware_bridge.kernel.clock import Clock

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/events", tags=["console"], responses=ERROR_RESPONSES)
map_router = APIRouter(prefix="/api/v1/console", tags=["console"], responses=ERROR_RESPONSES)
MAP_FIELDS = ("device_id", "kind", "name", "lat", "lon", "street", "grid", "last_seen")
QUEUE_SIZE = 64
HEARTBEAT_S = 10.0
STREAM_MAX_S = 30.0
RETRY_MS = 500
PROBE_INTERVAL_S = 0.5


class CloudNowHeader:
    """Pure ASGI middleware: ``X-Vigil-Now: <the cloud clock's UTC seconds>`` on every ``/api/`` response.

    Read when the response starts, so it is the time the answer was made (a list's "12 分钟前" and its
    overdue flags agree). Like HTTP's ``Date``, but to the millisecond and from the cloud's own clock.
    """

    def __init__(self, app: Any, clock: Clock) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/api/"):
            await self.app(scope, receive, send)
            return

        async def send_now(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    *message.get("headers", []),
                    (NOW_HEADER.lower().encode(), f"{self.clock.now():.3f}".encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_now)


class EventHub:
    """Fan-out of change notifications to the open streams; bounded, never blocks the publisher."""

    def __init__(
        self,
        *,
        dropped: Counter | None = None,
        streams: Gauge | None = None,
        probe: Callable[[], tuple[float, ...]] | None = None,
        probe_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._dropped = dropped
        self._streams = streams
        self._probe = probe
        self._probe_interval_s = probe_interval_s
        self._watcher: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        """While anyone listens: announce changes made elsewhere (actions, timers, links, other workers).

        ``probe`` returns cheap high-water marks (newest incident event id, newest alert step id); a change
        in them means someone changed something this process's sink did not see.
        """
        assert self._probe is not None
        last: tuple[float, ...] | None = None
        while self._subscribers:
            mark: tuple[float, ...] | None
            try:
                mark = await asyncio.to_thread(self._probe)
            except (SQLAlchemyError, CloudError) as exc:  # a database hiccup, or shutting down
                log.warning("console change watch failed; retrying", extra={"error": repr(exc)})
                mark = last  # try again next tick; the streams stay open
            if last is not None and mark != last:
                self.publish({"type": "changed"})
            last = mark
            await asyncio.sleep(self._probe_interval_s)

    def publish(self, event: dict[str, Any]) -> None:
        for q in list(self._subscribers):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                if self._dropped is not None:
                    self._dropped.inc()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._subscribers.add(q)
        if self._probe is not None and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="console-change-watch")
        if self._streams is not None:
            self._streams.set(len(self._subscribers))
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(q)
        if self._streams is not None:
            self._streams.set(len(self._subscribers))

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


class HubSink:
    """An :class:`AlertSink` that calls the wrapped sink, then announces the steps on the hub."""

    def __init__(self, inner: AlertSink, hub: EventHub) -> None:
        self.inner = inner
        self.hub = hub

    async def alerts_committed(self, steps: Sequence[AlertEvent], *, source: str) -> None:
        try:
            await self.inner.alerts_committed(steps, source=source)
        finally:
            self.hub.publish(
                {
                    "type": "alerts",
                    "source": source,
                    "alerts": [
                        {
                            "alert_id": s.alert_id,
                            "severity": int(s.severity),
                            "phase": s.phase.value,
                            "event_type": s.event_type.value,
                        }
                        for s in steps
                    ],
                }
            )


def _hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.console_events
    return hub


def _token(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return auth[7:].strip()
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return cookie
    raise AuthenticationError("missing bearer token or console session")


async def _events(hub: EventHub, request: Request) -> AsyncIterator[str]:
    q = hub.subscribe()
    try:
        yield f"retry: {RETRY_MS}\nevent: hello\ndata: {{}}\n\n"
        deadline = time.monotonic() + STREAM_MAX_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(min(HEARTBEAT_S, left)):
                    event = await q.get()
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield ": heartbeat\n\n"
                continue
            yield f"event: changed\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"
    finally:
        hub.unsubscribe(q)


@router.get(
    "/stream",
    summary="Server-sent events: `changed` whenever alerts (or incidents) change; bearer or console cookie",
    response_class=StreamingResponse,
    include_in_schema=False,  # a stream that stays open: no use to generated clients and fuzzers
)
async def stream(request: Request, state: State) -> StreamingResponse:
    principal = await asyncio.to_thread(
        state.credentials.principal_for_token, _token(request), now=state.clock.now()
    )
    require(principal, *USER_ROLES)
    return StreamingResponse(
        _events(_hub(request), request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _map_rows(state: CloudState) -> list[list[Any]]:
    cols = [getattr(Device, f) for f in MAP_FIELDS]
    with state.db.read() as s:
        return [list(r) for r in s.execute(select(*cols).order_by(Device.device_id))]


@map_router.get(
    "/devices",
    summary="Every device's map fields as compact rows (no personal data): the console's map layer",
    response_model=None,
)
async def map_devices(caller: User, state: State) -> JSONResponse:
    # one SQL query over plain columns, no per-row decryption or model validation: 10,000 devices in ~50 ms
    rows = await asyncio.to_thread(_map_rows, state)
    return JSONResponse({"fields": list(MAP_FIELDS), "rows": rows}, headers={"Cache-Control": "no-store"})


def install(app: FastAPI) -> EventHub:
    """Tee the alert sinks into a hub, add the stream route and mount the console at ``/console``."""
    state = app.state.vigil
    reg = state.metrics.registry

    def probe() -> tuple[float, ...]:
        with state.db.read() as s:
            return (
                s.scalar(select(func.max(IncidentEvent.id))) or 0,
                s.scalar(select(func.max(Incident.updated_at))) or 0.0,  # escalation steps, deliveries
                s.scalar(select(func.max(AlertStep.id))) or 0,
            )

    hub = EventHub(
        probe=probe,
        dropped=Counter(
            "vigil_cloud_console_events_dropped_total",
            "change events dropped because a console stream's queue was full",
            registry=reg,
        ),
        streams=Gauge("vigil_cloud_console_streams", "open console event streams", registry=reg),
    )
    state.ingest.sink = HubSink(state.ingest.sink, hub)
    state.monitor.sink = HubSink(state.monitor.sink, hub)
    app.state.console_events = hub
    app.include_router(router)
    app.include_router(map_router)
    app.add_middleware(CloudNowHeader, clock=state.clock)
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://vigil.internal", timeout=30
    )
    app.mount("/console", create_console(http, base="/console", events_url="/api/v1/events/stream"))

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=307)

    @app.get("/l/{token}", include_in_schema=False)
    async def link_page(token: str) -> RedirectResponse:
        # the link in a message (cloud.notify.links) opens the phone page; the token stays in the path
        return RedirectResponse(f"/console/l/{quote(token, safe='')}", status_code=307)

    @app.get("/report", include_in_schema=False)
    async def report_page() -> RedirectResponse:
        return RedirectResponse("/console/report", status_code=307)

    return hub
