"""The whole story in a real browser: an alarm arrives -> it is in the queue -> the operator dispatches to the
suggested (nearest on-call) responder -> the responder's phone page accepts, arrives and resolves with a
note and a camera photo -> the operator verifies and closes -> the resident rates -> the KPI board changes.

Links are minted the way the notifier mints them (``cloud.notify.links``); the responder and resident pages
run on a 360 px phone viewport.
"""

from __future__ import annotations

import struct
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

from cloud.notify.links import Purpose
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import MANHOLE_1, alert_step, batch, body
from tests.dashboards.conftest import LiveCloud, login

PHONE = {
    "viewport": {"width": 360, "height": 740},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 2,
}
ROSTER = {
    "zone": "Asia/Shanghai",
    "responders": [
        # r-near is ~15 m from MANHOLE_1 (39.98, 116.31); r-far ~2 km away: the suggestion is the nearest
        {
            "id": "r-far",
            "name": "网格员小李",
            "roles": ["grid_worker"],
            "zones": ["*"],
            "lat": 39.995,
            "lon": 116.325,
        },
        {
            "id": "r-near",
            "name": "网格员老王",
            "roles": ["grid_worker"],
            "zones": ["*"],
            "lat": 39.9801,
            "lon": 116.3101,
        },
    ],
    "rotations": [{"role": "grid_worker", "participants": ["r-far", "r-near"], "shift_s": 0}],
}


def _png(path: Path) -> Path:
    """A small valid PNG (8x8, red), written with zlib: what a phone camera hands the page."""
    w = h = 8
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * w for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def _token(cloud: LiveCloud, purpose: Purpose, incident_id: int, actor: str) -> str:
    token: str = cloud.app.state.notify.links.token(purpose, str(incident_id), actor, now=time.time())
    return token


def _kpi(page: Any) -> dict[str, str]:
    page.goto("/console/kpi")
    return {k: page.inner_text(f"#kpi-{k}") for k in ("closure", "satisfaction", "due")}


def test_alarm_to_rating_closes_the_loop(contexts: Any, guarded: LiveCloud, tmp_path: Path) -> None:
    guarded.api("PUT", "/api/v1/loop/config/roster", json=ROSTER)
    desk = contexts(viewport={"width": 1366, "height": 900}).new_page()
    login(desk, "disp", to="/console/kpi")
    before = _kpi(desk)

    # 1. an alarm arrives; the loop opens an incident; the live queue shows it
    desk.goto("/console/")
    desk.wait_for_selector("#live.on", timeout=5000)
    step = alert_step(
        MANHOLE_1,
        DeviceKind.MANHOLE,
        EventType.COVER_DISPLACED,
        AlertPhase.RAISED,
        time.time(),
        severity=Severity.HIGH,
    )
    guarded.ingest(body(batch(f"b-{uuid.uuid4().hex[:16]}", alerts=[step])))
    # acknowledged: committed, the cloud knows; the desk's queue shows it from the live stream (how fast is
    # bench_console's to measure, not a stopwatch's here)
    row = desk.locator("#incident-table tbody tr", has_text="井盖位移").first
    row.wait_for(timeout=10000)
    incident_id = int(row.get_attribute("data-incident-id") or 0)

    # 2. the operator opens it: routing rule, receivers, the nearest on-call grid worker suggested
    row.locator("a").first.click()
    desk.wait_for_url(f"**/console/incidents/{incident_id}")
    assert "井盖 › " in desk.inner_text("#route")  # the rule in words (the machine path in its title)
    assert (desk.get_attribute("#route .rule", "data-rule") or "").startswith("root/manhole")
    assert desk.locator("#assignee option").first.get_attribute("value") == "r-near"
    stale = contexts(viewport={"width": 1366, "height": 900}).new_page()  # a second desk, same incident
    login(stale, "disp", to=f"/console/incidents/{incident_id}")
    desk.click("button[data-action=dispatch]")  # one click: dispatch to the suggestion
    desk.wait_for_selector("#flash")
    assert "派遣" in desk.inner_text("#stage") and desk.inner_text("#owner") in ("r-near", "网格员老王")

    # 3. a stale page acting on the changed incident gets a clear message, not a silent overwrite
    stale.fill("#reason", "等待施工")
    stale.once("dialog", lambda d: d.accept())  # 确认挂账？
    stale.click("button[data-action=park]")
    assert "已被他人更新" in stale.inner_text("#action-error")
    assert "挂账" not in stale.inner_text("#stage")

    # 4. the responder's phone: accept, arrive, resolve with a note and a camera photo
    phone = contexts(**PHONE).new_page()
    for purpose in (Purpose.ACCEPT, Purpose.ARRIVED):
        phone.goto(f"/l/{_token(guarded, purpose, incident_id, 'r-near')}")  # the link as sent in a message
        button = phone.locator("#act")
        assert button.bounding_box()["width"] >= 300 and button.bounding_box()["height"] >= 56
        button.click()
        phone.wait_for_selector("#flash, #link-error")
        assert phone.locator("#flash").count() == 1, phone.inner_text("main")
    phone.goto(f"/l/{_token(guarded, Purpose.RESOLVED, incident_id, 'r-near')}")
    assert phone.evaluate("document.scrollingElement.scrollWidth") <= 360  # no sideways scrolling
    phone.click("#act")  # no note yet: refused, in Chinese, nothing done
    required = phone.locator("textarea[name=note][required]")
    if required.count():  # the page marks the note required: the browser refuses, nothing is sent
        assert not required.evaluate("e => e.checkValidity()")
    else:  # the cloud's refusal in words
        assert "请填写处置说明" in phone.inner_text("#link-error")
    phone.fill("textarea[name=note]", "已更换井盖并加固")
    phone.check("input[name=outcome][value=real]")  # the verdict: 真实事件
    phone.set_input_files("input[type=file]", str(_png(tmp_path / "cover.png")))
    phone.wait_for_function("document.getElementById('photo_b64').value.startsWith('data:image/jpeg')")
    phone.click("#act")
    assert "已记录处置结果" in phone.inner_text("#flash")
    phone.goto(f"/l/{_token(guarded, Purpose.ACCEPT, incident_id, 'r-near')}")  # an action out of turn
    assert phone.locator("#used, #act").count() >= 1

    # 5. the desk sees it handled (photo attached), verifies and closes with one click each
    desk.goto(f"/console/incidents/{incident_id}")
    assert "处置反馈" in desk.inner_text("#stage")
    assert desk.inner_text("#outcome") == "真实事件"  # the responder's verdict reached the case
    for action in ("verify", "close"):
        desk.click(f"button[data-action={action}]")
        desk.wait_for_selector("#flash")
    assert "结案" in desk.inner_text("#stage")

    # 6. the resident rates from the case link
    resident = contexts(**PHONE).new_page()
    resident.goto(f"/l/{_token(guarded, Purpose.CASE, incident_id, 'case')}")
    resident.click("label[for=star5]")
    resident.fill("textarea[name=comment]", "处理很快，谢谢")
    resident.click("#rate")
    assert "感谢您的评价" in resident.inner_text("#flash")
    desk.goto(f"/console/incidents/{incident_id}")  # the desk reads who rated: 居民, not "resident"
    rated = desk.locator("#timeline li[data-action='rate']")
    assert "居民" in rated.last.inner_text() and "resident" not in rated.last.inner_text()

    # 7. the KPI board changed
    after = _kpi(desk)
    assert after != before and after["satisfaction"] == "5.00"
    assert desk.inner_text("#kpi-false-alarm") == "0.0 %"  # one judged case, a real one
