"""Personal data at rest (SQLite and PostgreSQL) and by role (docs/privacy.md).

A wristband wearer's home address and exact position are sealed in the database; operators and viewers
get a masked address, a ~100 m position and no health values, wherever they look (device API, console
map, alerts, incidents, the events stream, the KPI export); admin and dispatcher see them in clear.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import MetaData, select, text

from alerts.loop.stages import Action, Command
from cloud.db import Device
from cloud.loop.wiring import LoopSink
from cloud.notify.links import Purpose
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import BAND_1, GW1, SMOKE_1, T0, Cloud, alert_step, batch, bearer

BAND_ID = str(BAND_1)  # the canonical id of the wearer's band (never None for this IMEI)
HOME = "海淀区科学院南路5号楼101室"
LAT, LON = 39.971234, 116.305678
BAND = {
    "device_id": BAND_ID,
    "kind": "wristband",
    "name": "手环 5-101",
    "lat": LAT,
    "lon": LON,
    "address": HOME,
    "grid": "G02",
    "community": "中关村",
    "street": "科学院南路",
    "gateway_id": GW1,
    "wearer_name": "张三丰",
    "wearer_phone": "13812341234",
    "emergency_contact_phone": "13987654321",
}
SECRETS = (HOME, "张三丰", "13812341234", "13987654321", "39.971234", "116.305678")


async def _provision(c: Cloud) -> dict[str, dict[str, str]]:
    r = await c.client.post("/api/v1/devices", json=BAND, headers=c.admin)
    assert r.status_code == 201, r.text
    op = await asyncio.to_thread(c.state.credentials.add_user, "op", "operator", now=c.clock.now())
    return {"admin": c.admin, "dispatcher": c.dispatcher, "operator": bearer(op), "viewer": c.viewer}


def _raw_dump(c: Cloud) -> str:
    """Every row of every table, as the database returns it (no decryption, no ORM)."""
    meta = MetaData()
    meta.reflect(c.state.db.engine)
    out = []
    with c.state.db.engine.connect() as conn:
        for table in meta.sorted_tables:
            out += [repr(tuple(row)) for row in conn.execute(select(table))]
    return "\n".join(out)


async def test_wristband_home_is_sealed_at_rest(cloud: Cloud) -> None:
    c = cloud
    await _provision(c)
    dump = await asyncio.to_thread(_raw_dump, c)
    for secret in SECRETS:
        assert secret not in dump, secret
    with c.state.db.engine.connect() as conn:
        band = conn.execute(
            text("SELECT address, lat, lon, private_enc FROM devices WHERE device_id = :d"), {"d": BAND_ID}
        ).one()
        smoke = conn.execute(
            text("SELECT address, lat FROM devices WHERE device_id = :d"), {"d": SMOKE_1}
        ).one()
    assert band.address == "" and (band.lat, band.lon) == (39.971, 116.306)  # ~100 m, for the map and routing
    assert band.private_enc.startswith("gAAAA")  # a Fernet token
    sealed = c.state.registry.box.open(band.private_enc)
    assert (sealed["address"], sealed["lat"], sealed["lon"]) == (HOME, LAT, LON)
    # a smoke alarm's place is a fixed installation, not a person: kept in clear (docs/privacy.md)
    assert (smoke.address, smoke.lat) == ("3号楼201", 39.97)


async def test_each_role_sees_the_wearer_as_its_job_needs(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite  # role views do not depend on the database
    who = await _provision(c)
    for role, headers in who.items():
        dev = (await c.client.get(f"/api/v1/devices/{BAND_ID}", headers=headers)).json()
        listed = [
            d
            for d in (await c.client.get("/api/v1/devices", headers=headers)).json()
            if d["device_id"] == BAND_ID
        ]
        assert listed == [dev]
        readings = await c.client.get(f"/api/v1/devices/{BAND_ID}/readings", headers=headers)
        if role in ("admin", "dispatcher"):
            assert (dev["address"], dev["lat"], dev["lon"], dev["wearer_name"]) == (HOME, LAT, LON, "张三丰")
            assert not dev["position_coarse"] and not dev["personal_data_masked"]
            assert readings.status_code == 200
        else:
            assert (dev["address"], dev["lat"], dev["lon"]) == ("海淀区科学***", 39.971, 116.306), role
            assert dev["position_coarse"] and dev["personal_data_masked"]
            assert not any(s in json.dumps(dev, ensure_ascii=False) for s in SECRETS), role
            assert readings.status_code == 403, role  # heart rate, SpO2 and the GPS track are health data
        # the console's map layer carries the coarse position only, for every role
        rows = (await c.client.get("/api/v1/console/devices", headers=headers)).json()
        assert not any(s in json.dumps(rows, ensure_ascii=False) for s in SECRETS), role
    # a smoke alarm is not personal: everyone sees its address
    smoke = (await c.client.get(f"/api/v1/devices/{SMOKE_1}", headers=who["viewer"])).json()
    assert smoke["address"] == "3号楼201" and not smoke["position_coarse"]


def _hides_health(body: Any) -> None:
    assert body["value"] is None and body["message"] == "", body


async def test_health_values_alerts_incidents_stream_and_export_by_role(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite  # role views do not depend on the database
    who = await _provision(c)
    hub = c.app.state.console_events
    events = hub.subscribe()
    hr = alert_step(
        BAND_ID, DeviceKind.WRISTBAND, EventType.HEART_RATE_LOW, AlertPhase.RAISED, T0 + 10, value=35.0
    )
    hr = hr.model_copy(update={"message": "心率 35 bpm 低于 40"})
    await c.state.ingest.ingest(batch("batch-pii-0001", alerts=[hr]), gateway_id=GW1)
    sink: LoopSink = c.app.state.loop_sink
    await sink.drained()
    # the events stream names the alert, never its value or where the wearer is
    event = events.get_nowait()
    hub.unsubscribe(events)
    assert set(event["alerts"][0]) == {"alert_id", "severity", "phase", "event_type"}
    assert not any(s in json.dumps(event, ensure_ascii=False) for s in (*SECRETS, "35"))
    for role, headers in who.items():
        (alert,) = (await c.client.get("/api/v1/alerts", headers=headers)).json()["alerts"]
        detail = (await c.client.get(f"/api/v1/alerts/{alert['alert_id']}", headers=headers)).json()
        steps = (await c.client.get("/api/v1/alerts?view=steps", headers=headers)).json()["alerts"]
        if role in ("admin", "dispatcher"):
            assert alert["value"] == 35.0 and "35" in alert["message"]
            assert detail["steps"][0]["value"] == 35.0
        else:
            for body in (alert, detail["alert"], *detail["steps"], *steps):
                _hides_health(body)
        (inc,) = (await c.client.get("/api/v1/incidents", headers=headers)).json()["incidents"]
        one = (await c.client.get(f"/api/v1/incidents/{inc['id']}", headers=headers)).json()
        for view in (inc, one["incident"]):
            assert (view["lat"], view["lon"]) == (39.971, 116.306), role  # the incident has the coarse one
            assert not any(s in json.dumps(view, ensure_ascii=False) for s in SECRETS), role
        csv = await c.client.get("/api/v1/kpi", params={"by": "kind", "format": "csv"}, headers=headers)
        assert csv.status_code == 200 and not any(s in csv.text for s in SECRETS), role


async def test_decommissioning_a_wristband_deletes_its_sealed_home(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite  # role views do not depend on the database
    await _provision(c)
    assert (await c.client.delete(f"/api/v1/devices/{BAND_ID}", headers=c.admin)).status_code == 204
    with c.state.db.read() as s:
        assert s.scalar(select(Device.private_enc).where(Device.device_id == BAND_ID)) is None


async def test_the_assigned_responders_link_shows_the_wearers_home_while_open(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite  # role views do not depend on the database
    await _provision(c)
    fall = alert_step(BAND_ID, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, T0 + 10)
    await c.state.ingest.ingest(batch("batch-pii-0002", alerts=[fall]), gateway_id=GW1)
    sink: LoopSink = c.app.state.loop_sink
    await sink.drained()
    (inc,) = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
    links = c.app.state.notify.links

    async def place(purpose: Purpose, actor: str) -> str:
        token = links.token(purpose, str(inc["id"]), actor, now=c.clock.now())
        r = await c.client.get(f"/api/v1/links/{token}")
        assert r.status_code == 200, r.text
        return str(r.json()["incident"].get("place", ""))

    assert await place(Purpose.ACCEPT, "user:7") == HOME  # the one person the case was sent to
    assert await place(Purpose.ACCEPT, "group:g02") == "G02"  # a chat group's link: the grid only
    case = links.token(Purpose.CASE, str(inc["id"]), "case", now=c.clock.now())
    assert HOME not in (await c.client.get(f"/api/v1/links/{case}")).text  # nor a resident's case link
    loop = c.app.state.loop
    if inc["stage"] == "registered":
        loop.act(inc["id"], Command(Action.DISPATCH, "admin", assignee="worker-7"))
    for step in (Action.ACCEPT, Action.ARRIVE, Action.HANDLE, Action.VERIFY, Action.CLOSE):
        loop.act(inc["id"], Command(step, "admin", reason="done"))
    assert await place(Purpose.ACCEPT, "user:7") == "G02"  # a closed case no longer opens the home
