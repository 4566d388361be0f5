"""The console over HTTP, in-process against the real app (no browser): one place for the fixtures the
console's HTTP tests share.

``signed_in(c)`` is an ASGI client with the cloudkit dispatcher's session cookie; ``operator_console``
starts a cloud with the loop's roster, adds an operator ``op`` and signs the client in as them (at the
cloud's now: a session is valid for hours of the cloud's time); ``roster_console`` starts a cloud with a
roster of the test's own and the dispatcher's client, ``dispatcher_console`` the same with no roster.
``post_batch`` / ``open_incident`` send gateway 1's data over HTTP. ``page_text`` is a page as a reader
sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from alerts.contract import HTTP_PATH
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import Cloud, alert_step, batch, body, make_settings, start_cloud
from tests.cloud.loop.conftest import ROSTER

PASSWORD = "correct-horse-battery"
BASE_URL = "http://vigil.test"


@contextlib.asynccontextmanager
async def signed_in(c: Cloud) -> AsyncIterator[httpx.AsyncClient]:
    """A console client signed in as the cloudkit's dispatcher."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=c.app), base_url=BASE_URL) as browser:
        browser.cookies.set("vigil_session", c.dispatcher["Authorization"].removeprefix("Bearer "))
        yield browser


async def login(browser: httpx.AsyncClient, username: str = "op", password: str = PASSWORD) -> None:
    """Sign in through the console's login form; the session cookie is kept on ``browser``."""
    r = await browser.post("/console/login", data={"username": username, "password": password})
    assert r.status_code == 303, r.text
    browser.cookies.set("vigil_session", r.cookies["vigil_session"])


@contextlib.asynccontextmanager
async def dispatcher_console(
    tmp_path: Path, sqlite_url: str
) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    """A cloud (no roster) and a client signed in as its dispatcher."""
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c, signed_in(c) as browser:
        yield c, browser


async def post_batch(c: Cloud, *blocks: object, alerts: list[object] | None = None) -> None:
    """``blocks`` and ``alerts`` in one batch, posted over HTTP as gateway 1; returns once the loop has
    handled it."""
    r = await c.client.post(
        HTTP_PATH,
        content=body(batch(f"b-{uuid.uuid4().hex[:16]}", *blocks, alerts=alerts or [])),  # type: ignore[arg-type]
        headers={**c.gw1, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    await c.app.state.loop_sink.drained()


async def open_incident(
    c: Cloud, device: str, kind: DeviceKind, event: EventType, value: float | None = None
) -> int:
    """``event`` raised on ``device`` at the cloud's now, posted over HTTP: the incident it opened (id)."""
    await post_batch(
        c, alerts=[alert_step(device, kind, event, AlertPhase.RAISED, c.clock.now(), value=value)]
    )
    found = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
    return next(int(i["id"]) for i in found if i["device_id"] == device)


@contextlib.asynccontextmanager
async def roster_console(
    tmp_path: Path, sqlite_url: str, roster: dict[str, Any]
) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    """A cloud with ``roster`` stored (the cloud validates it) and a client signed in as its dispatcher."""
    async with dispatcher_console(tmp_path, sqlite_url) as (c, browser):
        r = await c.client.put("/api/v1/loop/config/roster", json=roster, headers=c.admin)
        assert r.status_code == 200, r.text
        yield c, browser


def page_text(html: str) -> str:
    """What a reader sees: tags (and so their attributes) dropped, a cell's end and a line break read as
    a space, spaces folded."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", re.sub(r"</t[dh]>|<br>", " ", html)))


@contextlib.asynccontextmanager
async def operator_console(
    tmp_path: Path, sqlite_url: str, *, sign_in: bool = True
) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    """A cloud with the loop's roster and an operator ``op``; the client signed in as them (or not)."""
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        await asyncio.to_thread(
            c.state.credentials.add_user, "op", "operator", password=PASSWORD, now=c.clock.now()
        )
        r = await c.client.put("/api/v1/loop/config/roster", json=ROSTER, headers=c.admin)
        assert r.status_code == 200, r.text
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=c.app), base_url=BASE_URL) as browser:
            if sign_in:
                await login(browser)
            yield c, browser
