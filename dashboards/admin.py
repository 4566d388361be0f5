"""Routing rules, escalation policies, rosters and time limits: viewable by every user, editable by an
administrator (``/api/v1/loop/config/{name}``; the cloud validates a document against the others and
audits the change). The editor is the document itself, as JSON: what the API stores is what you see.

Above it, every document is also written out in words: the routing rules (which rule sends what to whom),
the escalation policies (each level's receivers, channels and wait), the roster (who is on duty now per
role and zone, by the cloud's own ``Roster.on_call`` at the cloud's clock; each rotation, the overrides,
the responders by name, roles and zones - no base positions), the time limits per urgency and the call
takers' desk settings. A dispatcher reads them without reading JSON, and the ids the incident page's header
names (in its ``title``) are found here beside the words."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from alerts.loop import reasons
from alerts.loop.rosters import Override, Responder, Roster, Rotation, changes, roster_from_dict
from alerts.loop.routing import DEPARTMENTS
from alerts.loop.sla import CLOCKS, Urgency
from dashboards.client import ApiError
from dashboards.i18n import Translator
from dashboards.incidents import policy_label
from dashboards.web import FormError, Session, Web, read_form, same_origin

DOCUMENTS = ("routing", "escalation", "roster", "sla", "desk")
MAX_DOC_BYTES = 512 * 1024
#: match keys whose values are flags (``on_road: true``): shown as the flag's words, not as ``= true``
FLAG_KEYS = ("on_road", "lives_alone")


def duration(seconds: float, t: Translator) -> str:
    """5 分钟 / 2 小时 / 1 天 (5 min / 2 h / 1 day): a wait as people say it."""
    s = int(seconds)
    if s >= 86400 and s % 86400 == 0:
        return t("dur.day" if s == 86400 else "dur.days", n=s // 86400)  # 1 day, not "1 days"
    if s >= 3600 and s % 3600 == 0:
        return t("dur.hours", n=s // 3600)
    if s >= 60:
        return t("dur.minutes", n=round(s / 60))
    return t("dur.seconds", n=s)


def _values(v: object) -> list[str]:
    return [str(x) for x in v] if isinstance(v, list | tuple) else [str(v)]


def _condition(key: str, vals: list[str], t: Translator) -> str:
    sep = ", " if t.lang == "en" else "、"
    if key in FLAG_KEYS:
        yes = any(v.lower() in ("true", "1", "yes") for v in vals)
        return t(f"match.{key}" if yes else f"match.not_{key}")
    if key == "kind":
        words = [t.kind(v) for v in vals]
    elif key == "event":
        words = [t.event(v) for v in vals]
    elif key == "grade":
        words = [t.severity(v) for v in vals]
    else:
        words = vals
    label = t("match." + key)
    return f"{label if label != 'match.' + key else key}{t('device.colon')}{sep.join(words)}"


def routing_rows(body: Mapping[str, Any], t: Translator) -> list[dict[str, str]]:
    """The routing tree, one row per rule (depth first, as the loop walks it): the rule in words and its
    path (the id the incident page names), what it matches, who receives it, which escalation policy."""
    sep = ", " if t.lang == "en" else "、"

    def walk(node: Mapping[str, Any], path: tuple[str, ...], depth: int) -> Iterator[dict[str, str]]:
        path = (*path, str(node.get("name", "")))
        rule = "/".join(path)
        raw = node.get("match")
        match: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        conds = [_condition(str(k), _values(v), t) for k, v in match.items()]
        if node.get("hours"):
            conds.append(t("match.hours", hours=str(node["hours"])))
        receivers = []
        for r in node.get("receivers") or []:
            if not isinstance(r, Mapping):
                continue
            dep = str(r.get("department", ""))
            dep_words = DEPARTMENTS[dep][t.lang == "en"] if dep in DEPARTMENTS else dep
            roles = sep.join(t.role(str(x)) for x in r.get("roles") or [])
            receivers.append(f"{dep_words}（{roles}）" if t.lang != "en" else f"{dep_words} ({roles})")
        esc = node.get("escalation")
        yield {
            "depth": str(depth),
            "rule": rule,
            "words": reasons.route_words(rule, t.lang) or t("incident.route_root"),
            "when": ("；".join(conds) if t.lang != "en" else "; ".join(conds))
            or (t("config.always") if depth else t("config.everything")),
            "receivers": "；".join(receivers) if t.lang != "en" else "; ".join(receivers),
            "policy": policy_label(str(esc), t) if esc else "",
            "policy_id": str(esc or ""),
            "more": t("config.continue") if node.get("continue") else "",
        }
        for child in node.get("routes") or []:
            if isinstance(child, Mapping):
                yield from walk(child, path, depth + 1)

    return list(walk(body, (), 0)) if isinstance(body, Mapping) and body.get("name") else []


def escalation_rows(body: Mapping[str, Any], t: Translator) -> list[dict[str, Any]]:
    """Each escalation policy in words: its label and id, each level's receivers, channels and wait (and
    whether it waits for the desk's phone confirmation), how often it repeats, what stops it."""
    sep = ", " if t.lang == "en" else "、"
    out: list[dict[str, Any]] = []
    for name, policy in body.items() if isinstance(body, Mapping) else []:
        if not isinstance(policy, Mapping):
            continue
        levels = []
        for i, st in enumerate(policy.get("steps") or []):
            if not isinstance(st, Mapping):
                continue
            whom = sep.join(
                t("incident.all_receivers") if r == "*" else t.role(str(r)) for r in st.get("roles") or []
            )
            channels = sep.join(t("channel." + str(c)) for c in st.get("channels") or [])
            levels.append(
                {
                    "n": i + 1,
                    "whom": whom,
                    "channels": channels or t("config.channels_default"),
                    "wait": duration(float(st.get("wait_s") or 0), t),
                    "confirm": bool(st.get("confirm")),
                }
            )
        repeat = int(policy.get("repeat") or 0)
        out.append(
            {
                "id": str(name),
                "label": policy_label(str(name), t),
                "levels": levels,
                "repeat": t("config.repeat", n=repeat) if repeat else "",
                "stop": t("config.stop_resolve" if policy.get("stop_on") == "resolve" else "config.stop_ack"),
            }
        )
    return out


ANY_ZONE = "*"
#: which risk grade each urgency serves (alerts.loop.sla.urgency_for): high -> 非常紧急, medium -> 紧急
URGENCY_GRADES = {"critical": (3,), "urgent": (2,), "normal": (1,)}
WORKDAY_S = 8 * 3600  # alerts.loop.sla.WorkCalendar: 09:00-17:00, one working day


def local_time(ts: float, t: Translator) -> str:
    """``2026-09-21 08:00`` in the display zone (Asia/Shanghai): a roster's times to the minute."""
    return datetime.fromtimestamp(ts, t.zone).strftime("%Y-%m-%d %H:%M")


def zone_words(zone: str, t: Translator) -> str:
    return t("config.zone_all") if zone == ANY_ZONE else zone


def next_change(
    rotation: Rotation,
    now: float,
    zone: ZoneInfo,
    overrides: Sequence[Override] = (),
    responders: Mapping[str, Responder] | None = None,
) -> tuple[float, tuple[str, ...]] | None:
    """When who is on call from ``rotation`` next changes after ``now``, and who is on call from then (ids;
    ``()``: nobody, the daily window closed or the person is on leave). ``None`` when it never changes
    (everyone together all day, one person all day, an empty window).

    The rotation itself answers (:meth:`alerts.loop.rosters.Rotation.on_call_at`) at the instants the
    loop's :func:`alerts.loop.rosters.changes` names (its start, each hand-over, each window edge, in
    ``zone``'s local time, each override's start and end), one day at a time, so the page cannot disagree
    with the loop. With ``responders``, ``overrides`` apply as the loop applies them
    (:meth:`alerts.loop.rosters.Roster.on_call`: a swap names who covers, a leave nobody): the next
    person on leave is not announced as taking over. Without a window the change is at most one shift
    away; a window opens or closes each day: a shift and two days past the rotation's start (or the last
    override's end) bound the search."""
    alone = Roster(dict(responders or {}), (rotation,), tuple(overrides), zone.key)

    def who(t: float) -> tuple[str, ...]:
        if responders is None:
            return rotation.on_call_at(t, zone)
        return tuple(r.id for r in alone.on_call(rotation.role, rotation.zone, t))

    current = who(now)
    last_override = max((ov.end for ov in overrides if ov.end > now), default=now)
    limit = max(now, rotation.start, min(last_override, now + 30 * 86400.0))
    limit += max(rotation.shift_s, 0.0) + 2 * 86400.0
    a = now
    while a < limit:
        b = min(a + 86400.0, limit)
        for c in changes(alone, a, b):
            if c > now and (then := who(c)) != current:
                return c, then
        a = b
    return None


def roster_words(
    body: Mapping[str, Any], t: Translator, now: float, on_duty: Mapping[tuple[str, str], list[str]]
) -> dict[str, list[dict[str, str]]]:
    """The roster in words: who is on duty now per (role, zone) of its rotations (``on_duty``: the cloud's
    answer, names), each rotation (role, zone, participants by name, shift and next hand-over), the
    overrides (who covers whom, from when to when, in force / coming / over) and the responders (name,
    roles, zones: nothing the document's JSON does not already show, and no base positions)."""
    sep = t.sep
    raw_people = body.get("responders")
    people: list[Any] = raw_people if isinstance(raw_people, list) else []
    names = {str(r.get("id")): str(r.get("name") or r.get("id")) for r in people if isinstance(r, Mapping)}

    def name(rid: object) -> str:
        return names.get(str(rid), str(rid))

    rotations = [r for r in body.get("rotations") or [] if isinstance(r, Mapping)]
    duty = [
        {
            "role": t.role(role),
            "zone": zone_words(zone, t),
            "who": sep.join(who) if (who := on_duty.get((role, zone), [])) else t("config.nobody"),
            "empty": "" if who else "1",
        }
        for role, zone in duty_pairs(body)
    ]
    # the stored document always parses (the cloud validates it with the same parser before storing it)
    roster = roster_from_dict(body)
    zone = ZoneInfo(roster.zone)
    rots = []
    for r, rot in zip(rotations, roster.rotations, strict=True):
        parts = [name(p) for p in r.get("participants") or []]
        raw_shift = r.get("shift_s")
        shift = 86400.0 if raw_shift is None else float(raw_shift)
        start = float(r.get("start") or 0.0)
        if shift <= 0:
            how = t("config.shift_together")
        elif len(parts) < 2:
            how = t("config.shift_alone")
        else:
            how = t("config.shift_every", dur=duration(shift, t), at=local_time(start, t)[-5:])
        notes = []
        if start > now:
            notes.append(t("config.rotation_from", at=local_time(start, t)))
        if r.get("hours"):
            notes.append(t("config.rotation_hours", hours=str(r["hours"])))
        nxt = next_change(rot, now, zone, roster.overrides, roster.responders)
        if nxt is None:
            upcoming = ""
        elif nxt[1]:
            upcoming = t("config.next_handover", at=local_time(nxt[0], t), who=sep.join(map(name, nxt[1])))
        else:
            upcoming = t("config.next_off", at=local_time(nxt[0], t))
        rots.append(
            {
                "id": str(r.get("id", "")),
                "role": t.role(str(r.get("role", ""))),
                "zone": zone_words(str(r.get("zone", ANY_ZONE)), t),
                "who": " → ".join(parts) if shift > 0 and len(parts) > 1 else sep.join(parts),
                "how": "；".join([how, *notes]) if t.lang != "en" else "; ".join([how, *notes]),
                "next": upcoming,
            }
        )
    overrides = []
    for o in body.get("overrides") or []:
        if not isinstance(o, Mapping):
            continue
        start, end = float(o.get("start") or 0.0), float(o.get("end") or 0.0)
        by = o.get("by")
        overrides.append(
            {
                "words": t("config.override_swap", who=name(o.get("responder")), by=name(by))
                if by
                else t("config.override_leave", who=name(o.get("responder"))),
                "span": t("config.override_span", start=local_time(start, t), end=local_time(end, t)),
                "state": t(
                    "config.override_now"
                    if start <= now < end
                    else "config.override_later"
                    if now < start
                    else "config.override_past"
                ),
                "reason": str(o.get("reason") or ""),
            }
        )
    listed = [
        {
            "name": name(r.get("id")),
            "roles": sep.join(t.role(str(x)) for x in r.get("roles") or []),
            "zones": sep.join(zone_words(str(z), t) for z in r.get("zones") or [ANY_ZONE]),
        }
        for r in people
        if isinstance(r, Mapping)
    ]
    return {"duty": duty, "rotations": rots, "overrides": overrides, "responders": listed}


def duty_now(body: Mapping[str, Any], now: float) -> dict[tuple[str, str], list[str]]:
    """Who is on duty at ``now`` per (role, zone) of the roster's rotations, by name: the cloud's own
    function (``alerts.loop.rosters.Roster.on_call``: rotations, daily windows, overrides) on the document
    just read, at the cloud's now. One parse, not one ``/api/v1/loop/oncall`` per pair (18 pairs in the
    demo: 230 ms a page, 16 ms a question); that endpoint answers the same, a test holds them equal. The
    stored document always parses: the cloud validates it with the same parser before storing it."""
    roster = roster_from_dict(body)
    return {pair: [p.name for p in roster.on_call(*pair, now)] for pair in duty_pairs(body)}


def duty_pairs(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (role, zone) pairs the roster's rotations cover, in the document's order, once each."""
    pairs: list[tuple[str, str]] = []
    for r in body.get("rotations") or [] if isinstance(body, Mapping) else []:
        if isinstance(r, Mapping):
            pair = (str(r.get("role", "")), str(r.get("zone", ANY_ZONE)))
            if pair not in pairs:
                pairs.append(pair)
    return pairs


def limit(seconds: float, t: Translator, *, working: bool) -> str:
    """A time limit: calendar time as :func:`duration` says it, working time in working days or hours
    (3 个工作日, not 1 天: 24 working hours are three 8-hour days)."""
    s = int(seconds)
    if working and s >= WORKDAY_S and s % WORKDAY_S == 0:
        n = s // WORKDAY_S
        return t("config.workday") if n == 1 else t("config.workdays", n=n)
    if working and s >= 3600 and s % 3600 == 0:
        return t("dur.hours", n=s // 3600)
    return duration(seconds, t)


def sla_rows(body: Mapping[str, Any], t: Translator) -> list[dict[str, str]]:
    """Each urgency's time limits in words: 非常紧急（风险等级 高）：立案 ≤ 2 分钟，派遣 ≤ 1 分钟 …；全案办结
    ≤ 2 小时, counted in calendar or working time."""
    sep = ", " if t.lang == "en" else "，"
    out = []
    for urg in (Urgency.CRITICAL, Urgency.URGENT, Urgency.NORMAL):  # the most urgent first
        val = body.get(urg.value) if isinstance(body, Mapping) else None
        if not isinstance(val, Mapping):
            continue
        working = bool(val.get("working_time"))
        raw_stages = val.get("stages")
        stages: Mapping[str, Any] = raw_stages if isinstance(raw_stages, Mapping) else {}
        words = [
            t("config.sla_limit", clock=t("clock." + c), dur=limit(float(stages[c]), t, working=working))
            for c in CLOCKS
            if c in stages
        ]
        out.append(
            {
                "urgency": urg.value,
                "label": urg.label(t.lang),
                "grades": t(
                    "config.sla_grades", grade=t.sep.join(t.severity(g) for g in URGENCY_GRADES[urg])
                ),
                "stages": sep.join(words),
                "case": t("config.sla_case", dur=limit(float(val.get("case_s") or 0), t, working=working)),
                "basis": t("config.sla_working" if working else "config.sla_calendar"),
            }
        )
    return out


def desk_rows(body: Mapping[str, Any], t: Translator) -> list[str]:
    """The call takers' desk settings in words (cloud/loop/config.py ``desk``)."""
    retry = body.get("family_call_retry_s", 600) if isinstance(body, Mapping) else 600
    try:
        wait = duration(float(retry), t)
    except (TypeError, ValueError):
        wait = str(retry)
    return [t("config.desk_family_retry", wait=wait)]


def routes(web: Web) -> list[BaseRoute]:
    async def show(
        request: Request,
        s: Session,
        name: str,
        *,
        text: str | None = None,
        error: str = "",
        message: str = "",
        status: int = 200,
    ) -> Response:
        doc = await s.api.get(f"/api/v1/loop/config/{name}")
        if text is None:
            text = json.dumps(doc.get("body"), ensure_ascii=False, indent=2)
        t = web.translator(request)
        body = doc.get("body") if isinstance(doc.get("body"), Mapping) else {}
        roster: dict[str, list[dict[str, str]]] = {}
        if name == "roster":
            on_duty = duty_now(body, s.api.now())
            roster = roster_words(body, t, s.api.now(), on_duty)
        return web.render(
            request,
            "config.html",
            status=status,
            session=s,
            name=name,
            names=DOCUMENTS,
            version=doc.get("version"),
            text=text,
            rules=routing_rows(body, t) if name == "routing" else [],
            policies=escalation_rows(body, t) if name == "escalation" else [],
            roster=roster,
            sla=sla_rows(body, t) if name == "sla" else [],
            desk=desk_rows(body, t) if name == "desk" else [],
            at=local_time(s.api.now(), t),
            error=error,
            message=message,
        )

    async def config_page(request: Request, s: Session) -> Response:
        name = request.path_params["name"]
        if name not in DOCUMENTS:
            return web.not_found(request)
        saved = request.query_params.get("saved")
        t = web.translator(request)
        return await show(request, s, name, message=t("config.saved", version=saved) if saved else "")

    async def config_save(request: Request, s: Session) -> Response:
        name = request.path_params["name"]
        t = web.translator(request)
        if name not in DOCUMENTS:
            return web.not_found(request)
        if not same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        text = ""
        try:
            form = await read_form(request, limit=MAX_DOC_BYTES)
            text = form.get("document", "")
            try:
                body = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FormError("error.json", line=exc.lineno, col=exc.colno, msg=exc.msg) from exc
            if not isinstance(body, dict):
                raise FormError("error.json_object")
            saved = await s.api.request("PUT", f"/api/v1/loop/config/{name}", json=body)
        except FormError as exc:
            return await show(request, s, name, text=text, error=t(exc.key, **exc.kw), status=400)
        except ApiError as exc:
            if exc.status >= 500:
                raise
            return await show(
                request, s, name, text=text, error=web.api_message(request, exc), status=exc.status
            )
        return RedirectResponse(f"{web.base}/config/{name}?saved={saved.get('version', '')}", status_code=303)

    return [
        Route("/config/{name}", web.page(config_page)),
        Route("/config/{name}", web.page(config_save), methods=["POST"]),
    ]
