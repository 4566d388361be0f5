"""``POST /api/v1/ingest/batches`` with the columnar binary body (docs/contract.md, *Binary body*): stored
exactly like JSON, negotiated by Content-Type (415 otherwise, after authentication), malformed bodies 422
naming the field with nothing stored, and both formats in the OpenAPI document. SQLite only: the body
format is decided before storage is touched (tests/cloud/test_ingest.py runs storage on both databases).
"""

from __future__ import annotations

import msgpack
import numpy as np

from alerts.contract import HTTP_PATH, UplinkAck
from alerts.uplink_body import MSGPACK_CONTENT_TYPE, encode_batch
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import GW1, MANHOLE_1, MANHOLE_2, SMOKE_1, T0, Cloud, alert_step, batch, readings

M, S = DeviceKind.MANHOLE, DeviceKind.SMOKE_ALARM
BINARY = {"content-type": MSGPACK_CONTENT_TYPE}


async def _gateway_batches(cloud: Cloud) -> int:
    gw = (await cloud.client.get(f"/api/v1/gateways/{GW1}", headers=cloud.viewer)).json()
    return int(gw["batches_total"])


async def test_binary_batch_is_stored_like_json(cloud_sqlite: Cloud) -> None:
    cloud = cloud_sqlite
    step = alert_step(MANHOLE_1, M, EventType.COVER_OPEN, AlertPhase.RAISED, T0 + 30)
    foreign = readings(M, MANHOLE_2, [7])  # another gateway's device: refused per record, as in JSON
    b = batch(
        "batch-bin-0001",
        readings(M, MANHOLE_1, [1, 2, 3]),
        readings(S, SMOKE_1, [10]),
        foreign,
        alerts=[step],
    )
    r = await cloud.client.post(HTTP_PATH, content=encode_batch(b), headers={**cloud.gw1, **BINARY})
    assert r.status_code == 200, r.text
    ack = UplinkAck.model_validate(r.json())
    assert (ack.telemetry_stored, ack.alerts_stored, ack.telemetry_refused) == (4, 1, 1)
    assert [(x.device_id, x.reason) for x in ack.refused] == [(MANHOLE_2, "not_assigned")]
    series = cloud.state.store.query(MANHOLE_1, M, T0 - 1, T0 + 3600)
    assert len(series) == 3 and series.time.tolist() == [T0, T0 + 60, T0 + 120]
    assert (
        series.values["tilt_deg"].tolist() == [1.0] * 3
        and series.values["temperature_c"].tolist() == [8.0] * 3
    )
    dev = cloud.state.registry.get(MANHOLE_1, "admin")
    assert dev.last_seq == 3 and dev.readings_total == 3
    # the same batch again, now as JSON: one batch, whatever the format it travelled in
    again = await cloud.client.post(
        HTTP_PATH, content=b.model_dump_json(), headers={**cloud.gw1, "content-type": "application/json"}
    )
    assert again.status_code == 200 and again.json()["duplicate"] is True


async def test_unknown_content_type_is_415_after_authentication(cloud_sqlite: Cloud) -> None:
    cloud = cloud_sqlite
    b = batch("batch-bin-0415", readings(M, MANHOLE_1, [1]))
    r = await cloud.client.post(
        HTTP_PATH, content=encode_batch(b), headers={**cloud.gw1, "content-type": "application/msgpack"}
    )
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    assert MSGPACK_CONTENT_TYPE in r.json()["detail"]
    # no token: 401 first, whatever the body
    r = await cloud.client.post(HTTP_PATH, content=b"\x00" * 10, headers={"content-type": "text/plain"})
    assert r.status_code == 401
    assert await _gateway_batches(cloud) == 0


async def test_malformed_binary_body_is_422_naming_the_field_and_stores_nothing(cloud_sqlite: Cloud) -> None:
    cloud = cloud_sqlite
    good = batch("batch-bin-0422", readings(M, MANHOLE_1, [1, 2]))
    doc = msgpack.unpackb(encode_batch(good))
    doc["telemetry"][0]["time"] = ["<f8", np.array([T0, np.nan]).tobytes()]
    r = await cloud.client.post(HTTP_PATH, content=msgpack.packb(doc), headers={**cloud.gw1, **BINARY})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation"
    assert r.json()["errors"][0]["loc"] == ["body", "telemetry", 0, "time", 1]
    r = await cloud.client.post(
        HTTP_PATH, content=encode_batch(good) + b"\x00", headers={**cloud.gw1, **BINARY}
    )
    assert r.status_code == 422 and "trailing" in r.json()["errors"][0]["msg"]
    # a JSON document under the binary content type is not guessed at
    r = await cloud.client.post(HTTP_PATH, content=good.model_dump_json(), headers={**cloud.gw1, **BINARY})
    assert r.status_code == 422
    assert await _gateway_batches(cloud) == 0
    assert len(cloud.state.store.query(MANHOLE_1, M, T0 - 1, T0 + 3600)) == 0


async def test_openapi_documents_both_bodies_and_415(cloud_sqlite: Cloud) -> None:
    spec = (await cloud_sqlite.client.get("/openapi.json")).json()
    op = spec["paths"][HTTP_PATH]["post"]
    content = op["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/UplinkBatch"}
    assert content[MSGPACK_CONTENT_TYPE]["schema"]["format"] == "binary"
    assert "415" in op["responses"] and "422" in op["responses"]
    assert op["requestBody"].get("required") is True
    assert {p.get("name") for p in op.get("parameters", [])} == set()  # nothing but the body and the token
    assert GW1  # the fixture's gateway is the one posting above
