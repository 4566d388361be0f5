"""The console without a browser: catalogs, map layers, the event hub, and the pages' bad-input handling,
in-process against the real app (``httpx.ASGITransport``)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from alerts.contract import HTTP_PATH, GatewayStatus
from alerts.loop.escalation import default_policies
from alerts.loop.routing import MATCH_KEYS
from alerts.loop.stages import Action
from cloud.api.console import EventHub
from dashboards import geo
from dashboards.admin import FLAG_KEYS
from dashboards.i18n import catalog
from dashboards.incidents import ASK_FIRST, REPORT_TYPES
from dashboards.public import REPORT_CATEGORIES, RESPONDER_PURPOSES
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.registry import KINDS
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import BAND_1, MANHOLE_1, Cloud, alert_step, batch, body, make_settings, start_cloud

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
PASSWORD = "correct-horse-battery"


@pytest.fixture
async def console(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        st = c.state
        await asyncio.to_thread(
            st.credentials.add_user, "op", "operator", password=PASSWORD, now=c.clock.now()
        )
        transport = httpx.ASGITransport(app=c.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as browser:
            yield c, browser


async def _login(browser: httpx.AsyncClient) -> None:
    r = await browser.post("/console/login", data={"username": "op", "password": PASSWORD})
    assert r.status_code == 303
    browser.cookies.set("vigil_session", r.cookies["vigil_session"])


def test_catalogs_have_the_same_keys_and_cover_every_key_used() -> None:
    zh, en = catalog("zh"), catalog("en")
    assert set(zh) == set(en)
    used: set[str] = set()
    for path in [*DASHBOARDS.glob("templates/*.html"), *DASHBOARDS.glob("*.py")]:
        text = path.read_text("utf-8")
        used |= set(re.findall(r"""\bt\(\s*["']([a-z_]+\.[a-z_.]+)["']""", text))
        used |= set(re.findall(r"""FormError\(\s*["']([a-z_]+\.[a-z_.]+)["']""", text))
    missing = sorted(k for k in used if k not in zh and not k.endswith("."))  # "x." ~ value: dynamic
    assert not missing, missing
    dynamic = [f"action.{a.value}" for a in Action] + [
        f"kpi.by.{g}" for g in ("department", "zone", "responder", "kind")
    ]
    dynamic += [f"link.purpose.{p}" for p in RESPONDER_PURPOSES] + [
        f"link.done.{p}" for p in RESPONDER_PURPOSES
    ]
    dynamic += [f"report.type.{k}" for k in REPORT_TYPES] + [
        f"report.category.{k}" for k in REPORT_CATEGORIES
    ]
    # the incident page's questions, every kind's reading channels, the shipped escalation policies and
    # every routing match key (dashboards/incidents.py, pages.py, admin.py build these keys)
    dynamic += [f"ask.{a}" for a in ASK_FIRST] + [
        f"reading.{c.name}" for k in KINDS.values() for c in k.channels
    ]
    dynamic += [f"policy.{p}" for p in default_policies()] + [
        f"match.{k}" for k in MATCH_KEYS if k not in FLAG_KEYS
    ]
    dynamic += [f"match.{k}" for k in FLAG_KEYS] + [f"match.not_{k}" for k in FLAG_KEYS]
    assert not [k for k in dynamic if k not in zh], [k for k in dynamic if k not in zh]


def test_community_layers_from_the_registry() -> None:
    devices = (
        [
            {
                "device_id": f"m{i}",
                "kind": "manhole",
                "lat": 39.98 + i * 1e-4,
                "lon": 116.31,
                "street": "中关村大街",
                "grid": "G01",
            }
            for i in range(5)
        ]
        + [
            {
                "device_id": f"s{i}",
                "kind": "smoke_alarm",
                "lat": 39.97,
                "lon": 116.30 + i * 1e-5,
                "grid": "G02",
            }
            for i in range(3)
        ]
        + [{"device_id": "x", "kind": "manhole", "lat": None, "lon": None}]
    )
    fc = geo.community_layers(devices)
    layers = [f["properties"]["layer"] for f in fc["features"]]
    assert layers.count("street") == 1 and layers.count("grid") == 2 and layers.count("building") >= 1
    street = next(f for f in fc["features"] if f["properties"]["layer"] == "street")
    lats = [c[1] for c in street["geometry"]["coordinates"]]
    assert lats == sorted(lats) or lats == sorted(lats, reverse=True)  # ordered along the street
    pts = geo.device_points(devices, [{"device_id": "m1", "severity": 3}, {"device_id": "m1", "severity": 1}])
    assert len(pts["rows"]) == 8 and next(r for r in pts["rows"] if r[2] == "m1")[4] == 3
    assert geo.distance_km(39.98, 116.31, 39.99, 116.31) == pytest.approx(1.112, abs=0.01)


async def test_event_hub_is_bounded_and_counts_drops() -> None:
    from prometheus_client import CollectorRegistry, Counter

    dropped = Counter("dropped_total", "d", registry=CollectorRegistry())
    hub = EventHub(dropped=dropped)
    q = hub.subscribe()
    for i in range(100):
        hub.publish({"i": i})
    assert q.qsize() == 64 and dropped._value.get() == 36
    hub.unsubscribe(q)
    assert hub.subscribers == 0


async def test_stream_and_map_need_a_user_and_the_map_carries_no_personal_data(
    console: tuple[Cloud, httpx.AsyncClient],
) -> None:
    c, browser = console
    assert (await c.client.get("/api/v1/events/stream")).status_code == 401
    assert (await c.client.get("/api/v1/events/stream", headers=c.gw1)).status_code == 403
    r = await c.client.get("/api/v1/console/devices", headers=c.viewer)
    body = r.json()
    assert r.status_code == 200 and len(body["rows"]) == 4
    assert "张" not in json.dumps(body, ensure_ascii=False) and "wearer_name" not in body["fields"]
    assert (await c.client.get("/api/v1/console/devices")).status_code == 401
    # a wristband's readings are health data: only the roles that see the wearer in clear get them
    url = f"/api/v1/devices/{BAND_1}/readings"
    assert (await c.client.get(url, headers=c.viewer)).status_code == 403
    assert (await c.client.get(url, headers=c.dispatcher)).status_code == 200
    await _login(browser)
    points = (await browser.get("/console/map/devices.json")).json()
    assert {r[2] for r in points["rows"]} >= {BAND_1}


async def test_forms_refuse_bad_input_in_the_users_language(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    _, browser = console
    # a cross-site login post is refused; an off-site "next" never redirects away
    r = await browser.post(
        "/console/login",
        data={"username": "op", "password": PASSWORD},
        headers={"Origin": "http://evil.example"},
    )
    assert r.status_code == 403
    r = await browser.post(
        "/console/login", data={"username": "op", "password": PASSWORD, "next": "//evil.example/x"}
    )
    assert r.headers["location"] == "/console/"
    r = await browser.post("/console/login", data={"username": "op", "password": ""})
    assert r.status_code == 400 and "请填写用户名和密码" in r.text
    # the resident's report page: each missing field named, in Chinese (or English when chosen)
    r = await browser.post(
        "/console/report", data={"category": "manhole", "description": "", "lat": "", "lon": ""}
    )
    assert r.status_code == 400 and "请填写问题描述" in r.text
    r = await browser.post("/console/report", data={"category": "manhole", "description": "井盖松动"})
    assert r.status_code == 400 and "请先获取位置" in r.text
    browser.cookies.set("vigil_lang", "en")
    r = await browser.post(
        "/console/report",
        data={
            "category": "manhole",
            "description": "loose cover",
            "lat": "39.98",
            "lon": "116.31",
            "photo_b64": "data:text/html;base64,PGgxPg==",
        },
    )
    assert r.status_code == 400 and "The photo must be JPEG, PNG or WebP" in r.text
    browser.cookies.delete("vigil_lang")
    r = await browser.post(
        "/console/report",
        data={"category": "manhole", "description": "井盖松动", "lat": "39.98", "lon": "116.31"},
    )
    assert r.status_code == 200 and 'id="flash"' in r.text and "已收到" in r.text
    # a forged or malformed link says so, and changes nothing
    r = await browser.get("/console/l/not-a-token")
    assert r.status_code in (400, 403) and 'id="link-error"' in r.text
    # an oversized form is refused before it is parsed
    await _login(browser)
    r = await browser.post(
        "/console/reports/new",
        content=b"description=" + b"x" * 70_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400 and "内容过大" in r.text


async def test_call_taker_report_and_the_rules_editor(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    await _login(browser)  # an operator: may file reports, may not edit rules
    r = await browser.post("/console/reports/new", data={"type": "cover_missing", "description": ""})
    assert r.status_code == 400 and "请填写问题描述" in r.text
    r = await browser.post(
        "/console/reports/new",
        data={
            "type": "cover_missing",
            "description": "来电：井盖丢失",
            "address": "中关村大街3号",
            "grid": "G01",
            "lat": "39.981",
            "lon": "116.311",
            "grade": "3",
            "contact": "13800001111",
        },
    )
    assert r.status_code == 303 and "/console/incidents/" in r.headers["location"]
    page = await browser.get(r.headers["location"])
    assert (
        page.status_code == 200 and "中关村大街3号" in page.text and "13800001111" not in page.text
    )  # masked
    r = await browser.post("/console/config/roster", data={"document": "{}"})
    assert r.status_code == 403 and "无权" in r.text
    # the administrator edits the roster: a JSON mistake is named with its line, a valid one is saved
    await asyncio.to_thread(
        c.state.credentials.add_user, "boss", "admin", password=PASSWORD, now=c.clock.now()
    )
    r = await browser.post("/console/login", data={"username": "boss", "password": PASSWORD})
    browser.cookies.set("vigil_session", r.cookies["vigil_session"])
    r = await browser.post("/console/config/roster", data={"document": '{"responders": [\n  {"id": }\n]}'})
    assert r.status_code == 400 and "第 2 行" in r.text
    doc = {
        "responders": [
            {"id": "r-1", "name": "网格员", "roles": ["grid_worker"], "lat": 39.98, "lon": 116.31}
        ],
        "rotations": [{"role": "grid_worker", "participants": ["r-1"], "shift_s": 0}],
    }
    r = await browser.post("/console/config/roster", data={"document": json.dumps(doc, ensure_ascii=False)})
    assert r.status_code == 303 and "saved=" in r.headers["location"]
    assert "网格员" in (await browser.get("/console/config/roster")).text


async def test_watcher_announces_changes_made_elsewhere_and_survives_a_db_hiccup() -> None:
    from sqlalchemy.exc import OperationalError

    marks = iter([(1.0,), (1.0,), (2.0,)])

    def probe() -> tuple[float, ...]:
        mark = next(marks, None)
        if mark is None:
            raise OperationalError("SELECT 1", {}, Exception("database is locked"))
        return mark

    hub = EventHub(probe=probe, probe_interval_s=0.01)
    q = hub.subscribe()
    event = await asyncio.wait_for(q.get(), timeout=2)
    assert event == {"type": "changed"}  # (1,) -> (2,): someone changed something
    await asyncio.sleep(0.05)  # the probe now fails: logged, the stream stays
    assert hub.subscribers == 1
    hub.unsubscribe(q)
    await asyncio.sleep(0.05)  # nobody listens: the watcher stops by itself


async def test_a_viewer_reads_an_incident_but_gets_no_action_and_no_contact(
    console: tuple[Cloud, httpx.AsyncClient],
) -> None:
    c, browser = console
    step = alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, c.clock.now())
    r = await c.client.post(
        HTTP_PATH,
        content=body(batch("batch-viewer-01", alerts=[step])),
        headers={**c.gw1, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    await c.app.state.loop_sink.drained()  # the loop takes committed alerts off the ack path
    incidents = (await c.client.get("/api/v1/incidents", params={"open": True}, headers=c.viewer)).json()
    incident_id = incidents["incidents"][0]["id"]
    browser.cookies.set("vigil_session", c.viewer["Authorization"].removeprefix("Bearer "))
    page = await browser.get(f"/console/incidents/{incident_id}")
    assert page.status_code == 200 and "井盖开启/丢失" in page.text and "act-form" not in page.text
    r = await browser.post(
        f"/console/incidents/{incident_id}/act", data={"action": "dispatch", "row_version": "1"}
    )
    assert r.status_code == 403 and "无权" in r.text  # a viewer's action is refused, in Chinese
    await _login(browser)  # an operator gets the buttons
    page = await browser.get(f"/console/incidents/{incident_id}")
    assert 'data-action="dispatch"' in page.text


async def test_gateway_health_in_plain_words(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    status = GatewayStatus(
        version="1.2",
        uptime_s=7200,
        outbox_depth=12,
        outbox_oldest_age_s=900,
        frames_total=1000,
        rejects_total=3,
    )
    b = batch("batch-gw-health-1").model_copy(update={"status": status})
    r = await c.client.post(
        HTTP_PATH, content=b.model_dump_json(), headers={**c.gw1, "content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    await _login(browser)
    text = (await browser.get("/console/gateways")).text
    assert (
        "待上传 12 条（最早 15 分钟前）" in text and "坏帧 0.3%" in text and "从未连接" in text
    )  # gw2: never
