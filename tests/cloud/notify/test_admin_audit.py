"""Contact and group changes through the API are audited like the roster document, and so is every reveal
of a wearer's family number for the "请致电家属" call task (actor, action, target, detail without numbers)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from cloud.db import Device
from cloud.loop.models import AuditEntry, Incident
from tests.cloud.cloudkit import Cloud, make_settings, start_cloud
from tests.cloud.notify.kit import T0
from tests.cloud.notify.test_api import write_config
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.wecom import FakeWeCom

CONTACT = "13987654321"


@pytest.fixture
async def cloud(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom, fake_aliyun: FakeAliyun
) -> AsyncIterator[Cloud]:
    config = write_config(tmp_path / "notify.toml", fake_wecom, fake_aliyun)
    settings = make_settings(tmp_path, sqlite_url, notify_config_file=config, run_jobs=False)
    async with start_cloud(settings) as c:
        yield c


def audit_rows(cloud: Cloud, action: str) -> list[AuditEntry]:
    with cloud.state.db.read() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


async def test_contact_and_group_changes_write_audit_rows_without_numbers(cloud: Cloud) -> None:
    body = {"phone": "+86 138-1234-1234", "email": "d@example.cn", "duty_roles": ["call_taker"]}
    r = await cloud.client.put("/api/v1/notify/contacts/disp", json=body, headers=cloud.admin)
    assert r.status_code == 204, r.text
    (row,) = audit_rows(cloud, "notify.contact.bind")
    assert (row.actor, row.role, row.target) == ("admin", "admin", "user:disp")
    assert row.detail["duty_roles"] == ["call_taker"]
    assert row.detail["phone_bound"] is True and row.detail["email_bound"] is True
    text = json.dumps(row.detail)
    assert "1234" not in text and "example.cn" not in text

    r = await cloud.client.put(
        "/api/v1/notify/groups/desk_120",
        json={"title": "120 急救中心", "members": ["disp"]},
        headers=cloud.admin,
    )
    assert r.status_code == 204, r.text
    (row,) = audit_rows(cloud, "notify.group.set")
    assert (row.actor, row.target, row.detail["members"]) == ("admin", "group:desk_120", ["disp"])

    # refused changes are not audited as done
    r = await cloud.client.put("/api/v1/notify/groups/desk_119", json={}, headers=cloud.viewer)
    assert r.status_code == 403
    r = await cloud.client.put("/api/v1/notify/contacts/disp", json={"phone": "12345"}, headers=cloud.admin)
    assert r.status_code == 400
    assert (
        len(audit_rows(cloud, "notify.group.set")) == 1 and len(audit_rows(cloud, "notify.contact.bind")) == 1
    )


async def test_the_family_number_is_masked_and_revealed_to_dispatchers_only_audited(cloud: Cloud) -> None:
    notify = cloud.app.state.notify
    sealed = notify.contacts.box.seal({"wearer_name": "张秀英", "emergency_contact_phone": CONTACT})
    with cloud.state.db.write() as s:
        s.add(Device(device_id="a1b2c3d4e5f60001", kind="wristband", interval_s=300.0, private_enc=sealed,
                     created_at=T0))  # fmt: skip
        inc = Incident(
            group_key="per_device|device_id=a1b2c3d4e5f60001|event=fall", group_rule="per_device",
            stage="new", source="gateway", kind="wristband", event_type="fall", grade=3, urgency="critical",
            device_id="a1b2c3d4e5f60001", created_at=T0, stage_entered_at=T0, updated_at=T0,
        )  # fmt: skip
        s.add(inc)
        s.flush()
        incident_id = inc.id
    url = f"/api/v1/notify/incidents/{incident_id}/family"
    assert (
        await cloud.client.get(url, headers=cloud.viewer)
    ).status_code == 403  # read-only: not even masked
    op_token = await asyncio.to_thread(cloud.state.credentials.add_user, "op", "operator", now=T0)
    operator = {"Authorization": f"Bearer {op_token}"}
    r = await cloud.client.get(url, headers=operator)
    assert r.status_code == 200 and r.json() == [
        {"device_id": "a1b2c3d4e5f60001", "wearer": "张**", "phone": "139****4321",
         "family_reached": {"status": "none", "at": None, "channel": None, "call": None}}  # nothing sent
    ]  # fmt: skip
    assert audit_rows(cloud, "notify.family.reveal") == []  # a masked view is not a reveal
    r = await cloud.client.get(url, params={"reveal": "true"}, headers=operator)
    assert r.status_code == 403
    r = await cloud.client.get(url, params={"reveal": "true"}, headers=cloud.dispatcher)
    assert r.status_code == 200 and r.json()[0]["phone"] == CONTACT
    (row,) = audit_rows(cloud, "notify.family.reveal")
    assert (row.actor, row.role, row.target) == ("disp", "dispatcher", f"incident:{incident_id}")
    assert row.detail == {"devices": ["a1b2c3d4e5f60001"]}
    r = await cloud.client.get("/api/v1/notify/incidents/999999/family", headers=cloud.dispatcher)
    assert r.status_code == 404
