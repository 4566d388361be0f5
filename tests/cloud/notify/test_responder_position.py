"""Where the wearer is, on the assigned responder's link page (docs/notifications.md, docs/privacy.md).

Through the real app over HTTP: a wristband's fall or SOS is ingested with its readings (the exact fix is
kept by the minimising store because of the SOS / fall flag); the loop opens the case; links are minted as
the notifier mints them. A personal link on an open case shows the latest exact fix, its time and age, how far
from home, map links and the home; a group's link shows the grid only; a closed case neither. A reading
without ``gps_valid`` is no position (a band repeating an old fix). The page's refresh endpoint answers
the same position, is refused to group and resident links, says when the case closed, and is audited at
most once per viewer and case per few minutes. The WGS-84 -> GCJ-02 conversion is checked against
published vectors.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from alerts.contract import HTTP_PATH
from alerts.loop.stages import Action, Command
from cloud.loop.wiring import LoopSink
from cloud.notify.links import Purpose
from cloud.notify.loopbridge import Fix, latest_exact_fix, wgs84_to_gcj02
from cloud.timeseries import BackendError, open_timeseries
from firmware_bridge import wristband
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from tests.cloud.cloudkit import BAND_1, GW1, T0, Cloud, alert_step, batch, body, make_settings, start_cloud

BAND_ID = str(BAND_1)
HOME = "海淀区科学院南路5号楼101室"
HOME_LAT, HOME_LON = 39.971234, 116.305678
BAND = {
    "device_id": BAND_ID,
    "kind": "wristband",
    "name": "手环 G02-017",
    "lat": HOME_LAT,
    "lon": HOME_LON,
    "address": HOME,
    "grid": "G02",
    "community": "中关村",
    "street": "科学院南路",
    "gateway_id": GW1,
    "wearer_name": "张三丰",
    "wearer_phone": "13812341234",
}
FLAG = {f.name: 1 << f.bit for f in wristband.FLAGS}
WORN_FIX = FLAG["worn"] | FLAG["gps_valid"]
PARK = (39.982345, 116.318765)  # ~1.7 km from home: where the wearer fell
PARK_SOS = (39.982456, 116.318901)  # 30 s later the wearer pressed SOS a few metres on


@pytest.fixture
async def cloud(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Cloud]:
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        r = await c.client.post("/api/v1/devices", json=BAND, headers=c.admin)
        assert r.status_code == 201, r.text
        yield c


def band(*rows: tuple[int, float, float, float, int]) -> ReadingBatch:
    """Wristband readings ``(seq, time, lat, lon, flags)``: a hard impact and stillness, as after a fall."""
    return ReadingBatch.from_readings(
        DeviceKind.WRISTBAND,
        [
            Reading(
                kind=DeviceKind.WRISTBAND,
                device_id=BAND_ID,
                seq=seq,
                time=t,
                battery_pct=80.0,
                flags=flags,
                values=(72.0, 97.0, 3.2 if flags & FLAG["fall"] else 1.0, 40.0, 70.0, 0.0, lat, lon),
                fw_version=0x0106,
            )
            for seq, t, lat, lon, flags in rows
        ],
    )


async def open_case(c: Cloud, readings: ReadingBatch, event: EventType = EventType.FALL) -> int:
    """Ingest the readings and the alarm through the HTTP ingest path; the loop opens the case."""
    step = alert_step(BAND_ID, DeviceKind.WRISTBAND, event, AlertPhase.RAISED, T0 + 10)
    content = body(batch("batch-where-0001", readings, alerts=[step]))
    r = await c.client.post(HTTP_PATH, content=content, headers={**c.gw1, "content-type": "application/json"})
    assert r.status_code == 200, r.text
    sink: LoopSink = c.app.state.loop_sink
    await sink.drained()
    (inc,) = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
    c.clock.advance(120.0)  # the responder opens the link two minutes later
    return int(inc["id"])


async def view(c: Cloud, incident_id: int, actor: str, purpose: Purpose = Purpose.ACCEPT) -> tuple[Any, str]:
    """The link's API answer and its phone page (``/console/l/{token}``)."""
    token = c.app.state.notify.links.token(purpose, str(incident_id), actor, now=c.clock.now())
    r = await c.client.get(f"/api/v1/links/{token}")
    assert r.status_code == 200, r.text
    page = await c.client.get(f"/console/l/{token}")
    assert page.status_code == 200, page.text
    return r.json(), page.text


async def position_views(c: Cloud) -> list[dict[str, Any]]:
    r = await c.client.get("/api/v1/loop/audit", headers=c.admin)
    assert r.status_code == 200, r.text
    return [e for e in r.json()["entries"] if e["action"] == "link.position_view"]


def no_whereabouts(text: str) -> None:
    for secret in (HOME, *(f"{v:.6f}" for v in (*PARK, *PARK_SOS)), "uri.amap.com", "geo:"):
        assert secret not in text, secret


async def test_personal_link_shows_where_the_wearer_is_outdoors(cloud: Cloud) -> None:
    c = cloud
    readings = band(
        (1, T0 + 9.5, *PARK, WORN_FIX | FLAG["fall"]),  # the band's fall frame: exact fix kept
        (2, T0 + 40.0, *PARK_SOS, WORN_FIX | FLAG["sos"]),  # then SOS, a few metres on: the latest exact fix
        (3, T0 + 60.0, 39.983, 116.319, WORN_FIX),  # a fix on the ~100 m grid is no exact fix: passed over
    )
    incident_id = await open_case(c, readings)
    got, page = await view(c, incident_id, "user:7")
    inc = got["incident"]
    assert inc["place"] == HOME and inc["home"] == HOME
    pos = inc["position"]
    assert (pos["lat"], pos["lon"]) == PARK_SOS
    assert pos["at"] == "2026-09-21T22:14:00+08:00"  # T0 + 40 s, Asia/Shanghai
    assert pos["near_home"] is False and 1_600 < pos["distance_m"] < 1_800  # ~1.2 km N, ~1.1 km E
    assert pos["geo_uri"] == "geo:39.982456,116.318901?q=39.982456,116.318901"
    amap = urlsplit(pos["amap_uri"])
    query = {k: v[0] for k, v in parse_qs(amap.query).items()}
    assert (amap.scheme, amap.netloc, amap.path) == ("https", "uri.amap.com", "/marker")
    glat, glon = wgs84_to_gcj02(*PARK_SOS)
    assert query["position"] == f"{glon:.6f},{glat:.6f}" and query["coordinate"] == "gaode"
    # in Beijing GCJ-02 lies ~100-600 m off WGS-84: a map fed WGS-84 as GCJ-02 would put the pin that far off
    assert 0.0005 < glat - PARK_SOS[0] < 0.003 and 0.004 < glon - PARK_SOS[1] < 0.008
    # the phone page: Chinese by default, the position first, the home as well, plain links (nothing loaded)
    assert "不在家：距家约 1.7 公里" in page and "39.982456, 116.318901" in page
    assert "2026-09-21 22:14:00" in page and HOME in page
    assert 'href="https://uri.amap.com/marker?position=' in page and 'href="geo:39.982456,116.318901' in page
    assert "<iframe" not in page and "<img" not in page.replace('<img id="photo-preview"', "")
    # each view of the exact position is audited: who, when, which incident; never the coordinates
    audited = await position_views(c)
    assert len(audited) == 2  # the API answer and the page
    assert {(e["actor"], e["target"]) for e in audited} == {("user:7", f"incident:{incident_id}")}
    assert audited[0]["detail"]["fix_at"] == "2026-09-21T22:14:00+08:00"
    assert "39.98" not in json.dumps(audited) and "116.31" not in json.dumps(audited)


async def test_group_and_resident_links_and_closed_cases_show_neither_position_nor_home(cloud: Cloud) -> None:
    c = cloud
    incident_id = await open_case(c, band((1, T0 + 9.5, *PARK, WORN_FIX | FLAG["fall"])))
    got, page = await view(c, incident_id, "group:g02")  # a chat robot: many readers
    assert got["incident"]["place"] == "G02" and {"position", "home"}.isdisjoint(got["incident"])
    no_whereabouts(json.dumps(got, ensure_ascii=False))
    no_whereabouts(page)
    got, page = await view(c, incident_id, "case", Purpose.CASE)  # the resident's case link
    no_whereabouts(json.dumps(got, ensure_ascii=False))
    no_whereabouts(page)
    assert await position_views(c) == []  # nothing shown, nothing audited
    got, _ = await view(c, incident_id, "user:7")
    assert got["incident"]["position"]["near_home"] is False  # open: the personal link has it
    loop = c.app.state.loop
    stage = (await c.client.get(f"/api/v1/incidents/{incident_id}", headers=c.dispatcher)).json()
    if stage["incident"]["stage"] == "registered":
        loop.act(incident_id, Command(Action.DISPATCH, "admin", assignee="worker-7"))
    for step in (Action.ACCEPT, Action.ARRIVE, Action.HANDLE, Action.VERIFY, Action.CLOSE):
        loop.act(incident_id, Command(step, "admin", reason="done"))
    got, page = await view(c, incident_id, "user:7")  # closed: the grid again, for everyone
    assert got["incident"]["place"] == "G02" and {"position", "home"}.isdisjoint(got["incident"])
    no_whereabouts(json.dumps(got, ensure_ascii=False))
    no_whereabouts(page)
    assert len(await position_views(c)) == 2  # only the open view (its API answer and its page)


async def test_a_fall_at_home_reads_near_home(cloud: Cloud) -> None:
    c = cloud
    indoors = (39.971500, 116.305900)  # ~30 m N, ~19 m E of the registered home: the next flat
    incident_id = await open_case(c, band((1, T0 + 9.5, *indoors, WORN_FIX | FLAG["fall"])))
    got, page = await view(c, incident_id, "user:7")
    pos = got["incident"]["position"]
    assert pos["near_home"] is True and 30 <= pos["distance_m"] <= 40
    assert "在家附近（距家约 " in page and HOME in page
    c.client.cookies.set("vigil_lang", "en")
    _, page = await view(c, incident_id, "user:7")
    assert "Near home (about " in page and "Position fixed at" in page


async def test_no_exact_fix_shows_the_home_only_and_a_store_failure_keeps_the_page(cloud: Cloud) -> None:
    c = cloud
    # an SOS whose only exact fix is from long before the alarm (another outing): the home is where to go
    incident_id = await open_case(c, band((1, T0 - 4000.0, *PARK, WORN_FIX | FLAG["sos"])), EventType.SOS)
    got, page = await view(c, incident_id, "user:7")  # the SOS fix 4000 s before the alarm is not its own
    assert got["incident"]["home"] == HOME and "position" not in got["incident"]
    assert 'id="coords"' not in page and f"{PARK[0]:.6f}" not in page and HOME in page
    assert "尚未收到手环的新定位，请先前往住址" in page  # the page waits for one (it refreshes itself)

    class Down:
        def query(self, *a: object, **kw: object) -> object:
            raise BackendError("time-series store unreachable")

    real, c.state.store = c.state.store, Down()
    try:
        got, _ = await view(c, incident_id, "user:7")
    finally:
        c.state.store = real
    assert got["incident"]["home"] == HOME and "position" not in got["incident"]


STALE = (39.975432, 116.311111)  # an exact fix from an earlier outing, still in the band's memory


async def refresh(c: Cloud, token: str) -> Any:
    """What the open page's self-refresh asks for (phone.js), with the cloud's answer."""
    r = await c.client.get(f"/api/v1/links/{token}/position")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    return r.json()


async def test_a_later_reading_without_a_fix_is_not_where_the_wearer_is(cloud: Cloud) -> None:
    """The band falls back to repeating its last fix without ``gps_valid`` (indoors, no sky): the page
    keeps the fall's own fix, with its own time and age, instead of the stale one as "now"."""
    c = cloud
    c.state.store.open_alarms.ttl_s = 0.0  # the band's open alarm is known to every later write
    incident_id = await open_case(c, band((1, T0 + 9.0, *PARK, WORN_FIX | FLAG["fall"])))
    later = band(
        (2, T0 + 100.0, *STALE, FLAG["worn"] | FLAG["sos"]),  # SOS pressed indoors: no fix, old one repeated
        (3, T0 + 160.0, *STALE, FLAG["worn"] | FLAG["heartbeat"]),  # a summary, still no fix
    )
    r = await c.client.post(
        HTTP_PATH,
        content=body(batch("batch-where-0002", later)),
        headers={**c.gw1, "content-type": "application/json"},
    )
    assert r.status_code == 200 and r.json()["telemetry_stored"] == 2, r.text
    c.clock.advance(280.0)  # now T0 + 400: the fall's fix is 391 s old
    stored = c.state.store.query(BAND_ID, DeviceKind.WRISTBAND, T0, T0 + 200, channels=("lat", "lon"))
    assert np.isnan(stored.values["lat"][1:]).all() and stored.values["lat"][0] == PARK[0]
    got, page = await view(c, incident_id, "user:7")
    pos = got["incident"]["position"]
    assert (pos["lat"], pos["lon"]) == PARK and pos["at"] == "2026-09-21T22:13:29+08:00"  # T0 + 9 s
    assert pos["age_s"] == 391
    assert "2026-09-21 22:13:29" in page and "6 分钟前" in page and f"{STALE[0]:.6f}" not in page
    token = c.app.state.notify.links.token(Purpose.ARRIVED, str(incident_id), "user:7", now=c.clock.now())
    live = await refresh(c, token)
    assert live["open"] is True and live["live"] is True and live["refresh_s"] == 30
    assert (live["position"]["lat"], live["position"]["lon"]) == PARK and live["position"]["age_s"] == 391
    c.client.cookies.set("vigil_lang", "en")
    _, page = await view(c, incident_id, "user:7")
    assert "6 min ago" in page and "The position updates itself every 30 s" in page


async def test_the_refresh_follows_the_wearer_and_audits_at_most_every_five_minutes(cloud: Cloud) -> None:
    c = cloud
    c.state.store.open_alarms.ttl_s = 0.0
    incident_id = await open_case(c, band((1, T0 + 9.0, *PARK, WORN_FIX | FLAG["fall"])))
    token = c.app.state.notify.links.token(Purpose.ON_THE_WAY, str(incident_id), "user:7", now=c.clock.now())
    page = await c.client.get(f"/console/l/{token}")  # the responder opens the page: one audited view
    assert page.status_code == 200 and f'data-url="/api/v1/links/{token}/position"' in page.text
    walked = (39.983001, 116.319502)  # the wearer got up and walked ~100 m
    moved = band((2, T0 + 125.0, *walked, WORN_FIX | FLAG["heartbeat"]))
    r = await c.client.post(
        HTTP_PATH,
        content=body(batch("batch-where-0003", moved)),
        headers={**c.gw1, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    seen = []
    for _ in range(12):  # six minutes of a page left open, a refresh every 30 s
        c.clock.advance(30.0)
        live = await refresh(c, token)
        seen.append((live["position"]["lat"], live["position"]["lon"]))
    assert set(seen) == {walked}  # the new fix, exact because the band's alarm is open
    audited = sorted(await position_views(c), key=lambda e: e["at"])
    assert [e["detail"]["via"] for e in audited] == ["page", "refresh"]  # not 1 + 12 rows
    # the page at T0 + 120 s; refreshes at +150 ... +480 s: only the one 300 s after the page is audited
    assert [e["at"] for e in audited] == ["2026-09-21T22:15:20+08:00", "2026-09-21T22:20:20+08:00"]
    assert audited[1]["detail"]["fix_at"] == "2026-09-21T22:15:25+08:00"
    assert "39.98" not in json.dumps(audited) and "116.31" not in json.dumps(audited)
    # only a personal responder link may ask; a forged one is refused like every link endpoint
    group = c.app.state.notify.links.token(Purpose.ACCEPT, str(incident_id), "group:g02", now=c.clock.now())
    case = c.app.state.notify.links.token(Purpose.CASE, str(incident_id), "case", now=c.clock.now())
    for bad, status in ((group, 403), (case, 400), (token[:-2] + "xx", 403)):
        r = await c.client.get(f"/api/v1/links/{bad}/position")
        assert r.status_code == status, r.text
        no_whereabouts(r.text)
        assert f"{walked[0]:.6f}" not in r.text
    # the case closes: the refresh says so and shows nothing more
    loop = c.app.state.loop
    stage = (await c.client.get(f"/api/v1/incidents/{incident_id}", headers=c.dispatcher)).json()
    if stage["incident"]["stage"] == "registered":
        loop.act(incident_id, Command(Action.DISPATCH, "admin", assignee="worker-7"))
    for step in (Action.ACCEPT, Action.ARRIVE, Action.HANDLE, Action.VERIFY, Action.CLOSE):
        loop.act(incident_id, Command(step, "admin", reason="done"))
    c.clock.advance(400.0)
    live = await refresh(c, token)
    assert live == {
        "incident_id": str(incident_id),
        "open": False,
        "live": False,
        "position": None,
        "refresh_s": 30,
    }
    assert len(await position_views(c)) == 2


def test_latest_exact_fix_never_returns_a_bucket_mean() -> None:
    """A day of 10-second fixes is more than one query returns at full resolution: the lookup narrows
    to the last hour rather than return an average of positions, which is no place anyone is."""
    store = open_timeseries("sqlite://")
    try:
        n = 8_640
        t = T0 + 10.0 * np.arange(n)
        lat = 39.97 + 1e-6 * (1 + np.arange(n) % 500)  # exact fixes wandering ~50 m
        lon = np.full(n, 116.301234)
        rows = [(i, float(t[i]), float(lat[i]), float(lon[i]), WORN_FIX | FLAG["sos"]) for i in range(n)]
        store.write(band(*rows))
        fix = latest_exact_fix(store, BAND_ID, since=T0, now=float(t[-1]) + 5.0)
        assert fix == Fix(float(lat[-1]), 116.301234, float(t[-1]))
    finally:
        store.close()


# Published WGS-84 -> GCJ-02 vectors: googollee/eviltransform go/transform_test.go (Shanghai, Shenzhen,
# Beijing; lat, lon) and wandergis/coordtransform test/app.js (wgs84togcj02(116.404, 39.915); lon, lat).
GCJ_VECTORS = [
    ((31.1774276, 121.5272106), (31.17530398364597, 121.531541859215)),
    ((22.543847, 113.912316), (22.540796131694766, 113.9171764808363)),
    ((39.911954, 116.377817), (39.91334545536069, 116.38404722455657)),
    ((39.915, 116.404), (39.91640428150164, 116.41024449916938)),
]


@pytest.mark.parametrize(("wgs", "gcj"), GCJ_VECTORS)
def test_wgs84_to_gcj02_matches_published_vectors(wgs: tuple[float, float], gcj: tuple[float, float]) -> None:
    got = wgs84_to_gcj02(*wgs)
    assert got == pytest.approx(gcj, abs=1e-9)  # 1e-9 degrees: 0.1 mm


def test_gcj02_leaves_positions_outside_china_alone() -> None:
    assert wgs84_to_gcj02(48.8584, 2.2945) == (48.8584, 2.2945)
