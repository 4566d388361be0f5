"""The incident page (facts, routing decision, escalation, timeline, notifications, photos), its one-click
actions, silences, and the call taker's manual report form.

Actions are plain HTML forms (one button each), so they work without JavaScript. Every action form carries
the ``row_version`` the page was rendered with; the console re-reads the incident first and refuses with
a clear message (409, "someone else changed this case") when it moved meanwhile, instead of acting on a
stale page. A retried submit is a no-op in the cloud (``idempotency_key`` = the form's nonce).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from alerts.loop.routing import FAMILY_ROLE
from dashboards import geo, notices
from dashboards.client import ApiError
from dashboards.web import FormError, Session, Web, read_form, same_origin

#: actions that need a written reason (mirrors alerts.loop.stages.NEEDS_REASON, checked again by the cloud)
NEEDS_REASON = frozenset({"return", "park", "reject", "reopen", "dismiss"})
SILENCE_HOURS = (1, 4, 24, 72)
#: the wristband kind whose incidents carry a "请致电家属" call task (the wearer's emergency contact)
FAMILY_KINDS = frozenset({"wristband"})
REPORT_TYPES = ("cover_damaged", "cover_missing", "smoke_smell", "water_logging", "elder_help", "other")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def roster_people(s: Session) -> list[dict[str, Any]]:
    """The responders of the roster document in force (``/api/v1/loop/config/roster``); [] without one."""
    try:
        doc = await s.api.get("/api/v1/loop/config/roster")
    except ApiError:
        return []
    return [r for r in (doc.get("body") or {}).get("responders", []) if isinstance(r, dict)]


def positions_of(people: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Responders' base positions (roster id -> lat, lon)."""
    return {
        str(r["id"]): (float(r["lat"]), float(r["lon"]))
        for r in people
        if r.get("lat") is not None and r.get("lon") is not None
    }


async def responder_positions(s: Session) -> dict[str, tuple[float, float]]:
    """Responders' base positions from the roster document (``/api/v1/loop/config/roster``)."""
    return positions_of(await roster_people(s))


async def _or_empty(call: Awaitable[Any], empty: Any) -> Any:
    """An optional part of the page: an API error (a role it is not for, an older cloud) leaves it out."""
    try:
        return await call
    except ApiError:
        return empty


async def _none(value: Any) -> Any:
    return value


def routes(web: Web) -> list[BaseRoute]:
    base = web.base

    async def suggestions(s: Session, inc: dict[str, Any]) -> list[dict[str, str]]:
        """Who is on call for the incident's receiving roles in its grid cell, nearest first.

        Distances use the responders' base positions from the roster document (the loop's own
        dispatch choice uses the same positions); people without a position come last.
        """
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for rec in inc.get("receivers") or []:
            for role, label in zip(rec.get("roles", []), rec.get("role_labels", []), strict=False):
                try:
                    people = await s.api.on_call(role, inc.get("grid") or "*")
                except ApiError:
                    continue
                for p in people:
                    if p["id"] not in seen:
                        seen.add(p["id"])
                        out.append({"id": str(p["id"]), "name": str(p.get("name", "")), "role": label})
        if not out:
            return []
        positions = positions_of(await roster_people(s))
        for p in out:
            pos = positions.get(p["id"])
            km = None
            if pos and inc.get("lat") is not None and inc.get("lon") is not None:
                km = geo.distance_km(inc["lat"], inc["lon"], pos[0], pos[1])
            p["km"] = "" if km is None else f"{km:.1f} km"
            p["_d"] = km if km is not None else float("inf")
        out.sort(key=lambda p: p["_d"])
        return [{k: str(v) for k, v in p.items() if k != "_d"} for p in out]

    async def render_incident(
        request: Request,
        s: Session,
        incident_id: int,
        *,
        message: str = "",
        error: str = "",
        status: int = 200,
    ) -> Response:
        t = web.translator(request)
        detail = await s.api.incident(incident_id, language=t.lang)
        inc = detail["incident"]
        # the block belongs to cases whose route pages the family (a fall, an SOS), not to a band gone silent
        # (a case not routed yet keeps it: better a call too many than a family not called)
        receivers = inc.get("receivers") or []
        pages_family = not receivers or any(FAMILY_ROLE in (r.get("roles") or []) for r in receivers)
        wants_family = s.is_staff and inc.get("kind") in FAMILY_KINDS and pages_family
        intents, log, inapp, family, roster = await asyncio.gather(
            _or_empty(s.api.intents(incident_id), []) if s.is_desk else _none([]),
            _or_empty(s.api.notify_log(incident_id), None),
            _or_empty(s.api.inapp(incident_id), []),
            # masked for every staff role; a viewer gets nothing of it (the cloud says 403 too)
            _or_empty(s.api.family(incident_id), []) if wants_family else _none([]),
            roster_people(s),
        )
        people = await suggestions(s, inc) if s.is_staff and "dispatch" in inc["allowed_actions"] else []
        clock = t.clock
        wearers = {str(f["device_id"]): str(f.get("wearer") or "") for f in family if f.get("wearer")}
        names = {str(r["id"]): str(r.get("name") or r["id"]) for r in roster if r.get("id")}
        notice_rows = notices.rows(
            log,
            intents,
            t=t,
            lang=t.lang,
            clock=clock,
            roster=names,
            wearers=wearers,
            inapp=[i for i in inapp if str(i.get("incident_id")) == str(incident_id)],
        )
        recipients = notices.recipients_named(
            log, t=t, lang=t.lang, roster=names, wearers=wearers, intents=intents
        )
        events = notices.fold(
            notices.timeline(detail["timeline"], t=t, lang=t.lang, roster=names, recipients=recipients)
        )
        for f in family:
            f["reached"] = notices.family_reached(f.get("family_reached"), t=t, clock=clock)
        return web.render(
            request,
            "incident.html",
            status=status,
            session=s,
            inc=inc,
            timeline=events,
            photos=detail.get("photos", []),
            notices=notice_rows,
            notices_known=log is not None,
            people=people,
            family=family,
            reveal_seconds=web.cfg.reveal_seconds,
            message=message,
            error=error,
            nonce=secrets.token_hex(8),
            needs_reason=NEEDS_REASON,
            silence_hours=SILENCE_HOURS,
        )

    async def incident_page(request: Request, s: Session) -> Response:
        incident_id = _int(request.path_params["incident_id"]) or 0
        done = request.query_params.get("done", "")
        t = web.translator(request)
        message = t("incident.done", action=t("action." + done)) if done.isidentifier() else ""
        return await render_incident(request, s, incident_id, message=message)

    async def incident_act(request: Request, s: Session) -> Response:
        incident_id = _int(request.path_params["incident_id"]) or 0
        t = web.translator(request)
        if not same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        if not s.is_staff:  # the cloud refuses too; say it before anything else
            return await render_incident(request, s, incident_id, error=t("error.forbidden"), status=403)
        try:
            form = await read_form(request)
        except FormError as exc:
            return await render_incident(request, s, incident_id, error=t(exc.key, **exc.kw), status=400)
        action = form.get("action", "")
        reason = form.get("reason", "").strip()
        if action in NEEDS_REASON and not reason:
            return await render_incident(
                request, s, incident_id, error=t("error.reason_required"), status=400
            )
        # a stale page must not act: compare the version it was rendered with
        current = await s.api.incident(incident_id, language=t.lang)
        if str(current["incident"].get("row_version")) != form.get("row_version"):
            return await render_incident(request, s, incident_id, error=t("error.stale"), status=409)
        try:
            if action == "confirm":
                await s.api.confirm(incident_id)
            elif action == "silence":
                hours = _int(form.get("hours")) or 0
                if hours not in SILENCE_HOURS or not reason:
                    raise FormError("error.silence_form")
                inc = current["incident"]
                ends = datetime.now(UTC) + timedelta(hours=hours)
                match = {"device_id": inc["device_id"], "event": inc["event_type"]}
                await s.api.add_silence(match, ends.isoformat(timespec="seconds"), reason)
            else:
                body: dict[str, Any] = {
                    "action": action,
                    "reason": reason,
                    "idempotency_key": form.get("nonce"),
                }
                if action == "dispatch":
                    assignee = (form.get("assignee_other") or form.get("assignee") or "").strip()
                    if not assignee:
                        raise FormError("error.assignee_required")
                    body["assignee"] = assignee
                if action == "rate":
                    body["rating"] = _int(form.get("rating"))
                await s.api.act(incident_id, body, language=t.lang)
        except FormError as exc:
            return await render_incident(request, s, incident_id, error=t(exc.key, **exc.kw), status=400)
        except ApiError as exc:
            if exc.status in (400, 403, 409, 422):
                return await render_incident(
                    request, s, incident_id, error=web.api_message(request, exc), status=exc.status
                )
            raise
        return RedirectResponse(f"{base}/incidents/{incident_id}?done={action}", status_code=303)

    async def family_reveal(request: Request, s: Session) -> Response:
        """The full numbers of a wristband case's family contacts, for admin / dispatcher only.

        A POST from the page's own script (never a link: the number must not sit in a URL, a history or
        a proxy's log); the cloud checks the role again and writes the ``notify.family.reveal`` audit row.
        The answer is JSON, ``no-store``, and nothing of it is logged here.
        """
        incident_id = _int(request.path_params["incident_id"]) or 0
        t = web.translator(request)
        headers = {"Cache-Control": "no-store"}
        if not same_origin(request):
            return JSONResponse({"error": "cross-origin"}, status_code=403, headers=headers)
        if not s.sees_personal_data:  # operators and viewers: refused before the cloud is asked
            return JSONResponse({"error": t("error.forbidden")}, status_code=403, headers=headers)
        try:
            rows = await s.api.family(incident_id, reveal=True)
        except ApiError as exc:
            status = exc.status if exc.status in (403, 404) else 502
            return JSONResponse({"error": web.api_message(request, exc)}, status_code=status, headers=headers)
        contacts = [{"device_id": str(r["device_id"]), "phone": str(r["phone"])} for r in rows]
        return JSONResponse(
            {"contacts": contacts, "seconds": web.cfg.reveal_seconds, "recorded": t("family.recorded")},
            headers=headers,
        )

    async def incident_photo(request: Request, s: Session) -> Response:
        incident_id, photo_id = request.path_params["incident_id"], request.path_params["photo_id"]
        resp = await s.api.http.get(
            f"/api/v1/incidents/{incident_id}/photos/{photo_id}",
            headers={"Authorization": f"Bearer {s.api.token}"},
        )
        if resp.status_code != 200:
            return Response(status_code=resp.status_code)
        ctype = resp.headers.get("content-type", "application/octet-stream")
        if ctype.split(";")[0] not in ("image/jpeg", "image/png", "image/webp"):
            return Response(status_code=415)
        return Response(resp.content, media_type=ctype, headers={"Cache-Control": "private, max-age=3600"})

    async def report_form(request: Request, s: Session) -> Response:
        return web.render(request, "report_entry.html", session=s, error="", form={}, types=REPORT_TYPES)

    async def report_submit(request: Request, s: Session) -> Response:
        t = web.translator(request)
        if not same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        form: dict[str, str] = {}
        try:
            form = await read_form(request)
            description = form.get("description", "").strip()
            if not description:
                raise FormError("error.description_required")
            kind = form.get("type", "")
            if kind not in REPORT_TYPES:
                raise FormError("error.type_required")
            grade = _int(form.get("grade")) or 2
            body: dict[str, Any] = {
                "type": kind,
                "description": description,
                "address": form.get("address", "").strip(),
                "grid": form.get("grid", "").strip(),
                "grade": min(max(grade, 1), 3),
                "contact": form.get("contact", "").strip(),
                "register": form.get("register") == "1",
            }
            for key in ("lat", "lon"):
                raw = form.get(key, "").strip()
                if raw:
                    try:
                        body[key] = float(raw)
                    except ValueError as exc:
                        raise FormError("error.bad_coordinate") from exc
            made = await s.api.file_report(body)
        except FormError as exc:
            return web.render(
                request,
                "report_entry.html",
                status=400,
                session=s,
                error=t(exc.key, **exc.kw),
                form=form,
                types=REPORT_TYPES,
            )
        except ApiError as exc:
            if exc.status in (400, 422):
                return web.render(
                    request,
                    "report_entry.html",
                    status=exc.status,
                    session=s,
                    error=web.api_message(request, exc),
                    form=form,
                    types=REPORT_TYPES,
                )
            raise
        return RedirectResponse(f"{base}/incidents/{made['incident']['id']}?done=report", status_code=303)

    return [
        Route("/incidents/{incident_id:int}", web.page(incident_page)),
        Route("/incidents/{incident_id:int}/act", web.page(incident_act), methods=["POST"]),
        Route("/incidents/{incident_id:int}/photos/{photo_id:int}", web.page(incident_photo)),
        Route("/incidents/{incident_id:int}/family/reveal", web.page(family_reveal), methods=["POST"]),
        Route("/reports/new", web.page(report_form)),
        Route("/reports/new", web.page(report_submit), methods=["POST"]),
    ]
