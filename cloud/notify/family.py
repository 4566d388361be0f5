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

import httpx

from cloud.notify.aliyun import AliyunRpc, AliyunSms, AliyunVoice
from cloud.notify.channel import Channel
from cloud.notify.config import NotifyConfig
from cloud.notify.outbox import FAMILY_SMS, FAMILY_VOICE
from cloud.notify.render import FAMILY_PARAMS
from cloud.notify.tencent import TencentSms

__all__ = ["FAMILY_CHANNEL_OF", "FAMILY_SMS", "FAMILY_VOICE", "family_channels", "family_param_order"]
#: the planner's channel (``sms`` / ``voice``) -> the family's channel name
FAMILY_CHANNEL_OF = {"sms": FAMILY_SMS, "voice": FAMILY_VOICE}


def family_param_order(config: NotifyConfig) -> tuple[str, ...]:
    """Tencent's positional parameters for the family template: event, wearer, time[, phone]."""
    return FAMILY_PARAMS if config.service_phone else FAMILY_PARAMS[:3]


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
        out[FAMILY_VOICE] = AliyunVoice(
            rpc, tts_code=tts, called_show_number=v.called_show_number, play_times=v.play_times
        )
    return out
