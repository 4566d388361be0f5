"""The console's only way to the cloud: its public HTTP API, with the signed-in user's bearer token.

The cloud hands the console an ``httpx.AsyncClient`` (in-process through ``httpx.ASGITransport`` when
the cloud serves the console itself, or a real client to a remote cloud); this module translates
httpx's errors and the API's JSON error bodies into :class:`ApiError`, in one place.

It also keeps the cloud's clock: every API response carries the cloud's "now" (``X-Vigil-Now``, UTC
seconds since the epoch, from the cloud's own clock, which ``vigil demo`` accelerates), and
:meth:`CloudAPI.now` is that time carried forward by the wall clock since the response came. The console
says "12 分钟前" against it, never against its host's clock (docs/console.md, "The console's now").
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx

#: the response header with the cloud's current time (``cloud.api.console`` sets it on every API response)
NOW_HEADER = "X-Vigil-Now"


def cloud_now_of(resp: httpx.Response) -> float | None:
    """The cloud's time a response names, or ``None`` (a cloud without the header, or a bad value)."""
    raw = resp.headers.get(NOW_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


class ConsoleError(Exception):
    """Base of the console's exceptions."""


class ApiError(ConsoleError):
    """The cloud answered with an error (``status`` 4xx/5xx) or could not be reached (``status`` 503)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class CloudAPI:
    """Typed-enough calls to ``/api/v1`` for one user token."""

    def __init__(self, http: httpx.AsyncClient, token: str | None) -> None:
        self.http = http
        self.token = token
        self.clock_offset: float | None = None  # cloud now - wall now, from the latest response

    def now(self) -> float:
        """The cloud's current time (UTC seconds): the latest response's ``X-Vigil-Now`` carried forward
        by the wall clock; the wall clock itself before any response or from a cloud without the header."""
        return time.time() + (self.clock_offset or 0.0)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = await self.http.request(method, path, headers=self._headers(), **kw)
        except httpx.HTTPError as exc:
            raise ApiError(503, "cloud_unreachable", str(exc) or type(exc).__name__) from exc
        cloud_now = cloud_now_of(resp)
        if cloud_now is not None:
            self.clock_offset = cloud_now - time.time()
        if resp.status_code >= 400:
            try:
                body = resp.json()
                code, detail = str(body.get("error", resp.status_code)), str(body.get("detail", ""))
            except ValueError:
                code, detail = f"http_{resp.status_code}", resp.text[:200]
            raise ApiError(resp.status_code, code, detail)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    async def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return await self.request("GET", path, params=clean)

    async def post(self, path: str, json: Any = None) -> Any:
        return await self.request("POST", path, json=json)

    # -- the calls the console makes ------------------------------------------------------------------
    async def login(self, username: str, password: str) -> str:
        body = await self.post("/api/v1/auth/login", {"username": username, "password": password})
        return str(body["token"])

    async def whoami(self) -> dict[str, str]:
        body: dict[str, str] = await self.get("/api/v1/auth/whoami")
        return body

    async def logout(self) -> None:
        await self.post("/api/v1/auth/logout")

    async def open_alerts(self, limit: int = 2000) -> list[dict[str, Any]]:
        body = await self.get("/api/v1/alerts", state="open", limit=limit)
        alerts: list[dict[str, Any]] = body["alerts"]
        gw = await self.get("/api/v1/alerts", state="open", kind="gateway", limit=limit)
        return alerts + list(gw["alerts"])

    async def alert(self, alert_id: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.get(f"/api/v1/alerts/{alert_id}")
        return body

    async def devices(self, page: int = 10_000) -> list[dict[str, Any]]:
        """Every device (paged by the API's maximum page size)."""
        out: list[dict[str, Any]] = []
        while True:
            rows: list[dict[str, Any]] = await self.get("/api/v1/devices", limit=page, offset=len(out))
            out.extend(rows)
            if len(rows) < page:
                return out

    async def map_devices(self) -> list[dict[str, Any]]:
        """Every device's map fields (id, kind, name, position, street, grid, last seen): no personal data."""
        body = await self.get("/api/v1/console/devices")
        fields = body["fields"]
        return [dict(zip(fields, row, strict=True)) for row in body["rows"]]

    async def device(self, device_id: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.get(f"/api/v1/devices/{device_id}")
        return body

    async def readings(self, device_id: str, max_points: int = 300) -> dict[str, Any]:
        body: dict[str, Any] = await self.get(f"/api/v1/devices/{device_id}/readings", max_points=max_points)
        return body

    async def gateways(self) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = await self.get("/api/v1/gateways")
        return body

    # -- the closed loop (issue 8): incidents, work orders, rosters, KPIs ------------------------------------
    async def incidents(
        self, *, open_only: bool = True, limit: int = 1000, language: str = "zh"
    ) -> list[dict[str, Any]]:
        """Most urgent first (grade, then newest), so a queue capped at ``limit`` never hides a more urgent
        incident than it shows."""
        body = await self.get(
            "/api/v1/incidents", open=open_only, limit=limit, language=language, sort="grade"
        )
        incidents: list[dict[str, Any]] = body["incidents"]
        return incidents

    async def device_incidents(
        self, device_id: str, *, open_only: bool, limit: int, language: str = "zh"
    ) -> list[dict[str, Any]]:
        """The incidents any of a device's alerts is linked to, newest first (the device page)."""
        body = await self.get(
            "/api/v1/incidents", device_id=device_id, open=open_only, limit=limit, language=language
        )
        incidents: list[dict[str, Any]] = body["incidents"]
        return incidents

    async def incident(self, incident_id: int, language: str = "zh") -> dict[str, Any]:
        body: dict[str, Any] = await self.get(f"/api/v1/incidents/{incident_id}", language=language)
        return body

    async def act(self, incident_id: int, action: dict[str, Any], language: str = "zh") -> dict[str, Any]:
        body: dict[str, Any] = await self.request(
            "POST", f"/api/v1/incidents/{incident_id}/actions", json=action, params={"language": language}
        )
        return body

    async def confirm(self, incident_id: int) -> None:
        await self.post(f"/api/v1/incidents/{incident_id}/confirm")

    async def intents(self, incident_id: int) -> list[dict[str, Any]]:
        body = await self.get(f"/api/v1/incidents/{incident_id}/intents")
        intents: list[dict[str, Any]] = body["intents"]
        return intents

    async def notify_log(self, incident_id: int) -> dict[str, Any]:
        """Every delivery of the case with its attempts, and the responders' link actions."""
        body: dict[str, Any] = await self.get(f"/api/v1/notify/incidents/{incident_id}/log")
        return body

    async def inapp(self, incident_id: int) -> list[dict[str, Any]]:
        """The caller's own and the operator-wide in-app notices of one case (newest first); a cloud without
        the ``incident_id`` filter answers with the caller's latest, which the caller filters."""
        body: list[dict[str, Any]] = await self.get("/api/v1/notify/inapp", incident_id=incident_id)
        return body

    async def family(self, incident_id: int, *, reveal: bool = False) -> list[dict[str, Any]]:
        """A wristband case's family contacts, masked; ``reveal`` (admin / dispatcher) is audited."""
        params = {"reveal": "true"} if reveal else {}
        body: list[dict[str, Any]] = await self.get(
            f"/api/v1/notify/incidents/{incident_id}/family", **params
        )
        return body

    async def on_call(self, role: str, zone: str) -> list[dict[str, Any]]:
        body = await self.get("/api/v1/loop/oncall", role=role, zone=zone or "*")
        people: list[dict[str, Any]] = body["on_call"]
        return people

    async def add_silence(self, match: dict[str, Any], ends_at: str, reason: str) -> None:
        await self.post("/api/v1/loop/silences", {"match": match, "ends_at": ends_at, "reason": reason})

    async def file_report(self, report: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = await self.post("/api/v1/loop/reports", report)
        return body

    async def kpis(self, by: str = "all") -> dict[str, Any]:
        body: dict[str, Any] = await self.get("/api/v1/kpi", by=by)
        return body

    # -- public links (issue 14): no login, the token is the key --------------------------------------------
    async def link(self, token: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.get(f"/api/v1/links/{token}")
        return body

    async def use_link(
        self, token: str, note: str, photo_b64: str | None, outcome: str | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"note": note, "photo_b64": photo_b64}
        if outcome:
            payload["outcome"] = outcome  # the responder's verdict (resolved links; the API checks it)
        body: dict[str, Any] = await self.post(f"/api/v1/links/{token}", payload)
        return body

    async def rate_case(self, token: str, score: int, comment: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.post(
            f"/api/v1/links/{token}/rating", {"score": score, "comment": comment}
        )
        return body

    async def reopen_case(self, token: str, reason: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.post(f"/api/v1/links/{token}/reopen", {"reason": reason})
        return body
