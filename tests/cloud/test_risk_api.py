"""The risk API on a real SQLite cloud: forecasts, patrol plans, health trends, and who sees health data.

The history is ``simulators.history.generate_history`` (small, seeded), written into the cloud's
``devices`` and ``alerts`` tables as the ingest path would leave them, plus one manual report in the
closed loop's ``loop_incidents``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud.db import Alert, Device
from cloud.loop.models import Incident
from firmware_bridge.kernel.events import alert_id
from firmware_bridge.kernel.records import DeviceKind
from simulators.history import SimulatedHistory, generate_history
from tests.cloud.cloudkit import Cloud, make_settings, migrated_sqlite, sqlite_url, start_cloud

__all__ = ["migrated_sqlite", "sqlite_url"]  # fixtures used by name

FAMILY_HEALTH = {"fall", "sos", "heart_rate_high", "heart_rate_low", "spo2_low"}


@pytest.fixture(scope="module")
def history() -> SimulatedHistory:
    counts = {DeviceKind.MANHOLE: 250, DeviceKind.SMOKE_ALARM: 250, DeviceKind.WRISTBAND: 150}
    return generate_history(days=120, seed=7, counts=counts, rate_scale=3.0, rising_share=0.06)


def _fill(cloud: Cloud, h: SimulatedHistory) -> None:
    nb = h.neighbourhood
    with cloud.state.db.write() as s:
        for kind, sites in nb.sites.items():
            grids = nb.grid_of(sites.xy)
            for i, dev in enumerate(sites.device_id):
                s.add(
                    Device(
                        device_id=dev, kind=kind.value, name=sites.name[i], lat=float(sites.lat[i]),
                        lon=float(sites.lon[i]), grid=grids[i], interval_s=3600.0, created_at=h.start,
                    )
                )  # fmt: skip
        for t, dev, kind, et in zip(h.time.tolist(), h.device_id, h.kind, h.event_type, strict=True):
            ep = round(t * 1000)
            s.add(
                Alert(
                    alert_id=alert_id(dev, et, ep), device_id=dev, kind=kind.value, event_type=et, severity=2,
                    phase="cleared", episode_ms=ep, raised_time=t, raised_frame_time=t, updated_time=t + 60,
                    frame_time=t + 60, message="", source="gw-sim", received_at=t + 1,
                )
            )  # fmt: skip
        lat, lon = float(nb.sites[DeviceKind.MANHOLE].lat[0]), float(nb.sites[DeviceKind.MANHOLE].lon[0])
        s.add(
            Incident(
                group_key="manual:1", group_rule="manual", stage="registered", source="manual",
                kind="manhole",
                event_type="cover_open", grade=3, urgency="high", lat=lat, lon=lon, created_at=h.end - 3600,
                event_start=h.end - 3600, stage_entered_at=h.end - 3600, updated_at=h.end - 3600,
            )
        )  # fmt: skip


@pytest.fixture
async def risk_cloud(tmp_path: Path, sqlite_url: str, history: SimulatedHistory) -> AsyncIterator[Cloud]:
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        await asyncio.to_thread(_fill, c, history)
        c.clock.t = history.end
        yield c


async def test_forecast_for_a_role_that_sees_health_data(
    risk_cloud: Cloud, history: SimulatedHistory
) -> None:
    r = await risk_cloud.client.get("/api/v1/risk/forecast", params={"limit": 30}, headers=risk_cloud.admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["health_included"] is True
    assert body["history_events"] == len(history) + 1  # every alert and the manual report
    assert set(body["models"]) == {"cover", "flood", "gas", "fire", "health"}
    cells = body["cells"]
    assert [c["rank"] for c in cells] == list(range(1, len(cells) + 1))
    assert all(a["expected"] >= b["expected"] for a, b in itertools.pairwise(cells))
    top = cells[0]
    assert top["expected"] == pytest.approx(top["background"] + top["triggered"])
    assert len(top["polygon"]) == 4 and top["reasons"]
    assert {d["kind"] for d in body["devices"]} >= {"manhole"}
    assert 1.0 < body["expected_total"] < 200.0


async def test_forecast_without_health_data_for_a_viewer(risk_cloud: Cloud) -> None:
    r = await risk_cloud.client.get(
        "/api/v1/risk/forecast",
        params={"limit": 500, "grid": "hex", "cell_m": 200},
        headers=risk_cloud.viewer,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["health_included"] is False and "health" not in body["models"]
    assert body["grid"]["shape"] == "hex" and len(body["cells"][0]["polygon"]) == 6
    assert all(d["kind"] != "wristband" for d in body["devices"])
    for c in body["cells"]:
        assert "health" not in c["families"]
        assert not {x["event_type"] for x in c["reasons"]} & FAMILY_HEALTH


async def test_patrol_plan_for_a_workers_grid_cells(risk_cloud: Cloud, history: SimulatedHistory) -> None:
    nb = history.neighbourhood
    mine = sorted(set(nb.grid_of(nb.sites[DeviceKind.MANHOLE].xy)))[:2]
    params: dict[str, str | int | float | list[str]] = {
        "worker": "Grid worker 1",
        "grid_id": mine,
        "max_stops": 5,
        "shift_h": 8,
    }
    params |= {"start_lat": nb.lat0, "start_lon": nb.lon0}
    r = await risk_cloud.client.get("/api/v1/risk/patrol", params=params, headers=risk_cloud.dispatcher)
    assert r.status_code == 200, r.text
    plan = r.json()
    stops = plan["stops"]
    assert 1 <= len(stops) <= 5 and [s["order"] for s in stops] == list(range(1, len(stops) + 1))
    assert plan["total_walk_m"] == pytest.approx(sum(s["walk_m"] for s in stops), abs=0.5)
    assert plan["start_lat"] == pytest.approx(nb.lat0, abs=1e-5)
    assert all(s["devices"] for s in stops)
    # every stop lies in the worker's grid cells: its devices are there
    grid_of: dict[str, str] = {}
    for sites in nb.sites.values():
        grid_of.update(zip(sites.device_id, nb.grid_of(sites.xy), strict=True))
    assert all(any(grid_of[d["device_id"]] in mine for d in s["devices"]) for s in stops)


async def test_health_trends_only_for_roles_that_see_health_data(
    risk_cloud: Cloud, history: SimulatedHistory
) -> None:
    r = await risk_cloud.client.get("/api/v1/risk/health-trends", headers=risk_cloud.viewer)
    assert r.status_code == 403
    r = await risk_cloud.client.get("/api/v1/risk/health-trends", headers=risk_cloud.admin)
    assert r.status_code == 200, r.text
    rising = {x["device_id"] for x in r.json()["residents"]}
    assert rising and len(rising & set(history.rising)) >= 0.6 * len(rising)


async def test_bad_requests(risk_cloud: Cloud) -> None:
    c = risk_cloud.client
    r = await c.get(
        "/api/v1/risk/patrol", params={"worker": "w", "grid_id": "nowhere"}, headers=risk_cloud.admin
    )
    assert r.status_code == 400 and "nowhere" in r.json()["detail"]
    r = await c.get(
        "/api/v1/risk/patrol", params={"worker": "w", "start_lat": 22.6}, headers=risk_cloud.admin
    )
    assert r.status_code == 400
    r = await c.get("/api/v1/risk/forecast", params={"cell_m": 5}, headers=risk_cloud.admin)
    assert r.status_code == 422
    r = await c.get("/api/v1/risk/forecast")
    assert r.status_code == 401


async def test_a_cloud_without_history_still_answers(tmp_path: Path, sqlite_url: str) -> None:
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        cases: list[dict[str, str | int]] = [
            {},
            {"grid": "community"},
            {"grid": "hex", "cell_m": 50, "at": 0},
        ]
        for params in cases:
            r = await c.client.get("/api/v1/risk/forecast", params=params, headers=c.admin)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["history_events"] == 0 and body["models"] == {}
            assert all(x["triggered"] == 0 for x in body["cells"])
        r = await c.client.get(
            "/api/v1/risk/patrol", params={"worker": "w", "grid_id": "G01"}, headers=c.viewer
        )
        assert r.status_code == 200, r.text
        r = await c.client.get("/api/v1/risk/health-trends", headers=c.dispatcher)
        assert r.status_code == 200 and r.json()["residents"] == []
