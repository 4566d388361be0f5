"""Machine words a dispatcher should not meet, over HTTP (no browser): a device's reading channels by
name with their unit (倾角 °, not ``tilt_deg``) and a channel with one reading saying so instead of an
empty chart; the alert lists naming a device (智能井盖 井盖1 · 中关村大街) with the 16-digit id only in
its title; the detector's English line (``cover_open raised``) left out of an alert's steps in Chinese
and kept in English; the family block no longer asking to call a family the desk has already reached."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.app import create_app
from cloud.notify.links import Purpose
from cloud.settings import CloudSettings
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403 (sqlite_url)
from tests.cloud.cloudkit import (
    BAND_1,
    GW1,
    MANHOLE_1,
    Cloud,
    alert_step,
    batch,
    make_settings,
    readings,
)
from tests.dashboards.consolekit import dispatcher_console, post_batch


@pytest.fixture
async def console(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    async with dispatcher_console(tmp_path, sqlite_url) as cb:
        yield cb


@asynccontextmanager
async def app_without_gateways(settings: CloudSettings) -> AsyncIterator[tuple[Any, str]]:
    """A fresh cloud with one dispatcher and nothing else (no gateway registered yet)."""
    app = await asyncio.to_thread(create_app, settings)
    async with app.router.lifespan_context(app):
        st = app.state.vigil
        token = await asyncio.to_thread(st.credentials.add_user, "disp", "dispatcher", now=0.0)
        yield app, token


def _text(html: str) -> str:
    """What a reader sees: tags (and so their attributes) dropped, spaces folded."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def _section(html: str, heading: str) -> str:
    start = html.index(heading)
    return html[start : html.find("</section>", start)]


async def test_device_channels_in_words(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    now = c.clock.now()
    await post_batch(c, readings(DeviceKind.MANHOLE, MANHOLE_1, [1], t0=now - 600))
    page = (await browser.get(f"/console/devices/{MANHOLE_1}")).text
    charts = _section(page, "最近 24 小时读数")
    text = _text(charts)
    # as many decimals as the channel's wire resolution carries (tilt 0.01°, water 0.1 cm, temperature 0.1 °C)
    assert "倾角：1.00 °" in text and "水面距井盖：4.0 cm" in text and "温度：8.0 °C" in text, text
    assert "tilt_deg" not in text and "water_distance_cm" not in text  # only in title / data-channel
    assert 'data-channel="tilt_deg"' in charts
    assert text.count("24 小时内仅 1 个读数") == 8 and "<svg" not in charts  # no empty chart boxes

    await post_batch(c, readings(DeviceKind.MANHOLE, MANHOLE_1, [2, 3], t0=now - 300))
    charts = _section((await browser.get(f"/console/devices/{MANHOLE_1}")).text, "最近 24 小时读数")
    assert charts.count("<svg") == 8 and "共 3 个读数" in _text(charts)
    assert "仅 1 个读数" not in _text(charts)

    browser.cookies.set("vigil_lang", "en")
    charts = _section((await browser.get(f"/console/devices/{MANHOLE_1}")).text, "Readings, last 24 h")
    assert "tilt: 1.00 °" in _text(charts) or "tilt: 3.00 °" in _text(charts)


async def test_band_readings_in_whole_units(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    now = c.clock.now()
    await post_batch(c, readings(DeviceKind.WRISTBAND, BAND_1, [1, 2], t0=now - 600))
    charts = _text(_section((await browser.get(f"/console/devices/{BAND_1}")).text, "最近 24 小时读数"))
    assert "心率：1 次/分" in charts and "步数：6 步" in charts and "静止时长：4 秒" in charts, charts
    assert "1.00 次/分" not in charts


async def test_alerts_name_devices_and_hide_the_detector_line(
    console: tuple[Cloud, httpx.AsyncClient],
) -> None:
    c, browser = console
    step = alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, c.clock.now())
    await post_batch(c, alerts=[step])
    page = (await browser.get("/console/alerts")).text
    row = re.search(rf'<tr class="sev-\d" data-alert-id="{re.escape(step.alert_id)}">(.*?)</tr>', page, re.S)
    assert row, page[:3000]
    assert "智能井盖 井盖1 中关村大街" in _text(row.group(1))
    assert MANHOLE_1 not in _text(row.group(1)) and f'title="{MANHOLE_1}"' in row.group(1)

    page = (await browser.get(f"/console/devices/{MANHOLE_1}")).text  # its own open alerts, by name too
    assert "智能井盖 井盖1 中关村大街" in _text(_section(page, "未解除告警"))

    page = (await browser.get(f"/console/alerts/{step.alert_id}")).text
    steps = _text(_section(page, "处理过程"))
    assert "新告警" in steps and "cover_open raised" not in steps, steps
    assert "井盖1" in _text(page)
    browser.cookies.set("vigil_lang", "en")
    page = (await browser.get(f"/console/alerts/{step.alert_id}")).text
    assert "cover_open raised" in _text(page)  # in English the detector's own line stays


async def test_family_reached_by_the_desk(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    step = alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, c.clock.now())
    await post_batch(c, alerts=[step])
    found = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
    iid = next(int(i["id"]) for i in found if i["device_id"] == BAND_1)
    fam = (await c.client.get(f"/api/v1/notify/incidents/{iid}/family", headers=c.dispatcher)).json()
    assert [(r.get("family_reached") or {}).get("status") for r in fam] == ["none"]  # no SMS provider here
    page = (await browser.get(f"/console/incidents/{iid}")).text
    block = _text(_section(page, "家属联系方式"))
    assert "未通知家属（请致电）" in block  # nobody texted the family: the desk must call
    r = await browser.post(f"/console/incidents/{iid}/family-call", data={"outcome": "reached"})
    assert r.status_code == 303
    block = _text(_section((await browser.get(f"/console/incidents/{iid}")).text, "家属联系方式"))
    assert "未通知家属（请致电）" not in block and "失败" not in block.split("当前负责")[0]
    assert "接警员已电话联系家属" in block


async def test_rules_and_policies_in_words(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    _c, browser = console
    page = (await browser.get("/console/config/routing")).text
    rules = page[page.index('id="rules"') : page.index("</table>", page.index('id="rules"'))]
    row = re.search(r'<tr data-rule="root/manhole/cover_on_road">(.*?)</tr>', rules, re.S)
    assert row, rules[:2000]
    text = _text(row.group(1))
    assert "井盖 › 机动车道井盖" in text and "位于机动车道" in text, text
    assert "网格员" in text and "市政抢修" in text  # receivers by role, not grid_worker
    assert "grid_worker" not in _text(rules) and "street_office" not in _text(rules)
    root = re.search(r'<tr data-rule="root">(.*?)</tr>', rules, re.S)
    assert root and "默认规则" in _text(root.group(1)) and "全部事件" in _text(root.group(1))
    assert "<details>" in page and 'id="document"' in page  # the JSON stays one click away

    page = (await browser.get("/console/config/escalation")).text
    fire = re.search(r'<div class="policy" data-policy="fire">(.*?)</div>', page, re.S)
    assert fire, page[:3000]
    text = _text(fire.group(1))
    assert text.strip().startswith("火情升级流程") and "接警员电话确认后立即升级" in text, text
    assert "处置完成才停止升级" in text and "119" in text
    manhole = _text(re.search(r'data-policy="manhole">(.*?)</div>', page, re.S).group(1))  # type: ignore[union-attr]
    assert "第 1 级：通知全部接收人，短信、企业微信，5 分钟内无人接单则升级" in manhole, manhole
    assert "最多 2 轮" in manhole and "wait_s" not in manhole


async def test_kpi_names_responders_and_says_units(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    roster = (await c.client.get("/api/v1/loop/config/roster", headers=c.admin)).json()
    body = roster.get("body") or {}
    body["responders"] = [
        {"id": "r-0001", "name": "网格员王建国", "roles": ["grid_worker"], "lat": 39.98, "lon": 116.31}
    ]
    body.setdefault("rotations", [])
    r = await c.client.put("/api/v1/loop/config/roster", json=body, headers=c.admin)
    assert r.status_code == 200, r.text
    iid = await _incident(c)
    act = {"action": "dispatch", "assignee": "r-0001", "idempotency_key": "k-dispatch"}
    r = await c.client.post(f"/api/v1/incidents/{iid}/actions", json=act, headers=c.dispatcher)
    if r.status_code == 400:  # registered first where the stage asks for it
        reg = {"action": "register", "idempotency_key": "k-register"}
        await c.client.post(f"/api/v1/incidents/{iid}/actions", json=reg, headers=c.dispatcher)
        r = await c.client.post(f"/api/v1/incidents/{iid}/actions", json=act, headers=c.dispatcher)
    assert r.status_code == 200, r.text
    # the responder accepts from the link in their message: they own the case now
    token = c.app.state.notify.links.token(Purpose.ACCEPT, str(iid), "r-0001", now=c.clock.now())
    r = await c.client.post(f"/api/v1/links/{token}", json={})
    assert r.status_code == 200, r.text
    page = (await browser.get("/console/kpi?by=responder")).text
    table = _text(page[page.index('id="kpi-table"') : page.index("</table>", page.index('id="kpi-table"'))])
    assert "网格员王建国" in table and "r-0001" not in table, table
    assert " min" not in table and re.search(r"\d (秒|分钟|小时)", table), table


async def _incident(c: Cloud) -> int:
    step = alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, c.clock.now())
    await post_batch(c, alerts=[step])
    found = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
    return next(int(i["id"]) for i in found if i["device_id"] == MANHOLE_1)


async def test_gateways_page_says_why_it_is_empty(tmp_path: Path, sqlite_url: str) -> None:
    async with app_without_gateways(make_settings(tmp_path, sqlite_url)) as (app, token):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as browser:
            browser.cookies.set("vigil_session", token)
            page = (await browser.get("/console/gateways")).text
    assert 'class="empty"' in page and "还没有登记任何网关" in _text(page)


async def test_gateway_case_is_placed_at_its_gateway(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    t = c.clock.now()
    block = readings(DeviceKind.MANHOLE, MANHOLE_1, [1], t0=t)
    await c.state.ingest.ingest(batch("batch-gw1-1", block, gateway_id=GW1), gateway_id=GW1)
    c.clock.advance(1800)  # GW1 quiet for half an hour: the connectivity monitor raises gateway_offline
    steps = await c.state.monitor.check_once()
    assert any(s.event_type == EventType.GATEWAY_OFFLINE for s in steps)
    await c.app.state.loop_sink.drained()
    found = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
    iid = next(int(i["id"]) for i in found if i["kind"] == "gateway")
    queue = (await browser.get("/console/fragments/queue")).text
    row = re.search(rf'data-incident-id="{iid}">(.*?)</tr>', queue, re.S)
    assert row and f"网关 {GW1}" in _text(row.group(1)), queue[:2000]
    page = (await browser.get(f"/console/incidents/{iid}")).text
    assert f"网关 {GW1}" in _text(_dd(page, "place"))
    assert f"/console/devices/{GW1}" not in page  # no link to a device page that does not exist


def _dd(html: str, dd_id: str) -> str:
    m = re.search(rf'<dd id="{dd_id}"[^>]*>(.*?)</dd>', html, re.S)
    assert m, f"no #{dd_id}"
    return m.group(1)


async def test_bad_addresses_read_not_found(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    _c, browser = console
    for path in ("/console/devices/not-a-device", "/console/config/nope", "/console/incidents/999999"):
        r = await browser.get(path)
        assert r.status_code == 404, (path, r.status_code)
        text = _text(r.text)
        assert "没有找到" in text and "总览" in text, (path, text)  # a page with the way back
        assert "schema" not in text and "request" not in text, (path, text)  # no API English
