"""Alerts API: the list validates as AlertEvent (what ``vigil score --cloud`` parses), filters, steps."""

from __future__ import annotations

from alerts.contract import AlertEvent
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import BAND_1, GW1, MANHOLE_1, SMOKE_1, T0, Cloud, alert_step, batch

M, S, W = DeviceKind.MANHOLE, DeviceKind.SMOKE_ALARM, DeviceKind.WRISTBAND


async def _seed(c: Cloud) -> dict[str, AlertEvent]:
    fire = alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0 + 10, value=1.0)
    fall = alert_step(BAND_1, W, EventType.FALL, AlertPhase.RAISED, T0 + 20)
    fall_clear = alert_step(BAND_1, W, EventType.FALL, AlertPhase.CLEARED, T0 + 200, episode_t=T0 + 20)
    cover = alert_step(MANHOLE_1, M, EventType.COVER_OPEN, AlertPhase.RAISED, T0 + 30, value=87.0)
    cover_upd = alert_step(
        MANHOLE_1, M, EventType.COVER_OPEN, AlertPhase.UPDATED, T0 + 90, episode_t=T0 + 30, value=91.0
    )
    await c.state.ingest.ingest(batch("batch-alerts-1", alerts=[fire, fall, cover]), gateway_id=GW1)
    await c.state.ingest.ingest(batch("batch-alerts-2", alerts=[fall_clear, cover_upd]), gateway_id=GW1)
    return {"fire": fire, "fall": fall, "cover": cover}


async def test_list_items_validate_as_alert_events(cloud: Cloud) -> None:
    seeded = await _seed(cloud)
    r = await cloud.client.get("/api/v1/alerts", headers=cloud.viewer)
    assert r.status_code == 200
    items = [AlertEvent.model_validate(a) for a in r.json()["alerts"]]
    by_id = {a.alert_id: a for a in items}
    assert set(by_id) == {a.alert_id for a in seeded.values()}
    cover = by_id[seeded["cover"].alert_id]
    # current phase and value, but time/frame_time of the raising step (detection latency)
    assert cover.phase is AlertPhase.UPDATED and cover.value == 91.0
    assert cover.time == T0 + 30 and cover.frame_time == T0 + 29.5
    assert by_id[seeded["fall"].alert_id].phase is AlertPhase.CLEARED


async def test_filters(cloud: Cloud) -> None:
    seeded = await _seed(cloud)
    get = cloud.client.get
    open_ = (await get("/api/v1/alerts", params={"state": "open"}, headers=cloud.viewer)).json()["alerts"]
    assert {a["alert_id"] for a in open_} == {seeded["fire"].alert_id, seeded["cover"].alert_id}
    cleared = (await get("/api/v1/alerts", params={"state": "cleared"}, headers=cloud.viewer)).json()[
        "alerts"
    ]
    assert [a["alert_id"] for a in cleared] == [seeded["fall"].alert_id]
    smoke = (await get("/api/v1/alerts", params={"kind": "smoke_alarm"}, headers=cloud.viewer)).json()[
        "alerts"
    ]
    assert [a["event_type"] for a in smoke] == ["fire"]
    since = (await get("/api/v1/alerts", params={"since": T0 + 50}, headers=cloud.viewer)).json()["alerts"]
    assert {a["alert_id"] for a in since} == {seeded["fall"].alert_id, seeded["cover"].alert_id}
    steps = (await get("/api/v1/alerts", params={"view": "steps"}, headers=cloud.viewer)).json()["alerts"]
    assert [s["phase"] for s in steps] == ["raised", "raised", "raised", "updated", "cleared"]
    assert (await get("/api/v1/alerts", params={"state": "bogus"}, headers=cloud.viewer)).status_code == 422


async def test_detail_and_404(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    seeded = await _seed(c)
    r = await c.client.get(f"/api/v1/alerts/{seeded['cover'].alert_id}", headers=c.viewer)
    d = r.json()
    assert [s["phase"] for s in d["steps"]] == ["raised", "updated"]
    assert d["raised_time"] == T0 + 30 and d["updated_time"] == T0 + 90
    assert (await c.client.get("/api/v1/alerts/nope/fire/1", headers=c.viewer)).status_code == 404
    assert (await c.client.get("/api/v1/alerts")).status_code == 401
