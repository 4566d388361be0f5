"""The channels that reach a wearer's family with the family's own approved templates.

A provider sends only templates it approved, so a family's text is a separate template (config
``[aliyun_sms.templates] family`` / ``[tencent_sms.templates] family`` / ``[aliyun_voice.templates]
family``), sent by the same signed adapters as a responder's, under the channel names
:data:`FAMILY_SMS` and :data:`FAMILY_VOICE`. The planner plans a family's SMS / call on these only when
the template is configured; the responders' template is never sent to a family. The delivery worker
unseals the number at send time (``Contacts.family_address`` accepts these channel names).

Wiring: ``cloud.notify.service.build_channels`` adds ``family_channels(config, client=client)`` to the
channels it returns.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
from sqlalchemy import select

from alerts.loop.rosters import Roster, shift_changes
from cloud.db import Database, User
from cloud.errors import StorageError
from cloud.notify.aliyun import AliyunRpc, AliyunSms, AliyunVoice
from cloud.notify.channel import Channel, Delivered, Notice, Outcome, Retry
from cloud.notify.config import NotifyConfig
from cloud.notify.models import Contact, InApp
from cloud.notify.outbox import CALL_TASK, FAMILY_SMS, FAMILY_VOICE
from cloud.notify.render import FAMILY_PARAMS
from cloud.notify.tencent import TencentSms

log = logging.getLogger(__name__)
#: the duty role that answers the desk and gets the call task (alerts.loop.routing.ROLES)
CALL_TAKER = "call_taker"

__all__ = [
    "CALL_TASK",
    "FAMILY_CHANNEL_OF",
    "FAMILY_SMS",
    "FAMILY_VOICE",
    "CallTaskChannel",
    "CallTaskHandover",
    "WithoutParams",
    "call_task_view",
    "desk_call",
    "family_channels",
    "family_param_order",
]

#: template parameters a voice call never reads out (a link's token spoken aloud helps nobody)
NOT_SPOKEN = ("link",)


class WithoutParams:
    """``channel`` sending notices without the template parameters ``drop`` (the family's voice call gets
    the SMS's notice: same row, next channel in its fallback, but its TTS template has no ``link``)."""

    def __init__(self, channel: Channel, drop: tuple[str, ...]) -> None:
        self.channel = channel
        self.name = channel.name
        self._drop = drop

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome:
        params = {k: v for k, v in notice.params.items() if k not in self._drop}
        return await self.channel.send(replace(notice, params=params), to, key=key)


class CallTaskChannel:
    """The desk's 请致电家属 call task (channel :data:`CALL_TASK`), addressed when it is **delivered**.

    ``to`` is the device id. At send time ``on_duty(incident_id, device_id, now)`` names the call takers
    on duty (the loop's roster, overrides applied): each gets the task in their own in-app list; nobody on
    duty, every operator's queue gets it. A task planned at 07:59 and delivered after an 08:00 shift change
    goes to the 08:00 shift. Stored idempotently by the delivery key (per user), so a retried delivery
    shows once; the outcome's ``provider_id`` records who got it (``user:5,user:7`` or ``operators``).
    """

    name = CALL_TASK

    def __init__(
        self,
        db: Database,
        *,
        on_duty: Callable[[str, str, float], list[int]],
        now: Callable[[], float],
    ) -> None:
        self.db = db
        self._on_duty = on_duty
        self._now = now

    def _store(self, notice: Notice, device_id: str, key: str) -> str:
        now = self._now()
        users = self._on_duty(notice.incident_id, device_id, now)
        rows: list[tuple[int | None, str]] = [(uid, f"{key}/user:{uid}"[:255]) for uid in users]
        rows = rows or [(None, key[:255])]  # nobody on duty: every operator's queue
        # the task's own key and device travel with it: the next shift's hand-over (CallTaskHandover)
        # finds the task and asks who is on duty for the same place
        body = {**notice.to_json(), TASK_META: {"task": key[:255], "device_id": device_id}}
        with self.db.write() as s:
            have = set(s.scalars(select(InApp.dedup_key).where(InApp.dedup_key.in_([k for _, k in rows]))))
            for uid, k in rows:
                if k not in have:
                    s.add(InApp(user_id=uid, incident_id=notice.incident_id, kind="notice",
                                notice=body, dedup_key=k, created_at=now))  # fmt: skip
        return ",".join(f"user:{u}" for u in users) or "operators"

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome:
        try:
            who = await asyncio.to_thread(self._store, notice, to, key)
        except StorageError as exc:
            return Retry(f"in-app store failed: {exc.detail}")
        return Delivered(who[:128])


#: the stored notice's key for the call task's own facts (its delivery key, its device)
TASK_META = "call_task"
#: call tasks older than this are not handed over any more (two days: a family not called by then is a
#: matter for the supervisor, not for the next shift's list)
HANDOVER_HORIZON_S = 2 * 86400.0
#: how often (clock seconds) the hand-over job looks whether a call takers' shift changed
HANDOVER_TICK_S = 30.0
_TASK_KEY = re.compile(r"^(?P<task>.*/" + CALL_TASK + r")(?:/user:\d+)?$")


@dataclass(frozen=True, slots=True)
class HandedOver:
    """One task handed to the incoming shift: who got it now, who had it."""

    incident_id: str
    task: str
    to: tuple[str, ...]  # roster ids (a contact's responder id, else the username) of the new holders
    holders_before: tuple[str, ...]


class CallTaskHandover:
    """The 请致电家属 call task outlives a shift: at a shift change of the call takers, every call task not
    done yet goes to the incoming shift.

    A task is **open** until the desk's call says so: once a call's outcome was recorded for its incident
    after the task's first delivery (``POST /api/v1/incidents/{id}/family-call``), the newest outcome
    decides: ``reached`` is done, ``not_reached`` / ``wrong_number`` stay open even when the notice was
    read. Without a recorded outcome, a task is open while none of its in-app rows was marked read
    (``POST /api/v1/notify/inapp/{id}/read`` by the call taker who made the call: read is done).
    At a shift change (an instant of
    :func:`alerts.loop.rosters.shift_changes` for the call takers, overrides included, checked every
    :data:`HANDOVER_TICK_S`; and once at start, for a change missed while the cloud was down) each open task
    younger than :data:`HANDOVER_HORIZON_S` is given, in-app, to every call taker now on duty for its place
    who does not have it yet (the same ``<task>/user:<id>`` key as at delivery: once per task and person,
    never re-sent to someone who has it, a retried hand-over writes nothing twice). Each hand-over is
    audited (``loop_audit``, action ``call_task.handover``) and written on the incident's timeline
    (``call_task_handover``: 请致电家属任务未完成，已交接给下一班：...), so the console shows whose it is now.
    The previous holders keep their row: whoever calls first marks it read and the task is done for all.
    """

    def __init__(
        self,
        db: Database,
        *,
        on_duty: Callable[[str, str, float], list[int]],
        roster: Callable[[], Roster],
        now: Callable[[], float],
    ) -> None:
        self.db = db
        self._on_duty = on_duty
        self._roster = roster
        self._now = now
        self._checked: float | None = None

    def due(self, now: float) -> bool:
        """Whether the call takers' shift changed since the last look (always at the first one)."""
        last, self._checked = self._checked, now
        if last is None:
            return True
        return bool(shift_changes(self._roster(), CALL_TAKER, last, now))

    async def job(self, ctx: Any) -> None:
        """The ``call-task-handover`` periodic job (:mod:`cloud.jobs`)."""
        now = self._now()
        last = self._checked
        if await asyncio.to_thread(self.due, now):
            try:
                await asyncio.to_thread(self.run, now)
            except Exception:
                self._checked = last  # not handed over: the next tick tries the same shift change again
                raise

    def open_tasks(self, now: float) -> dict[str, list[InApp]]:
        """Open call tasks (task key -> its in-app rows) younger than the horizon."""
        with self.db.read() as s:
            found = s.scalars(
                select(InApp)
                .where(
                    InApp.created_at >= now - HANDOVER_HORIZON_S,
                    InApp.dedup_key.like(f"%/{CALL_TASK}%"),
                )
                .order_by(InApp.id)
            ).all()
        tasks: dict[str, list[InApp]] = {}
        for r in found:
            m = _TASK_KEY.match(r.dedup_key or "")
            if m:
                tasks.setdefault(m["task"], []).append(r)
        oldest = now - HANDOVER_HORIZON_S
        young = {k: v for k, v in tasks.items() if _first_at(v) >= oldest}  # a hand-over keeps its age
        with self.db.read() as s:
            calls = last_calls(s, {v[0].incident_id for v in young.values()})
        out = {}
        for k, v in young.items():
            call = calls.get(v[0].incident_id)
            if call is not None and call[0] >= _first_at(v):
                if call[1] != "reached":  # the desk's outcome decides, read or not
                    out[k] = v
            elif all(r.read_at is None for r in v):
                out[k] = v
        return out

    def run(self, now: float | None = None) -> list[HandedOver]:
        """Hand every open task to the call takers on duty who lack it; returns what was handed over."""
        now = self._now() if now is None else now
        out: list[HandedOver] = []
        for task, have in self.open_tasks(now).items():
            first = have[0]
            meta = dict((first.notice or {}).get(TASK_META) or {})
            users = self._on_duty(first.incident_id, str(meta.get("device_id", "")), now)
            holders = {r.user_id for r in have if r.user_id is not None}
            new = [u for u in users if u not in holders]
            if not new:
                continue
            done = self._hand(task, first, new, sorted(holders), now)
            if done is not None:
                out.append(done)
        return out

    def _hand(
        self, task: str, first: InApp, users: list[int], holders: list[int], now: float
    ) -> HandedOver | None:
        from cloud.loop import rows as loop_rows  # the loop's tables; imported lazily, as contacts does
        from cloud.loop.models import AuditEntry, Incident

        with self.db.write() as s:
            names = _roster_ids(s, [*users, *holders])
            keys = {u: f"{task}/user:{u}"[:255] for u in users}
            have = set(s.scalars(select(InApp.dedup_key).where(InApp.dedup_key.in_(list(keys.values())))))
            fresh = [u for u in users if keys[u] not in have]
            if not fresh:
                return None  # another process handed it over a moment ago
            before = tuple(names.get(u, str(u)) for u in holders) or ("值班台",)
            to = tuple(names.get(u, str(u)) for u in fresh)
            notice = dict(first.notice or {})
            title = str(notice.get("title", ""))
            notice["title"] = ("【交接】" + title.removeprefix("【交接】"))[:200]
            notice["lines"] = [
                f"上一班未完成，已交接给你 / handed over from the previous shift: {'、'.join(before)}",
                *[x for x in notice.get("lines") or [] if not str(x).startswith("上一班未完成")],
            ]
            notice[TASK_META] = {
                **dict(notice.get(TASK_META) or {}),
                "task": task,
                "first_at": _first_at([first]),  # the task's age, not this row's, counts for the horizon
                "handed_over_at": now,
            }
            for u in fresh:
                s.add(InApp(user_id=u, incident_id=first.incident_id, kind="notice", notice=notice,
                            dedup_key=keys[u], created_at=now))  # fmt: skip
            detail: dict[str, Any] = {"task": task, "to": list(to), "from": list(before)}
            s.add(AuditEntry(at=now, actor="system", role="system", action="call_task.handover",
                             target=f"incident:{first.incident_id}"[:128], detail=detail))  # fmt: skip
            inc_id = first.incident_id
            row = s.get(Incident, int(inc_id)) if inc_id.isdigit() and len(inc_id) <= 18 else None
            if row is not None:
                loop_rows.add_event(
                    s,
                    row,
                    "call_task_handover",
                    actor="system",
                    now=now,
                    reason=f"call-the-family task handed to the next shift: {', '.join(to)}",
                    code="call_task_handover",
                    params={"to": list(to), "from": list(before)},
                )
        log.info("call task handed over", extra={"incident": first.incident_id, "to": list(to)})
        return HandedOver(first.incident_id, task, to, before)


def last_calls(s: Any, incident_ids: set[str]) -> dict[str, tuple[float, str]]:
    """Incident id -> (when, outcome) of the desk's newest recorded call to the family."""
    from cloud.loop.models import IncidentEvent  # the loop's tables; imported lazily

    ids = sorted({int(i) for i in incident_ids if i.isdigit() and len(i) <= 18})
    out: dict[str, tuple[float, str]] = {}
    for i in range(0, len(ids), 500):
        q = (
            select(IncidentEvent.incident_id, IncidentEvent.at, IncidentEvent.reason_code)
            .where(IncidentEvent.incident_id.in_(ids[i : i + 500]), IncidentEvent.action == "family_call")
            .order_by(IncidentEvent.id)
        )
        for inc, at, code in s.execute(q):
            out[str(inc)] = (float(at), str(code or "").removeprefix("family_call_"))
    return out


def desk_call(db: Database, incident_id: str) -> dict[str, Any] | None:
    """The desk's calls to the family of an incident, for ``family_reached`` of
    ``GET /api/v1/notify/incidents/{id}/family``: ``{"outcome", "at", "attempts"}`` of the newest call
    (``reached`` / ``not_reached`` / ``wrong_number``; UTC epoch seconds), None before the first. No
    note (the call taker's words stay on the timeline) and no number."""
    from cloud.loop.models import IncidentEvent  # the loop's tables; imported lazily

    if not incident_id.isdigit() or len(incident_id) > 18:
        return None
    with db.read() as s:
        calls = s.execute(
            select(IncidentEvent.at, IncidentEvent.reason_code)
            .where(IncidentEvent.incident_id == int(incident_id), IncidentEvent.action == "family_call")
            .order_by(IncidentEvent.id)
        ).all()
    if not calls:
        return None
    at, code = calls[-1]
    return {"outcome": str(code or "").removeprefix("family_call_"), "at": float(at), "attempts": len(calls)}


def _task_rows(s: Any, incident_id: str) -> list[InApp]:
    """The in-app rows of the incident's newest call task (delivery and hand-overs), oldest first."""
    found = s.scalars(
        select(InApp)
        .where(InApp.incident_id == incident_id, InApp.dedup_key.like(f"%/{CALL_TASK}%"))
        .order_by(InApp.id)
    ).all()
    tasks: dict[str, list[InApp]] = {}
    for r in found:
        m = _TASK_KEY.match(r.dedup_key or "")
        if m:
            tasks.setdefault(m["task"], []).append(r)
    return list(tasks.values())[-1] if tasks else []


def task_holders(s: Any, incident_id: str) -> set[str]:
    """Roster ids of everyone who has the incident's newest call task in their in-app list."""
    users = sorted({r.user_id for r in _task_rows(s, incident_id) if r.user_id is not None})
    return set(_roster_ids(s, users).values()) if users else set()


def current_holders(s: Any, incident_id: str) -> list[str]:
    """Roster ids of whoever holds the incident's call task now: the newest delivery or hand-over (after a
    hand-over, the incoming shift), in user-id order; [] when there is no task or it went to every
    operator's queue (nobody was on duty)."""
    items = _task_rows(s, incident_id)
    if not items:
        return []
    newest = max(r.created_at for r in items)
    users = sorted({r.user_id for r in items if r.created_at == newest and r.user_id is not None})
    names = _roster_ids(s, users) if users else {}
    return [names.get(u, str(u)) for u in users]


def roster_ids(s: Any, username: str) -> set[str]:
    """The ids the roster may know a platform user by: the username, and their contact's responder id."""
    out = {username}
    uid = s.scalar(select(User.id).where(User.username == username))
    if uid is not None:
        rid = s.scalar(select(Contact.responder_id).where(Contact.user_id == uid))
        if rid:
            out.add(str(rid))
    return out


def call_task_view(db: Database, incident_id: str) -> dict[str, Any]:
    """Whose the incident's 请致电家属 task is now: ``holders`` (roster ids of the newest delivery or
    hand-over: after a hand-over, the incoming shift), ``for_all_operators`` (nobody was on duty),
    ``delivered_at`` (first delivery), ``handed_over_at`` (the newest hand-over, or None) and ``read_at``
    / ``read_by`` (the first holder who marked it read). ``task`` is False when there is none."""
    with db.read() as s:
        items = _task_rows(s, incident_id)
        if not items:
            return {"task": False, "holders": [], "for_all_operators": False, "delivered_at": None,
                    "handed_over_at": None, "read_at": None, "read_by": None}  # fmt: skip
        newest = max(r.created_at for r in items)
        current = [r for r in items if r.created_at == newest]
        users = sorted({r.user_id for r in items if r.user_id is not None})
        names = _roster_ids(s, users) if users else {}
        read = sorted((r for r in items if r.read_at is not None), key=lambda r: float(r.read_at or 0))
    handed = [float((((r.notice or {}).get(TASK_META)) or {}).get("handed_over_at") or 0) for r in items]
    return {
        "task": True,
        "holders": [names.get(r.user_id, str(r.user_id)) for r in current if r.user_id is not None],
        "for_all_operators": any(r.user_id is None for r in current),
        "delivered_at": _first_at(items),
        "handed_over_at": max(handed) or None,
        "read_at": read[0].read_at if read else None,
        "read_by": names.get(read[0].user_id) if read and read[0].user_id is not None else None,
    }


def _first_at(items: list[InApp]) -> float:
    """When the task was first delivered (a hand-over's row remembers it)."""
    return min(float(((r.notice or {}).get(TASK_META) or {}).get("first_at", r.created_at)) for r in items)


def _roster_ids(s: Any, users: list[int]) -> dict[int, str]:
    """User id -> the id the roster knows them by (the contact's responder id, else the username)."""
    out = {int(u): str(n) for u, n in s.execute(select(User.id, User.username).where(User.id.in_(users)))}
    for u, rid in s.execute(select(Contact.user_id, Contact.responder_id).where(Contact.user_id.in_(users))):
        if rid:
            out[int(u)] = str(rid)
    return out


#: the planner's channel (``sms`` / ``voice``) -> the family's channel name
FAMILY_CHANNEL_OF = {"sms": FAMILY_SMS, "voice": FAMILY_VOICE}


def family_param_order(config: NotifyConfig) -> tuple[str, ...]:
    """Tencent's positional parameters for the family template: event, wearer, time[, phone][, link]."""
    return tuple(
        p
        for p in FAMILY_PARAMS
        if (p != "phone" or config.service_phone) and (p != "link" or config.family_link)
    )


def family_channels(config: NotifyConfig, *, client: httpx.AsyncClient) -> dict[str, Channel]:
    """:data:`FAMILY_SMS` / :data:`FAMILY_VOICE` for the family templates the config has."""
    out: dict[str, Channel] = {}
    template, _ = config.family_template("sms")
    provider = config.sms_provider_in_use()
    if template and provider == "tencent" and config.tencent_sms is not None:
        t = config.tencent_sms
        out[FAMILY_SMS] = TencentSms(
            secret_id=t.secret_id,
            secret_key=t.secret_key,
            sdk_app_id=t.sdk_app_id,
            sign_name=t.sign_name,
            template_id=template,
            client=client,
            endpoint=t.endpoint,
            region=t.region,
            param_order=family_param_order(config),
        )
    elif template and provider == "aliyun" and config.aliyun_sms is not None:
        a = config.aliyun_sms
        rpc = AliyunRpc(
            access_key_id=a.access_key_id,
            access_key_secret=a.access_key_secret,
            endpoint=a.endpoint,
            client=client,
            region=a.region,
        )
        out[FAMILY_SMS] = AliyunSms(rpc, sign_name=a.sign_name, template_code=template)
    tts, _ = config.family_template("voice")
    if tts and config.aliyun_voice is not None:
        v = config.aliyun_voice
        rpc = AliyunRpc(
            access_key_id=v.access_key_id,
            access_key_secret=v.access_key_secret,
            endpoint=v.endpoint,
            client=client,
            region=v.region,
        )
        voice = AliyunVoice(
            rpc, tts_code=tts, called_show_number=v.called_show_number, play_times=v.play_times
        )
        out[FAMILY_VOICE] = WithoutParams(voice, NOT_SPOKEN)
    return out
