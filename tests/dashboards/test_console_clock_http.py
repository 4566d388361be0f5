"""The console tells time by the cloud's clock, over HTTP, in-process against the real app.

The cloud's clock here is an hour ahead of the wall clock (as in ``vigil demo``, whose cloud runs on an
accelerated clock, or a console host whose clock drifts). An incident opened 10 minutes ago by the
cloud's clock must read 「10 分钟前」 in the queue, beside the overdue badge the cloud set for the same
10 minutes: not 「刚刚」 (the console's wall clock is 50 minutes before the incident), not 「1 小时前」.
Before the fix the console computed "now" from its host's clock and every row read 「刚刚」.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from alerts.contract import HTTP_PATH
from cloud.loop.service import LoopService
from dashboards.client import NOW_HEADER
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.locale import parse_iso
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import MANHOLE_1, Cloud, alert_step, batch, body
from tests.dashboards.consolekit import PASSWORD, login, operator_console

AHEAD_S = 3600.0  # the cloud's clock runs an hour ahead of the wall clock
OPENED_AGO_S = 600.0  # the incident was opened 10 minutes ago, by the cloud's clock


@pytest.fixture(autouse=True)
def _no_loop_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_CLOUD_LOOP_TICK_S", "0")


@pytest.fixture
async def console(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    async with operator_console(tmp_path, sqlite_url, sign_in=False) as pair:
        yield pair


async def open_incident_ten_minutes_ago(c: Cloud, browser: httpx.AsyncClient, ahead: float = AHEAD_S) -> int:
    """A manhole cover off its frame (a critical case: 3 minutes to accept), opened 10 cloud-minutes ago and
    marked overdue by the cloud's own SLA check at the cloud's now."""
    opened = time.time() + ahead - OPENED_AGO_S
    c.clock.t = opened
    step = alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, opened - 5)
    r = await c.client.post(
        HTTP_PATH,
        content=body(batch("b-clock-1", alerts=[step])),
        headers={**c.gw1, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    await c.app.state.loop_sink.drained()
    c.clock.t = opened + OPENED_AGO_S  # ten minutes later, by the cloud's clock
    loop: LoopService = c.app.state.loop
    await asyncio.to_thread(loop.run_due)
    r = await c.client.get("/api/v1/incidents", params={"open": True}, headers=c.viewer)
    (inc,) = [i for i in r.json()["incidents"] if i["device_id"] == MANHOLE_1]
    assert parse_iso(inc["created_at"]) == pytest.approx(opened, abs=6)
    assert "accept" in inc["overdue"]  # the cloud's verdict, at the cloud's now
    await login(browser)
    return int(inc["id"])


def queue_row(page: str, incident_id: int) -> str:
    start = page.index(f'data-incident-id="{incident_id}"')
    return page[page.rindex("<tr", 0, start) : page.index("</tr>", start)]


async def test_api_responses_carry_the_clouds_now(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, _ = console
    c.clock.t = time.time() + AHEAD_S
    r = await c.client.get("/api/v1/incidents", headers=c.viewer)
    assert float(r.headers[NOW_HEADER]) == pytest.approx(c.clock.t, abs=0.001)
    r = await c.client.get("/api/v1/incidents")  # an error answer says it too
    assert r.status_code == 401 and float(r.headers[NOW_HEADER]) == pytest.approx(c.clock.t, abs=0.001)


@pytest.mark.parametrize("path", ["/console/", "/console/fragments/queue"])
async def test_queue_row_reads_ten_minutes_ago_by_the_clouds_clock(
    console: tuple[Cloud, httpx.AsyncClient], path: str
) -> None:
    c, browser = console
    iid = await open_incident_ten_minutes_ago(c, browser)
    r = await browser.get(path)
    assert r.status_code == 200, r.text
    row = queue_row(r.text, iid)
    age = re.search(r'<small class="age([^"]*)">([^<]*)</small>', row)
    assert age is not None, row
    assert age.group(2) == "10 分钟前", row  # not 刚刚 (wall clock), not 1 小时 …前
    # the overdue badge agrees: the same row is late, and the age is drawn as late
    assert "overdue" in row.split(">", 1)[0]
    assert "接单超时" in row and "late" in age.group(1)


async def test_queue_short_time_is_today_by_the_clouds_clock(
    console: tuple[Cloud, httpx.AsyncClient],
) -> None:
    """The queue's short time is 「HH:MM」 for today and 「MM-DD HH:MM」 for another day, and "today" is the
    cloud's: with the cloud a day ahead, an incident opened 10 cloud-minutes ago is today's."""
    c, browser = console
    iid = await open_incident_ten_minutes_ago(c, browser, ahead=86400.0)
    r = await browser.get("/console/fragments/queue")
    row = queue_row(r.text, iid)
    short = re.search(r'<time datetime="[^"]+">([^<]+)</time>', row)
    assert short is not None, row
    assert re.fullmatch(r"\d\d:\d\d", short.group(1)), row
    assert re.search(r'<small class="age[^"]*">10 分钟前</small>', row), row


async def test_silence_from_the_console_lasts_an_hour_of_the_clouds_time(
    console: tuple[Cloud, httpx.AsyncClient],
) -> None:
    """「静默 1 小时」 ends an hour after the cloud's now (before: an hour after the wall clock, which is the
    cloud's now here, so the silence was over as it was made)."""
    c, browser = console
    iid = await open_incident_ten_minutes_ago(c, browser)
    await asyncio.to_thread(
        c.state.credentials.add_user, "disp2", "dispatcher", password=PASSWORD, now=c.clock.now()
    )
    r = await browser.post("/console/login", data={"username": "disp2", "password": PASSWORD})
    browser.cookies.set("vigil_session", r.cookies["vigil_session"])
    r = await c.client.get(f"/api/v1/incidents/{iid}", headers=c.viewer)
    version = str(r.json()["incident"]["row_version"])
    form = {"action": "silence", "hours": "1", "reason": "施工 works", "row_version": version}
    r = await browser.post(f"/console/incidents/{iid}/act", data=form)
    assert r.status_code == 303, r.text
    r = await c.client.get("/api/v1/loop/silences", headers=c.viewer)
    (silence,) = r.json()["silences"]
    assert parse_iso(silence["ends_at"]) == pytest.approx(c.clock.now() + 3600, abs=5)
