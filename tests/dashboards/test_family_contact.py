"""The 请致电家属 call task on the console's incident page: the family contact block per role, and the audited
"显示号码" reveal through the console's own route (in-process against the real app, ``httpx.ASGITransport``).

The band is the cloudkit registry's ``BAND_1`` (wearer 张三丰, emergency contact 13987654321, sealed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from alerts.contract import HTTP_PATH
from cloud.loop.models import AuditEntry
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import BAND_1, MANHOLE_1, Cloud, alert_step, batch, body, make_settings, start_cloud

CONTACT = "13987654321"
MASKED = "139****4321"


@pytest.fixture
async def desk(
    tmp_path: Path, sqlite_url: str
) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient, dict[str, str]]]:
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        op = await asyncio.to_thread(c.state.credentials.add_user, "op", "operator", now=c.clock.now())
        tokens = {
            "disp": c.dispatcher["Authorization"].removeprefix("Bearer "),
            "admin": c.admin["Authorization"].removeprefix("Bearer "),
            "viewer": c.viewer["Authorization"].removeprefix("Bearer "),
            "op": op,
        }
        transport = httpx.ASGITransport(app=c.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as browser:
            yield c, browser, tokens


async def _incident(c: Cloud, device: str, kind: DeviceKind, event: EventType, batch_id: str) -> int:
    step = alert_step(device, kind, event, AlertPhase.RAISED, c.clock.now())
    r = await c.client.post(
        HTTP_PATH,
        content=body(batch(batch_id, alerts=[step])),
        headers={**c.gw1, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    await c.app.state.loop_sink.drained()
    rows = (await c.client.get("/api/v1/incidents", params={"open": True}, headers=c.dispatcher)).json()
    return next(int(i["id"]) for i in rows["incidents"] if i["device_id"] == device)


def _reveals(c: Cloud) -> list[AuditEntry]:
    with c.state.db.read() as s:
        q = select(AuditEntry).where(AuditEntry.action == "notify.family.reveal")
        return list(s.scalars(q.order_by(AuditEntry.id)))


def _as(browser: httpx.AsyncClient, token: str) -> None:
    browser.cookies.set("vigil_session", token)


async def test_dispatcher_sees_the_button_and_one_reveal_is_one_audit_row(
    desk: tuple[Cloud, httpx.AsyncClient, dict[str, str]],
) -> None:
    c, browser, tokens = desk
    incident_id = await _incident(c, BAND_1, DeviceKind.WRISTBAND, EventType.FALL, "batch-family-01")
    _as(browser, tokens["disp"])
    page = await browser.get(f"/console/incidents/{incident_id}")
    assert page.status_code == 200
    assert "家属联系方式" in page.text and "张**的家属" in page.text and MASKED in page.text
    assert 'id="family-reveal-btn"' in page.text and "显示号码" in page.text and "family.js" in page.text
    assert CONTACT not in page.text and "张三丰" not in page.text  # the page itself never holds the number
    assert _reveals(c) == []  # showing the masked block is not a reveal

    url = f"/console/incidents/{incident_id}/family/reveal"
    assert (await browser.get(url)).status_code == 405  # never a GET: the number is not behind a link
    r = await browser.post(url, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and _reveals(c) == []  # a cross-site post reveals nothing
    r = await browser.post(url, headers={"Origin": "http://vigil.test"})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    data = r.json()
    assert data["contacts"] == [{"device_id": BAND_1, "phone": CONTACT}]
    assert data["seconds"] == 60 and data["recorded"] == "已记录查看"
    (row,) = _reveals(c)
    assert (row.actor, row.role, row.target) == ("disp", "dispatcher", f"incident:{incident_id}")
    assert CONTACT not in str(row.detail)

    browser.cookies.set("vigil_lang", "en")  # English by the console's locale cookie
    page = await browser.get(f"/console/incidents/{incident_id}")
    assert "Family contact" in page.text and "Show number" in page.text and MASKED in page.text


async def test_operator_sees_the_masked_number_only_and_the_reveal_is_refused(
    desk: tuple[Cloud, httpx.AsyncClient, dict[str, str]],
) -> None:
    c, browser, tokens = desk
    incident_id = await _incident(c, BAND_1, DeviceKind.WRISTBAND, EventType.SOS, "batch-family-02")
    _as(browser, tokens["op"])
    page = await browser.get(f"/console/incidents/{incident_id}")
    assert page.status_code == 200 and "家属联系方式" in page.text and MASKED in page.text
    assert "family-reveal-btn" not in page.text and "显示号码" not in page.text and CONTACT not in page.text
    r = await browser.post(f"/console/incidents/{incident_id}/family/reveal")
    assert r.status_code == 403 and CONTACT not in r.text and "无权" in r.json()["error"]
    assert _reveals(c) == []


async def test_viewer_sees_nothing_of_the_family_and_other_kinds_have_no_block(
    desk: tuple[Cloud, httpx.AsyncClient, dict[str, str]],
) -> None:
    c, browser, tokens = desk
    incident_id = await _incident(c, BAND_1, DeviceKind.WRISTBAND, EventType.FALL, "batch-family-03")
    _as(browser, tokens["viewer"])
    page = await browser.get(f"/console/incidents/{incident_id}")
    assert page.status_code == 200
    assert "家属联系方式" not in page.text and MASKED not in page.text and 'id="family"' not in page.text
    r = await browser.post(f"/console/incidents/{incident_id}/family/reveal")
    assert r.status_code == 403 and CONTACT not in r.text
    assert _reveals(c) == []
    # a manhole case has no family: no block even for a dispatcher
    cover = await _incident(c, MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, "batch-family-04")
    _as(browser, tokens["disp"])
    page = await browser.get(f"/console/incidents/{cover}")
    assert page.status_code == 200 and 'id="family"' not in page.text
