"""The responder's phone page in a real browser when a wristband wearer fell outdoors: where the wearer is
(not at home, how far), when the position was fixed, the home, and map links that the page itself never
loads (the ``guarded`` fixture fails the test on any request off the cloud's origin).

The band is the cloudkit registry's ``BAND_1`` (home 5号楼101 at 39.97, 116.30); its fall frame carries the
exact fix, which the cloud keeps (docs/privacy.md). Links are minted as the notifier mints them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from cloud.notify.links import Purpose
from firmware_bridge import wristband
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from tests.cloud.cloudkit import BAND_1, alert_step, batch, body
from tests.dashboards.conftest import LiveCloud, login

PHONE = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True}
FLAG = {f.name: 1 << f.bit for f in wristband.FLAGS}
PARK = (39.982345, 116.308765)  # ~1.4 km N and ~0.7 km E of the registered home: 1.6 km


def _fall(now: float) -> bytes:
    frame = Reading(
        kind=DeviceKind.WRISTBAND,
        device_id=str(BAND_1),
        seq=int(now) % 100_000,
        time=now - 1.0,
        battery_pct=80.0,
        flags=FLAG["worn"] | FLAG["gps_valid"] | FLAG["fall"],
        values=(72.0, 97.0, 3.2, 40.0, 70.0, 0.0, *PARK),
        fw_version=0x0106,
    )
    step = alert_step(str(BAND_1), DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, now)
    readings = ReadingBatch.from_readings(DeviceKind.WRISTBAND, [frame])
    return body(batch(f"b-{uuid.uuid4().hex[:16]}", readings, alerts=[step]))


def _token(cloud: LiveCloud, incident_id: int, actor: str) -> str:
    token: str = cloud.app.state.notify.links.token(Purpose.ACCEPT, str(incident_id), actor, now=time.time())
    return token


def test_responder_sees_where_the_wearer_fell(contexts: Any, guarded: LiveCloud) -> None:
    desk = contexts(viewport={"width": 1366, "height": 900}).new_page()
    login(desk, "disp", to="/console/")
    desk.wait_for_selector("#live.on", timeout=5000)
    guarded.ingest(_fall(time.time()))
    row = desk.locator("#incident-table tbody tr", has_text="跌倒").first
    row.wait_for(timeout=10000)
    incident_id = int(row.get_attribute("data-incident-id") or 0)

    phone = contexts(**PHONE).new_page()
    phone.goto(f"/l/{_token(guarded, incident_id, 'user:7')}")  # the link sent to one person
    assert "不在家：距家约 1.6 公里" in phone.inner_text("#position")
    assert "39.982345, 116.308765" in phone.inner_text("#coords")
    assert phone.inner_text("#fix-time").startswith("20")
    assert phone.inner_text("#home") == "5号楼101"
    amap = phone.get_attribute("#map-amap", "href") or ""
    assert amap.startswith("https://uri.amap.com/marker?position=116.31") and "coordinate=gaode" in amap
    assert (phone.get_attribute("#map-geo", "href") or "").startswith("geo:39.982345,116.308765")
    assert phone.evaluate("document.scrollingElement.scrollWidth") <= 360  # no sideways scrolling

    phone.goto(f"/l/{_token(guarded, incident_id, 'group:g02')}")  # a chat group's link: the grid only
    assert phone.locator("#position, #home, #map-amap").count() == 0
    assert phone.inner_text("#where") == "G02"
