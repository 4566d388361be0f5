"""The notification API through the real app: bindings, paging, acting from links and SMS replies,
residents' reports, ratings and reopening, in-app notifications, the delivery log, and the loop bridge."""

from __future__ import annotations

import asyncio
import base64
import re
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from alerts.loop.stages import Action, Command
from cloud.loop.models import Incident, IncidentEvent, NotificationIntentRow
from cloud.loop.service import Report as LoopReport
from cloud.notify.planner import reply_ref
from tests.cloud.cloudkit import Cloud, make_settings, start_cloud
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.wecom import FakeWeCom


def png(width: int = 8, height: int = 8) -> bytes:
    """A valid PNG, built by hand (signature, IHDR, IDAT, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_config(path: Path, wecom: FakeWeCom, aliyun: FakeAliyun) -> Path:
    path.write_text(
        f"""
public_base_url = "https://vigil.test"
http_timeout_s = 0.5
sms_inbound_token = "inbound-token"
report_limit_per_hour = 3
reopen_window_s = 86400

[wecom]
corp_id = "{wecom.corp_id}"
corp_secret = "{wecom.corp_secret}"
agent_id = {wecom.agent_id}
api_url = "{wecom.api_url}"

[aliyun_sms]
access_key_id = "{aliyun.key_id}"
access_key_secret = "{aliyun.secret}"
sign_name = "平安社区"
template_code = "SMS_1"
endpoint = "{aliyun.url}/"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def cloud(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom, fake_aliyun: FakeAliyun
) -> AsyncIterator[Cloud]:
    config = write_config(tmp_path / "notify.toml", fake_wecom, fake_aliyun)
    settings = make_settings(tmp_path, sqlite_url, notify_config_file=config, run_jobs=False)
    async with start_cloud(settings) as c:
        yield c


def links_in(content: str) -> dict[str, str]:
    """{label: token} from a WeCom text message's <a href> links."""
    return {
        label: token
        for token, label in re.findall(r'href="https://vigil\.test/l/([^"]+)">([^<]+)</a>', content)
    }


async def bind(cloud: Cloud, user: str, **kw: object) -> None:
    r = await cloud.client.put(f"/api/v1/notify/contacts/{user}", json=kw, headers=cloud.admin)
    assert r.status_code == 204, r.text


async def run_worker(cloud: Cloud, rounds: int = 1) -> None:
    for _ in range(rounds):
        await cloud.app.state.notify.worker.run_once()


async def send(cloud: Cloud, incident: str, target: str = "disp", **kw: object) -> None:
    body = {"incident_id": incident, "target_kind": "user", "target_id": target, "place": "3号楼201",
            "event_type": "fire", **kw}  # fmt: skip
    r = await cloud.client.post("/api/v1/notify/send", json=body, headers=cloud.dispatcher)
    assert r.status_code == 200, r.text


async def test_binding_is_validated_and_phones_are_masked(cloud: Cloud) -> None:
    await bind(cloud, "disp", wecom_userid="zhangsan", phone="+86 138-1234-1234", email="d@example.cn")
    r = await cloud.client.get("/api/v1/notify/contacts/disp", headers=cloud.viewer)
    assert r.json()["phone"] == "138****1234" and r.json()["email"] == "d***@example.cn"
    r = await cloud.client.get("/api/v1/notify/contacts/disp", headers=cloud.admin)
    assert r.json()["phone"] == "13812341234"
    r = await cloud.client.put("/api/v1/notify/contacts/disp", json={"phone": "12345"}, headers=cloud.admin)
    assert r.status_code == 400 and "mainland mobile" in r.json()["detail"]
    r = await cloud.client.put(
        "/api/v1/notify/contacts/disp", json={"channels": ["pager"]}, headers=cloud.admin
    )
    assert r.status_code == 400 and "pager" in r.json()["detail"]
    r = await cloud.client.put("/api/v1/notify/contacts/disp", json={}, headers=cloud.viewer)
    assert r.status_code == 403


async def test_responder_acts_from_links_and_bad_links_change_nothing(
    cloud: Cloud, fake_wecom: FakeWeCom
) -> None:
    await bind(cloud, "disp", wecom_userid="zhangsan")
    await send(cloud, "T-1")
    await run_worker(cloud)
    links = links_in(fake_wecom.messages[0]["text"]["content"])
    assert set(links) == {"接单", "拒绝", "出发", "已到场", "处置完成"}
    accept = links["接单"]
    r = await cloud.client.get(f"/api/v1/links/{accept}")
    assert r.json()["purpose"] == "accept" and r.json()["usable"] is True
    r = await cloud.client.post(f"/api/v1/links/{accept}", json={})
    assert r.status_code == 200 and r.json()["action"] == "accept"
    r = await cloud.client.post(f"/api/v1/links/{accept}", json={})
    assert r.status_code == 403 and r.json()["error"] == "link_used"
    forged = accept[:-3] + ("AAA" if not accept.endswith("AAA") else "BBB")
    r = await cloud.client.post(f"/api/v1/links/{forged}", json={})
    assert r.status_code == 403 and r.json()["error"] in ("link_forged", "link_malformed")
    # resolving needs a note; a photo that is not an image is refused; nothing is used up
    resolved = links["处置完成"]
    r = await cloud.client.post(f"/api/v1/links/{resolved}", json={})
    assert r.status_code == 400 and "note" in r.json()["detail"]
    r = await cloud.client.post(
        f"/api/v1/links/{resolved}", json={"note": "已盖好", "photo_b64": b64(b"%PDF-1.4" + b"x" * 100)}
    )
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    r = await cloud.client.post(f"/api/v1/links/{resolved}", json={"note": "已盖好", "photo_b64": b64(png())})
    assert r.status_code == 200, r.text
    [photo_id] = r.json()["photo_ids"]
    r = await cloud.client.get(f"/api/v1/notify/photos/{photo_id}", headers=cloud.viewer)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    # expired
    cloud.clock.advance(24 * 3600 + 1)
    r = await cloud.client.post(f"/api/v1/links/{links['已到场']}", json={})
    assert r.status_code == 403 and r.json()["error"] == "link_expired"
    log = (await cloud.client.get("/api/v1/notify/incidents/T-1/log", headers=cloud.viewer)).json()
    assert [a["action"] for a in log["actions"]] == ["accept", "resolved"]
    assert log["deliveries"][0]["status"] == "delivered"
    assert log["deliveries"][0]["attempts"][0]["outcome"] == "delivered"


async def test_a_photo_of_50_mb_is_refused_before_reading(cloud: Cloud, fake_wecom: FakeWeCom) -> None:
    await bind(cloud, "disp", wecom_userid="zhangsan")
    await send(cloud, "T-2")
    await run_worker(cloud)
    token = links_in(fake_wecom.messages[0]["text"]["content"])["处置完成"]
    big = b"x" * (50 * 1024 * 1024)
    r = await cloud.client.post(
        f"/api/v1/links/{token}", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    r = await cloud.client.post(
        f"/api/v1/links/{token}", json={"note": "ok", "photo_b64": b64(png() + b"\0" * 6_000_000)}
    )
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert (await cloud.client.get(f"/api/v1/links/{token}")).json()["usable"] is True


async def test_sms_reply_codes(cloud: Cloud, fake_aliyun: FakeAliyun) -> None:
    await bind(cloud, "disp", phone="13812341234", channels=["sms"])
    await send(cloud, "T-77")  # not a loop incident: its reply reference is a stable 4-digit number
    await run_worker(cloud)
    ref = reply_ref("T-77")
    assert f'"ref":"{ref}"' in fake_aliyun.sms[0]["TemplateParam"]
    url = "/api/v1/notify/sms/inbound/aliyun"
    r = await cloud.client.post(url + "?token=wrong", json=[{"phone_number": "13812341234", "content": "1"}])
    assert r.status_code == 401
    r = await cloud.client.post(
        url + "?token=inbound-token",
        json=[
            {"phone_number": "13900000000", "content": f"1 {ref}"},
            {"phone_number": "13812341234", "content": "9"},
            {"phone_number": "13812341234", "content": "1 99"},
            {"phone_number": "13812341234", "content": f"１ {ref}"},  # full-width digit (Chinese keyboard)
        ],
    )
    assert r.status_code == 200 and r.json()["code"] == 0
    results = r.json()["results"]
    assert [x["accepted"] for x in results] == [False, False, False, True]
    assert results[0]["reason"].startswith("unknown_sender")
    assert results[1]["reason"].startswith("unknown_code")
    assert results[2]["reason"].startswith("no_page")
    assert results[3]["incident_id"] == "T-77" and results[3]["via"] == "sms"
    r = await cloud.client.post(
        "/api/v1/notify/sms/inbound/tencent?token=inbound-token",
        json={"mobile": "13812341234", "nationcode": "86", "text": "4", "time": 1},
    )
    assert r.json()["result"] == 0 and r.json()["results"][0]["action"] == "arrived"


async def test_resident_reports_rates_and_reopens(cloud: Cloud) -> None:
    body = {"category": "manhole", "description": "井盖丢失，有人差点掉下去", "lat": 39.98, "lon": 116.31}
    r = await cloud.client.post("/api/v1/reports", json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["case_number"].startswith("R") and out["promised_within_s"] == 7200
    assert out["promised_by"].endswith("+08:00")
    token = out["follow_url"].rsplit("/l/", 1)[1]
    r = await cloud.client.post("/api/v1/reports", json={**body, "lat": 31.23, "lon": 121.47})
    assert r.status_code == 400 and "outside this community" in r.json()["detail"]
    r = await cloud.client.post("/api/v1/reports", json={**body, "photo_b64": b64(b"GIF89a" + b"x" * 100)})
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    for _ in range(2):
        assert (await cloud.client.post("/api/v1/reports", json=body)).status_code == 201
    r = await cloud.client.post("/api/v1/reports", json=body)
    assert r.status_code == 429 and "reports an hour" in r.json()["detail"]
    # the loop got an incident for the report; the case link follows it
    case = (await cloud.client.get(f"/api/v1/links/{token}")).json()
    assert case["purpose"] == "case" and case["can_rate"] is False  # not before the case is closed
    incident_id = case["incident_id"]
    loop = cloud.app.state.loop
    for cmd in (
        Command(Action.REGISTER, "disp"),
        Command(Action.DISPATCH, "disp", assignee="disp"),
        Command(Action.ACCEPT, "disp"),
        Command(Action.HANDLE, "disp", reason="盖好了"),
    ):
        await asyncio.to_thread(loop.act, int(incident_id), cmd)
    r = await cloud.client.post(f"/api/v1/links/{token}/rating", json={"score": 4})
    assert r.status_code == 409 and "once it is closed" in r.json()["detail"]
    for cmd in (Command(Action.VERIFY, "disp"), Command(Action.CLOSE, "disp")):
        await asyncio.to_thread(loop.act, int(incident_id), cmd)
    assert (await cloud.client.get(f"/api/v1/links/{token}")).json()["can_rate"] is True
    r = await cloud.client.post(f"/api/v1/links/{token}/rating", json={"score": 6})
    assert r.status_code == 422
    r = await cloud.client.post(f"/api/v1/links/{token}/rating", json={"score": 4, "comment": "快"})
    assert r.status_code == 200, r.text
    r = await cloud.client.post(f"/api/v1/links/{token}/rating", json={"score": 5})
    assert r.status_code == 409 and "rated once" in r.json()["detail"]
    ratings = (await cloud.client.get("/api/v1/notify/ratings", headers=cloud.viewer)).json()
    assert ratings[0]["ratings"] == 1 and ratings[0]["average"] == 4.0
    with cloud.state.db.read() as s:
        assert s.get(Incident, int(incident_id)).rating == 4
    reports = (await cloud.client.get("/api/v1/notify/reports", headers=cloud.viewer)).json()
    assert {x["case_number"] for x in reports} >= {out["case_number"]}
    r = await cloud.client.post(f"/api/v1/links/{token}/reopen", json={"reason": "又丢了"})
    assert r.status_code == 200, r.text
    with cloud.state.db.read() as s:
        row = s.get(Incident, int(incident_id))
        assert row is not None and row.stage == "registered" and row.reopen_count == 1
    cloud.clock.advance(1.5 * 86400)  # past the 1-day reopen window, the link itself still valid
    r = await cloud.client.post(f"/api/v1/links/{token}/reopen", json={"reason": "又丢了"})
    assert r.status_code == 409 and "reopen window ended" in r.json()["detail"]


async def test_loop_intents_become_pages_and_accept_moves_the_work_order(
    cloud: Cloud, fake_wecom: FakeWeCom
) -> None:
    await bind(cloud, "disp", wecom_userid="zhangsan", duty_roles=["grid_worker"])
    loop = cloud.app.state.loop
    incident_id = await asyncio.to_thread(
        loop.report,
        LoopReport(
            type="manhole", description="井盖丢失", reporter="disp", lat=39.98, lon=116.31, register=True
        ),
        role="dispatcher",
    )
    await asyncio.to_thread(loop.act, incident_id, Command(Action.DISPATCH, "disp", assignee="disp"))
    await run_worker(cloud, 2)
    assert len(fake_wecom.messages) == 1
    with cloud.state.db.read() as s:
        states = {r.state for r in s.query(NotificationIntentRow).all()}
        timeline = [
            (e.action, e.actor, e.reason) for e in s.query(IncidentEvent).filter_by(incident_id=incident_id)
        ]
    assert states == {"sent"}
    assert (
        "notified",
        "notify",
        f"wecom → user:{cloud.app.state.notify.contacts.user_id('disp')}",
    ) in timeline
    token = links_in(fake_wecom.messages[0]["text"]["content"])["接单"]
    r = await cloud.client.post(f"/api/v1/links/{token}", json={})
    assert r.status_code == 200, r.text
    with cloud.state.db.read() as s:
        row = s.get(Incident, incident_id)
        assert row is not None and row.stage == "accepted" and row.owner == "disp"
    # the loop refuses what its stage does not allow, and the link stays usable
    arrived = links_in(fake_wecom.messages[0]["text"]["content"])["处置完成"]
    r = await cloud.client.post(f"/api/v1/links/{arrived}", json={"note": "x"})
    assert r.status_code in (200, 400)


async def test_in_app_list_and_failures_visible_to_operators(cloud: Cloud, fake_wecom: FakeWeCom) -> None:
    await bind(cloud, "disp", wecom_userid="nobody")  # WeCom refuses this user: falls back to in-app
    await send(cloud, "T-9")
    await run_worker(cloud, 2)
    items = (await cloud.client.get("/api/v1/notify/inapp", headers=cloud.dispatcher)).json()
    kinds = sorted(i["kind"] for i in items)
    assert kinds == ["failure", "notice"]
    failure = next(i for i in items if i["kind"] == "failure")
    assert failure["for_all_operators"] and "nobody" in failure["lines"][0]
    # the operators' queue is the desk staff's: a read-only viewer neither sees it nor marks it read
    assert (await cloud.client.get("/api/v1/notify/inapp", headers=cloud.viewer)).json() == []
    r = await cloud.client.post(f"/api/v1/notify/inapp/{failure['id']}/read", headers=cloud.viewer)
    assert r.status_code == 404
    r = await cloud.client.post(f"/api/v1/notify/inapp/{failure['id']}/read", headers=cloud.dispatcher)
    assert r.status_code == 204
    unread = (await cloud.client.get("/api/v1/notify/inapp?unread=true", headers=cloud.dispatcher)).json()
    assert [i["kind"] for i in unread] == ["notice"]
    status = (await cloud.client.get("/api/v1/notify/status", headers=cloud.viewer)).json()
    assert status["deliveries"] == {"failed": 1, "delivered": 1}


async def test_a_bare_reply_code_is_ambiguous_with_two_open_pages(cloud: Cloud) -> None:
    await bind(cloud, "disp", phone="13812341234", channels=["sms"])
    await send(cloud, "T-1")
    await send(cloud, "T-2")
    await run_worker(cloud)
    r = await cloud.client.post(
        "/api/v1/notify/sms/inbound/aliyun?token=inbound-token",
        json=[{"phone_number": "13812341234", "content": "1"}],
    )
    [result] = r.json()["results"]
    assert not result["accepted"] and result["reason"].startswith("ambiguous")
    log = (await cloud.client.get("/api/v1/notify/incidents/T-1/log", headers=cloud.viewer)).json()
    assert log["actions"] == []


async def test_the_delivery_log_names_the_person_and_says_when_a_notice_was_read(cloud: Cloud) -> None:
    """The console shows who a page reached (the contact's display name, never ``user:<id>``) and whether
    an in-app notice was read; both come from the delivery log."""
    await bind(cloud, "disp", display_name="王网格", channels=["inapp"])
    await send(cloud, "T-5")
    await run_worker(cloud)
    log = (await cloud.client.get("/api/v1/notify/incidents/T-5/log", headers=cloud.viewer)).json()
    [d] = [d for d in log["deliveries"] if d["channel"] == "inapp"]
    assert d["recipient"].startswith("user:") and d["recipient_name"] == "王网格"
    assert d["read_at"] is None
    [item] = [i for i in (await cloud.client.get("/api/v1/notify/inapp", headers=cloud.dispatcher)).json()
              if i["kind"] == "notice"]  # fmt: skip
    r = await cloud.client.post(f"/api/v1/notify/inapp/{item['id']}/read", headers=cloud.dispatcher)
    assert r.status_code == 204
    log = (await cloud.client.get("/api/v1/notify/incidents/T-5/log", headers=cloud.viewer)).json()
    [d] = [d for d in log["deliveries"] if d["channel"] == "inapp"]
    assert isinstance(d["read_at"], float)
