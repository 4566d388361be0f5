"""The desk's 排除（非火情） in the console: on a smoke alarm's incident page, next to 电话确认，立即升级, a
dispatcher picks the reason (扰动（烹饪、蒸汽等）), writes what the site said and rules it out in a real
browser (Debian chromium); the page then shows the escalation stopped, the form gone, the outcome and
the timeline entry in Chinese, and the cloud's escalation state agrees (rules: tests/cloud/loop/
test_rule_out.py).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from playwright.sync_api import expect

from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403 (sqlite_url)
from tests.cloud.cloudkit import SMOKE_1, alert_step, batch, body
from tests.dashboards.conftest import LiveCloud, login
from tests.dashboards.test_family_browser import _incident_of


def test_rule_out_stops_the_escalation_and_reads_back(contexts: Any, guarded: LiveCloud) -> None:
    step = alert_step(
        SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, time.time(), value=0.3
    )
    guarded.ingest(body(batch(f"b-{uuid.uuid4().hex[:16]}", alerts=[step])))
    incident_id = _incident_of(guarded, SMOKE_1)
    page = contexts(viewport={"width": 1440, "height": 900}).new_page()
    login(page, "disp", to=f"/console/incidents/{incident_id}")

    esc = page.locator("#escalation")
    expect(esc).to_have_attribute("data-done", "false")
    expect(page.get_by_role("button", name="电话确认，立即升级")).to_be_visible()  # the confirm stays
    form = page.locator("#rule-out")
    expect(form).to_be_visible()
    page.select_option("#rule-out-reason", "nuisance")
    page.fill("#rule-out-note", "住户烤面包烤糊了")
    # the button asks first (console.js): "no" posts nothing, the escalation runs on
    asked: list[str] = []

    def answer(yes: bool) -> None:
        def on_dialog(d: Any) -> None:
            asked.append(d.message)
            d.accept() if yes else d.dismiss()

        page.once("dialog", on_dialog)

    answer(False)
    page.get_by_role("button", name="排除（非火情）").click()
    expect(form).to_be_visible()
    assert asked and asked[0].startswith("确认排除（非火情）？"), asked
    assert "?done=" not in page.url
    got = guarded.api("GET", f"/api/v1/incidents/{incident_id}", user="disp")
    assert not got["incident"]["escalation"]["done"]  # nothing was posted
    answer(True)
    page.get_by_role("button", name="排除（非火情）").click()
    page.wait_for_url(f"**/console/incidents/{incident_id}?done=rule_out*")
    assert len(asked) == 2

    expect(esc).to_have_attribute("data-done", "true")
    expect(esc).to_have_attribute("data-reason", "ruled_out")
    expect(page.locator("#ruled-out")).to_have_text("已排除（扰动（烹饪、蒸汽等）），外部升级已取消")
    expect(page.locator("#outcome")).to_have_text("扰动（烹饪、蒸汽等）")
    expect(form).to_have_count(0)  # ruled out: no second form
    entry = page.locator("#timeline li[data-action='rule_out']")
    expect(entry).to_have_count(1)
    expect(entry).to_contain_text("接警员核实：烹饪油烟、水蒸气等扰动，非火情，已取消 119 升级")
    expect(entry).to_contain_text("住户烤面包烤糊了")
    stopped = page.locator("#timeline li[data-action='escalation_stopped']")
    expect(stopped.last).to_contain_text("接警员核实非火情，已停止升级")
    expect(page.locator("#flash")).to_contain_text("排除（非火情）")

    got = guarded.api("GET", f"/api/v1/incidents/{incident_id}", user="disp")
    assert got["incident"]["escalation"]["done"] and got["incident"]["escalation"]["reason"] == "ruled_out"
    assert got["incident"]["outcome"] == "nuisance" and got["incident"]["is_open"]  # the responder still goes
    intents = guarded.api("GET", f"/api/v1/incidents/{incident_id}/intents", user="disp")["intents"]
    assert "desk_119" not in {i["target_id"] for i in intents}
