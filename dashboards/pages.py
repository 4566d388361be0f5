"""Login, the overview (map + live queue), map data, device, gateway, alert and KPI pages."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from dashboards import charts, geo
from dashboards.client import ApiError, CloudAPI
from dashboards.i18n import parse_lang
from dashboards.web import LANG_COOKIE, SESSION_COOKIE, FormError, Session, Web, read_form, same_origin
from firmware_bridge import registry
from firmware_bridge.kernel.locale import parse_iso

HEALTH_KINDS = frozenset({"wristband"})
QUEUE_ROWS = 300  # rows drawn in the live queue (most urgent first); the rest are counted, one click away
COMMUNITY_TTL_S = 300.0  # streets / grid cells / buildings change when the registry does: rarely
RISK_TTL_S = 300.0  # the cloud caches its fitted forecast for 15 min; the layer asks at most every 5 min
RISK_HORIZON_H = 24.0
RISK_CELLS = 300
GRADES = {"none": 0, "low": 1, "medium": 2, "high": 3}
DEVICE_OPEN_INCIDENTS = 20  # a device seldom has more than one case open; a page of them is plenty
DEVICE_PAST_INCIDENTS = 5  # 「历史事件」: the last few closed cases, the rest are in the incident list
#: the programmes' own published figures, beside ours on the KPI board (docs/MISSION: the bar to beat)
PROGRAMME_FIGURES = {"closure_rate": 0.937, "on_time_rate": 0.758, "facility_closure_rate": 0.56}


def channel_units(kind: str) -> dict[str, tuple[str, int]]:
    """A kind's channels' units and the decimals their wire resolution carries, from the kind registry
    (``tilt_deg`` -> (°, 2), ``heart_rate_bpm`` -> (bpm, 0): 「心率：63 次/分」, not 63.00); {} for a kind it
    does not know. At most 4 decimals (a position's 6 say nothing to a reader)."""
    try:
        channels = registry.spec(kind).channels
    except ValueError:
        return {}
    return {c.name: (c.unit, min(max(0, -math.floor(math.log10(c.scale) + 1e-9)), 4)) for c in channels}


def _has_cjk(text: object) -> bool:
    """Whether a text has Chinese in it (a person's or a rule's words, not the detector's English line)."""
    return isinstance(text, str) and any("\u4e00" <= ch <= "\u9fff" for ch in text)


def alert_queue(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most severe first, then newest first (by the raising step's time)."""
    return sorted(alerts, key=lambda a: (-int(a["severity"]), -float(a["time"]), a["alert_id"]))


def incident_queue(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highest grade first, then newest first; each gets ``grade_n`` and ``created_ts`` for the template."""
    for i in items:
        i["grade_n"] = GRADES.get(str(i.get("grade")), 0)
        i["created_ts"] = parse_iso(i["created_at"]) if i.get("created_at") else 0.0
    return sorted(items, key=lambda i: (-i["grade_n"], -i["created_ts"], -int(i["id"])))


async def open_incidents(api: CloudAPI, language: str) -> list[dict[str, Any]] | None:
    """Open incidents, or ``None`` when this cloud has no incident API (the queue then shows alerts)."""
    try:
        return incident_queue(await api.incidents(open_only=True, language=language))
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


async def device_incidents(
    api: CloudAPI, device_id: str, language: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """A device's open incidents and its last few closed ones (newest first), or ``None`` when this cloud
    has no incident API (the device page then says nothing about incidents)."""
    try:
        current, past = await asyncio.gather(
            api.device_incidents(device_id, open_only=True, limit=DEVICE_OPEN_INCIDENTS, language=language),
            api.device_incidents(device_id, open_only=False, limit=DEVICE_PAST_INCIDENTS, language=language),
        )
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return current, past


async def responder_points(api: CloudAPI) -> list[list[Any]]:
    """Responders' base positions from the roster (``[lat, lon, id, name, roles]``); [] without a loop."""
    try:
        doc = await api.get("/api/v1/loop/config/roster")
    except ApiError:
        return []
    return [
        [
            float(r["lat"]),
            float(r["lon"]),
            str(r.get("id", "")),
            str(r.get("name", "")),
            ",".join(r.get("roles", [])),
        ]
        for r in (doc.get("body") or {}).get("responders", [])
        if isinstance(r, dict) and r.get("lat") is not None and r.get("lon") is not None
    ]


def routes(web: Web) -> list[BaseRoute]:
    base = web.base

    async def login_form(request: Request) -> Response:
        return web.render(
            request, "login.html", error="", next=web.safe_next(request.query_params.get("next"))
        )

    async def login_submit(request: Request) -> Response:
        if not same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        t = web.translator(request)
        try:
            form = await read_form(request)
        except FormError as exc:
            return web.render(request, "login.html", status=400, error=t(exc.key, **exc.kw), next=base + "/")
        username, password = form.get("username", "").strip(), form.get("password", "")
        nxt = web.safe_next(form.get("next"))
        if not username or not password:
            return web.render(request, "login.html", status=400, error=t("login.required"), next=nxt)
        try:
            token = await web.public_api().login(username, password)
        except ApiError as exc:
            if exc.status in (401, 422):
                return web.render(request, "login.html", status=401, error=t("login.failed"), next=nxt)
            return web.error_page(request, exc)
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
        if not same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            with contextlib.suppress(ApiError):  # an expired token is as logged out as a revoked one
                await CloudAPI(web.http, token).logout()
        resp = RedirectResponse(f"{base}/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    async def set_lang(request: Request) -> Response:
        lang = parse_lang(request.path_params["lang"])
        resp = RedirectResponse(web.safe_next(request.query_params.get("next")), status_code=303)
        resp.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="strict", path="/")
        return resp

    async def queue_context(request: Request, s: Session) -> dict[str, Any]:
        """The queue: open incidents when the loop is there, else open alerts."""
        incidents = await open_incidents(s.api, web.translator(request).lang)
        alerts = await s.api.open_alerts() if incidents is None else None
        return {
            "incidents": incidents,
            "queue": alert_queue(alerts) if alerts is not None else [],
            "n_alerts": None if alerts is None else len(alerts),
            "max_rows": QUEUE_ROWS,
            # the queue's "12 分钟前", against the cloud's clock (X-Vigil-Now), never this host's: the
            # overdue badges beside it are the cloud's; the fragment is redrawn at least every 30 s
            "now": s.api.now(),
        }

    def kpi_tiles(q: dict[str, Any], gws: list[dict[str, Any]]) -> dict[str, int]:
        """The tiles above the queue, counted from the same rows the queue shows."""
        incidents = q["incidents"] or []
        return {
            "open": len(q["queue"]),
            "high": sum(1 for a in q["queue"] if int(a["severity"]) >= 3),
            "incidents": len(incidents),
            "incidents_high": sum(1 for i in incidents if i["grade_n"] >= 3),
            "gateways_online": sum(1 for g in gws if g.get("online")),
            "gateways": len(gws),
        }

    async def overview(request: Request, s: Session) -> Response:
        q, gws = await asyncio.gather(queue_context(request, s), s.api.gateways())
        return web.render(request, "console.html", session=s, **q, kpi=kpi_tiles(q, gws))

    async def queue_fragment(request: Request, s: Session) -> Response:
        """The queue, and the KPI tiles out of band: a refresh redraws the counts with the rows (the page's
        tiles stayed at their first count: 7 open over 6 rows once a case closed)."""
        q, gws = await asyncio.gather(queue_context(request, s), s.api.gateways())
        return web.render(request, "_queue_fragment.html", session=s, **q, kpi=kpi_tiles(q, gws))

    labels: dict[str, Any] = {}  # device id -> [name, street], shared by every user (map fields only)

    async def device_names(s: Session) -> dict[str, list[str]]:
        """Each device's name and street (``井盖00069``, ``海淀胡同``) for lists that would otherwise show a
        16-digit id; from the map's device rows (no personal data), cached 5 min. A device added since is
        shown by its id; a cloud without the map API gives {}."""
        now = time.monotonic()
        if labels.get("until", 0.0) < now:
            try:
                rows = await s.api.map_devices()
            except ApiError:
                return {}
            labels["body"] = {
                str(d["device_id"]): [str(d.get("name") or ""), str(d.get("street") or "")] for d in rows
            }
            labels["until"] = now + COMMUNITY_TTL_S
        body: dict[str, list[str]] = labels["body"]
        return body

    async def alerts_page(request: Request, s: Session) -> Response:
        alerts, names = await asyncio.gather(s.api.open_alerts(), device_names(s))
        return web.render(request, "alerts.html", session=s, queue=alert_queue(alerts), device_names=names)

    async def map_devices(request: Request, s: Session) -> Response:
        devices, incidents_or_none, responders = await asyncio.gather(
            s.api.map_devices(),
            open_incidents(s.api, web.translator(request).lang),
            responder_points(s.api),
        )
        if incidents_or_none is None:  # no loop: colour devices by their open alerts
            marks = await s.api.open_alerts()
        else:  # colour devices by their open incidents' grade, as the queue ranks them
            marks = [{"device_id": i["device_id"], "severity": i["grade_n"]} for i in incidents_or_none]
        body = geo.device_points(devices, marks)
        incidents = incidents_or_none or []
        body["incidents"] = [
            [i["lat"], i["lon"], i["id"], i["grade_n"], i.get("event_label", ""), i.get("stage_label", "")]
            for i in incidents
            if i.get("lat") is not None and i.get("lon") is not None
        ]
        body["responders"] = responders
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    community: dict[str, Any] = {}  # the derived layers, shared by every user (no personal data in them)

    async def map_community(request: Request, s: Session) -> Response:
        if web.cfg.map_file is not None:
            return Response(web.cfg.map_file.read_bytes(), media_type="application/geo+json")
        now = time.monotonic()
        if community.get("until", 0.0) < now:
            devices = await s.api.map_devices()
            community["body"] = json.dumps(geo.community_layers(devices), separators=(",", ":")).encode()
            community["until"] = now + COMMUNITY_TTL_S
        return Response(community["body"], media_type="application/geo+json")

    risk: dict[tuple[bool, str], tuple[float, bytes]] = {}  # (sees health data, language) -> body

    async def map_risk(request: Request, s: Session) -> Response:
        """The risk overlay: tomorrow's expected events per grid cell (``GET /api/v1/risk/forecast``).

        Cached per (may see health data, language), since the API leaves health families out for roles
        that may not see them. A cloud without the risk API, or with too little history to fit, gets an
        empty layer with the reason, never an error page on the map.
        """
        t = web.translator(request)
        key = (s.sees_personal_data, t.lang)
        now = time.monotonic()
        hit = risk.get(key)
        if hit is None or hit[0] < now:
            try:
                fc = await s.api.get(
                    "/api/v1/risk/forecast", horizon_h=RISK_HORIZON_H, limit=RISK_CELLS, device_limit=0
                )
                layer = geo.risk_layer(
                    fc, lambda f: t(f"risk.family.{f}"), lambda **kw: t("map.risk_tooltip", **kw)
                )
            except ApiError as exc:
                if exc.status >= 500 and exc.status != 503:
                    raise
                layer = {"type": "FeatureCollection", "features": [], "unavailable": exc.detail[:200]}
            risk[key] = (
                now + RISK_TTL_S,
                json.dumps(layer, separators=(",", ":"), ensure_ascii=False).encode(),
            )
            hit = risk[key]
        return Response(hit[1], media_type="application/geo+json", headers={"Cache-Control": "no-store"})

    async def device_page(request: Request, s: Session) -> Response:
        device_id = request.path_params["device_id"]
        dev = await s.api.device(device_id)
        health_hidden = dev["kind"] in HEALTH_KINDS and (
            dev.get("personal_data_masked") or not s.sees_personal_data
        )
        series: list[charts.Chart] = []
        if not health_hidden:
            r = await s.api.readings(device_id)
            t = web.translator(request)
            units = channel_units(dev["kind"])
            for ch, values in r["values"].items():
                c = charts.sparkline(ch, r["time"], values)
                if c is not None:
                    unit, digits = units.get(ch, ("", 2))
                    named = dataclasses.replace(c, label=t.channel(ch), unit=t.unit(unit), digits=digits)
                    series.append(named)
        open_alerts, cases = await asyncio.gather(
            s.api.open_alerts(), device_incidents(s.api, str(dev["device_id"]), web.translator(request).lang)
        )
        alerts = [a for a in open_alerts if a["device_id"] == dev["device_id"]]
        return web.render(
            request,
            "device.html",
            session=s,
            dev=dev,
            charts=series,
            health_hidden=health_hidden,
            alerts=alert_queue(alerts),
            current_incidents=None if cases is None else cases[0],
            past_incidents=None if cases is None else cases[1],
            device_names={str(dev["device_id"]): [str(dev.get("name") or ""), str(dev.get("street") or "")]},
            show_wearer=s.role != "viewer",
            now=s.api.now(),  # the cloud's clock: "today" is the cloud's (docs/console.md, X-Vigil-Now)
        )

    async def gateways_page(request: Request, s: Session) -> Response:
        return web.render(request, "gateways.html", session=s, gateways=await s.api.gateways())

    async def alert_page(request: Request, s: Session) -> Response:
        detail, names = await asyncio.gather(s.api.alert(request.path_params["alert_id"]), device_names(s))
        masked = detail["alert"]["kind"] in HEALTH_KINDS and not s.sees_personal_data
        lang = web.translator(request).lang
        for st in detail["steps"]:  # the detector's own line is English (kind id: event SEVERITY (value))
            msg = str(st.get("message") or "")
            st["shown_message"] = msg if lang == "en" or _has_cjk(msg) else ""
        return web.render(
            request,
            "alert.html",
            session=s,
            detail=detail,
            health_hidden=masked,
            named=names.get(str(detail["alert"]["device_id"])),
        )

    async def kpi_page(request: Request, s: Session) -> Response:
        by = request.query_params.get("by", "department")
        if by not in ("all", "department", "zone", "responder", "kind"):
            by = "department"
        overall: dict[str, Any] | None
        grouped: dict[str, Any] | None
        try:
            overall = await s.api.kpis("all")
            grouped = await s.api.kpis(by)
        except ApiError as exc:
            if exc.status != 404:
                raise
            overall = grouped = None
        people: dict[str, str] = {}
        if by == "responder":  # a responder by name (网格员王建国), not the roster id (r-0001)
            with contextlib.suppress(ApiError):
                doc = await s.api.get("/api/v1/loop/config/roster")
                people = {
                    str(r["id"]): str(r.get("name") or r["id"])
                    for r in (doc.get("body") or {}).get("responders", [])
                    if isinstance(r, dict) and r.get("id")
                }
        return web.render(
            request,
            "kpi.html",
            session=s,
            overall=overall,
            grouped=grouped,
            by=by,
            people=people,
            programme=PROGRAMME_FIGURES,
        )

    async def root(request: Request) -> Response:
        return RedirectResponse(f"{base}/", status_code=307)

    return [
        Route("/", web.page(overview)),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/lang/{lang}", set_lang),
        Route("/fragments/queue", web.page(queue_fragment)),
        Route("/map/devices.json", web.page(map_devices)),
        Route("/map/community.geojson", web.page(map_community)),
        Route("/map/risk.geojson", web.page(map_risk)),
        Route("/devices/{device_id}", web.page(device_page)),
        Route("/gateways", web.page(gateways_page)),
        Route("/alerts", web.page(alerts_page)),
        Route("/alerts/{alert_id:path}", web.page(alert_page)),
        Route("/kpi", web.page(kpi_page)),
    ]
