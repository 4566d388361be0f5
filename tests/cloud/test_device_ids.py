"""Device ids are normalised wherever they enter (issue 11): registry import, API create, gateway batches.

An upper-case DevEUI in an import used to be stored as typed, so every batch of its gateway (which sends the
wire spelling, 16 lowercase hex digits) was refused as ``unknown_device``. Run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from alerts.contract import HTTP_PATH, UplinkAck
from cloud.registry import canonical_device_id
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import (
    BAND_1,
    BAND_1_IMEI,
    MANHOLE_1,
    SMOKE_1,
    Cloud,
    alert_step,
    batch,
    body,
    readings,
)


def test_canonical_device_id_forms() -> None:
    assert canonical_device_id(" 70B3D57ED0000001 ") == "70b3d57ed0000001"
    assert canonical_device_id(BAND_1_IMEI) == BAND_1
    assert canonical_device_id("123456") == "123456"  # a numeric serial is kept


async def test_upper_case_import_then_lower_and_upper_case_batches_are_stored(cloud: Cloud) -> None:
    # cloudkit imports MANHOLE_1 and SMOKE_1 in upper case
    dev = await cloud.client.get(f"/api/v1/devices/{MANHOLE_1.upper()}", headers=cloud.admin)
    assert dev.status_code == 200 and dev.json()["device_id"] == MANHOLE_1
    t = cloud.clock.now() - 60
    step = alert_step(SMOKE_1.upper(), DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, t)
    b = batch(
        "batch-case-1",
        readings(DeviceKind.MANHOLE, MANHOLE_1, [1], t0=t),
        readings(DeviceKind.MANHOLE, MANHOLE_1.upper(), [2], t0=t + 1),
        readings(DeviceKind.WRISTBAND, BAND_1_IMEI, [1], t0=t),
        alerts=[step],
    )
    r = await cloud.client.post(
        HTTP_PATH, content=body(b), headers={**cloud.gw1, "content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    ack = UplinkAck.model_validate(r.json())
    assert (ack.telemetry_stored, ack.telemetry_refused, ack.refused) == (3, 0, [])
    assert cloud.state.registry.get(MANHOLE_1, "admin").readings_total == 2
    assert cloud.state.registry.get(BAND_1, "admin").readings_total == 1


async def test_api_create_stores_canonical_id(cloud: Cloud) -> None:
    dev = {"device_id": "70B3D57ED00000AA", "kind": "manhole"}
    r = await cloud.client.post("/api/v1/devices", json=dev, headers=cloud.admin)
    assert r.status_code == 201 and r.json()["device_id"] == "70b3d57ed00000aa"
    r = await cloud.client.post(
        "/api/v1/devices", json={**dev, "device_id": "70b3d57ed00000aa"}, headers=cloud.admin
    )
    assert r.status_code == 201
    ids = [d["device_id"] for d in (await cloud.client.get("/api/v1/devices", headers=cloud.admin)).json()]
    assert ids.count("70b3d57ed00000aa") == 1 and "70B3D57ED00000AA" not in ids
