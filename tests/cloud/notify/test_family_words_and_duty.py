"""A family gets a message written for a family, the call task goes to the call takers on duty, and manual
sends are audited.

SMS goes over real HTTP to the local Aliyun / Tencent fakes, which verify every request's signature as the
providers do (Aliyun RPC v1, Tencent TC3: tests/fakes/); the tests check the template code and the
parameters each fake received.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from cloud.db import Device
from cloud.errors import ConfigError
from cloud.loop.config import save
from cloud.loop.models import AuditEntry, Incident
from cloud.notify.config import NotifyConfig
from cloud.notify.inapp import list_for
from cloud.notify.models import Delivery, InApp
from cloud.notify.planner import FALLBACK_LOG_EVERY_S, NotifyRequest
from cloud.notify.render import IncidentFacts
from firmware_bridge.kernel.locale import show
from tests.cloud.cloudkit import Cloud, make_settings, start_cloud
from tests.cloud.notify.kit import T0, Kit, fake_config, notify_kit
from tests.cloud.notify.test_api import write_config
from tests.cloud.notify.test_family_and_desks import (
    CONTACT,
    DEVICE,
    fall,
    register_wearer,
    with_family_templates,
)
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.tencent import FakeTencent
from tests.fakes.wecom import FakeWeCom

SERVICE_PHONE = "010-62345678"


def tencent_config(fake: FakeTencent, **extra: object) -> NotifyConfig:
    return NotifyConfig.from_mapping(
        {
            "http_timeout_s": 0.5,
            "sms_provider": "tencent",
            "tencent_sms": {
                "secret_id": fake.secret_id,
                "secret_key": fake.secret_key,
                "sdk_app_id": "1400000000",
                "sign_name": "平安社区",
                "template_id": "100001",
                "endpoint": fake.url,
                "templates": {"family": "200002"},
            },
            **extra,
        }
    )


def sos(incident_id: str = "43") -> NotifyRequest:
    req = fall(incident_id)
    return NotifyRequest(
        facts=IncidentFacts(
            incident_id=incident_id, opened_at=T0, severity=3, event_type="sos", place="G01",
            summary="张秀英 心率 150 SpO2 88% 3号楼201",
        ),
        target_kind=req.target_kind,
        target_id=req.target_id,
    )  # fmt: skip


# -- the family's own template -------------------------------------------------------------------------------
async def test_tencent_family_template_gets_the_family_parameters_in_order(
    tmp_path: Path, sqlite_url: str, fake_tencent: FakeTencent
) -> None:
    config = tencent_config(fake_tencent, service_phone=SERVICE_PHONE)
    async with notify_kit(tmp_path, sqlite_url, config) as kit:
        register_wearer(kit)
        w = kit.service.worker
        assert await w.submit([sos()]) == 2
        await w.send_once()
        (body,) = fake_tencent.sms  # accepted: the fake checked the TC3 signature
        assert body["TemplateId"] == "200002" and body["PhoneNumberSet"] == ["+86" + CONTACT]
        assert body["TemplateParamSet"] == ["紧急呼救", "张**", show(T0)[5:16], SERVICE_PHONE]
        sent = json.dumps(body, ensure_ascii=False)
        # no health detail, no address, no full name: the loop's summary never reaches the family
        for word in ("心率", "SpO2", "3号楼", "张秀英", "G01"):
            assert word not in sent


async def test_aliyun_family_template_with_the_service_phone_and_no_wearer_name(
    tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun
) -> None:
    config = with_family_templates(fake_config(aliyun=fake_aliyun), service_phone=SERVICE_PHONE)
    async with notify_kit(tmp_path, sqlite_url, config) as kit:
        sealed = kit.service.contacts.box.seal({"emergency_contact_phone": CONTACT})  # no name registered
        with kit.db.write() as s:
            s.add(Device(device_id=DEVICE, kind="wristband", grid="G01", interval_s=300.0,
                         private_enc=sealed, created_at=T0))  # fmt: skip
        assert await kit.service.worker.submit([sos()]) == 2
        await kit.service.worker.send_once()
        (sms,) = fake_aliyun.sms
        assert sms["TemplateCode"] == "SMS_FAMILY"
        assert json.loads(sms["TemplateParam"]) == {
            "event": "紧急呼救", "wearer": "您的家人", "time": show(T0)[5:16], "phone": SERVICE_PHONE
        }  # fmt: skip


async def test_an_unnamed_event_is_an_emergency_to_the_family_never_the_loops_words(
    tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun
) -> None:
    async with notify_kit(
        tmp_path, sqlite_url, with_family_templates(fake_config(aliyun=fake_aliyun))
    ) as kit:
        register_wearer(kit)
        req = sos()
        odd = NotifyRequest(
            facts=IncidentFacts(incident_id="44", opened_at=T0, severity=2, event_type="",
                                  summary="心率 150 持续 10 分钟"),
            target_kind=req.target_kind, target_id=req.target_id,
        )  # fmt: skip
        await kit.service.worker.submit([odd])
        await kit.service.worker.send_once()
        (sms,) = fake_aliyun.sms
        assert json.loads(sms["TemplateParam"])["event"] == "紧急情况"
        assert "心率" not in sms["TemplateParam"]


async def test_without_a_family_template_the_family_gets_nothing_and_it_is_said_once_per_10_min(
    tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cloud.notify.planner")
    async with notify_kit(tmp_path, sqlite_url, fake_config(aliyun=fake_aliyun)) as kit:  # SMS_1 only
        register_wearer(kit)
        w = kit.service.worker
        for i in range(3):
            assert await w.submit([fall(str(60 + i))]) == 1  # the call task only
            kit.clock.advance(60)
        await w.send_once()
        assert fake_aliyun.sms == [] and fake_aliyun.calls == []  # never the responders' SMS_1 / TTS_1
        with kit.db.read() as s:
            assert {d.channel for d in s.scalars(select(Delivery))} == {"call_task"}
            assert len(s.scalars(select(InApp)).all()) == 3

        def warned() -> list[str]:
            return sorted(
                str(getattr(r, "key", ""))
                for r in caplog.records
                if r.name == "cloud.notify.planner" and "no family template" in r.getMessage()
            )

        assert warned() == ["aliyun_sms.templates.family", "aliyun_voice.templates.family"]
        kit.clock.advance(FALLBACK_LOG_EVERY_S)
        await w.submit([fall("70")])
        assert len(warned()) == 4


def test_family_templates_are_validated_and_a_missing_one_is_named(caplog: pytest.LogCaptureFixture) -> None:
    base = fake_config().model_dump()
    sms = {"access_key_id": "k", "access_key_secret": "s", "sign_name": "平安社区", "template_code": "SMS_1"}
    with pytest.raises(ConfigError, match=r"aliyun_sms\.templates\.famly"):
        NotifyConfig.from_mapping({**base, "aliyun_sms": {**sms, "templates": {"famly": "SMS_2"}}})
    with pytest.raises(ConfigError, match="service_phone"):
        NotifyConfig.from_mapping({**base, "service_phone": "call us"})
    caplog.set_level(logging.WARNING, logger="cloud.notify.config")
    config = NotifyConfig.from_mapping({**base, "aliyun_sms": sms})  # loads: responders' SMS keeps working
    assert config.missing_family_templates() == ["aliyun_sms.templates.family"]
    named = [getattr(r, "key", "") for r in caplog.records if r.name == "cloud.notify.config"]
    assert named == ["aliyun_sms.templates.family"]
    full = NotifyConfig.from_mapping({**base, "aliyun_sms": {**sms, "templates": {"family": "SMS_2"}}})
    assert full.missing_family_templates() == [] and full.family_template("sms") == (
        "SMS_2", "aliyun_sms.templates.family"
    )  # fmt: skip


# -- the call task goes to the call takers on duty -----------------------------------------------------------
def put_roster(kit: Kit, rotations: list[dict[str, object]]) -> None:
    responders = [
        {"id": "ct-zhao", "name": "赵", "roles": ["call_taker"]},
        {"id": "ops", "name": "值班调度", "roles": ["call_taker"]},
    ]
    with kit.db.write() as s:
        save(s, "roster", {"zone": "Asia/Shanghai", "responders": responders, "rotations": rotations},
             actor="admin", role="admin", now=T0)  # fmt: skip
    kit.service.contacts.bind("grid2", now=T0, responder_id="ct-zhao")  # a roster id bound to a user


def wristband_incident(kit: Kit, grid: str) -> str:
    with kit.db.write() as s:
        inc = Incident(
            group_key=f"per_device|device_id={DEVICE}|event=fall", group_rule="per_device", stage="new",
            source="gateway", kind="wristband", event_type="fall", grade=3, urgency="critical",
            device_id=DEVICE, grid=grid, created_at=T0, stage_entered_at=T0, updated_at=T0,
        )  # fmt: skip
        s.add(inc)
        s.flush()
        return str(inc.id)


async def test_the_call_task_goes_to_each_call_taker_on_duty_in_the_incidents_zone(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config()) as kit:
        register_wearer(kit)  # the device's own grid is G01
        put_roster(kit, [{"role": "call_taker", "zone": "G07", "participants": ["ct-zhao", "ops"],
                          "start": T0 - 3600, "shift_s": 0}])  # fmt: skip
        incident = wristband_incident(kit, "G07")  # the incident's zone decides, not the device's
        w = kit.service.worker
        assert await w.submit([fall(incident)]) == 1  # one call task, addressed when it is delivered
        await w.send_once()
        with kit.db.read() as s:
            items = s.scalars(select(InApp)).all()
        assert sorted(i.user_id for i in items if i.user_id is not None) == sorted(
            [kit.users["grid2"], kit.users["ops"]]
        )
        assert all(i.user_id is not None and i.notice["title"].startswith("请致电家属") for i in items)
        mine = list_for(kit.db, kit.users["grid2"])
        assert [m["title"][:5] for m in mine] == ["请致电家属"] and mine[0]["for_all_operators"] is False
        assert list_for(kit.db, kit.users["grid1"]) == []  # an operator off duty does not get it


async def test_nobody_on_duty_then_every_operator_gets_the_call_task(tmp_path: Path, sqlite_url: str) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config()) as kit:
        register_wearer(kit)
        # on duty in another zone, and off shift (hours) here: nobody answers G07 at T0
        put_roster(kit, [{"role": "call_taker", "zone": "G02", "participants": ["ct-zhao"], "start": 0},
                         {"role": "call_taker", "zone": "G07", "participants": ["ops"], "start": 0,
                          "hours": _hours_not_containing(T0)}])  # fmt: skip
        incident = wristband_incident(kit, "G07")
        assert await kit.service.worker.submit([fall(incident)]) == 1
        await kit.service.worker.send_once()
        with kit.db.read() as s:
            (item,) = s.scalars(select(InApp)).all()
        assert item.user_id is None and item.notice["title"].startswith("请致电家属")
        assert [m["for_all_operators"] for m in list_for(kit.db, kit.users["grid1"])] == [True]


def _hours_not_containing(t: float) -> str:
    hour = int(show(t)[11:13])
    lo, hi = (hour + 2) % 24, (hour + 4) % 24
    return f"{lo:02d}:00-{hi:02d}:00"


# -- manual sends: audited, a family only by admin / dispatcher ----------------------------------------------
@pytest.fixture
async def cloud(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom, fake_aliyun: FakeAliyun
) -> AsyncIterator[Cloud]:
    config = write_config(tmp_path / "notify.toml", fake_wecom, fake_aliyun)
    settings = make_settings(tmp_path, sqlite_url, notify_config_file=config, run_jobs=False)
    async with start_cloud(settings) as c:
        yield c


def audit_rows(cloud: Cloud) -> list[AuditEntry]:
    with cloud.state.db.read() as s:
        return list(
            s.scalars(select(AuditEntry).where(AuditEntry.action == "notify.send").order_by(AuditEntry.id))
        )


async def test_every_manual_send_is_audited_and_a_family_needs_admin_or_dispatcher(cloud: Cloud) -> None:
    notify = cloud.app.state.notify
    sealed = notify.contacts.box.seal({"wearer_name": "张秀英", "emergency_contact_phone": CONTACT})
    with cloud.state.db.write() as s:
        s.add(Device(device_id=DEVICE, kind="wristband", interval_s=300.0, private_enc=sealed, created_at=T0))
    op_token = await asyncio.to_thread(cloud.state.credentials.add_user, "op", "operator", now=T0)
    operator = {"Authorization": f"Bearer {op_token}"}
    body = {"incident_id": "37", "target_kind": "user", "target_id": "disp", "channels": ["sms"],
            "summary": "3号楼201 起火，张先生被困", "place": "3号楼201"}  # fmt: skip
    r = await cloud.client.post("/api/v1/notify/send", json=body, headers=operator)
    assert r.status_code == 200, r.text
    (row,) = audit_rows(cloud)
    assert (row.actor, row.role, row.target) == ("op", "operator", "user:disp")
    assert row.detail["channels"] == ["sms"] and row.detail["incident_id"] == "37"
    assert row.detail["summary_len"] == len(body["summary"]) and row.detail["place_len"] == len(body["place"])
    assert "3号楼" not in json.dumps(row.detail, ensure_ascii=False)  # lengths, never the words

    family = {"incident_id": "38", "target_kind": "role", "target_id": f"family_contact/{DEVICE}"}
    r = await cloud.client.post("/api/v1/notify/send", json=family, headers=operator)
    assert r.status_code == 403
    assert (
        await cloud.client.post("/api/v1/notify/send", json=family, headers=cloud.viewer)
    ).status_code == 403
    assert len(audit_rows(cloud)) == 1  # a refused send writes nothing and sends nothing
    with cloud.state.db.read() as s:
        assert s.scalars(select(Delivery).where(Delivery.incident_id == "38")).all() == []

    r = await cloud.client.post("/api/v1/notify/send", json=family, headers=cloud.dispatcher)
    assert r.status_code == 200 and r.json()["enqueued"] >= 1, r.text
    row = audit_rows(cloud)[-1]
    assert (row.actor, row.role, row.target) == ("disp", "dispatcher", f"role:family_contact/{DEVICE}")
    assert row.detail["family"] is True
    text = json.dumps(row.detail, ensure_ascii=False)
    assert CONTACT not in text and "4321" not in text and "张" not in text
