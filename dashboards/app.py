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

Areas: :mod:`dashboards.pages` (login, overview, map, devices, gateways, alerts, KPIs),
:mod:`dashboards.incidents` (incident page, one-click actions, manual reports) and
:mod:`dashboards.public` (the responder's and the resident's phone pages, opened from a link).
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import xstatic.pkg.leaflet
import xstatic.pkg.leaflet_markercluster
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from dashboards import admin, incidents, pages, public
from dashboards.web import LANG_COOKIE, SESSION_COOKIE, ConsoleConfig, Web
from firmware_bridge.kernel import locale

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIRS: dict[str, Path] = {
    "app": PACKAGE_DIR / "static",
    "leaflet": Path(xstatic.pkg.leaflet.BASE_DIR),
    "markercluster": Path(xstatic.pkg.leaflet_markercluster.BASE_DIR),
}

__all__ = ["LANG_COOKIE", "SESSION_COOKIE", "STATIC_DIRS", "create_console"]


def create_console(
    http: httpx.AsyncClient,
    *,
    base: str = "/console",
    events_url: str = "/api/v1/events/stream",
    zone: ZoneInfo | None = None,
    map_file: Path | None = None,
    reveal_seconds: int = 60,
) -> Starlette:
    """The console as an ASGI app to mount at ``base``; ``http`` reaches the cloud's ``/api/v1``."""
    cfg = ConsoleConfig(
        base=base.rstrip("/"),
        events_url=events_url,
        zone=zone or locale.display_zone(),
        map_file=map_file,
        reveal_seconds=reveal_seconds,
    )
    web = Web(http, cfg)
    routes: list[BaseRoute] = [
        *pages.routes(web),
        *incidents.routes(web),
        *public.routes(web),
        *admin.routes(web),
        *[
            Mount(f"/static/{name}", StaticFiles(directory=path), name=f"static-{name}")
            for name, path in STATIC_DIRS.items()
        ],
    ]
    app = Starlette(routes=routes)
    app.state.console = cfg
    return app
