"""The responder's phone page in a real browser when a wristband wearer fell outdoors: where the wearer is
(not at home, how far), when the position was fixed, the home, and map links that the page itself never
loads (the ``guarded`` fixture fails the test on any request off the cloud's origin).

The band is the cloudkit registry's ``BAND_1`` (home 5号楼101 at 39.97, 116.30); its fall frame carries the
exact fix, which the cloud keeps (docs/privacy.md). Links are minted as the notifier mints them.

The page keeps itself current: with the browser's clock under the test's control (Playwright's clock), the
wearer's next fix appears after the 30-s refresh without a reload and without touching the note being
typed, and once the case is closed the position goes and the page says so.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.sync_api import expect

from alerts.loop.stages import Action, Command
from cloud.notify.links import Purpose
from firmware_bridge import wristband
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from tests.cloud.cloudkit import BAND_1, GW1, alert_step, batch, body
from tests.dashboards.conftest import LiveCloud, login

PHONE = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True}
FLAG = {f.name: 1 << f.bit for f in wristband.FLAGS}
PARK = (39.982345, 116.308765)  # ~1.4 km N and ~0.7 km E of the registered home: 1.6 km


def _reading(band: str, now: float, flags: int, lat: float, lon: float, seq: int) -> ReadingBatch:
    frame = Reading(
        kind=DeviceKind.WRISTBAND,
        device_id=band,
        seq=seq,
        time=now - 1.0,
        battery_pct=80.0,
        flags=flags,
        values=(72.0, 97.0, 3.2 if flags & FLAG["fall"] else 1.0, 40.0, 70.0, 0.0, lat, lon),
        fw_version=0x0106,
    )
    return ReadingBatch.from_readings(DeviceKind.WRISTBAND, [frame])


def _fall(now: float, band: str = str(BAND_1), where: tuple[float, float] = PARK) -> bytes:
    readings = _reading(
        band, now, FLAG["worn"] | FLAG["gps_valid"] | FLAG["fall"], *where, int(now) % 100_000
    )
    step = alert_step(band, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, now)
    return body(batch(f"b-{uuid.uuid4().hex[:16]}", readings, alerts=[step]))


def _token(cloud: LiveCloud, incident_id: int, actor: str, purpose: Purpose = Purpose.ACCEPT) -> str:
    token: str = cloud.app.state.notify.links.token(purpose, str(incident_id), actor, now=time.time())
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


VISIBILITY = """state => {
    Object.defineProperty(document, "visibilityState", { value: state, configurable: true });
    document.dispatchEvent(new Event("visibilitychange"));
}"""


COUNT_FETCHES = """() => {
    window.fetches = 0;
    const fetch = window.fetch;
    window.fetch = (...args) => { window.fetches += 1; return fetch(...args); };
}"""


def _incident_of(cloud: LiveCloud, device_id: str) -> int:
    """The open incident the loop made of the band's alarm (the loop takes alerts off the ingest path)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        for inc in cloud.api("GET", "/api/v1/incidents", user="disp", params={"limit": 1000})["incidents"]:
            if inc.get("device_id") == device_id:
                return int(inc["id"])
        time.sleep(0.05)
    raise AssertionError(f"no incident for {device_id} within 10 s")


def test_the_position_follows_the_wearer_without_a_reload(contexts: Any, guarded: LiveCloud) -> None:
    band = uuid.uuid4().hex[:16]  # a band of this test's own: no other test's fixes or incidents
    guarded.api(
        "POST", "/api/v1/devices", json={
            "device_id": band, "kind": "wristband", "name": "手环 7-302", "lat": 39.97, "lon": 116.30,
            "address": "7号楼302", "grid": "G02", "community": "中关村", "street": "科学院南路",
            "gateway_id": GW1,
        },
    )  # fmt: skip
    alarms = guarded.app.state.vigil.store.open_alarms
    ttl, alarms.ttl_s = alarms.ttl_s, 0.0  # the next fix is written knowing the alarm is open (exact)
    alarms.invalidate()  # and not from a set cached by an earlier test's ingest
    try:
        guarded.ingest(_fall(time.time(), band))
        incident_id = _incident_of(guarded, band)
        phone = contexts(**PHONE).new_page()
        start = datetime.now(UTC)
        phone.clock.install(time=start)
        phone.clock.pause_at(start + timedelta(seconds=1))  # the page's timers run only when the test says so
        phone.goto(f"/l/{_token(guarded, incident_id, 'user:7', Purpose.ARRIVED)}")
        assert phone.inner_text("#coords") == "39.982345, 116.308765"
        assert phone.inner_text("#fix-age") == "刚刚"
        assert phone.inner_text("#position-status") == "位置每 30 秒自动更新"
        phone.evaluate("window.sameDocument = true")  # gone if the page were reloaded
        phone.fill("textarea[name=note]", "已到楼下，正在上楼")  # typed, not sent yet

        walked = (39.983456, 116.309876)  # the wearer got up and walked ~150 m
        guarded.ingest(
            body(
                batch(
                    f"b-{uuid.uuid4().hex[:16]}",
                    _reading(band, time.time(), FLAG["worn"] | FLAG["gps_valid"], *walked, 2),
                )
            )
        )
        assert phone.inner_text("#coords") == "39.982345, 116.308765"  # nothing moves before the refresh
        phone.clock.run_for(31_000)
        expect(phone.locator("#coords")).to_have_text("39.983456, 116.309876")
        assert "不在家：距家约 1." in phone.inner_text("#away")
        assert (phone.get_attribute("#map-geo", "href") or "").startswith("geo:39.983456,116.309876")
        assert phone.inner_text("#fix-age") == "刚刚"
        assert phone.evaluate("window.sameDocument") is True
        assert phone.input_value("textarea[name=note]") == "已到楼下，正在上楼"
        assert phone.evaluate("document.scrollingElement.scrollWidth") <= 360  # no sideways scrolling

        # a phone in a pocket (page hidden) asks nothing; back in hand it asks at once
        phone.evaluate(COUNT_FETCHES)  # counted in the page, as the page's timers fire
        phone.evaluate(VISIBILITY, "hidden")
        phone.clock.run_for(120_000)
        assert phone.evaluate("window.fetches") == 0
        with phone.expect_response(lambda r: r.url.endswith("/position")):
            phone.evaluate(VISIBILITY, "visible")
        assert phone.evaluate("window.fetches") == 1

        loop = guarded.app.state.loop
        if (
            guarded.api("GET", f"/api/v1/incidents/{incident_id}", user="disp")["incident"]["stage"]
            == "registered"
        ):
            loop.act(incident_id, Command(Action.DISPATCH, "admin", assignee="worker-7"))
        for step in (Action.ACCEPT, Action.ARRIVE, Action.HANDLE, Action.VERIFY, Action.CLOSE):
            loop.act(incident_id, Command(step, "admin", reason="done"))
        phone.clock.run_for(31_000)
        expect(phone.locator("#position-status")).to_have_text("案件已结束，不再显示位置")
        assert phone.locator("#live-position, #coords, #home, #map-amap").count() == 0
        assert phone.input_value("textarea[name=note]") == "已到楼下，正在上楼"
    finally:
        alarms.ttl_s = ttl
