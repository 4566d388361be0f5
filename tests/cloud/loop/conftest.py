"""Fixtures for the loop's cloud tests: the shared cloud (SQLite and PostgreSQL) with a roster loaded.

The ``loop`` periodic job is switched off (``VIGIL_CLOUD_LOOP_TICK_S=0``) so tests fire timers by hand
with ``LoopService.run_due`` at clock instants they choose; one test runs the real job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import T0, Cloud, alert_step, make_settings, start_cloud

ROSTER: dict[str, Any] = {
    "zone": "Asia/Shanghai",
    "responders": [
        {
            "id": "gw-wang",
            "name": "王网格",
            "roles": ["grid_worker"],
            "zones": ["G01"],
            "lat": 39.981,
            "lon": 116.311,
        },
        {
            "id": "gw-li",
            "name": "李网格",
            "roles": ["grid_worker"],
            "zones": ["G01"],
            "lat": 39.995,
            "lon": 116.33,
        },
        {"id": "gw-zhao", "name": "赵网格", "roles": ["grid_worker"], "zones": ["G02"]},
        {"id": "crew-1", "name": "市政一队", "roles": ["municipal_crew"], "lat": 39.97, "lon": 116.30},
        {"id": "police-1", "name": "交警中关村中队", "roles": ["traffic_police"]},
        {"id": "prop-1", "name": "物业张", "roles": ["property_management"]},
        {"id": "doc-1", "name": "社区医生刘", "roles": ["community_doctor"]},
        {"id": "fam-1", "name": "张三丰家属", "roles": ["family_contact"]},
    ],
    "rotations": [
        {
            "id": "g01",
            "role": "grid_worker",
            "zone": "G01",
            "participants": ["gw-wang", "gw-li"],
            "start": T0 - 3600,
            "shift_s": 0,
        },
        {"id": "g02", "role": "grid_worker", "zone": "G02", "participants": ["gw-zhao"], "start": T0 - 3600},
        {"id": "crew", "role": "municipal_crew", "zone": "*", "participants": ["crew-1"], "start": T0 - 3600},
        {
            "id": "police",
            "role": "traffic_police",
            "zone": "*",
            "participants": ["police-1"],
            "start": T0 - 3600,
        },
        {
            "id": "prop",
            "role": "property_management",
            "zone": "*",
            "participants": ["prop-1"],
            "start": T0 - 3600,
        },
        {
            "id": "doc",
            "role": "community_doctor",
            "zone": "G02",
            "participants": ["doc-1"],
            "start": T0 - 3600,
        },
        {
            "id": "fam",
            "role": "family_contact",
            "zone": "G02",
            "participants": ["fam-1"],
            "start": T0 - 3600,
            "shift_s": 0,
        },
    ],
    "overrides": [],
}


@pytest.fixture(autouse=True)
def _no_loop_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_CLOUD_LOOP_TICK_S", "0")


async def _with_roster(c: Cloud) -> Cloud:
    r = await c.client.put("/api/v1/loop/config/roster", json=ROSTER, headers=c.admin)
    assert r.status_code == 200, r.text
    return c


@pytest.fixture
async def lc(tmp_path: Path, db_url: str) -> AsyncIterator[Cloud]:
    """A provisioned cloud with the roster above, on SQLite and on PostgreSQL."""
    async with start_cloud(make_settings(tmp_path, db_url)) as c:
        yield await _with_roster(c)


@pytest.fixture
async def lc_sqlite(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Cloud]:
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        yield await _with_roster(c)


async def band_fall_delivered(c: Cloud) -> int:
    """At T0 wristband ``BAND_1`` reports a fall: the loop opens the case and the notifier delivers every
    page it wrote (the 请致电家属 call task among them). Returns the incident id."""
    from tests.cloud.loop.test_end_to_end import ingest, only_incident
    from tests.cloud.loop.test_timers import BAND_1

    c.clock.t = T0
    await ingest(c, alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, T0 - 2))
    iid = int((await only_incident(c))["id"])
    worker = c.app.state.notify.worker
    while await worker.run_once():
        pass
    return iid
