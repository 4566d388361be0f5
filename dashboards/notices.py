"""The incident page's 通知记录 / Notices block and the family block's 已短信通知家属 line, from the APIs.

Sources (the console never reads the database):

- ``GET /api/v1/notify/incidents/{id}/log``: every delivery of the case (recipient key, channel, status,
  attempts, times) and the responders' link actions (accept / arrive ... by recipient key);
- ``GET /api/v1/incidents/{id}/intents`` (admin / dispatcher): the loop's pages, to say who a page was for
  when no delivery came of it;
- the roster (``/api/v1/loop/config/roster``): a paged responder's name instead of the roster id;
- ``GET /api/v1/notify/incidents/{id}/family``: the masked wearer, so a family page reads 张**的家属.

A delivery's recipient is a user's database id (``user:25``), which no API turns into a name; who it was
for is read from the delivery's key instead, whose prefix is the loop intent's ``dedup_key``
(``incident:version:step:loop:kind:target``, ``alerts.loop.intents.dedup_key``) or a manual send's
``incident/step/kind:target``: a roster person by name, a duty role or a group by its label. When the
cloud gives ``recipient_name`` (a person's display name) or ``read_at`` (an in-app notice's reading)
on a delivery, they are used; without them the block still works.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alerts.loop.routing import ROLES
from firmware_bridge.kernel.locale import parse_iso

#: loop intents: ``incident:version:step:loop:kind:target``; a family target is ``family_contact/<device>``
_INTENT_KEY = re.compile(
    r"^\d+:\d+:\d+:\d+:(?P<kind>user|role|group|webhook):(?P<target>family_contact/[^/]+|[^/]+)"
)
#: the loop's reminders to the call takers' desk (cloud.loop.service._desk_intent): ``id:version:why:desk``
_DESK_KEY = re.compile(r"^\d+:\d+:(?P<why>returned|overdue:[a-z_,]+):desk(?:/|$)")
#: manual sends (``POST /api/v1/notify/send``): ``incident/step/kind:target``
_MANUAL_KEY = re.compile(r"^[^/]+/-?\d+/(?P<kind>user|role|group|webhook):(?P<target>[^/]+)")
FAMILY_PREFIX = "family:"  # cloud.notify.contacts.FAMILY_PREFIX: a wearer's family as a recipient
FAMILY_ROLE = "family_contact/"  # alerts.loop.routing.family_target's prefix
#: the responder link actions that prove a page was read, in the order a case goes
ACTION_WORDS = ("accept", "arrived", "resolved", "decline", "case")
STATUS_CLASS = {
    "delivered": "ok",
    "failed": "bad",
    "cancelled": "muted",
    "pending": "wait",
    "sending": "wait",
}


@dataclass(frozen=True, slots=True)
class NoticeRow:
    at: float | None  # when the page was written (epoch s)
    who: str  # a name or a label, never a bare database id when anything better is known
    whom: str  # what it was for: "family" | "call_task" | "user" | "role" | "group" | "webhook" | ""
    channel: str  # the channel's words
    status: str  # delivered | failed | pending | sending | cancelled | none
    status_text: str
    status_class: str
    when: float | None  # delivered / failed at, or the next retry for a pending one
    attempts: int
    error: str
    read: str  # 已读 10:42 / 未读 / 已接单 10:45 / "" (not known for this channel)
    step: int
    count: int = 1  # identical pages (three call takers' reminders in the same minute) shown as one row


def intent_target(
    dedup_key: str, intents: Mapping[str, tuple[str, str]] | None = None
) -> tuple[str, str] | None:
    """(kind, target) a delivery was for: the intent whose key prefixes the delivery's (when the caller may
    read the intents), else from the key's own form; ``None`` for a key of another form."""
    for prefix, target in (intents or {}).items():
        if dedup_key.startswith(prefix + "/"):
            return target
    if _DESK_KEY.match(dedup_key):
        return ("role", "call_taker")
    m = _INTENT_KEY.match(dedup_key) or _MANUAL_KEY.match(dedup_key)
    return (m.group("kind"), m.group("target")) if m else None


def desk_reason(dedup_key: str, t: Callable[..., str]) -> str:
    """超时提醒：接单 / 退回提醒 for a reminder to the desk; "" for any other page."""
    m = _DESK_KEY.match(dedup_key)
    if m is None:
        return ""
    why = m.group("why")
    if why == "returned":
        return t("notices.desk_returned")
    steps = "、".join(t("clock." + a) for a in why.removeprefix("overdue:").split(",") if a)
    return t("notices.desk_overdue", what=steps)


def role_label(role: str, lang: str) -> str:
    labels = ROLES.get(role)
    return labels[lang == "en"] if labels else role


def channel_label(channel: str, t: Callable[..., str]) -> str:
    """短信 / 站内消息 ... for a delivery's channel; the channel's own name when the catalog has none."""
    label = t("channel." + channel)
    return channel if label == "channel." + channel else label


def _tail(device: str) -> str:
    return "…" + device[-4:] if len(device) > 4 else device


def who_of(
    delivery: Mapping[str, Any],
    *,
    t: Callable[..., str],
    lang: str,
    roster: Mapping[str, str],
    wearers: Mapping[str, str],
    intents: Mapping[str, tuple[str, str]] | None = None,
) -> tuple[str, str]:
    """(who, whom) of one delivery: the person's or family's name where known, else the duty it was for."""
    recipient = str(delivery.get("recipient", ""))
    named = str(delivery.get("recipient_name") or "")
    if recipient.startswith(FAMILY_PREFIX):
        device = recipient.removeprefix(FAMILY_PREFIX)
        wearer = wearers.get(device)
        if wearer:
            return t("notices.family_of", wearer=wearer), "family"
        return t("notices.family_device", device=_tail(device)), "family"
    key = str(delivery.get("dedup_key", ""))
    target = intent_target(key, intents)
    if target is None:
        return named or recipient, ""
    kind, tid = target
    reminder = desk_reason(key, t)
    if reminder:
        return t("notices.desk", who=named or role_label(tid, lang), why=reminder), "desk"
    if kind == "role" and tid.startswith(FAMILY_ROLE):  # the 请致电家属 call task, to the desk
        return named or t("notices.call_task", role=role_label("call_taker", lang)), "call_task"
    if kind == "user":
        return named or roster.get(tid) or tid, "user"
    if kind == "role":
        label = role_label(tid, lang)
        return (f"{named} · {label}" if named else t("notices.on_duty", role=label)), "role"
    if kind == "group":
        label = role_label(tid, lang)  # a duty group (desk_120) by its label (120 急救中心)
        return (f"{named} · {label}" if named else t("notices.group", group=label)), "group"
    return named or tid, kind


def _read(
    delivery: Mapping[str, Any],
    acts: Mapping[str, tuple[str, float]],
    inapp_read: Mapping[str, float | None],
    *,
    t: Callable[..., str],
    clock: Callable[[float | None], str],
) -> str:
    """Read or not: the cloud's ``read_at`` (in-app), the caller's own in-app list, or a link action."""
    recipient = str(delivery.get("recipient", ""))
    act = acts.get(recipient)
    if act is not None:
        return t("notices.acted", action=t("notices.act." + act[0]), at=clock(act[1]))
    if not str(delivery.get("channel", "")).startswith("inapp") or delivery.get("status") != "delivered":
        return ""
    if "read_at" in delivery:
        at = delivery.get("read_at")
        return t("notices.read_at", at=clock(at)) if at else t("notices.unread")
    key = str(delivery.get("dedup_key", ""))
    if key in inapp_read:
        at = inapp_read[key]
        return t("notices.read_at", at=clock(at)) if at else t("notices.unread")
    return ""


def rows(
    log: Mapping[str, Any] | None,
    intents: Sequence[Mapping[str, Any]],
    *,
    t: Callable[..., str],
    lang: str,
    clock: Callable[[float | None], str],
    roster: Mapping[str, str],
    wearers: Mapping[str, str],
    inapp: Sequence[Mapping[str, Any]] = (),
) -> list[NoticeRow]:
    """Every page of the case, oldest first; an intent that produced no delivery is a row of its own."""
    deliveries: list[Mapping[str, Any]] = list((log or {}).get("deliveries") or [])
    acts: dict[str, tuple[str, float]] = {}
    for a in (log or {}).get("actions") or []:
        actor, action = str(a.get("actor", "")), str(a.get("action", ""))
        if action in ACTION_WORDS and a.get("at") is not None:
            acts.setdefault(actor, (action, float(a["at"])))  # the first action: when it was first read
    inapp_read = {str(i["dedup_key"]): i.get("read_at") for i in inapp if i.get("dedup_key")}
    targets = intent_map(intents)
    out: list[NoticeRow] = []
    for d in deliveries:
        who, whom = who_of(d, t=t, lang=lang, roster=roster, wearers=wearers, intents=targets)
        status = str(d.get("status", ""))
        attempts = d.get("attempts") or []
        when = d.get("finished_at") if status in ("delivered", "failed", "cancelled") else d.get("next_at")
        out.append(
            NoticeRow(
                at=_num(d.get("created_at")),
                who=who,
                whom=whom,
                channel=channel_label(str(d.get("channel", "")), t),
                status=status,
                status_text=t("notices.status." + status) if status else "—",
                status_class=STATUS_CLASS.get(status, ""),
                when=_num(when),
                attempts=len(attempts) if isinstance(attempts, list) else int(attempts or 0),
                error=str(d.get("last_error") or "")[:160] if status in ("failed", "pending") else "",
                read=_read(d, acts, inapp_read, t=t, clock=clock),
                step=int(d.get("step") or 0),
            )
        )
    keys = [str(d.get("dedup_key", "")) for d in deliveries]
    for i in intents:  # pages the loop wrote that reached nobody (no contact, no channel, not yet sent)
        ikey = str(i.get("dedup_key", ""))
        if not ikey or any(k.startswith(ikey + "/") for k in keys):
            continue
        kind, tid = str(i.get("target_kind", "")), str(i.get("target_id", ""))
        fake = {"dedup_key": f"{ikey}/-", "recipient": ""}
        if kind == "role" and tid.startswith(FAMILY_ROLE):
            fake["recipient"] = FAMILY_PREFIX + tid.removeprefix(FAMILY_ROLE)
        who, whom = who_of(fake, t=t, lang=lang, roster=roster, wearers=wearers, intents=targets)
        state = str(i.get("state", ""))
        out.append(
            NoticeRow(
                at=_num(i.get("created_at")),
                who=who,
                whom=whom,
                channel="—",
                status="none",
                status_text=t("notices.intent." + state) if state else "—",
                status_class="wait" if state in ("pending", "claimed") else "muted",
                when=None,
                attempts=0,
                error="",
                read="",
                step=int(i.get("step") or 0),
            )
        )
    out.sort(key=lambda r: (r.at or 0.0, r.step))
    return _same_as_one(out)


def _same_as_one(rows_: list[NoticeRow]) -> list[NoticeRow]:
    """Consecutive rows that say the same (same minute, who, channel, state, read) as one row ``×N``."""
    out: list[NoticeRow] = []

    def said(r: NoticeRow) -> tuple[Any, ...]:
        return (int((r.at or 0) // 60), r.who, r.channel, r.status, r.read, r.step, r.error)

    for r in rows_:
        if out and said(out[-1]) == said(r):
            last = out[-1]
            out[-1] = dataclasses.replace(last, count=last.count + 1, attempts=max(last.attempts, r.attempts))
            continue
        out.append(r)
    return out


def intent_map(intents: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """Intent key -> (target kind, target id), from ``GET /incidents/{id}/intents``."""
    return {
        str(i["dedup_key"]): (str(i.get("target_kind", "")), str(i.get("target_id", "")))
        for i in intents
        if i.get("dedup_key")
    }


def _num(value: Any) -> float | None:
    """Epoch seconds from the API's numbers or ISO strings (intents carry ISO-8601)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return parse_iso(str(value))
    except ValueError:
        return None


def family_reached(
    value: Any, *, t: Callable[..., str], clock: Callable[[float | None], str]
) -> tuple[str, str] | None:
    """The family block's line for ``family_reached`` (``{"status", "at", "channel"}``), with a CSS class;
    ``None`` when the cloud does not give the field (then the block says nothing about it)."""
    if not isinstance(value, Mapping):
        return None
    status = str(value.get("status") or "")
    channel = str(value.get("channel") or "")
    if status not in ("sent", "failed", "pending", "none"):
        return None
    at = value.get("at")
    how = t("family.by." + channel) if channel in ("sms", "voice") else t("family.by.any")
    when = clock(float(at)) if isinstance(at, (int, float)) else ""
    if status == "sent":
        return t("family.reached.sent", how=how, at=when).strip(), "ok"
    if status == "failed":
        return t("family.reached.failed", how=how, at=when).strip(), "bad"
    if status == "pending":
        return t("family.reached.pending", how=how).strip(), "wait"
    return t("family.reached.none"), "muted"


_NOBODY = re.compile(r"^nobody to notify \((?P<kind>user|role|group|webhook):(?P<target>[^)]+)\)$")
_SENT_TO = re.compile(r"^(?P<channel>[a-z_]+) → (?P<recipient>(?:user|family|group|webhook):\S+)$")


def recipients_named(
    log: Mapping[str, Any] | None,
    *,
    t: Callable[..., str],
    lang: str,
    roster: Mapping[str, str],
    wearers: Mapping[str, str],
    intents: Sequence[Mapping[str, Any]] = (),
) -> dict[str, str]:
    """Recipient key (``user:18``) -> who, as the notices block says it (for the timeline's lines)."""
    out: dict[str, str] = {}
    targets = intent_map(intents)
    for d in (log or {}).get("deliveries") or []:
        who, _ = who_of(d, t=t, lang=lang, roster=roster, wearers=wearers, intents=targets)
        out.setdefault(str(d.get("recipient", "")), who)
    return out


def timeline(
    events: Sequence[Mapping[str, Any]],
    *,
    t: Callable[..., str],
    lang: str,
    roster: Mapping[str, str],
    recipients: Mapping[str, str],
) -> list[dict[str, Any]]:
    """The timeline's events with words for people: the actor's name (roster) or 系统 / 通知服务, the channel
    in this language (shown only when it says more than the actor), a "sent to" line with a name."""
    out: list[dict[str, Any]] = []
    for e in events:
        actor, via = str(e.get("actor") or ""), str(e.get("channel") or "")
        actor_label = roster.get(actor) or _known(t, "timeline.actor." + actor) or actor
        via_label = "" if via in ("", actor) else (_known(t, "timeline.via." + via) or via)
        reason = str(e.get("reason") or "")
        m = _SENT_TO.match(reason)
        nobody = _NOBODY.match(reason)
        if m:
            who = recipients.get(m.group("recipient")) or m.group("recipient")
            reason = f"{channel_label(m.group('channel'), t)} → {who}"
        elif nobody:
            kind, target = nobody.group("kind"), nobody.group("target")
            if kind == "user":
                whom = roster.get(target) or target
            elif kind == "role":
                whom = role_label(target.split("/")[0], lang)
            else:
                whom = target
            reason = t("timeline.nobody", who=whom)
        out.append({**e, "actor_label": actor_label, "via_label": via_label, "reason_label": reason})
    return out


def _known(t: Callable[..., str], key: str) -> str:
    text = t(key)
    return "" if text == key else text


def fold(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive events of the same action, actor and words as one line with a count and the last time
    (a grouped case's 34 merged alerts are one line ``合并告警 ×34``, not 34 lines)."""
    out: list[dict[str, Any]] = []
    for e in events:
        last = out[-1] if out else None
        same = ("action", "actor", "to_stage", "reason_label")
        if last is not None and all(last.get(k) == e.get(k) for k in same):
            last["count"] += 1
            last["until"] = e.get("at")
            continue
        out.append({**e, "count": 1, "until": None})
    return out
