"""From "tell this target about this incident" to outbox rows: recipients, channels, links, words.

A :class:`NotifyRequest` is what the loop's ``NotificationIntent`` (``alerts.loop.intents``) becomes once
the incident's facts are attached. The planner resolves the target to recipients (frozen at this
moment, as an escalation snapshot is), picks each recipient's channel chain (the intent's hint first,
then the user's own order; voice only for life-safety severity; only configured channels), signs one
link per action for that recipient, renders the notice in the recipient's language and returns one
:class:`~cloud.notify.outbox.NewDelivery` per recipient (the first channel; the rest is its fallback).

Two recipients stand in for a target (docs/notifications.md):

- a desk or group that does not exist or has nobody in it: the operators' in-app queue (``inapp_ops``),
  with a warning logged once per group per :data:`FALLBACK_LOG_EVERY_S`;
- a wearer's family (``family:<device_id>``): SMS, then voice (life-safety severity), each only when
  configured *with a family template* (``cloud.notify.family``; without one the family is not texted,
  warned once per 10 minutes naming the missing key), and always the in-app "请致电家属" call task, which
  carries the device, whose family it is (masked name) and the masked number, addressed when it is
  delivered to the call takers on duty in the incident's zone (the loop's roster), or to every operator
  when nobody is on call; the console reveals the number to admin / dispatcher, audited. No action
  links: a relative is told, not dispatched, and a text message reply from them means nothing; with
  ``family_link`` the SMS carries a follow link (progress only, rating once closed: ``link`` parameter,
  :meth:`~cloud.notify.links.LinkSigner.family_token`). A reopened case's family page
  (:attr:`NotifyRequest.reopen`, ``cloud.notify.loopbridge.ReopenWatch``) says so and is keyed per reopen.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cloud.errors import NotFoundError
from cloud.notify.channel import Notice
from cloud.notify.config import NotifyConfig
from cloud.notify.contacts import FAMILY_PREFIX, Contacts, Recipient
from cloud.notify.family import CALL_TASK, FAMILY_CHANNEL_OF
from cloud.notify.links import RESPONDER_PURPOSES, LinkSigner, Purpose
from cloud.notify.outbox import NewDelivery
from cloud.notify.render import IncidentFacts, family_notice, render
from firmware_bridge.kernel.events import Severity

log = logging.getLogger(__name__)

#: "group falls back to the operators" is logged at most once per group per this many seconds
FALLBACK_LOG_EVERY_S = 600.0
#: the loop's duty role that answers the desk (alerts.loop.routing.ROLES): the family call task's audience
CALL_TAKER_ROLE = "call_taker"
#: groups whose last warning is remembered (a typo'd target per page cannot grow this without bound)
FALLBACK_LOG_GROUPS = 1024


@dataclass(frozen=True, slots=True)
class NotifyRequest:
    facts: IncidentFacts
    target_kind: str  # user | role | group
    target_id: str
    step: int = 0
    channel_hint: tuple[str, ...] = ()
    intent_key: str = ""
    purposes: tuple[Purpose, ...] = RESPONDER_PURPOSES
    #: the loop's ``reopen`` event this page is for (a reopened case's family page; 0 = not a reopen):
    #: part of the dedup key, so each reopen pages the family once
    reopen: int = 0


def reply_ref(incident_id: str) -> str:
    """The short reference an SMS reply names ("1 37"): the incident number when it is short, else a
    stable 4-digit number derived from the id (a rare clash among one person's pages is answered as
    ambiguous, never guessed)."""
    if incident_id.isdigit() and len(incident_id) <= 8:
        return incident_id
    return str(int(hashlib.sha256(incident_id.encode()).hexdigest()[:8], 16) % 9000 + 1000)


def _delivery(
    req: NotifyRequest, key: str, recipient: str, channel: str, notice: Notice, **more: Any
) -> NewDelivery:
    """A delivery of ``req``: what every delivery takes from its request, plus these."""
    return NewDelivery(
        dedup_key=key,
        intent_key=req.intent_key,
        incident_id=req.facts.incident_id,
        step=req.step,
        recipient=recipient,
        channel=channel,
        notice=notice.to_json(),
        priority=int(req.facts.severity),
        **more,
    )


class Planner:
    def __init__(self, contacts: Contacts, links: LinkSigner, config: NotifyConfig) -> None:
        self.contacts = contacts
        self.links = links
        self.config = config
        self._warned: dict[str, float] = {}  # group -> when its fallback was last logged
        self._warned_lock = threading.Lock()  # plan() runs in worker threads

    def configured(self, channel: str) -> bool:
        c = self.config
        return {
            "wecom": c.wecom is not None,
            "sms": c.aliyun_sms is not None or c.tencent_sms is not None,
            "voice": c.aliyun_voice is not None,
            "email": c.smtp is not None,
            "inapp": True,
        }.get(channel, False)

    def chain(self, recipient: Recipient, req: NotifyRequest) -> tuple[str, ...]:
        hinted = [ch for ch in req.channel_hint if ch in recipient.channels]
        order = list(dict.fromkeys([*hinted, *recipient.channels]))
        severe = req.facts.severity >= Severity.HIGH
        return tuple(ch for ch in order if self.configured(ch) and (ch != "voice" or severe))

    def plan(
        self, req: NotifyRequest, *, now: float, cache: dict[tuple[str, str], list[Recipient]] | None = None
    ) -> list[NewDelivery]:
        key = (req.target_kind, req.target_id)
        if cache is not None and key in cache:
            recipients = cache[key]
        else:
            recipients = self.contacts.resolve(
                req.target_kind, req.target_id, default_channels=self.config.default_channels
            )
            if cache is not None:
                cache[key] = recipients
        base = req.intent_key or f"{req.facts.incident_id}/{req.step}/{req.target_kind}:{req.target_id}"
        if req.reopen:
            base = f"{req.facts.incident_id}/reopen:{req.reopen}/{req.target_kind}:{req.target_id}"
        out: list[NewDelivery] = []
        for r in recipients:
            if r.key.startswith(FAMILY_PREFIX):
                out.extend(self._family(req, r, base, now))
                continue
            channels: tuple[str, ...]
            if r.fallback:
                self._warn_fallback(r, req, now)
                channels = ("inapp_ops",)
            elif r.channels == ("webhook",):
                channels = ("webhook",) if r.target in self.config.webhooks else ("inapp_ops",)
            elif r.target:  # a group robot
                robot = self.config.robots.get(r.target)
                channels = (robot.kind,) if robot else ("inapp_ops",)
            else:
                channels = self.chain(r, req)
            if not channels:
                continue
            links = [
                (p, self.links.url(self.links.token(p, req.facts.incident_id, r.key, now=now)))
                for p in req.purposes
            ]
            ref = reply_ref(req.facts.incident_id) if any(c in ("sms",) for c in channels) else ""
            notice = render(req.facts, lang="en" if r.lang == "en" else "zh", links=links, reply_ref=ref)
            out.append(
                _delivery(
                    req,
                    f"{base}/{r.key}/{channels[0]}",
                    r.key,
                    channels[0],
                    notice,
                    target=r.target,
                    fallback=channels[1:],
                    reply_ref=ref,
                )
            )
        return out

    def _family(self, req: NotifyRequest, r: Recipient, base: str, now: float) -> list[NewDelivery]:
        """The family's own text / call (its approved family templates, when configured) and the desk's
        请致电家属 call task (channel ``call_task``), addressed at delivery to the call takers on duty in the
        incident's zone, or to every operator when nobody is on call. The number is in no row: the worker
        unseals it at send time."""
        device = r.key.removeprefix(FAMILY_PREFIX)
        try:
            view = self.contacts.family_view(device, reveal=False)
        except NotFoundError:
            return []  # the contact was removed since it was resolved: "nobody to notify"
        phones: list[str] = []
        for ch in self.chain(r, req):  # sms, voice (life-safety): only configured ones
            template, key = self.config.family_template(ch)
            if template:
                phones.append(FAMILY_CHANNEL_OF[ch])
            else:  # never the responders' template: the desk's call task reaches the family instead
                self._warn_once(
                    f"family-template:{key}",
                    now,
                    "no family template configured: the family is not texted or called, the desk calls",
                    key=key,
                    incident=req.facts.incident_id,
                )
        out: list[NewDelivery] = []
        if phones:
            words = family_notice(
                req.facts,
                wearer=view.wearer,
                service_phone=self.config.service_phone,
                link=self._family_link(req.facts.incident_id, now),
                reopened=req.reopen > 0,
            )
            key = f"{base}/{r.key}/{phones[0]}"
            out.append(_delivery(req, key, r.key, phones[0], words, fallback=tuple(phones[1:])))
        notice = render(req.facts, lang="zh")
        whose = f"{view.wearer}的家属" if view.wearer else "佩戴者家属"
        texted = "已发短信/语音通知家属，请致电确认" if phones else "未配置家属短信，请致电告知"
        task = replace(
            notice,
            title=(
                f"请致电家属（案件重开）/ call the family (case reopened): {notice.title}"
                if req.reopen
                else f"请致电家属 / call the family: {notice.title}"
            )[:200],
            lines=(
                f"紧急联系人：{whose} {view.phone}（完整号码：控制台「家属联系」，管理员/调度员可见并留痕）",
                f"设备 / device: {device}",
                texted,
                *notice.lines,
            ),
        )
        # one row; who is on duty is decided when it is delivered (cloud.notify.family.CallTaskChannel):
        # each call taker on duty then gets it in their own in-app list, nobody on call every operator
        out.append(_delivery(req, f"{base}/{r.key}/{CALL_TASK}", r.key, CALL_TASK, task))
        return out

    def _family_link(self, incident_id: str, now: float) -> str:
        """The family's follow link token (a ``case`` link of actor ``family``), when the family template
        takes one (``family_link``) and the incident is the loop's (a number); else ""."""
        if not self.config.family_link or not incident_id.isdigit():
            return ""
        ttl = self.config.reopen_window_s + self.config.link_ttl_s  # as a resident's case link
        try:
            return self.links.family_token(incident_id, now=now, ttl_s=ttl)
        except ValueError:  # a number too large for the compact token: the family is told without one
            return ""

    def _warn_once(self, what: str, now: float, message: str, **extra: str) -> None:
        """``message`` at most once per ``what`` per :data:`FALLBACK_LOG_EVERY_S`."""
        with self._warned_lock:
            last = self._warned.get(what)
            if last is not None and now - last < FALLBACK_LOG_EVERY_S:
                return
            if last is None and len(self._warned) >= FALLBACK_LOG_GROUPS:
                for k, at in list(self._warned.items()):
                    if now - at >= FALLBACK_LOG_EVERY_S:
                        del self._warned[k]
            if last is not None or len(self._warned) < FALLBACK_LOG_GROUPS:
                self._warned[what] = now
        log.warning(message, extra=extra)

    def _warn_fallback(self, r: Recipient, req: NotifyRequest, now: float) -> None:
        """Loud but not per page: one warning per group per :data:`FALLBACK_LOG_EVERY_S`."""
        self._warn_once(
            r.key,
            now,
            "group has nobody to page, operators get it in-app",
            target=r.key,
            reason=r.fallback,
            incident=req.facts.incident_id,
        )

    def plan_many(self, reqs: Sequence[NotifyRequest], *, now: float) -> list[NewDelivery]:
        return [d for _, ds in self.plan_each(reqs, now=now) for d in ds]

    def plan_each(
        self, reqs: Sequence[NotifyRequest], *, now: float
    ) -> list[tuple[NotifyRequest, list[NewDelivery]]]:
        """Each request with its deliveries; an empty list means nobody of the target can be reached."""
        cache: dict[tuple[str, str], list[Recipient]] = {}  # one resolution per target and batch
        return [(r, self.plan(r, now=now, cache=cache)) for r in reqs]
