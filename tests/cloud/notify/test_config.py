"""The notify config: validated, snake_case, an error names the key; secrets stay out of reprs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.errors import ConfigError
from cloud.notify.config import NotifyConfig


def test_defaults_are_in_app_only() -> None:
    c = NotifyConfig.load(None)
    assert c.wecom is None and c.robots == {} and c.max_attempts == 5 and c.link_ttl_s == 86400


def test_a_full_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "notify.toml"
    path.write_text(
        """
public_base_url = "https://vigil.example.cn"
[wecom]
corp_id = "ww1"
corp_secret = "very-secret"
agent_id = 1000002
[robots.g01]
kind = "dingtalk_robot"
url = "https://oapi.dingtalk.com/robot/send?access_token=tok"
secret = "SECabc"
[tencent_sms]
secret_id = "AKID"
secret_key = "k"
sdk_app_id = "1400"
sign_name = "平安社区"
template_id = "1"
[webhooks.ops]
url = "https://ops.example.cn/hook"
secret = "s"
""",
        encoding="utf-8",
    )
    c = NotifyConfig.load(path)
    assert c.robots["g01"].per_minute == 20 and c.tencent_sms is not None
    assert "very-secret" not in repr(c) and "SECabc" not in repr(c) and "tok" not in repr(c)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_attempts = 0", "max_attempts"),
        ("unknown_key = 1", "unknown_key"),
        ('[robots.g01]\nkind = "pager"\nurl = "x"', "robots.g01.kind"),
        ('[wecom]\ncorp_id = "a"\ncorp_secret = "b"', "wecom.agent_id"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "notify.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        NotifyConfig.load(path)
    assert repr(key) in str(exc.value)


def test_unreadable_or_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        NotifyConfig.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("a = [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        NotifyConfig.load(bad)


def test_the_sms_provider_is_chosen_by_config() -> None:
    import httpx

    from cloud.db import Database
    from cloud.notify.aliyun import AliyunSms
    from cloud.notify.service import build_channels
    from cloud.notify.tencent import TencentSms
    from tests.cloud.notify.kit import ManualClock

    aliyun = {"access_key_id": "a", "access_key_secret": "b", "sign_name": "s", "template_code": "t"}
    tencent = {"secret_id": "a", "secret_key": "b", "sdk_app_id": "1", "sign_name": "s", "template_id": "t"}
    db = Database("sqlite://")
    client = httpx.AsyncClient()
    try:
        cases: list[tuple[dict[str, object], type]] = [
            ({"aliyun_sms": aliyun}, AliyunSms),
            ({"tencent_sms": tencent}, TencentSms),
            ({"aliyun_sms": aliyun, "tencent_sms": tencent}, AliyunSms),
            ({"aliyun_sms": aliyun, "tencent_sms": tencent, "sms_provider": "tencent"}, TencentSms),
        ]
        for raw, kind in cases:
            channels, _ = build_channels(
                NotifyConfig.from_mapping(raw), client=client, db=db, clock=ManualClock()
            )
            assert isinstance(channels["sms"], kind)
    finally:
        db.close()
