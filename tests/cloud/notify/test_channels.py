"""Every channel adapter against a fake provider that checks signatures and misbehaves on demand."""

from __future__ import annotations

import time

import httpx
import pytest

from cloud.notify.aliyun import AliyunRpc, AliyunSms, AliyunVoice
from cloud.notify.channel import Delivered, GiveUp, LinkButton, Notice, Retry
from cloud.notify.dingtalk import DingTalkRobot
from cloud.notify.smtp import SmtpEmail
from cloud.notify.tencent import TencentSms
from cloud.notify.webhook import Webhook
from cloud.notify.wecom import WeComApp, WeComRobot
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.smtp import FakeSmtp
from tests.fakes.tencent import FakeTencent
from tests.fakes.webhook import FakeWebhookReceiver
from tests.fakes.wecom import FakeWeCom

NOTICE = Notice(
    title="【紧急】火警 · 3号楼201",
    lines=("级别：高", "时间：2026-11-26 19:09:00"),
    actions=(LinkButton("接单", "https://v.example/l/a"), LinkButton("已到场", "https://v.example/l/b")),
    reply_hint="回复“1 37”接单",
    params={"event": "火警", "place": "3号楼201", "time": "11-26 19:09", "ref": "37", "level": "高"},
)


# -- WeCom application messages ------------------------------------------------------------------------
def wecom_app(fake: FakeWeCom, http: httpx.AsyncClient, **kw: object) -> WeComApp:
    return WeComApp(
        corp_id=fake.corp_id,
        corp_secret=str(kw.get("secret", fake.corp_secret)),
        agent_id=fake.agent_id,
        client=http,
        api_url=fake.api_url,
    )


async def test_wecom_app_sends_with_a_cached_token(fake_wecom: FakeWeCom, http: httpx.AsyncClient) -> None:
    app = wecom_app(fake_wecom, http)
    assert await app.send(NOTICE, "zhangsan", key="k1") == Delivered("msg-1")
    assert await app.send(NOTICE, "party:2", key="k2") == Delivered("msg-2")
    assert app.token_fetches == 1
    first, second = fake_wecom.messages
    assert first["touser"] == "zhangsan" and second["toparty"] == "2"
    assert first["enable_duplicate_check"] == 1
    content = first["text"]["content"]
    assert '<a href="https://v.example/l/a">接单</a>' in content and "3号楼201" in content


async def test_wecom_app_refreshes_an_expired_token_and_retries_once(
    fake_wecom: FakeWeCom, http: httpx.AsyncClient
) -> None:
    app = wecom_app(fake_wecom, http)
    assert isinstance(await app.send(NOTICE, "zhangsan", key="k1"), Delivered)
    fake_wecom.fail_next("expire_token")
    assert isinstance(await app.send(NOTICE, "zhangsan", key="k2"), Delivered)
    assert app.token_fetches == 2
    assert len(fake_wecom.messages) == 2


async def test_wecom_app_outcomes_for_misbehaviour(fake_wecom: FakeWeCom, http: httpx.AsyncClient) -> None:
    app = wecom_app(fake_wecom, http)
    assert isinstance(await app.send(NOTICE, "u", key="k0"), Delivered)  # token cached: faults hit sends
    fake_wecom.fail_next("timeout")
    out = await app.send(NOTICE, "u", key="k")
    assert isinstance(out, Retry) and "timeout" in out.reason
    fake_wecom.fail_next("500")
    assert isinstance(await app.send(NOTICE, "u", key="k"), Retry)
    fake_wecom.fail_next("rate_limit")
    out = await app.send(NOTICE, "u", key="k")
    assert isinstance(out, Retry) and out.after == 60.0 and "45009" in out.reason
    fake_wecom.fail_next("busy")
    assert isinstance(await app.send(NOTICE, "u", key="k"), Retry)
    out = await app.send(NOTICE, "nobody", key="k")
    assert isinstance(out, GiveUp) and "nobody" in out.reason
    bad = wecom_app(fake_wecom, http, secret="wrong")
    out = await bad.send(NOTICE, "u", key="k")
    assert isinstance(out, GiveUp) and "40001" in out.reason and "wrong" not in out.reason


async def test_wecom_app_connection_refused_is_a_retry(http: httpx.AsyncClient) -> None:
    app = WeComApp(corp_id="c", corp_secret="s", agent_id=1, client=http, api_url="http://127.0.0.1:9/")
    out = await app.send(NOTICE, "u", key="k")
    assert isinstance(out, Retry) and "connection" in out.reason


async def test_wecom_robot_markdown_and_its_rate_limit(
    fake_wecom: FakeWeCom, http: httpx.AsyncClient
) -> None:
    robot = WeComRobot(url=fake_wecom.robot_url, client=http)
    assert "robot-key" not in repr(robot)
    results = [await robot.send(NOTICE, "", key=f"k{i}") for i in range(21)]
    assert all(isinstance(r, Delivered) for r in results[:20])
    assert isinstance(results[20], Retry) and results[20].after == 60.0
    md = fake_wecom.robot_messages[0]["markdown"]["content"]
    assert "[接单](https://v.example/l/a)" in md
    wrong = WeComRobot(url=fake_wecom.robot_url.replace("robot-key-1", "nope"), client=http)
    assert isinstance(await wrong.send(NOTICE, "", key="k"), GiveUp)


# -- DingTalk ----------------------------------------------------------------------------------------------
async def test_dingtalk_action_card_passes_the_signature_check(
    fake_dingtalk: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    robot = DingTalkRobot(url=fake_dingtalk.robot_url, secret=fake_dingtalk.secret, client=http)
    assert await robot.send(NOTICE, "", key="k") == Delivered()
    card = fake_dingtalk.messages[0]
    assert card["msgtype"] == "actionCard"
    btns = card["actionCard"]["btns"]
    assert [b["title"] for b in btns] == ["接单", "已到场"]
    plain = Notice(title="电量低", lines=("井盖 G01",))
    assert await robot.send(plain, "13800000001", key="k2") == Delivered()
    text = fake_dingtalk.messages[1]
    assert text["msgtype"] == "text" and text["at"] == {"atMobiles": ["13800000001"], "isAtAll": False}


async def test_dingtalk_wrong_secret_or_clock_is_refused(
    fake_dingtalk: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    robot = DingTalkRobot(url=fake_dingtalk.robot_url, secret="SECwrong", client=http)
    out = await robot.send(NOTICE, "", key="k")
    assert isinstance(out, GiveUp) and "310000" in out.reason
    late = DingTalkRobot(
        url=fake_dingtalk.robot_url,
        secret=fake_dingtalk.secret,
        client=http,
        wall_clock=lambda: time.time() - 7200,
    )
    assert isinstance(await late.send(NOTICE, "", key="k"), GiveUp)
    assert fake_dingtalk.messages == []


async def test_dingtalk_rate_limit_timeout_and_500_are_retries(
    fake_dingtalk: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    robot = DingTalkRobot(url=fake_dingtalk.robot_url, secret=fake_dingtalk.secret, client=http)
    for fault in ("rate_limit", "timeout", "500", "429"):
        fake_dingtalk.fail_next(fault)
        out = await robot.send(NOTICE, "", key="k")
        assert isinstance(out, Retry), fault
    fake_dingtalk.fail_next("429")
    out = await robot.send(NOTICE, "", key="k")
    assert isinstance(out, Retry) and out.after == 1.0


# -- Aliyun SMS and voice ------------------------------------------------------------------------------
def aliyun_rpc(fake: FakeAliyun, http: httpx.AsyncClient, secret: str | None = None) -> AliyunRpc:
    return AliyunRpc(
        access_key_id=fake.key_id,
        access_key_secret=secret or fake.secret,
        endpoint=fake.url + "/",
        client=http,
    )


async def test_aliyun_sms_signed_request_is_accepted(
    fake_aliyun: FakeAliyun, http: httpx.AsyncClient
) -> None:
    sms = AliyunSms(aliyun_rpc(fake_aliyun, http), sign_name="平安社区", template_code="SMS_123")
    assert await sms.send(NOTICE, "13812341234", key="inc/1/user:7/sms") == Delivered("biz-1")
    sent = fake_aliyun.sms[0]
    assert sent["PhoneNumbers"] == "13812341234" and sent["SignName"] == "平安社区"
    assert '"place":"3号楼201"' in sent["TemplateParam"]
    # the number travels in the form body, never in the URL
    assert "13812341234" not in fake_aliyun.requests[0].path + fake_aliyun.requests[0].headers["_raw_query"]


async def test_aliyun_outcomes(fake_aliyun: FakeAliyun, http: httpx.AsyncClient) -> None:
    sms = AliyunSms(aliyun_rpc(fake_aliyun, http), sign_name="s", template_code="t")
    fake_aliyun.fail_next("rate_limit")
    out = await sms.send(NOTICE, "13812341234", key="k")
    assert isinstance(out, Retry) and "BUSINESS_LIMIT_CONTROL" in out.reason
    fake_aliyun.fail_next("throttling")
    assert isinstance(await sms.send(NOTICE, "13812341234", key="k"), Retry)
    out = await sms.send(NOTICE, "12345", key="k")
    assert isinstance(out, GiveUp) and "MOBILE_NUMBER_ILLEGAL" in out.reason
    bad = AliyunSms(aliyun_rpc(fake_aliyun, http, secret="wrong"), sign_name="s", template_code="t")
    out = await bad.send(NOTICE, "13812341234", key="k")
    assert isinstance(out, GiveUp) and "HTTP 400" in out.reason and "wrong" not in out.reason


async def test_aliyun_voice_call(fake_aliyun: FakeAliyun, http: httpx.AsyncClient) -> None:
    voice = AliyunVoice(aliyun_rpc(fake_aliyun, http), tts_code="TTS_1", called_show_number="0571000")
    assert await voice.send(NOTICE, "13812341234", key="k") == Delivered("call-1")
    call = fake_aliyun.calls[0]
    assert call["Action"] == "SingleCallByTts" and call["PlayTimes"] == "3" and call["TtsCode"] == "TTS_1"


# -- Tencent SMS ---------------------------------------------------------------------------------------------
def tencent_sms(fake: FakeTencent, http: httpx.AsyncClient, key: str | None = None) -> TencentSms:
    return TencentSms(
        secret_id=fake.secret_id,
        secret_key=key or fake.secret_key,
        sdk_app_id="1400000000",
        sign_name="平安社区",
        template_id="100001",
        client=http,
        endpoint=fake.url,
    )


async def test_tencent_sms_tc3_signed_request_is_accepted(
    fake_tencent: FakeTencent, http: httpx.AsyncClient
) -> None:
    assert await tencent_sms(fake_tencent, http).send(NOTICE, "13812341234", key="k") == Delivered("serial-1")
    body = fake_tencent.sms[0]
    assert body["PhoneNumberSet"] == ["+8613812341234"]
    assert body["TemplateParamSet"] == ["火警", "3号楼201", "11-26 19:09", "37"]


async def test_tencent_outcomes(fake_tencent: FakeTencent, http: httpx.AsyncClient) -> None:
    sms = tencent_sms(fake_tencent, http)
    fake_tencent.fail_next("rate_limit")
    assert isinstance(await sms.send(NOTICE, "13812341234", key="k"), Retry)
    fake_tencent.fail_next("internal")
    assert isinstance(await sms.send(NOTICE, "13812341234", key="k"), Retry)
    out = await tencent_sms(fake_tencent, http, key="wrong").send(NOTICE, "13812341234", key="k")
    assert isinstance(out, GiveUp) and "SignatureFailure" in out.reason


# -- webhook and e-mail --------------------------------------------------------------------------------------
async def test_webhook_is_signed_and_carries_the_delivery_key(
    fake_webhook: FakeWebhookReceiver, http: httpx.AsyncClient
) -> None:
    hook = Webhook(url=fake_webhook.url + "/hook", secret=fake_webhook.secret, client=http)
    assert await hook.send(NOTICE, "ops", key="inc/1/webhook:ops/webhook") == Delivered()
    assert await hook.send(NOTICE, "ops", key="inc/1/webhook:ops/webhook") == Delivered()
    assert len(fake_webhook.accepted) == 1  # the receiver dropped the resend by its key
    wrong = Webhook(url=fake_webhook.url + "/hook", secret="nope", client=http)
    assert isinstance(await wrong.send(NOTICE, "ops", key="k2"), GiveUp)
    assert fake_webhook.rejected == ["bad signature"]
    fake_webhook.fail_next("500")
    assert isinstance(await hook.send(NOTICE, "ops", key="k3"), Retry)


async def test_email_through_a_real_smtp_server(fake_smtp: FakeSmtp) -> None:
    mail = SmtpEmail(host="127.0.0.1", port=fake_smtp.port, security="none", sender="vigil@example.cn")
    out = await mail.send(NOTICE, "worker@example.cn", key="inc/1/user:7/email")
    assert isinstance(out, Delivered)
    msg = fake_smtp.messages[0]
    assert msg["Subject"] == NOTICE.title and msg["To"] == "worker@example.cn"
    html = msg.get_body(preferencelist=("html",))
    assert html is not None and 'href="https://v.example/l/a"' in html.get_content()
    fake_smtp.refuse.add("gone@example.cn")
    assert isinstance(await mail.send(NOTICE, "gone@example.cn", key="k"), GiveUp)
    fake_smtp.defer.add("busy@example.cn")
    assert isinstance(await mail.send(NOTICE, "busy@example.cn", key="k"), Retry)


async def test_email_server_down_is_a_retry() -> None:
    from tests.servers import free_port

    mail = SmtpEmail(host="127.0.0.1", port=free_port(), security="none", sender="v@example.cn", timeout_s=1)
    assert isinstance(await mail.send(NOTICE, "a@example.cn", key="k"), Retry)


@pytest.mark.parametrize("secret_repr", ["corp-secret", "aliyun-secret"])
def test_secrets_stay_out_of_reprs(secret_repr: str) -> None:
    client = httpx.AsyncClient()
    app = WeComApp(corp_id="c", corp_secret="corp-secret", agent_id=1, client=client)
    rpc = AliyunRpc(
        access_key_id="id", access_key_secret="aliyun-secret", endpoint="http://x/", client=client
    )
    assert secret_repr not in repr(app) + repr(rpc)
