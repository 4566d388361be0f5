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
from collections.abc import Callable
from dataclasses import replace

import httpx
from sqlalchemy import select

from cloud.db import Database
from cloud.errors import StorageError
from cloud.notify.aliyun import AliyunRpc, AliyunSms, AliyunVoice
from cloud.notify.channel import Channel, Delivered, Notice, Outcome, Retry
from cloud.notify.config import NotifyConfig
from cloud.notify.models import InApp
from cloud.notify.outbox import CALL_TASK, FAMILY_SMS, FAMILY_VOICE
from cloud.notify.render import FAMILY_PARAMS
from cloud.notify.tencent import TencentSms

__all__ = [
    "CALL_TASK",
    "FAMILY_CHANNEL_OF",
    "FAMILY_SMS",
    "FAMILY_VOICE",
    "CallTaskChannel",
    "WithoutParams",
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
        with self.db.write() as s:
            have = set(s.scalars(select(InApp.dedup_key).where(InApp.dedup_key.in_([k for _, k in rows]))))
            for uid, k in rows:
                if k not in have:
                    s.add(InApp(user_id=uid, incident_id=notice.incident_id, kind="notice",
                                notice=notice.to_json(), dedup_key=k, created_at=now))  # fmt: skip
        return ",".join(f"user:{u}" for u in users) or "operators"

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome:
        try:
            who = await asyncio.to_thread(self._store, notice, to, key)
        except StorageError as exc:
            return Retry(f"in-app store failed: {exc.detail}")
        return Delivered(who[:128])


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
