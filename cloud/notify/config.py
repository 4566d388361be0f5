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

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud.errors import ConfigError

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


class AliyunSmsConfig(_Strict):
    access_key_id: str
    access_key_secret: str = Field(repr=False)
    sign_name: str
    template_code: str
    endpoint: str = "https://dysmsapi.aliyuncs.com/"
    region: str = "cn-hangzhou"


class AliyunVoiceConfig(_Strict):
    access_key_id: str
    access_key_secret: str = Field(repr=False)
    tts_code: str
    called_show_number: str = ""
    play_times: int = Field(default=3, ge=1, le=3)
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
    wecom: WeComAppConfig | None = None
    robots: dict[str, RobotConfig] = {}
    aliyun_sms: AliyunSmsConfig | None = None
    aliyun_voice: AliyunVoiceConfig | None = None
    tencent_sms: TencentSmsConfig | None = None
    smtp: SmtpConfig | None = None
    webhooks: dict[str, WebhookConfig] = {}

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
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{source}: invalid key {key!r}: {first['msg']}") from exc
