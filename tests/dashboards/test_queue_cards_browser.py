"""The live queue and the incident page on a phone (390x844) and on a desk (1440x900), in Debian chromium.

On a phone each open incident is a card (severity and event on the first line, then place, stage with the
person's name, time and age), the whole card opens the incident, and nothing on the page scrolls sideways;
on a desk the queue stays a table. The incident's 通知记录 block follows the same rule. Screenshots of
both widths are written to ``$VIGIL_CONSOLE_SHOTS`` (or the test's temporary directory) to look at.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import BAND_1, MANHOLE_1, alert_step, batch, body
from tests.dashboards.conftest import LiveCloud, login

ROSTER = {
    "zone": "Asia/Shanghai",
    "responders": [
        {
            "id": "r-wang",
            "name": "网格员王建国",
            "roles": ["grid_worker", "municipal_crew", "community_doctor", "call_taker"],
            "zones": ["*"],
            "lat": 39.9801,
            "lon": 116.3101,
        }
    ],
    "rotations": [
        {"role": role, "participants": ["r-wang"], "shift_s": 0}
        for role in ("grid_worker", "municipal_crew", "community_doctor", "call_taker")
    ],
}
#: wider than this many CSS pixels = more than a few characters (14 px CJK glyphs): not one per line
MIN_EVENT_PX = 56


def _cases(cloud: LiveCloud) -> dict[str, int]:
    """A high-grade cover case and a wristband fall, dispatched by the loop to the roster's one person."""
    cloud.api("PUT", "/api/v1/loop/config/roster", json=ROSTER)
    now = time.time()
    steps = [
        alert_step(
            MANHOLE_1,
            DeviceKind.MANHOLE,
            EventType.COVER_DISPLACED,
            AlertPhase.RAISED,
            now,
            severity=Severity.HIGH,
        ),
        alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, now),
    ]
    cloud.ingest(body(batch(f"b-{uuid.uuid4().hex[:16]}", alerts=steps)))
    found: dict[str, int] = {}
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and len(found) < 2:
        for inc in cloud.api("GET", "/api/v1/incidents", user="disp", params={"limit": 1000})["incidents"]:
            if inc.get("device_id") in (MANHOLE_1, BAND_1) and inc.get("is_open"):
                found[str(inc["device_id"])] = int(inc["id"])
        time.sleep(0.05)
    assert len(found) == 2, found
    return found


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("VIGIL_CONSOLE_SHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _no_sideways_scroll(page: Any) -> None:
    width, inner = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"the page scrolls sideways: {width} > {inner}"


@pytest.mark.parametrize(("width", "height"), [(390, 844), (1440, 900)])
def test_queue_is_cards_on_a_phone_and_a_table_on_a_desk(
    contexts: Any, guarded: LiveCloud, tmp_path: Path, width: int, height: int
) -> None:
    cases = _cases(guarded)
    page = contexts(viewport={"width": width, "height": height}).new_page()
    login(page, "disp")
    row = page.locator(f'#incident-table tr[data-incident-id="{cases[MANHOLE_1]}"]')
    row.wait_for(timeout=10000)
    page.wait_for_timeout(300)  # the map's first layout
    _no_sideways_scroll(page)
    page.screenshot(path=str(_shots(tmp_path) / f"queue-{width}.png"), full_page=True)

    event = row.locator("a.event")
    assert event.inner_text() == "井盖位移"
    box = event.bounding_box()
    assert box is not None and box["width"] >= MIN_EVENT_PX, box  # not one character per line
    assert box["height"] < 30, box  # one line
    text = row.inner_text()
    assert "网格员王建国" in text  # the person, not the roster id
    assert "r-wang" not in text
    assert "前" in text or "刚刚" in text  # the age
    display = row.evaluate("r => getComputedStyle(r).display")
    card_box = row.bounding_box()
    assert card_box is not None and card_box["x"] >= 0 and card_box["x"] + card_box["width"] <= width
    if width < 640:
        assert display == "grid"  # a card
        labels = row.locator("td[data-label]").evaluate_all(
            "tds => tds.map(td => getComputedStyle(td, '::before').content)"
        )
        assert labels == ['"位置："', '"环节："', '"时间："'], labels  # labelled lines
        # the queue comes before the map on a phone
        assert page.locator(".queuebox").bounding_box()["y"] < page.locator(".mapbox").bounding_box()["y"]
        # a tap anywhere on the card (here: its lower right corner, away from the link text) opens it
        page.mouse.click(card_box["x"] + card_box["width"] - 12, card_box["y"] + card_box["height"] - 8)
        page.wait_for_url(f"**/console/incidents/{cases[MANHOLE_1]}")
    else:
        assert display == "table-row"
        assert page.locator("#incident-table thead").is_visible()
        event.click()
        page.wait_for_url(f"**/console/incidents/{cases[MANHOLE_1]}")

    # the incident page: the notices block and the rest fit the width too
    page.goto(f"/console/incidents/{cases[BAND_1]}")
    notices = page.locator("#notices")
    assert notices.locator("h2").inner_text().startswith("通知记录")
    deadline = time.monotonic() + 10.0
    while page.locator("#notices-table tr.notice").count() == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(300)  # the notifier sends within its poll interval
        page.reload()
    rows = page.locator("#notices-table tr.notice")
    assert rows.count() >= 1
    assert "user:" not in page.locator("#notices").inner_text()
    _no_sideways_scroll(page)
    if width < 640:
        assert rows.first.evaluate("r => getComputedStyle(r).display") == "grid"
    page.screenshot(path=str(_shots(tmp_path) / f"incident-{width}.png"), full_page=True)


@pytest.mark.parametrize(("width", "height"), [(390, 844), (1440, 900)])
def test_kpi_and_gateway_tables_fit_a_phone(
    contexts: Any, guarded: LiveCloud, tmp_path: Path, width: int, height: int
) -> None:
    """The KPI board's groups and the gateway list: cards on a phone, no word one character a line."""
    page = contexts(viewport={"width": width, "height": height}).new_page()
    login(page, "disp", to="/console/kpi")
    for path, cell in (("/console/kpi", "#kpi-table tbody td"), ("/console/gateways", "#gateway-table td")):
        page.goto(path)
        _no_sideways_scroll(page)
        first = page.locator(cell).first
        first.wait_for()
        box = first.bounding_box()
        assert box is not None and box["width"] >= MIN_EVENT_PX, (path, box)
        page.screenshot(path=str(_shots(tmp_path) / f"{path.rsplit('/', 1)[-1]}-{width}.png"), full_page=True)
