"""The operators' console: a Starlette sub-app of server-rendered pages that talks to the cloud over HTTP.

``create_console(http)`` returns an ASGI app; the cloud mounts it at ``/console`` and hands it an
``httpx.AsyncClient`` bound to itself (``httpx.ASGITransport``: HTTP semantics, no socket). The console
holds no state of its own: the signed-in user's API token sits in an HttpOnly, SameSite=Strict cookie,
and every page is rendered from what the API returns *for that token*, so role masking is the API's
(and the registry's) and cannot drift here. The console only hides more: a role whose personal data
the API masks never sees a wearer's name or health values on any page.

Live updates: the page opens an ``EventSource`` on the cloud's stream (``events_url``) and re-fetches
the queue fragment (htmx) and the map layer when something changes. Every asset is served from this
package or the installed xstatic wheels (Leaflet, Leaflet.markercluster): no CDN, no tile server.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo

import httpx
import jinja2
import xstatic.pkg.leaflet
import xstatic.pkg.leaflet_markercluster
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dashboards import charts, geo
from dashboards.client import ApiError, CloudAPI
from dashboards.i18n import Translator, parse_lang
from firmware_bridge.kernel import locale

SESSION_COOKIE = "vigil_session"
LANG_COOKIE = "vigil_lang"
PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIRS: dict[str, Path] = {
    "app": PACKAGE_DIR / "static",
    "leaflet": Path(xstatic.pkg.leaflet.BASE_DIR),
    "markercluster": Path(xstatic.pkg.leaflet_markercluster.BASE_DIR),
}
HEALTH_KINDS = frozenset({"wristband"})
MAX_FORM_BYTES = 64 * 1024
COMMUNITY_TTL_S = 300.0  # streets / grid cells / buildings change when the registry does: rarely

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    base: str  # where the console is mounted, e.g. "/console"
    events_url: str  # the cloud's server-sent events stream
    zone: ZoneInfo
    map_file: Path | None


@dataclass(frozen=True, slots=True)
class Session:
    api: CloudAPI
    user: str
    role: str

    @property
    def sees_personal_data(self) -> bool:
        return self.role in ("admin", "dispatcher")


def create_console(
    http: httpx.AsyncClient,
    *,
    base: str = "/console",
    events_url: str = "/api/v1/events/stream",
    zone: ZoneInfo | None = None,
    map_file: Path | None = None,
) -> Starlette:
    """The console as an ASGI app to mount at ``base``; ``http`` reaches the cloud's ``/api/v1``."""
    cfg = ConsoleConfig(
        base=base.rstrip("/"), events_url=events_url, zone=zone or locale.display_zone(), map_file=map_file
    )
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dashboards", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )

    def translator(request: Request) -> Translator:
        raw = request.cookies.get(LANG_COOKIE)
        return Translator(parse_lang(raw), cfg.zone)

    def render(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        t = translator(request)
        html = env.get_template(template).render(
            t=t, base=cfg.base, events_url=cfg.events_url, path=request.url.path, **ctx
        )
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    async def session(request: Request) -> Session | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        api = CloudAPI(http, token)
        try:
            me = await api.whoami()
        except ApiError as exc:
            if exc.status in (401, 403):
                return None
            raise
        if me.get("role") == "gateway":
            return None
        return Session(api=api, user=me["name"], role=me["role"])

    def login_redirect(request: Request) -> Response:
        nxt = quote(request.url.path, safe="/")
        if request.headers.get("HX-Request"):
            return Response(status_code=204, headers={"HX-Redirect": f"{cfg.base}/login?next={nxt}"})
        return RedirectResponse(f"{cfg.base}/login?next={nxt}", status_code=303)

    def page(fn: Callable[[Request, Session], Awaitable[Response]]) -> Handler:
        async def handler(request: Request) -> Response:
            s = await session(request)
            if s is None:
                return login_redirect(request)
            try:
                return await fn(request, s)
            except ApiError as exc:
                if exc.status == 401:
                    return login_redirect(request)
                return error_page(request, exc)

        return handler

    def error_page(request: Request, exc: ApiError) -> HTMLResponse:
        t = translator(request)
        if exc.status == 403:
            msg = t("error.forbidden")
        elif exc.status == 404:
            msg = t("error.not_found")
        elif exc.status == 409:
            msg = t("error.stale")
        else:
            msg = t("error.generic", detail=exc.detail or exc.code)
        return render(request, "error.html", status=exc.status, message=msg)

    # -- login, logout, language -------------------------------------------------------------------------
    async def login_form(request: Request) -> Response:
        return render(request, "login.html", error="", next=_safe_next(request.query_params.get("next"), cfg))

    async def login_submit(request: Request) -> Response:
        if not _same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        form = await _form(request)
        t = translator(request)
        username, password = form.get("username", "").strip(), form.get("password", "")
        nxt = _safe_next(form.get("next"), cfg)
        if not username or not password:
            return render(request, "login.html", status=400, error=t("login.required"), next=nxt)
        try:
            token = await CloudAPI(http, None).login(username, password)
        except ApiError as exc:
            if exc.status in (401, 422):
                return render(request, "login.html", status=401, error=t("login.failed"), next=nxt)
            return error_page(request, exc)
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=12 * 3600,
            httponly=True,
            samesite="strict",
            path="/",
            secure=request.url.scheme == "https",
        )
        return resp

    async def logout(request: Request) -> Response:
        if not _same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            with contextlib.suppress(ApiError):  # an expired token is as logged out as a revoked one
                await CloudAPI(http, token).logout()
        resp = RedirectResponse(f"{cfg.base}/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    async def set_lang(request: Request) -> Response:
        lang = parse_lang(request.path_params["lang"])
        resp = RedirectResponse(_safe_next(request.query_params.get("next"), cfg), status_code=303)
        resp.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="strict", path="/")
        return resp

    # -- pages -------------------------------------------------------------------------------------------
    async def overview(request: Request, s: Session) -> Response:
        alerts = await s.api.open_alerts()
        gws = await s.api.gateways()
        return render(
            request,
            "console.html",
            session=s,
            queue=_queue(alerts),
            kpi={
                "open": len(alerts),
                "high": sum(1 for a in alerts if int(a["severity"]) >= 3),
                "gateways_online": sum(1 for g in gws if g.get("online")),
                "gateways": len(gws),
            },
        )

    async def queue_fragment(request: Request, s: Session) -> Response:
        alerts = await s.api.open_alerts()
        return render(request, "_queue.html", session=s, queue=_queue(alerts))

    async def map_devices(request: Request, s: Session) -> Response:
        devices = await s.api.map_devices()
        alerts = await s.api.open_alerts()
        return JSONResponse(geo.device_points(devices, alerts), headers={"Cache-Control": "no-store"})

    community: dict[str, Any] = {}  # the derived layers, shared by every user (no personal data in them)

    async def map_community(request: Request, s: Session) -> Response:
        if cfg.map_file is not None:
            return Response(cfg.map_file.read_bytes(), media_type="application/geo+json")
        now = time.monotonic()
        if community.get("until", 0.0) < now:
            devices = await s.api.map_devices()
            community["body"] = json.dumps(geo.community_layers(devices), separators=(",", ":")).encode()
            community["until"] = now + COMMUNITY_TTL_S
        return Response(community["body"], media_type="application/geo+json")

    async def device_page(request: Request, s: Session) -> Response:
        device_id = request.path_params["device_id"]
        dev = await s.api.device(device_id)
        health_hidden = dev["kind"] in HEALTH_KINDS and (
            dev.get("personal_data_masked") or not s.sees_personal_data
        )
        series: list[charts.Chart] = []
        if not health_hidden:
            r = await s.api.readings(device_id)
            for ch, values in r["values"].items():
                c = charts.sparkline(ch, r["time"], values)
                if c is not None:
                    series.append(c)
        alerts = [a for a in await s.api.open_alerts() if a["device_id"] == dev["device_id"]]
        return render(
            request,
            "device.html",
            session=s,
            dev=dev,
            charts=series,
            health_hidden=health_hidden,
            alerts=_queue(alerts),
            show_wearer=s.role != "viewer",
        )

    async def gateways_page(request: Request, s: Session) -> Response:
        gws = await s.api.gateways()
        return render(request, "gateways.html", session=s, gateways=gws)

    async def alert_page(request: Request, s: Session) -> Response:
        detail = await s.api.alert(request.path_params["alert_id"])
        masked = detail["alert"]["kind"] in HEALTH_KINDS and not s.sees_personal_data
        return render(request, "alert.html", session=s, detail=detail, health_hidden=masked)

    async def root(request: Request) -> Response:
        return RedirectResponse(f"{cfg.base}/", status_code=307)

    routes = [
        Route("/", page(overview)),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/lang/{lang}", set_lang),
        Route("/fragments/queue", page(queue_fragment)),
        Route("/map/devices.json", page(map_devices)),
        Route("/map/community.geojson", page(map_community)),
        Route("/devices/{device_id}", page(device_page)),
        Route("/gateways", page(gateways_page)),
        Route("/alerts/{alert_id:path}", page(alert_page)),
        *[
            Mount(f"/static/{name}", StaticFiles(directory=path), name=f"static-{name}")
            for name, path in STATIC_DIRS.items()
        ],
    ]
    app = Starlette(routes=routes)
    app.state.console = cfg
    return app


def _queue(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most severe first, then newest first (by the raising step's time)."""
    return sorted(alerts, key=lambda a: (-int(a["severity"]), -float(a["time"]), a["alert_id"]))


def _safe_next(value: str | None, cfg: ConsoleConfig) -> str:
    """Only redirect inside the console (no open redirect to another site)."""
    if value and value.startswith(cfg.base + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return cfg.base + "/"


def _same_origin(request: Request) -> bool:
    """Refuse cross-site form posts: a browser sends ``Origin`` on POST; it must be our own host."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


def json_script(data: Any) -> str:
    """JSON safe to embed in a ``<script type="application/json">`` element."""
    return json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
