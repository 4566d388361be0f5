"""Words of a notification: Chinese first, English when the recipient prefers it, times in Asia/Shanghai.

A message carries what the recipient's role needs to act and no more: what happened, where (``place``:
:func:`cloud.notify.loopbridge.message_place`, a road position or a building and unit, a wristband case's
street; never a flat, a wearer's home, name or health values), when, how urgent, and the action links.
SMS and voice get the same facts as template parameters (``event``, ``place``, ``time``, ``level``,
``ref``), because their text is fixed by a template the provider approved in advance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cloud.notify.channel import LinkButton, Notice
from cloud.notify.links import Purpose
from firmware_bridge.kernel.events import EventType, Severity
from firmware_bridge.kernel.locale import Lang, event_label, severity_label, show

PURPOSE_LABELS: dict[Purpose, tuple[str, str]] = {
    Purpose.ACCEPT: ("接单", "Accept"),
    Purpose.DECLINE: ("拒绝", "Decline"),
    Purpose.ON_THE_WAY: ("出发", "On my way"),
    Purpose.ARRIVED: ("已到场", "Arrived"),
    Purpose.RESOLVED: ("处置完成", "Resolved"),
    Purpose.CASE: ("查看与评价", "Follow and rate"),
}

#: SMS reply digits (GoAlert-style acknowledgement by reply): "1" or "1 37" (37 = the message's ref)
REPLY_CODES: dict[str, Purpose] = {
    "1": Purpose.ACCEPT,
    "2": Purpose.DECLINE,
    "3": Purpose.ON_THE_WAY,
    "4": Purpose.ARRIVED,
}


@dataclass(frozen=True, slots=True)
class IncidentFacts:
    """What a message says about an incident; ``summary`` is the loop's one line (what and where)."""

    incident_id: str
    opened_at: float
    severity: int = int(Severity.HIGH)
    event_type: str = ""
    place: str = ""
    summary: str = ""
    department: str = ""


#: an SMS template parameter's length (the providers' variable limit we keep to)
SMS_PARAM_MAX = 20
#: a place's leading administrative divisions, dropped first when it is too long for an SMS parameter:
#: province, city, district / county (not 小区 / 园区 / 社区 / 校区 / 景区), subdistrict / town
_ADMIN_HEAD = re.compile(
    r"^(?:.{1,9}?(?:省|自治区|特别行政区))?(?:.{1,9}?市)?(?:.{1,9}?(?<![小园社校景])(?:区|县|旗))?"
    r"(?:.{1,9}?(?:街道|镇|乡))?"
)


def sms_place(place: str, limit: int = SMS_PARAM_MAX) -> str:
    """A place within an SMS parameter's ``limit`` characters, keeping the part a crew needs: whole when
    it fits; else without its leading province / city / district / subdistrict (the crew knows its own
    district); else its last ``limit - 1`` characters after ``…`` (the building and unit end an address:
    the head's road name is what a cut may lose, never the 3号楼2单元 the crew walks to)."""
    place = place.strip()
    if len(place) <= limit:
        return place
    head = _ADMIN_HEAD.match(place)
    rest = place[head.end() :] if head is not None else place
    if 0 < len(rest) <= limit:
        return rest
    return "…" + (rest or place)[-(limit - 1) :]


def _pick(pair: tuple[str, str], lang: Lang) -> str:
    return pair[1] if lang == "en" else pair[0]


def purpose_label(purpose: Purpose, lang: Lang) -> str:
    return _pick(PURPOSE_LABELS[purpose], lang)


def event_text(facts: IncidentFacts, lang: Lang) -> str:
    if facts.event_type:
        try:
            return event_label(EventType(facts.event_type), lang)
        except ValueError:
            return facts.event_type
    return facts.summary or ("事件" if lang == "zh" else "incident")


def render(
    facts: IncidentFacts,
    *,
    lang: Lang,
    links: Sequence[tuple[Purpose, str]] = (),
    reply_ref: str = "",
) -> Notice:
    sev = Severity.parse(facts.severity) if not isinstance(facts.severity, Severity) else facts.severity
    level = severity_label(sev, lang)
    what = event_text(facts, lang)
    when = show(facts.opened_at)
    urgent = sev >= Severity.HIGH
    if lang == "en":
        title = f"{'[URGENT] ' if urgent else ''}{what}" + (f" · {facts.place}" if facts.place else "")
        lines = [f"Level: {level}", f"Time: {when} (Beijing)", f"Case: {facts.incident_id}"]
    else:
        title = f"{'【紧急】' if urgent else ''}{what}" + (f" · {facts.place}" if facts.place else "")
        lines = [f"级别：{level}", f"时间：{when}", f"编号：{facts.incident_id}"]
    if facts.summary and facts.summary != what:
        lines.insert(0, facts.summary)
    hint = ""
    if reply_ref:
        if lang == "en":
            hint = f"Reply 1 {reply_ref} to accept, 2 {reply_ref} to decline, 4 {reply_ref} when on site."
        else:
            hint = f"回复“1 {reply_ref}”接单，“2 {reply_ref}”拒绝，“4 {reply_ref}”已到场。"
    return Notice(
        title=title,
        lines=tuple(lines),
        actions=tuple(LinkButton(purpose_label(p, lang), url) for p, url in links),
        reply_hint=hint,
        severity=int(sev),
        lang=lang,
        params={
            "event": what[:20],
            "place": sms_place(facts.place or facts.incident_id),
            "time": when[5:16],
            "level": level,
            "ref": reply_ref,
        },
        incident_id=facts.incident_id,
    )


#: the family SMS's parameters in order (Tencent's positional {1}..{5}); ``phone`` only with service_phone,
#: ``link`` (the follow link's token) only with ``family_link``
FAMILY_PARAMS = ("event", "wearer", "time", "phone", "link")
#: what the family reads after the event word when the case was reopened (a new page, same template)
FAMILY_REOPENED = "（重新处置）"
#: the family's word for an event the locale does not name (never the loop's summary: it may say more)
FAMILY_EVENT_FALLBACK = "紧急情况"


def family_event(event_type: str) -> str:
    """The event as a family reads it: the locale's Chinese word (跌倒, 紧急呼救), else 紧急情况 (never
    the loop's own words, which may carry a health value or an address)."""
    what = "" if not event_type else event_text(IncidentFacts("", 0.0, event_type=event_type), "zh")
    return FAMILY_EVENT_FALLBACK if not what or what == event_type else what


def family_notice(
    facts: IncidentFacts, *, wearer: str, service_phone: str = "", link: str = "", reopened: bool = False
) -> Notice:
    """The text a wearer's family receives (template parameters; the title and lines are what the
    delivery log shows): the event in Chinese (跌倒, 紧急呼救; 跌倒（重新处置） when the case was reopened),
    whose it is (the masked name, or 您的家人), the time in Asia/Shanghai, the community's service number
    when there is one, and the follow link's token (``link``) when the template takes one. Nothing else:
    no address, no health value, no case number, no reply code (a relative's reply acts on nothing)."""
    what = family_event(facts.event_type)
    if reopened:
        what = what[: 20 - len(FAMILY_REOPENED)] + FAMILY_REOPENED
    who = wearer or "您的家人"
    when = show(facts.opened_at)[5:16]  # MM-DD HH:MM, Asia/Shanghai
    params = {"event": what[:20], "wearer": who[:20], "time": when}
    if service_phone:
        params["phone"] = service_phone[:20]
    if link:
        params["link"] = link
    lines = [f"时间：{when}"]
    if service_phone:
        lines.append(f"社区服务电话：{service_phone}")
    if link:
        lines.append("附进度链接 / with a follow link")
    return Notice(
        title=f"{who}：{what}",
        lines=tuple(lines),
        severity=int(facts.severity),
        lang="zh",
        params=params,
        incident_id=facts.incident_id,
    )


def digest(notices: Sequence[Notice], *, lang: Lang) -> Notice:
    """Several notices to one group robot as one message (a robot takes ~20 messages a minute)."""
    if len(notices) == 1:
        return notices[0]
    head = f"{len(notices)} new alerts" if lang == "en" else f"{len(notices)} 条新告警"
    lines = tuple(f"{i + 1}. {n.title}" for i, n in enumerate(notices))
    actions = tuple(a for n in notices for a in n.actions[:1])[:5]
    return Notice(
        title=head,
        lines=lines,
        actions=actions,
        severity=max(n.severity for n in notices),
        lang=lang,
        params=notices[0].params,
        incident_id=notices[0].incident_id,
    )
