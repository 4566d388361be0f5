"""The desk's call to the family in the console: the incident page's 家属联系方式 block says whose the
call task is now, how many calls and the last outcome with its time (Asia/Shanghai); a dispatcher clicks
未接通 (with a note), then 已接通, in a real browser (Debian chromium), and reads the block and the
timeline back after each click (refusals over HTTP: test_family_call_http.py).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from playwright.sync_api import expect

from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403 (sqlite_url)
from tests.cloud.cloudkit import (
    BAND_1,
    alert_step,
    batch,
    body,
)
from tests.dashboards.conftest import LiveCloud, login
from tests.dashboards.test_family_browser import _incident_of

_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")


def _shanghai(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts + 8 * 3600))


def test_not_reached_then_reached_updates_the_block_and_the_timeline(
    contexts: Any, guarded: LiveCloud
) -> None:
    step = alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, time.time())
    guarded.ingest(body(batch(f"b-{uuid.uuid4().hex[:16]}", alerts=[step])))
    incident_id = _incident_of(guarded, BAND_1)
    page = contexts(viewport={"width": 1440, "height": 900}).new_page()
    login(page, "disp", to=f"/console/incidents/{incident_id}")

    block = page.locator("#family-call")
    expect(block).to_have_attribute("data-attempts", "0")
    expect(page.locator("#call-holder")).to_contain_text("当前负责：")
    expect(page.locator("#call-last")).to_contain_text("尚未登记致电结果")

    page.fill("#call-note", "无人接听")
    page.get_by_role("button", name="未接通").click()
    page.wait_for_url(f"**/console/incidents/{incident_id}?done=family_call*")
    expect(block).to_have_attribute("data-attempts", "1")
    expect(block).to_have_attribute("data-outcome", "not_reached")
    expect(page.locator("#call-attempts")).to_have_text("已拨 1 次")
    last = page.locator("#call-last")
    expect(last).to_contain_text("最近一次：未接通")
    expect(last).to_contain_text("无人接听")
    expect(page.locator("#call-next")).to_contain_text("提醒再拨")
    state = guarded.api("GET", f"/api/v1/incidents/{incident_id}/family-call", user="disp")
    at = state["last"]["at"]
    assert _shanghai(at) in last.inner_text()  # the time in Asia/Shanghai, not UTC
    timeline = page.locator("#timeline li[data-action='family_call']")
    expect(timeline).to_have_count(1)
    expect(timeline.first).to_contain_text("致电家属：未接通（第 1 次）")
    expect(timeline.first).to_contain_text("无人接听")

    page.get_by_role("button", name="已接通").click()
    page.wait_for_url(f"**/console/incidents/{incident_id}?done=family_call*")
    expect(block).to_have_attribute("data-attempts", "2")
    expect(block).to_have_attribute("data-outcome", "reached")
    expect(page.locator("#call-attempts")).to_have_text("已拨 2 次")
    expect(page.locator("#call-last")).to_contain_text("最近一次：已接通")
    expect(page.locator("#call-next")).to_have_count(0)  # reached: no reminder to call again
    expect(timeline).to_have_count(2)
    expect(timeline.nth(1)).to_contain_text("致电家属：已接通（第 2 次）")
    expect(page.locator("#flash")).to_contain_text("致电家属")

    page.set_viewport_size({"width": 390, "height": 844})  # a call taker's phone: the form wraps
    expect(page.get_by_role("button", name="未接通")).to_be_visible()
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390

    en = guarded.api("GET", f"/api/v1/incidents/{incident_id}", user="disp", params={"language": "en"})
    words = [e["reason_text"] for e in en["timeline"] if e["action"] == "family_call"]
    assert words[-1] == "family called: reached (call 2)"
