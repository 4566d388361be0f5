"""The incident page (facts, routing decision, escalation, timeline, notifications, photos), its one-click
actions, silences, and the call taker's manual report form.

Actions are plain HTML forms (one button each), so they work without JavaScript. Every action form carries
the case's **decision state** as the page showed it (:func:`decision_sig`: stage, owner, assignee, verdict,
reopen count, open or not); the console re-reads the incident first and refuses with a clear message (409,
"someone else changed this case") when a person moved it meanwhile, instead of acting on a stale page. An
escalation step, a delivery report or an overdue mark changes the case's ``row_version`` but not what the
operator decides on, so it no longer invalidates an open page (an incident whose first step nobody could
be paged at escalates within a second of opening: the desk's first click used to be refused). A retried
submit is a no-op in the cloud (``idempotency_key`` = the form's nonce).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from alerts.loop import reasons
from alerts.loop.routing import FAMILY_ROLE
from dashboards import geo, notices
from dashboards.client import ApiError
from dashboards.i18n import Translator
from dashboards.web import FormError, Session, Web, read_form, same_origin

#: actions that need a written reason (mirrors alerts.loop.stages.NEEDS_REASON, checked again by the cloud)
NEEDS_REASON = frozenset({"return", "park", "reject", "reopen", "dismiss"})
SILENCE_HOURS = (1, 4, 24, 72)
#: actions that take the case away from someone or stop it; the button asks 「确认…？」 first (console.js)
ASK_FIRST = frozenset({"return", "park", "reject", "dismiss"})
#: the wristband kind whose incidents carry a "请致电家属" call task (the wearer's emergency contact)
FAMILY_KINDS = frozenset({"wristband"})
#: the desk's outcomes of a call to the family (``POST /api/v1/incidents/{id}/family-call``), button order
CALL_OUTCOMES = ("reached", "not_reached", "wrong_number")
CALL_NOTE_MAX = 200
#: the desk's rule-out after calling the site (``POST /api/v1/incidents/{id}/rule-out``), choice order
RULE_OUT_REASONS = ("nuisance", "false_alarm")
RULE_OUT_NOTE_MAX = 200
#: where the page scrolls to after a small form's post (the block that changed)
DONE_ANCHOR = {"family_call": "family"}
REPORT_TYPES = ("cover_damaged", "cover_missing", "smoke_smell", "water_logging", "elder_help", "other")


class Refused(Exception):
    """A small form refused before the cloud is asked: ``key`` the catalog's words, ``status`` the answer."""

    def __init__(self, key: str, status: int = 400) -> None:
        super().__init__(key)
        self.key = key
        self.status = status


def route_label(rule: str | None, t: Translator) -> str:
    """The routing rule that matched, as an operator reads it: ``root/manhole/cover_on_road`` ->
    「井盖 › 机动车道井盖」 (:func:`alerts.loop.reasons.route_words`; several joined by 「；」). A rule an
    administrator named is shown as written; the root alone is 「默认规则」. The machine path stays in the
    page as the element's ``title``."""
    if not rule:
        return "—"
    return reasons.route_words(rule, t.lang) or t("incident.route_root")


def policy_label(name: str | None, t: Translator) -> str:
    """An escalation policy's name in words: the catalog's ``policy.<name>`` for the shipped policies,
    else a route family's label (「井盖」 -> 「井盖升级流程」), else the administrator's name as written."""
    if not name:
        return "—"
    label = t("policy." + name)
    if label != "policy." + name:
        return label
    words = reasons.ROUTE_RULES.get(name)
    if words and words[t.lang == "en"]:
        return t("policy.of", what=words[t.lang == "en"])
    return name


def escalation_words(esc: dict[str, Any], doc: dict[str, Any] | None, t: Translator) -> dict[str, Any]:
    """The incident's escalation line: the policy in words, the next level counted from 1 (the API's
    ``next_step`` is the index of the step to run next) and whom it pages, from the escalation document in
    force (``GET /api/v1/loop/config/escalation``; ``None`` when this role may not read it). ``confirm``:
    whether 「电话确认，立即升级」 does anything on this case: the policy has a step that waits for the
    desk's confirmation and the escalation is still running, or the desk ruled it out (the button then
    withdraws the rule-out). Without the document, as before: shown."""
    name = str(esc.get("policy") or "")
    policies = (doc or {}).get("body") if isinstance(doc, dict) else None
    policy = policies.get(name) if isinstance(policies, dict) else None
    steps = [st for st in (policy or {}).get("steps") or [] if isinstance(st, dict)]
    nxt = int(esc.get("next_step") or 0)
    done = bool(esc.get("done"))
    whom = ""
    if steps and not done:
        step = steps[nxt] if nxt < len(steps) else steps[0]  # past the last: the policy repeats from 1
        roles = [str(r) for r in step.get("roles") or []]
        sep = ", " if t.lang == "en" else "、"
        whom = sep.join(t("incident.all_receivers") if r == "*" else t.role(r) for r in roles)
    waits_for_desk = any(st.get("confirm") for st in steps) if policy is not None else True
    return {
        "label": policy_label(name, t),
        "name": name,
        "next": "" if done else t("incident.next_level", n=(nxt % len(steps) if steps else nxt) + 1),
        "whom": whom,
        "confirm": esc.get("reason") == "ruled_out" or (waits_for_desk and not done),
        # why it stopped, in the timeline's words (已接单，停止升级; 升级步骤已用完，仍无人接单 in red)
        "stopped": _known(t, "reason.esc_" + str(esc.get("reason") or "")) if done else "",
        "exhausted": done and esc.get("reason") == "exhausted",
    }


#: what an operator's action decides on: a change of any of these makes an open page stale
DECISION_FIELDS = ("stage", "owner", "assignee", "outcome", "reopen_count", "is_open")
#: timeline actors that are not people: the loop's timers and escalation, delivery reports, the devices
MACHINE_ACTORS = frozenset({"system", "notify", "telemetry"})


def decision_sig(detail: dict[str, Any]) -> str:
    """The case's decision state as one string (the action forms carry it back): the fields above and the
    last timeline entry of a person (a colleague's re-dispatch to the same responder changes no field)."""
    inc = detail.get("incident") or {}
    people = [e.get("id") for e in detail.get("timeline") or [] if e.get("actor") not in MACHINE_ACTORS]
    return "|".join([*(str(inc.get(k)) for k in DECISION_FIELDS), str(max(people, default=0))])


def stale(current: dict[str, Any], form: dict[str, str]) -> bool:
    """Whether the form was rendered from another decision state than the case's now (``current``: the
    cloud's incident detail); a form of a page rendered before the field existed (an open tab across an
    upgrade) compares ``row_version`` as before."""
    if "decision_sig" in form:
        return decision_sig(current) != form["decision_sig"]
    return str(current["incident"].get("row_version")) != form.get("row_version")


def _known(t: Translator, key: str) -> str:
    """The catalog's words for ``key``, or "" when it has none."""
    words = t(key)
    return "" if words == key else words


def reason_words(e: dict[str, Any], t: Any, names: dict[str, str]) -> str:
    """A timeline entry's reason in the console's language: its code (an old row's mapped from its English
    sentence, :func:`alerts.loop.reasons.resolve`) through this catalog's ``reason.<code>``, its parameters
    labelled (roles, departments, rules, people by name); a person's own words as written."""
    reason = str(e.get("reason") or "")
    code, params = reasons.resolve(
        str(e.get("action") or ""), str(e.get("reason_code") or ""), e.get("reason_params"), reason
    )
    if not code:
        return reason
    template = t("reason." + code)
    if template == "reason." + code:  # a code this catalog has no words for: the cloud's words
        return str(e.get("reason_text") or reason)
    try:
        return str(template.format(**reasons.labelled(code, params, t.lang, names)))
    except (KeyError, ValueError, IndexError):
        return str(e.get("reason_text") or reason)


def family_call_words(call: dict[str, Any] | None, t: Any, names: dict[str, str]) -> dict[str, Any] | None:
    """The family block's call lines from ``GET /api/v1/incidents/{id}/family-call``: whose the task is
    now (people by name; after a hand-over the incoming shift, with when), how many calls, the last
    outcome with its time (the display zone, Asia/Shanghai) and who, the next reminder. ``None`` when
    the cloud does not say (an older cloud, a role it is not for)."""
    if not isinstance(call, dict):
        return None
    holders = [names.get(str(h), str(h)) for h in call.get("holders") or []]
    if holders:
        holder = t("family.call.holder", who="、".join(holders) if t.lang != "en" else ", ".join(holders))
    elif call.get("for_all_operators"):
        holder = t("family.call.holder_all")
    else:
        holder = t("family.call.no_task")
    handed = call.get("handed_over_at")
    last = call.get("last") if isinstance(call.get("last"), dict) else None
    outcome = str((last or {}).get("outcome") or "")
    last_text = ""
    if last is not None:
        by = str(last.get("by") or "")
        last_text = t(
            "family.call.last",
            outcome=t("family.call." + outcome) if outcome in CALL_OUTCOMES else outcome,
            at=t.when(last.get("at")),
            by=names.get(by, by),
        )
        if last.get("note"):
            last_text += f" · {last['note']}"
    nxt = call.get("next_reminder_at")
    return {
        "holder": holder,
        "handed": t("family.call.handed_over", at=t.when(handed)) if handed else "",
        "attempts": int(call.get("attempts") or 0),
        "attempts_text": t("family.call.attempts", n=int(call.get("attempts") or 0)),
        "outcome": outcome,
        "last": last_text or t("family.call.none"),
        "next": t("family.call.next", at=t.clock(nxt)) if nxt else "",
    }


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
        inc["decision_sig"] = decision_sig(detail)
        # the block belongs to cases whose route pages the family (a fall, an SOS), not to a band gone silent
        # (a case not routed yet keeps it: better a call too many than a family not called)
        receivers = inc.get("receivers") or []
        pages_family = not receivers or any(FAMILY_ROLE in (r.get("roles") or []) for r in receivers)
        wants_family = s.is_staff and inc.get("kind") in FAMILY_KINDS and pages_family
        intents, log, inapp, family, roster, esc_doc, device = await asyncio.gather(
            _or_empty(s.api.intents(incident_id), []) if s.is_desk else _none([]),
            _or_empty(s.api.notify_log(incident_id), None),
            _or_empty(s.api.inapp(incident_id), []),
            # masked for every staff role; a viewer gets nothing of it (the cloud says 403 too)
            _or_empty(s.api.family(incident_id), []) if wants_family else _none([]),
            roster_people(s),
            _or_empty(s.api.get("/api/v1/loop/config/escalation"), None) if s.is_staff else _none(None),
            # the device by its name (井盖00069), not its 16-digit id
            _or_empty(s.api.device(str(inc["device_id"])), None)
            if inc.get("device_id") and inc.get("kind") != "gateway"
            else _none(None),
        )
        people = await suggestions(s, inc) if s.is_staff and "dispatch" in inc["allowed_actions"] else []
        now = s.api.now()  # the cloud's clock (X-Vigil-Now): "today" for the short times below

        def clock(ts: float | str | None) -> str:
            return t.clock(ts, now)

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
        timeline = [{**e, "reason": reason_words(e, t, names)} for e in detail["timeline"]]
        events = notices.fold(
            notices.timeline(timeline, t=t, lang=t.lang, roster=names, recipients=recipients)
        )
        for f in family:
            f["reached"] = notices.family_reached(f.get("family_reached"), t=t, clock=clock)
        call = None
        if family:  # whose the call task is now and the desk's calls (no number in it)
            got = await _or_empty(s.api.get(f"/api/v1/incidents/{incident_id}/family-call"), None)
            call = family_call_words(got, t, names)
            last = got.get("last") if isinstance(got, dict) else None
            if isinstance(last, dict) and last.get("outcome") == "reached":
                # the desk reached the family by phone: 「未通知家属（请致电）」 would send it to call again
                for f in family:
                    sent = (f.get("family_reached") or {}).get("status")
                    if sent in ("none", "failed"):
                        f["reached"] = (t("family.reached.by_desk", at=clock(last.get("at"))), "ok")
        return web.render(
            request,
            "incident.html",
            status=status,
            session=s,
            inc=inc,
            route=route_label(inc.get("route_rule"), t),
            device_name=str((device or {}).get("name") or inc.get("device_id") or ""),
            escalation=escalation_words(inc.get("escalation") or {}, esc_doc, t),
            timeline=events,
            photos=detail.get("photos", []),
            notices=notice_rows,
            notices_known=log is not None,
            now=now,
            people=people,
            # 其他人员: the whole roster by name (a datalist: the dispatcher types 王…, the form sends the id)
            roster=[
                {
                    "id": str(r["id"]),
                    "name": str(r.get("name") or r["id"]),
                    "roles": t.sep.join(t.role(str(x)) for x in r.get("roles") or []),
                }
                for r in roster
                if r.get("id")
            ],
            family=family,
            call=call,
            call_outcomes=CALL_OUTCOMES,
            call_note_max=CALL_NOTE_MAX,
            rule_out_reasons=RULE_OUT_REASONS,
            rule_out_note_max=RULE_OUT_NOTE_MAX,
            reveal_seconds=web.cfg.reveal_seconds,
            message=message,
            error=error,
            nonce=secrets.token_hex(8),
            needs_reason=NEEDS_REASON,
            asks=ASK_FIRST,
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
        # a stale page must not act: compare the decision state it was rendered with
        current = await s.api.incident(incident_id, language=t.lang)
        if stale(current, form):
            return await render_incident(request, s, incident_id, error=t("error.stale"), status=409)
        try:
            if action == "confirm":
                await s.api.confirm(incident_id)
            elif action == "silence":
                hours = _int(form.get("hours")) or 0
                if hours not in SILENCE_HOURS or not reason:
                    raise FormError("error.silence_form")
                inc = current["incident"]
                # the cloud's clock, not this host's: a 1-hour silence lasts 1 hour of the cloud's time
                ends = datetime.fromtimestamp(s.api.now(), UTC) + timedelta(hours=hours)
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

    async def small_form(
        request: Request,
        s: Session,
        *,
        allowed: bool,
        act: Callable[[int, dict[str, str], Translator], Awaitable[None]],
        done: str,
        forbidden: str = "error.forbidden",
    ) -> Response:
        """What the incident page's small forms (致电家属, 排除（非火情）) share: same-origin only, the role
        checked before the cloud is asked (403, 无权), the form read, ``act`` run (it checks the fields and
        posts with the user's token; :class:`Refused` for a field or a stale page), the cloud's 4xx shown
        in words on the page (a 403 as ``forbidden``'s words), and back to the page with ``?done=``."""
        incident_id = _int(request.path_params["incident_id"]) or 0
        t = web.translator(request)
        if not same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        if not allowed:
            return await render_incident(request, s, incident_id, error=t("error.forbidden"), status=403)
        try:
            await act(incident_id, await read_form(request), t)
        except Refused as exc:
            return await render_incident(request, s, incident_id, error=t(exc.key), status=exc.status)
        except FormError as exc:
            return await render_incident(request, s, incident_id, error=t(exc.key, **exc.kw), status=400)
        except ApiError as exc:
            if exc.status in (400, 403, 404, 409, 422):
                error = t(forbidden) if exc.status == 403 else web.api_message(request, exc)
                return await render_incident(request, s, incident_id, error=error, status=exc.status)
            raise
        anchor = f"#{DONE_ANCHOR[done]}" if done in DONE_ANCHOR else ""
        return RedirectResponse(f"{base}/incidents/{incident_id}?done={done}{anchor}", status_code=303)

    async def family_call(request: Request, s: Session) -> Response:
        """已接通 / 未接通 / 号码有误 from the family block: a plain form (works without JavaScript); the
        cloud checks the role again, writes the timeline entry and the audit row; back to the page, which
        shows the block and the timeline as they are now. No ``row_version`` check: the call happened
        whatever else changed on the case meanwhile."""

        async def act(incident_id: int, form: dict[str, str], t: Translator) -> None:
            outcome = form.get("outcome", "")
            note = " ".join(form.get("note", "").split())
            if outcome not in CALL_OUTCOMES or len(note) > CALL_NOTE_MAX:
                raise Refused("family.call.failed")
            path = f"/api/v1/incidents/{incident_id}/family-call"
            await s.api.post(path, {"outcome": outcome, "note": note})

        return await small_form(
            request, s, allowed=s.is_staff, act=act, done="family_call", forbidden="family.call.not_yours"
        )

    async def rule_out(request: Request, s: Session) -> Response:
        """排除（非火情）: the call taker called the site and it is not a fire. A plain form; the cloud checks
        the role (as confirm), refuses with its reason (CO, dense smoke, a second alarm in the building),
        stops the 119 / 120 escalation and writes the timeline and the audit row; back to the page."""

        async def act(incident_id: int, form: dict[str, str], t: Translator) -> None:
            reason = form.get("reason", "")
            note = " ".join(form.get("note", "").split())
            if reason not in RULE_OUT_REASONS or len(note) > RULE_OUT_NOTE_MAX:
                raise Refused("ruleout.failed")
            current = await s.api.incident(incident_id, language=t.lang)
            if stale(current, form):
                raise Refused("error.stale", status=409)
            body = {"reason": reason, "note": note, "stand_down": form.get("stand_down") == "1"}
            await s.api.post(f"/api/v1/incidents/{incident_id}/rule-out?language={t.lang}", body)

        return await small_form(request, s, allowed=s.is_desk, act=act, done="rule_out")

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
        Route("/incidents/{incident_id:int}/family-call", web.page(family_call), methods=["POST"]),
        Route("/incidents/{incident_id:int}/rule-out", web.page(rule_out), methods=["POST"]),
        Route("/reports/new", web.page(report_form)),
        Route("/reports/new", web.page(report_submit), methods=["POST"]),
    ]
