"""What a wearer's family and the desk get beyond the first text: the console's per-incident notice list and
"was the family reached", the call task addressed to whoever is on duty when it is delivered, a follow link
in the family's SMS, and a new page when the case is reopened (docs/notifications.md, "A wearer's family").

SMS goes over real HTTP to the local Aliyun / Tencent fakes, which verify each request's signature as the
providers do (tests/fakes/); the tests read the template code and parameters the fakes accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from alerts.loop.routing import family_target
from cloud.db import Device
from cloud.loop.models import Incident
from cloud.notify.inapp import list_for
from cloud.notify.models import Delivery, InApp
from cloud.notify.planner import NotifyRequest
from cloud.notify.render import IncidentFacts
from tests.cloud.cloudkit import Cloud, make_settings, start_cloud
from tests.cloud.notify.kit import T0, Kit, fake_config, notify_kit, page
from tests.cloud.notify.test_family_and_desks import CONTACT, DEVICE, register_wearer, with_family_templates
from tests.cloud.notify.test_family_words_and_duty import put_roster, wristband_incident
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.wecom import FakeWeCom


def write_family_config(path: Path, wecom: FakeWeCom, aliyun: FakeAliyun, *, extra: str = "") -> Path:
    path.write_text(
        f"""
public_base_url = "https://vigil.test"
http_timeout_s = 0.5
max_attempts = 1
reopen_window_s = 86400
{extra}

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

[aliyun_sms.templates]
family = "SMS_FAMILY"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def cloud(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom, fake_aliyun: FakeAliyun
) -> AsyncIterator[Cloud]:
    config = write_family_config(tmp_path / "notify.toml", fake_wecom, fake_aliyun)
    settings = make_settings(tmp_path, sqlite_url, notify_config_file=config, run_jobs=False)
    async with start_cloud(settings) as c:
        yield c


def wearer_case(cloud: Cloud, *, stage: str = "dispatched") -> int:
    """A registered wristband with an emergency contact, and an open fall case on it."""
    notify = cloud.app.state.notify
    sealed = notify.contacts.box.seal({"wearer_name": "张秀英", "emergency_contact_phone": CONTACT})
    with cloud.state.db.write() as s:
        if s.get(Device, DEVICE) is None:
            s.add(Device(device_id=DEVICE, kind="wristband", grid="G01", interval_s=300.0,
                         private_enc=sealed, created_at=T0))  # fmt: skip
        inc = Incident(
            group_key=f"per_device|device_id={DEVICE}|event=fall", group_rule="per_device", stage=stage,
            source="gateway", kind="wristband", event_type="fall", grade=3, urgency="critical",
            device_id=DEVICE, grid="G01", title="跌倒 张秀英 心率 40 3号楼201", created_at=T0,
            stage_entered_at=T0, updated_at=T0,
        )  # fmt: skip
        s.add(inc)
        s.flush()
        return int(inc.id)


def family_page(incident_id: str | int, device_id: str = DEVICE, event_type: str = "fall") -> NotifyRequest:
    return NotifyRequest(
        facts=IncidentFacts(incident_id=str(incident_id), opened_at=T0, severity=3, event_type=event_type,
                            place="G01", summary="张秀英 心率 40 3号楼201"),
        target_kind="role",
        target_id=family_target(device_id),
    )  # fmt: skip


# -- the console: one incident's notices, and whether the family was reached ---------------------------------
async def test_the_console_lists_one_incidents_notices_and_sees_the_family_reached(
    cloud: Cloud, fake_aliyun: FakeAliyun
) -> None:
    notify = cloud.app.state.notify
    incident_id = wearer_case(cloud)
    url = f"/api/v1/notify/incidents/{incident_id}/family"
    (entry,) = (await cloud.client.get(url, headers=cloud.dispatcher)).json()
    assert entry["family_reached"] == {"status": "none", "at": None, "channel": None}
    await notify.worker.submit([family_page(incident_id), page("T-77", target="disp")])
    (entry,) = (await cloud.client.get(url, headers=cloud.dispatcher)).json()
    assert entry["family_reached"] == {"status": "pending", "at": None, "channel": None}
    cloud.clock.advance(42)
    while await notify.worker.send_once():
        pass
    assert [m["PhoneNumbers"] for m in fake_aliyun.sms] == [CONTACT]
    (entry,) = (await cloud.client.get(url, headers=cloud.dispatcher)).json()
    assert entry["family_reached"] == {"status": "sent", "at": cloud.clock.now(), "channel": "sms"}
    assert CONTACT not in str(entry["family_reached"])

    # the incident page's notice list: this incident's call task, not the other incident's page
    mine = (
        await cloud.client.get("/api/v1/notify/inapp", params={"incident_id": str(incident_id)},
                               headers=cloud.dispatcher)
    ).json()  # fmt: skip
    assert [(i["incident_id"], i["title"][:5]) for i in mine] == [(str(incident_id), "请致电家属")]
    everything = (await cloud.client.get("/api/v1/notify/inapp", headers=cloud.dispatcher)).json()
    assert {i["incident_id"] for i in everything} == {str(incident_id), "T-77"}
    # the call task sits in the operators' queue (nobody on duty): not a read-only viewer's
    viewer = await cloud.client.get(
        "/api/v1/notify/inapp", params={"incident_id": str(incident_id)}, headers=cloud.viewer
    )
    assert viewer.status_code == 200 and viewer.json() == []
    assert (
        await cloud.client.get("/api/v1/notify/inapp", params={"incident_id": ""}, headers=cloud.viewer)
    ).status_code == 422


async def test_a_family_text_that_failed_on_every_channel_reads_failed(
    tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun
) -> None:
    config = with_family_templates(fake_config(aliyun=fake_aliyun), max_attempts=1)
    async with notify_kit(tmp_path, sqlite_url, config) as kit:
        register_wearer(kit)
        w = kit.service.worker
        await w.submit([family_page("41")])
        fake_aliyun.fail_next("500")
        kit.clock.advance(5)
        await w.send_once()  # one attempt allowed (max_attempts = 1): the SMS gives up, voice is next
        reached = kit.service.outbox.family_reached("41", DEVICE)
        # severity 3 (life-safety): the call follows; until it is settled the family is "pending"
        assert reached == {"status": "pending", "at": None, "channel": None}
        fake_aliyun.fail_next("500")
        kit.clock.advance(5)
        await w.send_once()
        assert kit.service.outbox.family_reached("41", DEVICE) == {
            "status": "failed", "at": kit.clock.now(), "channel": "voice"
        }  # fmt: skip
        assert kit.service.outbox.family_reached("41", "another-device")["status"] == "none"
        with kit.db.read() as s:
            assert s.scalar(select(Device.device_id)) == DEVICE


# -- the call task goes to whoever is on duty when it is delivered -------------------------------------------
async def test_a_call_task_planned_before_a_shift_change_goes_to_the_next_shift(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config()) as kit:
        register_wearer(kit)
        # G07's call takers hand over every hour; the next handover is 60 s after T0 ("07:59" -> "08:00")
        put_roster(kit, [{"role": "call_taker", "zone": "G07", "participants": ["ct-zhao", "ops"],
                          "start": T0 + 60 - 3600, "shift_s": 3600}])  # fmt: skip
        early, late = wristband_incident(kit, "G07"), wristband_incident(kit, "G07")
        w = kit.service.worker
        assert await w.submit([family_page(early), family_page(late)]) == 2  # both planned at "07:59"
        # the first is delivered at once, by the outgoing shift's call taker (grid2 answers for ct-zhao)
        await _send_only(kit, early)
        kit.clock.advance(90)  # "08:00:30": the incoming shift (ops) is on duty
        await w.send_once()
        with kit.db.read() as s:
            got = {(i.incident_id, i.user_id) for i in s.scalars(select(InApp))}
            log = {d.incident_id: d.provider_id for d in s.scalars(select(Delivery))}
        assert got == {(early, kit.users["grid2"]), (late, kit.users["ops"])}
        assert log == {early: f"user:{kit.users['grid2']}", late: f"user:{kit.users['ops']}"}
        assert [m["title"][:5] for m in list_for(kit.db, kit.users["ops"], operators=False)] == ["请致电家属"]


async def _send_only(kit: Kit, incident_id: str) -> None:
    """Deliver one incident's rows now and leave the others queued (another worker got there later)."""
    with kit.db.write() as s:
        held = s.scalars(select(Delivery).where(Delivery.incident_id != incident_id)).all()
        for d in held:
            d.next_at = kit.clock.now() + 30
    await kit.service.worker.send_once()
    with kit.db.write() as s:
        for d in s.scalars(select(Delivery).where(Delivery.incident_id != incident_id)):
            d.next_at = kit.clock.now()


async def test_someone_taking_the_case_does_not_cancel_the_familys_text_or_call_task(
    tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun
) -> None:
    async with notify_kit(
        tmp_path, sqlite_url, with_family_templates(fake_config(aliyun=fake_aliyun))
    ) as kit:
        register_wearer(kit)
        kit.service.contacts.bind("grid1", now=T0, phone="13812341234", channels=["sms"])
        w = kit.service.worker
        assert await w.submit([family_page("41"), page("41", target="grid1")]) == 3
        # grid1 accepts before anything is sent: the responders' queued page is pointless now
        assert kit.service.outbox.cancel_incident("41", now=kit.clock.now(), reason="accept by user:1") == 1
        await w.send_once()
        assert [m["TemplateCode"] for m in fake_aliyun.sms] == ["SMS_FAMILY"]
        with kit.db.read() as s:
            status = {d.channel: d.status for d in s.scalars(select(Delivery))}
        assert status == {"sms": "cancelled", "sms_family": "delivered", "call_task": "delivered"}
