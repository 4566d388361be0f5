"""What every console page shares: configuration, templates, the signed-in session, errors, forms.

:class:`Web` is built once by :func:`dashboards.app.create_console` and handed to each area's route
module (``pages``, ``incidents``, ``public``), so none of them builds its own Jinja environment or
re-implements the session and error handling.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit
from zoneinfo import ZoneInfo

import httpx
import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from dashboards.client import ApiError, CloudAPI
from dashboards.i18n import Translator, parse_lang

SESSION_COOKIE = "vigil_session"
LANG_COOKIE = "vigil_lang"
MAX_FORM_BYTES = 64 * 1024
MAX_PHOTO_FORM_BYTES = 12 * 1024 * 1024  # a 5 MB photo, base64 and form-encoded
PERSONAL_DATA_ROLES = frozenset({"admin", "dispatcher"})  # as the cloud's cloud.auth says
DESK_ROLES = frozenset({"admin", "dispatcher"})
STAFF_ROLES = frozenset({"admin", "dispatcher", "operator"})

Handler = Callable[[Request], Awaitable[Response]]


class FormError(Exception):
    """A form that cannot be used as sent; ``key`` is the catalog message shown to the user."""

    def __init__(self, key: str, **kw: object) -> None:
        super().__init__(key)
        self.key = key
        self.kw = kw


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    base: str  # where the console is mounted, e.g. "/console"
    events_url: str  # the cloud's server-sent events stream
    zone: ZoneInfo
    map_file: Path | None
    reveal_seconds: int = 60  # how long a revealed family number stays on screen before it is masked again


@dataclass(frozen=True, slots=True)
class Session:
    api: CloudAPI
    user: str
    role: str

    @property
    def sees_personal_data(self) -> bool:
        return self.role in PERSONAL_DATA_ROLES

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES

    @property
    def is_desk(self) -> bool:
        return self.role in DESK_ROLES


class Web:
    def __init__(self, http: httpx.AsyncClient, cfg: ConsoleConfig) -> None:
        self.http = http
        self.cfg = cfg
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("dashboards", "templates"),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined,
        )

    @property
    def base(self) -> str:
        return self.cfg.base

    def translator(self, request: Request) -> Translator:
        return Translator(parse_lang(request.cookies.get(LANG_COOKIE)), self.cfg.zone)

    def render(self, request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(
            t=self.translator(request),
            base=self.cfg.base,
            events_url=self.cfg.events_url,
            path=request.url.path,
            **ctx,
        )
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def public_api(self) -> CloudAPI:
        return CloudAPI(self.http, None)

    async def session(self, request: Request) -> Session | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        api = CloudAPI(self.http, token)
        try:
            me = await api.whoami()
        except ApiError as exc:
            if exc.status in (401, 403):
                return None
            raise
        if me.get("role") == "gateway":
            return None
        return Session(api=api, user=me["name"], role=me["role"])

    def login_redirect(self, request: Request) -> Response:
        nxt = quote(request.url.path, safe="/")
        if request.headers.get("HX-Request"):
            # back to the page the fragment belongs to, not to the fragment
            page = urlsplit(request.headers.get("HX-Current-URL", "")).path or self.base + "/"
            nxt = quote(self.safe_next(page), safe="/")
            return Response(status_code=204, headers={"HX-Redirect": f"{self.base}/login?next={nxt}"})
        return RedirectResponse(f"{self.base}/login?next={nxt}", status_code=303)

    def page(self, fn: Callable[[Request, Session], Awaitable[Response]]) -> Handler:
        """A handler for signed-in users; API errors become a page in the user's language."""

        async def handler(request: Request) -> Response:
            s = await self.session(request)
            if s is None:
                return self.login_redirect(request)
            try:
                return await fn(request, s)
            except ApiError as exc:
                if exc.status == 401:
                    return self.login_redirect(request)
                return self.error_page(request, exc)

        return handler

    def api_message(self, request: Request, exc: ApiError) -> str:
        t = self.translator(request)
        if exc.status == 403:
            return t("error.forbidden")
        if exc.status == 404:
            return t("error.not_found")
        if exc.status == 409:
            return t("error.conflict", detail=exc.detail)
        if exc.status in (400, 413, 415, 422):
            return t("error.invalid", detail=exc.detail or exc.code)
        return t("error.generic", detail=exc.detail or exc.code)

    def error_page(self, request: Request, exc: ApiError) -> HTMLResponse:
        if request.method == "GET" and exc.status == 422:
            # a page's address the cloud cannot parse (a mistyped device id): for a person, not found
            return self.not_found(request)
        return self.render(request, "error.html", status=exc.status, message=self.api_message(request, exc))

    def not_found(self, request: Request) -> HTMLResponse:
        """没有找到, as a console page (with the way back), not a bare status."""
        t = self.translator(request)
        return self.render(request, "error.html", status=404, message=t("error.not_found"))

    def safe_next(self, value: str | None) -> str:
        """Only redirect inside the console (no open redirect to another site)."""
        base = self.cfg.base
        if value and value.startswith(base + "/") and not value.startswith("//") and "\\" not in value:
            return value
        return base + "/"


def same_origin(request: Request) -> bool:
    """Refuse cross-site form posts: a browser sends ``Origin`` on POST; it must be our own host."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    return origin.split("://", 1)[-1] == request.headers.get("host", "")


async def read_form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (no multipart: photos come as base64 fields)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/x-www-form-urlencoded", ""):
        raise FormError("error.form_type")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FormError("error.too_large", kb=limit // 1024)
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}
