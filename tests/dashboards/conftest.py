"""A real cloud on a free port and one headless Debian Chromium per module, for the console's browser tests.

The cloud is the real app (``cloud.app.create_app``) served by uvicorn in a background thread, on
SQLite in a temporary directory, provisioned with one user per role, two gateways and the cloudkit
devices. Chromium is Debian's (``/usr/bin/chromium``) driven by Playwright for Python; Playwright's own
browser download is never used. Every browser context records each request whose origin is not the
cloud's and aborts it; the ``guarded`` fixture fails the test if there was any.

For the in-process HTTP tests, ``loop_console`` is a cloud with the loop's roster and its periodic loop
job off (tests run it by hand), and a console client signed in as an operator (``consolekit``).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cloud.app import create_app
from tests.cloud.cloudkit import CSV_HEADER, CSV_ROWS, GW1, GW2, Cloud, make_settings
from tests.dashboards.consolekit import operator_console
from tests.servers import free_port

pw_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PASSWORD = "correct-horse-battery"
USERS = {"admin": "admin", "disp": "dispatcher", "op": "operator", "viewer": "viewer"}


@dataclass
class LiveCloud:
    url: str
    app: Any
    gw_tokens: dict[str, str]
    user_tokens: dict[str, str]
    server: uvicorn.Server
    thread: threading.Thread
    foreign: list[str] = field(default_factory=list)

    def api(self, method: str, path: str, user: str = "admin", **kw: Any) -> Any:
        r = httpx.request(
            method,
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {self.user_tokens[user]}"},
            timeout=10,
            **kw,
        )
        r.raise_for_status()
        return r.json() if r.content else None

    def ingest(self, content: bytes, gateway: str = GW1) -> httpx.Response:
        r = httpx.post(
            f"{self.url}/api/v1/ingest/batches",
            content=content,
            headers={
                "Authorization": f"Bearer {self.gw_tokens[gateway]}",
                "content-type": "application/json",
            },
            timeout=10,
        )
        r.raise_for_status()
        return r


@pytest.fixture(scope="module")
def live_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCloud]:
    tmp = tmp_path_factory.mktemp("console-cloud")
    port = free_port()
    settings = make_settings(tmp, f"sqlite:///{tmp}/vigil.db", port=port)
    app = create_app(settings)
    st = app.state.vigil
    now = time.time()
    user_tokens = {
        name: st.credentials.add_user(name, role, password=PASSWORD, now=now) for name, role in USERS.items()
    }
    tokens = {gw: st.credentials.add_gateway(gw, now=now) for gw in (GW1, GW2)}
    st.registry.import_csv("\n".join([CSV_HEADER, *CSV_ROWS]) + "\n", now=now)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    )
    server.config.timeout_graceful_shutdown = 1
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name="uvicorn", daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    cloud = LiveCloud(
        url=f"http://127.0.0.1:{port}",
        app=app,
        gw_tokens=tokens,
        user_tokens=user_tokens,
        server=server,
        thread=thread,
    )
    yield cloud
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (bash scripts/bootstrap.sh --test)")
    with pw_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def new_context(browser: Any, cloud: LiveCloud, **kw: Any) -> Any:
    """A fresh context (own cookies) whose every off-origin request is recorded and refused."""
    ctx = browser.new_context(base_url=cloud.url, **kw)

    def guard(route: Any) -> None:
        url = route.request.url
        if url.startswith(cloud.url + "/") or url == cloud.url or url.startswith("data:"):
            route.continue_()
        else:
            cloud.foreign.append(url)
            route.abort()

    ctx.route("**/*", guard)
    return ctx


@pytest.fixture
def contexts(browser: Any, live_cloud: LiveCloud) -> Iterator[Callable[..., Any]]:
    """``contexts(**kw)`` opens a guarded browser context; all are closed after the test, pass or fail."""
    opened: list[Any] = []

    def make(**kw: Any) -> Any:
        ctx = new_context(browser, live_cloud, **kw)
        opened.append(ctx)
        return ctx

    yield make
    for ctx in opened:
        ctx.close()


@pytest.fixture
def guarded(live_cloud: LiveCloud) -> Iterator[LiveCloud]:
    """The live cloud; the test fails if any page asked for anything but the cloud's own origin."""
    live_cloud.foreign.clear()
    yield live_cloud
    assert live_cloud.foreign == [], f"requests left the origin: {live_cloud.foreign}"


def login(page: Any, user: str, password: str = PASSWORD, *, to: str = "/console/") -> None:
    """Log in through the form; ``to`` is where the form sends the user afterwards (``next``)."""
    page.goto(f"/console/login?next={to}")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{to}")


@pytest.fixture
async def loop_console(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    """A cloud with the loop's roster, no periodic loop job (``LoopService.run_due`` and the loop sink's
    ``drained()`` are the test's to call), and a console client signed in as the operator ``op``. The
    requesting module provides ``sqlite_url`` (``from tests.cloud.cloudkit import *``)."""
    monkeypatch.setenv("VIGIL_CLOUD_LOOP_TICK_S", "0")
    async with operator_console(tmp_path, sqlite_url) as pair:
        yield pair
