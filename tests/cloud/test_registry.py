"""Registry: CSV import (all-or-nothing, row errors with line numbers), encryption at rest, masking by role.

The CSV columns are those ``vigil simulate`` writes (H4's fleet export, issue #5). Run on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa

from firmware_bridge.registry import spec
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import BAND_1, CSV_HEADER, GW1, MANHOLE_1, MANHOLE_2, SMOKE_1, Cloud


async def test_import_shows_devices_with_profile_defaults(cloud: Cloud) -> None:
    r = await cloud.client.get("/api/v1/devices", headers=cloud.viewer)
    assert r.status_code == 200
    devices = {d["device_id"]: d for d in r.json()}
    assert set(devices) == {MANHOLE_1, MANHOLE_2, SMOKE_1, BAND_1}
    m1 = devices[MANHOLE_1]
    assert m1["kind"] == "manhole" and m1["on_road"] is True and m1["gateway_id"] == GW1
    assert m1["profile"] == "road" and m1["interval_s"] == spec("manhole").heartbeat_s
    assert m1["dev_addr"] == "26011BDA" and "nwk_skey" not in m1 and "app_skey" not in m1
    assert devices[MANHOLE_2]["profile"] == "default"
    assert devices[BAND_1]["interval_s"] == spec("wristband").heartbeat_s
    only_gw1 = (
        await cloud.client.get("/api/v1/devices", params={"gateway_id": GW1}, headers=cloud.viewer)
    ).json()
    assert {d["device_id"] for d in only_gw1} == {MANHOLE_1, SMOKE_1, BAND_1}


async def test_personal_data_masked_for_viewer_clear_for_dispatcher(cloud: Cloud) -> None:
    viewer = (await cloud.client.get(f"/api/v1/devices/{BAND_1}", headers=cloud.viewer)).json()
    assert (viewer["wearer_name"], viewer["wearer_phone"]) == ("张**", "138****1234")
    assert viewer["emergency_contact_phone"] == "139****4321" and viewer["personal_data_masked"] is True
    disp = (await cloud.client.get(f"/api/v1/devices/{BAND_1}", headers=cloud.dispatcher)).json()
    assert (disp["wearer_name"], disp["wearer_phone"]) == ("张三丰", "13812341234")
    assert disp["personal_data_masked"] is False


async def test_personal_data_and_keys_encrypted_at_rest(cloud: Cloud) -> None:
    with cloud.state.db.engine.connect() as conn:
        dump = " ".join(str(row) for row in conn.execute(sa.text("SELECT * FROM devices")))
    for secret in ("张三丰", "13812341234", "13987654321", "2B7E151628AED2A6ABF7158809CF4F3C"):
        assert secret not in dump
    keys = cloud.state.registry.session_keys(MANHOLE_1)
    assert keys["nwk_skey"] == "2B7E151628AED2A6ABF7158809CF4F3C"


async def test_bad_rows_reported_with_line_numbers_and_nothing_imported(cloud: Cloud) -> None:
    csv = (
        "\n".join(
            [
                CSV_HEADER,
                "70B3D57ED0000201,manhole,ok,39.9,116.3,,,,,0,gw-community-1,,,,,,,",
                "not-an-id,manhole,bad id,39.9,116.3,,,,,0,gw-community-1,,,,,,,",
                "70B3D57ED0000203,toaster,bad kind,39.9,116.3,,,,,0,gw-community-1,,,,,,,",
                "70B3D57ED0000204,manhole,bad lat,91,116.3,,,,,maybe,gw-community-1,,,,,,,",
                "70B3D57ED0000201,manhole,repeat,39.9,116.3,,,,,0,gw-community-1,,,,,,,",
            ]
        )
        + "\n"
    )
    r = await cloud.client.post(
        "/api/v1/devices/import", content=csv.encode(), headers={**cloud.admin, "content-type": "text/csv"}
    )
    assert r.status_code == 400
    rows = r.json()["rows"]
    assert [x["line"] for x in rows] == [3, 4, 5, 6]
    assert "device_id" in rows[0]["message"] and "kind" in rows[1]["message"]
    assert (
        "lat" in rows[2]["message"]
        and "on_road" in rows[2]["message"]
        and "repeats line 2" in rows[3]["message"]
    )
    # all-or-nothing: the good row was not imported either
    r = await cloud.client.get("/api/v1/devices/70B3D57ED0000201", headers=cloud.viewer)
    assert r.status_code == 404


async def test_import_requires_admin_and_upserts(cloud: Cloud) -> None:
    csv = CSV_HEADER + "\n" + f"{MANHOLE_2},manhole,renamed,39.9,116.3,,,,,0,{GW1},,,,,,,\n"
    r = await cloud.client.post(
        "/api/v1/devices/import", content=csv.encode(), headers={**cloud.viewer, "content-type": "text/csv"}
    )
    assert r.status_code == 403
    r = await cloud.client.post(
        "/api/v1/devices/import", content=csv.encode(), headers={**cloud.admin, "content-type": "text/csv"}
    )
    assert r.status_code == 200 and r.json() == {"imported": 1}
    dev = (await cloud.client.get(f"/api/v1/devices/{MANHOLE_2}", headers=cloud.viewer)).json()
    assert dev["name"] == "renamed" and dev["gateway_id"] == GW1


async def test_bad_header_and_non_utf8(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    r = await c.client.post(
        "/api/v1/devices/import",
        content=b"device_id,colour\n1234567,red\n",
        headers={**c.admin, "content-type": "text/csv"},
    )
    assert r.status_code == 400 and "kind" in r.json()["detail"] and "colour" in r.json()["detail"]
    r = await c.client.post(
        "/api/v1/devices/import",
        content=b"device_id,kind\n\xff\xfe,manhole\n",
        headers={**c.admin, "content-type": "text/csv"},
    )
    assert r.status_code == 400 and "UTF-8" in r.json()["detail"]


async def test_create_one_device_by_api(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    dev = {
        "device_id": "861234567890999",
        "kind": "wristband",
        "wearer_name": "李四",
        "wearer_phone": "13600001111",
        "interval_s": 120,
        "thresholds": {"heart_rate_high": 130},
        "gateway_id": GW1,
    }
    r = await c.client.post("/api/v1/devices", json=dev, headers=c.admin)
    assert r.status_code == 201, r.text
    out = r.json()
    assert (
        out["interval_s"] == 120
        and out["thresholds"] == {"heart_rate_high": 130.0}
        and out["wearer_name"] == "李四"
    )
    r = await c.client.post("/api/v1/devices", json={**dev, "device_id": "x"}, headers=c.admin)
    assert r.status_code == 422
    assert (await c.client.get("/api/v1/devices/000000", headers=c.viewer)).status_code == 404


async def test_row_errors_do_not_echo_personal_data(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    csv = CSV_HEADER + "\n" + "861234567890777,wristband,band,,,,,,,0,,,,,,王五,call-13812345678,\n"
    r = await c.client.post(
        "/api/v1/devices/import", content=csv.encode(), headers={**c.admin, "content-type": "text/csv"}
    )
    assert r.status_code == 400 and "wearer_phone" in r.text
    assert "13812345678" not in r.text and "王五" not in r.text


async def test_decommissioned_device_is_gone_but_its_gateway_cannot_write_for_it(cloud: Cloud) -> None:
    from alerts.contract import HTTP_PATH
    from firmware_bridge.kernel.records import DeviceKind
    from tests.cloud.cloudkit import batch, body, readings

    assert (await cloud.client.delete(f"/api/v1/devices/{BAND_1}", headers=cloud.viewer)).status_code == 403
    assert (await cloud.client.delete(f"/api/v1/devices/{BAND_1}", headers=cloud.admin)).status_code == 204
    assert (await cloud.client.get(f"/api/v1/devices/{BAND_1}", headers=cloud.admin)).status_code == 404
    assert (await cloud.client.delete(f"/api/v1/devices/{BAND_1}", headers=cloud.admin)).status_code == 404
    b = batch("batch-decom-1", readings(DeviceKind.WRISTBAND, BAND_1, [1]))
    r = await cloud.client.post(
        HTTP_PATH, content=body(b), headers={**cloud.gw1, "content-type": "application/json"}
    )
    # refused per record (issue 11): stored nothing for it, named it, and did not block the batch
    assert r.status_code == 200 and r.json()["telemetry_stored"] == 0
    assert [(x["device_id"], x["reason"]) for x in r.json()["refused"]] == [(BAND_1, "unknown_device")]
