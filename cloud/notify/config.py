"""Configuration of the notification channels: one TOML file (``notify_config_file`` in the cloud settings).

Channel secrets (corp secrets, access keys, robot keys) live in this file, not in the database, so a
database dump does not hand out the keys to every phone in the district. Every endpoint is configurable,
which is how the tests point each channel at a local fake provider. Keys are snake_case and validated;
an error names the key. Example (``docs/notifications.md`` has all keys)::

    public_base_url = "https://vigil.example.cn"
    default_channels = ["wecom", "sms", "inapp"]

    [wecom]
    corp_id = "ww0123"
    corp_secret = "..."
    agent_id = 1000002

    [robots.grid_g01]
    kind = "dingtalk_robot"
    url = "https://oapi.dingtalk.com/robot/send?access_token=..."
    secret = "SEC..."
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud.errors import ConfigError

log = logging.getLogger(__name__)

ChannelName = Literal["wecom", "dingtalk_robot", "wecom_robot", "sms", "voice", "email", "webhook", "inapp"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeComAppConfig(_Strict):
    corp_id: str
    corp_secret: str = Field(repr=False)
    agent_id: int
    api_url: str = "https://qyapi.weixin.qq.com/cgi-bin/"


class RobotConfig(_Strict):
    kind: Literal["dingtalk_robot", "wecom_robot"]
    url: str = Field(repr=False)  # holds the access token / key
    secret: str = Field(default="", repr=False)  # DingTalk "加签" secret (SEC...)
    per_minute: int = Field(default=20, ge=1, le=1000)


class SmsTemplates(_Strict):
    """Templates other than the responders' (each approved by the provider in advance).

    ``family``: the text a wearer's registered emergency contact receives (docs/notifications.md, "A
    wearer's family"): parameters ``event``, ``wearer``, ``time`` and, when ``service_phone`` is set,
    ``phone``. Empty: the family gets no SMS (never the responders' template), only the desk's call task.
    """

    family: str = ""


class AliyunSmsConfig(_Strict):
    access_key_id: str
    access_key_secret: str = Field(repr=False)
    sign_name: str
    template_code: str
    templates: SmsTemplates = SmsTemplates()
    endpoint: str = "https://dysmsapi.aliyuncs.com/"
    region: str = "cn-hangzhou"


class AliyunVoiceConfig(_Strict):
    access_key_id: str
    access_key_secret: str = Field(repr=False)
    tts_code: str
    called_show_number: str = ""
    play_times: int = Field(default=3, ge=1, le=3)
    #: ``family``: the TTS template a wearer's family is called with (same parameters as the SMS)
    templates: SmsTemplates = SmsTemplates()
    endpoint: str = "https://dyvmsapi.aliyuncs.com/"
    region: str = "cn-hangzhou"


class TencentSmsConfig(_Strict):
    secret_id: str
    secret_key: str = Field(repr=False)
    sdk_app_id: str
    sign_name: str
    template_id: str
    endpoint: str = "https://sms.tencentcloudapi.com"
    region: str = "ap-guangzhou"
    #: ``family``: the family's template id; positional parameters event, wearer, time[, phone]
    templates: SmsTemplates = SmsTemplates()


class SmtpConfig(_Strict):
    host: str
    sender: str
    port: int = Field(default=465, ge=1, le=65535)
    security: Literal["ssl", "starttls", "none"] = "ssl"
    username: str = ""
    password: str = Field(default="", repr=False)


class WebhookConfig(_Strict):
    url: str
    secret: str = Field(repr=False)


class NotifyConfig(_Strict):
    #: how links in messages start (the console's public address)
    public_base_url: str = "http://127.0.0.1:8080"
    #: channel order for a user who has not chosen one (unbound channels are skipped)
    default_channels: list[ChannelName] = ["wecom", "dingtalk_robot", "sms", "voice", "email", "inapp"]
    #: which SMS provider sends the ``sms`` channel when both are configured
    sms_provider: Literal["aliyun", "tencent"] = "aliyun"
    link_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    #: a resident may reopen a case this long after the case link was issued / the case was closed
    reopen_window_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=50)
    backoff_initial_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    #: a claimed delivery whose worker died is taken over after this long
    lease_s: float = Field(default=60.0, gt=0)
    poll_s: float = Field(default=0.5, gt=0)
    batch_size: int = Field(default=20, ge=1, le=500)
    http_timeout_s: float = Field(default=5.0, gt=0)
    #: token the SMS providers' inbound (reply) callbacks carry as ``?token=``; empty = endpoint disabled
    sms_inbound_token: str = Field(default="", repr=False)
    #: promised first-response time per report category, seconds; ``default`` for the rest
    report_promise_s: dict[str, float] = {"default": 2 * 3600.0}
    #: reports must lie inside [lat_min, lon_min, lat_max, lon_max]; empty = the devices' box + 0.02°
    report_area: list[float] = Field(default_factory=list)
    report_limit_per_hour: int = Field(default=5, ge=1)
    report_limit_global_per_hour: int = Field(default=500, ge=1)
    photo_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    #: the community's service number a family may call back (the family SMS's ``phone``); empty = none
    service_phone: str = Field(default="", pattern=r"^$|^\+?[0-9][0-9 -]{2,19}$")
    #: the family SMS template takes a ``link`` parameter: the token of the family's follow link (the
    #: template holds ``{public_base_url}/l/`` as fixed text: providers refuse links in variables)
    family_link: bool = False
    wecom: WeComAppConfig | None = None
    robots: dict[str, RobotConfig] = {}
    aliyun_sms: AliyunSmsConfig | None = None
    aliyun_voice: AliyunVoiceConfig | None = None
    tencent_sms: TencentSmsConfig | None = None
    smtp: SmtpConfig | None = None
    webhooks: dict[str, WebhookConfig] = {}

    def sms_provider_in_use(self) -> Literal["aliyun", "tencent"] | None:
        """The provider that sends the ``sms`` channel (``cloud.notify.service.build_channels``' rule)."""
        if self.tencent_sms is not None and (self.sms_provider == "tencent" or self.aliyun_sms is None):
            return "tencent"
        return "aliyun" if self.aliyun_sms is not None else None

    def family_template(self, channel: str) -> tuple[str, str]:
        """``(template, its config key)`` the family is reached with on ``channel`` (``sms`` / ``voice``);
        the template is "" when that channel is configured without one (or is not configured)."""
        if channel == "sms":
            provider = self.sms_provider_in_use()
            if provider == "tencent" and self.tencent_sms is not None:
                return self.tencent_sms.templates.family, "tencent_sms.templates.family"
            if provider == "aliyun" and self.aliyun_sms is not None:
                return self.aliyun_sms.templates.family, "aliyun_sms.templates.family"
        if channel == "voice" and self.aliyun_voice is not None:
            return self.aliyun_voice.templates.family, "aliyun_voice.templates.family"
        return "", ""

    def missing_family_templates(self) -> list[str]:
        """The config keys of family templates a configured SMS / voice channel lacks (logged at load;
        without them a family gets the desk's call task only, never a responder's template)."""
        out = []
        for channel in ("sms", "voice"):
            template, key = self.family_template(channel)
            if key and not template:
                out.append(key)
        return out

    @classmethod
    def load(cls, path: Path | None) -> NotifyConfig:
        if path is None:
            return cls()
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read notify config {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"notify config {path} is not valid TOML: {exc}") from exc
        return cls.from_mapping(raw, source=str(path))

    @classmethod
    def from_mapping(cls, raw: dict[str, object], *, source: str = "notify config") -> NotifyConfig:
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{source}: invalid key {key!r}: {first['msg']}") from exc
        for key in config.missing_family_templates():
            log.warning(
                "no family template: a wearer's family gets no text or call, only the desk's call task",
                extra={"key": key, "source": source},
            )
        return config
