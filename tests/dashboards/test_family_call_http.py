"""The family block's call buttons over HTTP (no browser): a viewer's click is refused (403) before the
cloud is asked, an outcome the console does not know is refused (400), a cross-origin post 403, a case
without a family has no call form and the cloud's 409 is shown in words, an unknown incident is 404;
nothing refused is recorded."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from alerts.contract import HTTP_PATH
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403 (sqlite_url)
from tests.cloud.cloudkit import (
    BAND_1,
    MANHOLE_1,
    Cloud,
    alert_step,
    batch,
    body,
    make_settings,
    start_cloud,
)

_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")


def _shanghai(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts + 8 * 3600))


@pytest.fixture
async def console(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        transport = httpx.ASGITransport(app=c.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as browser:
            yield c, browser


async def _open(c: Cloud, device: str, kind: DeviceKind, event: EventType) -> int:
    step = alert_step(device, kind, event, AlertPhase.RAISED, c.clock.now())
    r = await c.client.post(
        HTTP_PATH,
        content=body(batch(f"b-{uuid.uuid4().hex[:16]}", alerts=[step])),
        headers={**c.gw1, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    await c.app.state.loop_sink.drained()
    found = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
    return next(int(i["id"]) for i in found if i["device_id"] == device)


async def test_console_refusals(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    band = await _open(c, BAND_1, DeviceKind.WRISTBAND, EventType.FALL)
    cover = await _open(c, MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN)
    browser.cookies.set("vigil_session", c.viewer["Authorization"].removeprefix("Bearer "))
    r = await browser.post(f"/console/incidents/{band}/family-call", data={"outcome": "reached"})
    assert r.status_code == 403 and "无权" in r.text
    browser.cookies.set("vigil_session", c.dispatcher["Authorization"].removeprefix("Bearer "))
    page = await browser.get(f"/console/incidents/{band}")
    assert 'data-outcome="not_reached"' in page.text and "当前负责" in page.text
    r = await browser.post(f"/console/incidents/{band}/family-call", data={"outcome": "answered"})
    assert r.status_code == 400 and "登记失败" in r.text
    r = await browser.post(
        f"/console/incidents/{band}/family-call",
        data={"outcome": "reached"},
        headers={"Origin": "http://evil.example"},
    )
    assert r.status_code == 403
    page = await browser.get(f"/console/incidents/{cover}")
    assert "call-form" not in page.text  # no family block on a manhole case
    r = await browser.post(f"/console/incidents/{cover}/family-call", data={"outcome": "reached"})
    assert r.status_code == 409 and "不是手环事件" in r.text
    r = await browser.post("/console/incidents/999999/family-call", data={"outcome": "reached"})
    assert r.status_code == 404
    state = await c.client.get(f"/api/v1/incidents/{band}/family-call", headers=c.dispatcher)
    assert state.json()["attempts"] == 0  # nothing refused was recorded
    r = await browser.post(f"/console/incidents/{band}/family-call", data={"outcome": "wrong_number"})
    assert r.status_code == 303
    state = await c.client.get(f"/api/v1/incidents/{band}/family-call", headers=c.dispatcher)
    assert state.json()["last"]["outcome"] == "wrong_number"
    assert _TIME.search(_shanghai(state.json()["last"]["at"]))
    # the block in English (the console's en catalog): buttons, calls, the last outcome with its time
    browser.cookies.set("vigil_lang", "en")
    page = await browser.get(f"/console/incidents/{band}")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text))
    assert ">Reached<" in page.text and ">Not reached<" in page.text and ">Wrong number<" in page.text
    assert "calls: 1" in text and "Last: Wrong number (" in text, text[:2000]
    assert "family called: wrong number (call 1)" in text
