"""The 请致电家属 family contact block in a real browser (Debian chromium): a dispatcher clicks 显示号码 on a
wristband fall, sees the full number as a ``tel:`` link and "已记录查看", and after the reveal window (60 s,
driven by Playwright's clock) the number is masked again. At 1440 px (desk) and 390 px (phone-width) with
no sideways scrolling; the ``guarded`` fixture fails the test on any request off the cloud's origin.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from cloud.loop.models import AuditEntry
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import BAND_1, alert_step, batch, body
from tests.dashboards.conftest import LiveCloud, login

CONTACT = "13987654321"  # BAND_1's registered emergency contact (tests/cloud/cloudkit.py)
MASKED = "139****4321"


def _incident_of(cloud: LiveCloud, device_id: str) -> int:
    """The open incident the loop made of the band's alarm (the loop takes alerts off the ingest path)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        for inc in cloud.api("GET", "/api/v1/incidents", user="disp", params={"limit": 1000})["incidents"]:
            if inc.get("device_id") == device_id:
                return int(inc["id"])
        time.sleep(0.05)
    raise AssertionError(f"no incident for {device_id} within 10 s")


def _reveals(cloud: LiveCloud) -> int:
    with cloud.app.state.vigil.db.read() as s:
        q = select(AuditEntry).where(AuditEntry.action == "notify.family.reveal")
        return len(list(s.scalars(q)))


@pytest.mark.parametrize("width", [1440, 390])
def test_show_number_is_a_tel_link_for_a_minute_then_masked(
    contexts: Any, guarded: LiveCloud, width: int
) -> None:
    open_bands = guarded.api("GET", "/api/v1/incidents", user="disp", params={"limit": 1000})["incidents"]
    if not any(i.get("device_id") == BAND_1 for i in open_bands):  # the first run opens the fall case
        step = alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, time.time())
        guarded.ingest(body(batch(f"b-{uuid.uuid4().hex[:16]}", alerts=[step])))
    incident_id = _incident_of(guarded, BAND_1)
    before = _reveals(guarded)
    page = contexts(viewport={"width": width, "height": 900}).new_page()
    login(page, "disp", to=f"/console/incidents/{incident_id}")
    start = datetime.now(UTC)
    page.clock.install(time=start)
    page.clock.pause_at(start + timedelta(seconds=1))  # the reveal's timer runs only when the test says so
    page.reload()

    phone = page.locator("#family li[data-device] .family-phone").first
    expect(phone).to_have_text(MASKED)
    expect(page.locator("#family .wearer").first).to_have_text("张**的家属")
    assert page.locator("#family a[href^='tel:']").count() == 0
    page.get_by_role("button", name="显示号码").click()

    tel = page.locator(f"#family a[href='tel:{CONTACT}']")
    expect(tel).to_have_text(CONTACT)
    expect(page.locator("#family-status")).to_contain_text("已记录查看")
    assert _reveals(guarded) == before + 1  # one click, one audit row
    assert CONTACT not in page.url
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width  # no sideways scrolling

    page.clock.run_for(30_000)
    expect(tel).to_be_visible()  # still shown within the window
    page.clock.run_for(31_000)
    expect(phone).to_have_text(MASKED)
    assert page.locator("#family a[href^='tel:']").count() == 0
    expect(page.get_by_role("button", name="显示号码")).to_be_enabled()
    assert CONTACT not in page.content()
