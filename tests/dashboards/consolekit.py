"""The console over HTTP, in-process against the real app (no browser): one place for the fixtures the
console's HTTP tests share.

``signed_in(c)`` is an ASGI client with the cloudkit dispatcher's session cookie; ``operator_console``
starts a cloud with the loop's roster, adds an operator ``op`` and signs the client in as them (at the
cloud's now: a session is valid for hours of the cloud's time).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.cloud.cloudkit import Cloud, make_settings, start_cloud
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
