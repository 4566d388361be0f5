"""排除（非火情） over HTTP (no browser): a viewer's post is refused (403) before the cloud is asked, a
reason the console does not know 400, a cross-origin post 403, a stale page 409, the cloud's refusal (a
CO alarm: possibly smouldering) shown in words with nothing recorded, an unknown incident 404 (a rule-out
that goes through: test_rule_out_browser.py)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from alerts.contract import HTTP_PATH
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403 (sqlite_url)
from tests.cloud.cloudkit import SMOKE_1, Cloud, alert_step, batch, body, make_settings, start_cloud


@pytest.fixture
async def console(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        transport = httpx.ASGITransport(app=c.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as browser:
            yield c, browser


async def _alarm(c: Cloud, event: EventType, value: float) -> None:
    step = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, event, AlertPhase.RAISED, c.clock.now(), value=value)
    r = await c.client.post(
        HTTP_PATH,
        content=body(batch(f"b-{uuid.uuid4().hex[:16]}", alerts=[step])),
        headers={**c.gw1, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    await c.app.state.loop_sink.drained()


def _version(page: str) -> str:
    m = re.search(r'id="rule-out".*?name="row_version" value="(\d+)"', page, re.S)
    assert m, "no rule-out form"
    return m.group(1)


async def test_console_rule_out_refusals(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    await _alarm(c, EventType.FIRE, 0.4)
    found = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
    iid = next(int(i["id"]) for i in found if i["device_id"] == SMOKE_1)
    url = f"/console/incidents/{iid}/rule-out"
    browser.cookies.set("vigil_session", c.viewer["Authorization"].removeprefix("Bearer "))
    page = await browser.get(f"/console/incidents/{iid}")
    assert 'id="rule-out"' not in page.text  # a viewer has no form
    r = await browser.post(url, data={"reason": "nuisance", "row_version": "1"})
    assert r.status_code == 403 and "无权" in r.text
    browser.cookies.set("vigil_session", c.dispatcher["Authorization"].removeprefix("Bearer "))
    page = await browser.get(f"/console/incidents/{iid}")
    assert "排除（非火情）" in page.text and "电话确认，立即升级" in page.text
    version = _version(page.text)
    r = await browser.post(url, data={"reason": "toast", "row_version": version})
    assert r.status_code == 400 and "排除未完成" in r.text
    r = await browser.post(url, data={"reason": "nuisance", "row_version": version, "note": "x" * 201})
    assert r.status_code == 400
    r = await browser.post(
        url, data={"reason": "nuisance", "row_version": version}, headers={"Origin": "http://evil.example"}
    )
    assert r.status_code == 403
    r = await browser.post(url, data={"reason": "nuisance", "row_version": "0"})
    assert r.status_code == 409  # a stale page does not act
    r = await browser.post(
        "/console/incidents/999999/rule-out", data={"reason": "nuisance", "row_version": "1"}
    )
    assert r.status_code == 404
    # the device's CO alarm: the cloud refuses, the page says why, nothing is recorded
    await _alarm(c, EventType.CO, 60.0)
    page = await browser.get(f"/console/incidents/{iid}")
    r = await browser.post(url, data={"reason": "nuisance", "row_version": _version(page.text)})
    assert r.status_code == 409 and "一氧化碳报警仍在" in r.text, r.text[-3000:]
    d = (await c.client.get(f"/api/v1/incidents/{iid}", headers=c.dispatcher)).json()
    assert d["incident"]["outcome"] is None and not any(e["action"] == "rule_out" for e in d["timeline"])
