"""A wearer's family is paged through the device's registered emergency contact; desks always reach a human.

Found in ``vigil demo``: ``role:family_contact`` resolved to nobody (a roster says "on call for a role in
a grid cell", not "this wearer's relative"), and every desk_119 / desk_120 page of a fresh install failed
because the group did not exist. SMS goes over real HTTP to the local Aliyun fake, which checks the
signature v1 of every request (tests/fakes/aliyun.py, as tests/cloud/notify/test_channels.py does). The
family's own template, the on-duty call takers and the manual send's audit: test_family_words_and_duty.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from alerts.loop.routing import family_target
from cloud.db import Device
from cloud.notify.config import NotifyConfig
from cloud.notify.models import Delivery, InApp
from cloud.notify.planner import FALLBACK_LOG_EVERY_S, NotifyRequest
from cloud.notify.render import IncidentFacts
from firmware_bridge.kernel.locale import show
from tests.cloud.notify.kit import T0, Kit, fake_config, notify_kit, page
from tests.fakes.aliyun import FakeAliyun

CONTACT = "13987654321"
DEVICE = "a1b2c3d4e5f60001"


def register_wearer(kit: Kit, device_id: str = DEVICE, contact: str = CONTACT) -> None:
    """A wristband as the registry stores it: personal fields sealed with the cloud's key."""
    sealed = kit.service.contacts.box.seal(
        {"wearer_name": "张秀英", "wearer_phone": "13811112222", "emergency_contact_phone": contact}
    )
    with kit.db.write() as s:
        s.add(
            Device(
                device_id=device_id, kind="wristband", grid="G01", interval_s=300.0,
                private_enc=sealed, created_at=T0,
            )
        )  # fmt: skip


def fall(incident_id: str = "41", device_id: str = DEVICE) -> NotifyRequest:
    """The loop's family intent for a wristband fall (cloud.loop.rows.expand_intents writes it)."""
    return NotifyRequest(
        facts=IncidentFacts(
            incident_id=incident_id, opened_at=T0, severity=3, event_type="fall", place="G01"
        ),
        target_kind="role",
        target_id=family_target(device_id),
    )


def leaked(caplog: pytest.LogCaptureFixture, secret: str) -> list[str]:
    out = []
    for r in caplog.records:
        text = r.getMessage() + " " + json.dumps({k: str(v) for k, v in vars(r).items()}, ensure_ascii=False)
        if secret in text:
            out.append(r.getMessage())
    return out


def with_family_templates(config: NotifyConfig, **extra: Any) -> NotifyConfig:
    """``config`` plus the family's approved templates (``[aliyun_sms.templates] family`` etc.)."""
    raw = config.model_dump()
    for section, code in (
        ("aliyun_sms", "SMS_FAMILY"),
        ("aliyun_voice", "TTS_FAMILY"),
        ("tencent_sms", "200002"),
    ):
        if raw.get(section):
            raw[section]["templates"] = {"family": code}
    return NotifyConfig.from_mapping({**raw, **extra})


async def test_a_fall_texts_the_wearers_registered_emergency_contact_once(
    tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = with_family_templates(fake_config(aliyun=fake_aliyun))
    async with notify_kit(tmp_path, sqlite_url, config) as kit:
        register_wearer(kit)
        w = kit.service.worker
        assert await w.submit([fall()]) == 2  # the family's text and the desk's call task
        assert await w.submit([fall()]) == 0  # a repeated intent pages nobody twice
        await w.send_once()
        assert len(fake_aliyun.sms) == 1, fake_aliyun.sms
        sms = fake_aliyun.sms[0]
        assert sms["PhoneNumbers"] == CONTACT
        assert sms["SignName"] == "平安社区"
        assert sms["TemplateCode"] == "SMS_FAMILY"  # the family's template, not the responders' SMS_1
        assert json.loads(sms["TemplateParam"]) == {"event": "跌倒", "wearer": "张**", "time": show(T0)[5:16]}
        assert fake_aliyun.calls == []  # delivered by SMS: no voice call
        with kit.db.read() as s:
            rows = {d.channel: d for d in s.scalars(select(Delivery))}
            assert {c: (d.recipient, d.status) for c, d in rows.items()} == {
                "sms_family": (f"family:{DEVICE}", "delivered"),
                "call_task": (f"family:{DEVICE}", "delivered"),
            }
            stored = "".join(
                json.dumps(d.notice, ensure_ascii=False) + d.dedup_key + d.recipient + (d.target or "")
                for d in rows.values()
            )
            assert "139****4321" in stored and CONTACT not in stored  # only the masked number is stored
            (task,) = s.scalars(select(InApp)).all()  # nobody on duty: every operator's call task
            assert task.user_id is None and task.notice["title"].startswith("请致电家属")
            assert "已发短信/语音通知家属" in json.dumps(task.notice, ensure_ascii=False)
    assert leaked(caplog, CONTACT) == []


async def test_without_sms_the_call_takers_get_a_call_task_with_the_masked_number(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with notify_kit(tmp_path, sqlite_url, fake_config()) as kit:
        register_wearer(kit)
        w = kit.service.worker
        assert await w.submit([fall()]) == 1
        await w.send_once()
        with kit.db.read() as s:
            (item,) = s.scalars(select(InApp)).all()
        assert item.user_id is None  # nobody on duty (empty roster): every operator's queue
        assert item.notice["title"].startswith("请致电家属")
        text = json.dumps(item.notice, ensure_ascii=False)
        assert "139****4321" in text and "张**的家属" in text and DEVICE in text
        assert CONTACT not in text and "张秀英" not in text
    assert leaked(caplog, CONTACT) == []


async def test_a_device_without_a_registered_contact_is_raised_as_nobody_to_notify(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with notify_kit(tmp_path, sqlite_url, fake_config()) as kit:
        register_wearer(kit, contact="")
        assert await kit.service.worker.submit([fall()]) == 0
        with kit.db.read() as s:
            (item,) = s.scalars(select(InApp)).all()
        assert item.kind == "failure" and "无人可通知" in item.notice["title"]


async def test_each_device_of_a_grouped_incident_pages_its_own_family(
    tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun
) -> None:
    config = with_family_templates(fake_config(aliyun=fake_aliyun))
    async with notify_kit(tmp_path, sqlite_url, config) as kit:
        register_wearer(kit)
        register_wearer(kit, "a1b2c3d4e5f60002", "13700001111")
        w = kit.service.worker
        assert await w.submit([fall("42"), fall("42", "a1b2c3d4e5f60002")]) == 4  # 2 texts, 2 call tasks
        await w.send_once()
        assert sorted(m["PhoneNumbers"] for m in fake_aliyun.sms) == ["13700001111", CONTACT]


@pytest.mark.parametrize("members", [None, []])
async def test_a_missing_or_empty_desk_falls_back_to_the_operators_in_app_loudly_once(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture, members: list[str] | None
) -> None:
    caplog.set_level(logging.WARNING, logger="cloud.notify.planner")
    async with notify_kit(tmp_path, sqlite_url, fake_config()) as kit:
        if members is not None:
            kit.service.contacts.set_group("desk_120", title="120 急救中心", members=members)
        w = kit.service.worker
        for i in range(3):  # three pages within ten minutes: one warning
            assert await w.submit([page(str(50 + i), kind="group", target="desk_120")]) == 1
            kit.clock.advance(60)
        await w.send_once()
        with kit.db.read() as s:
            items = s.scalars(select(InApp).order_by(InApp.id)).all()
            channels = {d.channel for d in s.scalars(select(Delivery))}
        assert channels == {"inapp_ops"}
        assert sorted((i.user_id, i.kind, i.incident_id) for i in items) == [  # sent concurrently
            (None, "notice", "50"), (None, "notice", "51"), (None, "notice", "52")
        ]  # fmt: skip
        warned = [r for r in caplog.records if r.getMessage().startswith("group has nobody to page")]
        assert [(getattr(r, "target", ""), getattr(r, "reason", "")) for r in warned] == [
            ("group:desk_120", "no_group" if members is None else "empty_group")
        ]
        kit.clock.advance(FALLBACK_LOG_EVERY_S)
        assert await w.submit([page("60", kind="group", target="desk_120")]) == 1
        assert len([r for r in caplog.records if r.getMessage().startswith("group has nobody")]) == 2
