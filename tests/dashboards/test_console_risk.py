"""The console's risk overlay (``/console/map/risk.geojson``) over the real risk API, on a real SQLite cloud
filled with a simulated alarm history (the same as ``tests/cloud/test_risk_api.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dashboards.geo import RISK_LEVELS
from dashboards.i18n import catalog
from simulators.history import SimulatedHistory
from tests.cloud.cloudkit import Cloud, make_settings, migrated_sqlite, sqlite_url, start_cloud
from tests.cloud.test_risk_api import _fill, history

__all__ = ["history", "migrated_sqlite", "sqlite_url"]  # fixtures used by name
PASSWORD = "correct-horse-battery"


@pytest.fixture
async def risk_console(
    tmp_path: Path, sqlite_url: str, history: SimulatedHistory
) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        await asyncio.to_thread(_fill, c, history)
        c.clock.t = history.end
        for user, role in (("op", "operator"), ("desk", "dispatcher")):
            await asyncio.to_thread(
                c.state.credentials.add_user, user, role, password=PASSWORD, now=c.clock.now()
            )
        transport = httpx.ASGITransport(app=c.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as browser:
            yield c, browser


async def _layer(browser: httpx.AsyncClient, user: str, lang: str = "zh") -> dict[str, Any]:
    browser.cookies.clear()
    r = await browser.post("/console/login", data={"username": user, "password": PASSWORD})
    assert r.status_code == 303
    browser.cookies.set("vigil_session", r.cookies["vigil_session"])
    browser.cookies.set("vigil_lang", lang)
    r = await browser.get("/console/map/risk.geojson")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/geo+json")
    body: dict[str, object] = r.json()
    return body


async def test_risk_overlay_ranks_cells_and_hides_health_from_operators(
    risk_console: tuple[Cloud, httpx.AsyncClient],
) -> None:
    _, browser = risk_console
    disp = await _layer(browser, "desk")
    feats = disp["features"]
    assert isinstance(feats, list) and len(feats) > 10
    assert disp["health_included"] is True and disp["horizon_h"] == 24.0
    levels = [f["properties"]["level"] for f in feats]
    assert set(levels) <= set(range(RISK_LEVELS)) and max(levels) == RISK_LEVELS - 1
    top = min(feats, key=lambda f: f["properties"]["rank"])
    assert top["properties"]["level"] == RISK_LEVELS - 1 and top["properties"]["tooltip"].startswith(
        "风险第 1 位"
    )
    assert all(f["geometry"]["type"] == "Polygon" for f in feats)
    ring = feats[0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and 100 < ring[0][0] < 140 and 10 < ring[0][1] < 60  # [lon, lat] in China
    assert any("健康" in f["properties"]["tooltip"] for f in feats)  # the history has falls and SOS

    op = await _layer(browser, "op")
    assert op["health_included"] is False
    assert not any("健康" in f["properties"]["tooltip"] for f in op["features"])

    en = await _layer(browser, "op", lang="en")
    assert en["features"][0]["properties"]["tooltip"].startswith("Risk rank")


async def test_risk_overlay_needs_a_user_and_survives_an_empty_history(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        await asyncio.to_thread(
            c.state.credentials.add_user, "op", "operator", password=PASSWORD, now=c.clock.now()
        )
        transport = httpx.ASGITransport(app=c.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as browser:
            r = await browser.get("/console/map/risk.geojson")
            assert r.status_code in (303, 401)
            body = await _layer(browser, "op")
            assert body["features"] == []


def test_family_labels_exist_in_both_languages() -> None:
    from alerts.forecast.history import FAMILIES

    for lang in ("zh", "en"):
        cat = catalog(lang)
        assert all(f"risk.family.{f.value}" in cat for f in FAMILIES)
        assert "{rank}" in cat["map.risk_tooltip"] and "{families}" in cat["map.risk_tooltip"]
