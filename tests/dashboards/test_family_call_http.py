"""The family block's call buttons over HTTP (no browser): a viewer's click is refused (403) before the
cloud is asked, an outcome the console does not know is refused (400), a cross-origin post 403, a case
without a family has no call form and the cloud's 409 is shown in words, an unknown incident is 404;
nothing refused is recorded."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403 (sqlite_url)
from tests.cloud.cloudkit import (
    BAND_1,
    MANHOLE_1,
    Cloud,
    make_settings,
    start_cloud,
)
from tests.dashboards.consolekit import open_incident

_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")


def _shanghai(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts + 8 * 3600))


@pytest.fixture
async def console(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        transport = httpx.ASGITransport(app=c.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as browser:
            yield c, browser


async def test_console_refusals(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    band = await open_incident(c, BAND_1, DeviceKind.WRISTBAND, EventType.FALL)
    cover = await open_incident(c, MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN)
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
