"""The gateway sends the columnar binary body (``uplink.body = "msgpack"``, the default) end to end: outbox ->
uplink -> the *real* cloud app (``tests/cloud/cloudkit.py``, over ``httpx.ASGITransport``) or through a real
Mosquitto into the real MQTT ingest worker; an older cloud that does not read it gets JSON by itself (and the
uplink remembers); a JSON gateway still works; the outbox stores binary records, reads an older gateway's
JSON records, and merges each kind's records into one block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import httpx
import msgpack
import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from alerts.contract import HTTP_PATH, TelemetryBlock, UplinkAck, UplinkBatch, mqtt_ack_topic, mqtt_up_topic
from alerts.uplink_body import JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE, decode_batch, sniff
from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig
from edge.config import UplinkSection
from edge.outbox import Outbox, PendingBatch, iter_telemetry
from edge.uplink.http import HttpUplink, binary_refused
from edge.uplink.mqtt import MqttUplink
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.aio import cancel_and_wait
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import GW1, MANHOLE_1, SMOKE_1, T0, Cloud, alert_step, readings
from tests.servers import MosquittoServer

M, S = DeviceKind.MANHOLE, DeviceKind.SMOKE_ALARM


class Recording(httpx.AsyncBaseTransport):
    """Passes requests on and remembers each one's content type (what went on the wire)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request.headers.get("content-type", ""))
        return await self.inner.handle_async_request(request)


def old_cloud() -> FastAPI:
    """A cloud as it was before the binary body: FastAPI reads a declared UplinkBatch body (JSON only), and
    the app's validation handler answers 422 ``{"error": "validation", "errors": [{"loc", "msg"}]}``."""
    app = FastAPI()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": str(e["msg"])} for e in exc.errors()]
        return JSONResponse({"error": "validation", "errors": errors}, status_code=422)

    @app.post(HTTP_PATH)
    async def ingest(batch: UplinkBatch) -> UplinkAck:
        return UplinkAck(batch_id=batch.batch_id, telemetry_stored=batch.n_records, committed_at=T0)

    return app


def fill(ob: Outbox) -> None:
    ob.commit([readings(M, MANHOLE_1, [1, 2])], [])
    ob.commit([readings(M, MANHOLE_1, [3]), readings(S, SMOKE_1, [7])], [])


async def test_gateway_sends_binary_batches_to_the_real_cloud(tmp_path: Path, cloud_sqlite: Cloud) -> None:
    cloud = cloud_sqlite
    wire = Recording(httpx.ASGITransport(app=cloud.app))
    up = HttpUplink("http://vigil.test", cloud.gw1_token, transport=wire)
    with Outbox(tmp_path / "o.db", wallclock=cloud.clock.now) as ob:
        fill(ob)
        ob.commit([], [alert_step(MANHOLE_1, M, EventType.COVER_OPEN, AlertPhase.RAISED, T0 + 5)])
        acks = []
        for _ in range(2):  # the alert first, alone; then the telemetry
            pb = ob.next_batch(GW1)
            assert pb is not None and pb.content_type == MSGPACK_CONTENT_TYPE
            acks.append(await up.send(pb))
            ob.ack(acks[-1])
        assert ob.next_batch(GW1) is None
    assert [(a.alerts_stored, a.telemetry_stored) for a in acks] == [(1, 0), (0, 4)]
    await up.aclose()
    assert wire.sent == [MSGPACK_CONTENT_TYPE] * 2 and up.body == "msgpack"
    assert len(cloud.state.store.query(MANHOLE_1, M, T0 - 1, T0 + 3600)) == 3
    assert len(cloud.state.store.query(SMOKE_1, S, T0 - 1, T0 + 3600)) == 1


async def test_a_json_gateway_still_works(tmp_path: Path, cloud_sqlite: Cloud) -> None:
    cloud = cloud_sqlite
    wire = Recording(httpx.ASGITransport(app=cloud.app))
    up = HttpUplink("http://vigil.test", cloud.gw1_token, transport=wire, body="json")
    with Outbox(tmp_path / "o.db", wallclock=cloud.clock.now) as ob:
        fill(ob)
        pb = ob.next_batch(GW1)  # rendered binary by the outbox; this uplink sends its JSON form
        assert pb is not None
        ack = await up.send(pb)
        assert ack.telemetry_stored == 4
        ob.ack(ack)
        ob.body_format = "json"  # an outbox told to render JSON gives a plain JSON batch
        ob.commit([readings(M, MANHOLE_1, [4])], [])
        pb = ob.next_batch(GW1)
        assert pb is not None and pb.content_type == JSON_CONTENT_TYPE and pb.json_body is None
        assert (await up.send(pb)).telemetry_stored == 1
    await up.aclose()
    assert wire.sent == [JSON_CONTENT_TYPE] * 2
    assert len(cloud.state.store.query(MANHOLE_1, M, T0 - 1, T0 + 3600)) == 4


@pytest.mark.parametrize("old", ["fastapi_422", "415"])
async def test_an_older_cloud_gets_json_and_the_uplink_remembers(tmp_path: Path, old: str) -> None:
    if old == "415":
        inner: httpx.AsyncBaseTransport = httpx.MockTransport(
            lambda r: (
                httpx.Response(415, json={"error": "unsupported_media_type", "detail": "no"})
                if r.headers["content-type"] != JSON_CONTENT_TYPE
                else httpx.Response(
                    200, json={"batch_id": json.loads(r.content)["batch_id"], "committed_at": T0}
                )
            )
        )
    else:
        inner = httpx.ASGITransport(app=old_cloud())
    wire = Recording(inner)
    up = HttpUplink("http://vigil.test", "vgw_token", transport=wire)
    with Outbox(tmp_path / "o.db") as ob:
        fill(ob)
        pb = ob.next_batch(GW1)
        assert pb is not None
        ack = await up.send(pb)  # refused as binary, re-sent as JSON in the same call
        assert ack.batch_id == pb.batch_id
        ob.ack(ack)
        assert up.body == "json"
        ob.commit([readings(M, MANHOLE_1, [9])], [])
        pb = ob.next_batch(GW1)
        assert pb is not None
        ob.ack(await up.send(pb))  # straight to JSON now
    await up.aclose()
    assert wire.sent == [MSGPACK_CONTENT_TYPE, JSON_CONTENT_TYPE, JSON_CONTENT_TYPE]


def test_only_a_whole_body_refusal_means_an_older_cloud() -> None:
    """A cloud that reads the binary body and refuses a field is not an older cloud: the sender must isolate
    the bad record as usual, not switch formats."""
    old = {"error": "validation", "errors": [{"loc": ["body"], "msg": "Input should be a valid dictionary"}]}
    new = {"error": "validation", "errors": [{"loc": ["body", "telemetry", 0, "time", 3], "msg": "NaN"}]}
    assert binary_refused(415, b"") and binary_refused(422, json.dumps(old).encode())
    assert not binary_refused(422, json.dumps(new).encode()) and not binary_refused(422, b"<html>")
    assert not binary_refused(400, json.dumps(old).encode())


async def test_a_json_pending_batch_from_elsewhere_is_sent_as_json(cloud_sqlite: Cloud) -> None:
    """``PendingBatch(batch_id, body, n_alerts, n_readings, record_ids)`` (positional, as before) is a JSON
    batch: a binary-mode uplink sends it as it is."""
    cloud = cloud_sqlite
    wire = Recording(httpx.ASGITransport(app=cloud.app))
    up = HttpUplink("http://vigil.test", cloud.gw1_token, transport=wire)
    body = UplinkBatch.wire(batch_id="gw-heartbeat-01", gateway_id=GW1, sent_at=T0, status={"uptime_s": 5})
    ack = await up.send(PendingBatch("gw-heartbeat-01", body, 0, 0, ()))
    await up.aclose()
    assert ack.batch_id == "gw-heartbeat-01" and wire.sent == [JSON_CONTENT_TYPE]
    with pytest.raises(ValueError, match="json_body"):
        PendingBatch("gw-x-00000001", b"\x80", 0, 0, (), content_type=MSGPACK_CONTENT_TYPE)


def test_setting_uplink_body() -> None:
    assert UplinkSection(mode="http", url="https://cloud.example").body == "msgpack"
    assert UplinkSection(mode="http", url="https://cloud.example", body="json").body == "json"
    with pytest.raises(ValidationError, match="body"):
        UplinkSection(mode="http", url="https://cloud.example", body="xml")  # type: ignore[arg-type]


# -- the outbox's records ----------------------------------------------------------------------------------
def test_outbox_stores_binary_records_and_merges_each_kind_into_one_block(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        fill(ob)
        ob.commit([readings(M, MANHOLE_1, [4, 5])], [])
        pb = ob.next_batch(GW1)
        assert pb is not None and pb.n_readings == 6
        batch = decode_batch(pb.body, pb.content_type)
        assert [(b.kind, len(b)) for b in batch.telemetry] == [(M, 5), (S, 1)]  # one block per kind
        assert batch.telemetry[0].to_batch().seq.tolist() == [1, 2, 3, 4, 5]  # in commit order
        assert decode_batch(pb.as_json(), JSON_CONTENT_TYPE) == batch  # the same batch either way
    with sqlite3.connect(tmp_path / "o.db") as db:
        first = {bytes(b)[:1] for (b,) in db.execute("SELECT body FROM records WHERE lane=1")}
    assert first == {b"\x8a"}  # binary blocks (a msgpack map of 10 keys), not JSON
    assert [len(b) for b in iter_telemetry(tmp_path / "o.db")] == [2, 1, 1, 2]


def test_dead_letter_keeps_json_and_requeued_records_are_sent_again(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        ob.commit([readings(M, MANHOLE_1, [1, 2])], [])
        pb = ob.next_batch(GW1)
        assert pb is not None
        assert ob.dead_letter(pb.batch_id, "http_422: test") == 2
        with sqlite3.connect(path) as db:
            (body,) = db.execute("SELECT body FROM dead_letter").fetchone()
        assert json.loads(body)["seq"] == [1, 2]  # an operator reads it with sqlite3 and jq
        assert ob.requeue_dead_letter() == 1
        pb = ob.next_batch(GW1)
        assert pb is not None and pb.content_type == MSGPACK_CONTENT_TYPE
        (block,) = decode_batch(pb.body, pb.content_type).telemetry
        assert block.to_batch().seq.tolist() == [1, 2]


def test_an_older_gateways_json_records_are_still_sent(tmp_path: Path) -> None:
    """An outbox written by a gateway before the binary body holds JSON telemetry records; after the
    upgrade they go out in either body, merged with the new binary ones."""
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        ob.commit([readings(M, MANHOLE_1, [3])], [])
    old = TelemetryBlock.from_batch(readings(M, MANHOLE_1, [1, 2])).model_dump_json().encode()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO records(lane,created,n,size,body) VALUES(1,?,2,?,?)", (T0, len(old), old))
    with Outbox(path, wallclock=lambda: T0) as ob:
        pb = ob.next_batch(GW1, backlog_budget=100)
        assert pb is not None and pb.n_readings == 3
        for body, ctype in ((pb.body, pb.content_type), (pb.as_json(), JSON_CONTENT_TYPE)):
            (block,) = decode_batch(body, ctype).telemetry
            assert sorted(block.to_batch().seq.tolist()) == [1, 2, 3]
    assert sorted(len(b) for b in iter_telemetry(path)) == [1, 2]


# -- MQTT ------------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def background(coro) -> AsyncIterator[asyncio.Task[None]]:  # type: ignore[no-untyped-def]
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        await cancel_and_wait(task)


async def test_mqtt_binary_batches_reach_the_real_worker(
    tmp_path: Path, cloud_sqlite: Cloud, mosquitto: MosquittoServer
) -> None:
    cloud = cloud_sqlite
    cfg = MqttIngestConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=f"w-{uuid.uuid4().hex[:6]}",
        group=f"g{uuid.uuid4().hex[:8]}",
        session_expiry_s=60,
    )
    worker = IngestWorker(cfg, cloud.state.ingest)
    up = MqttUplink(f"mqtt://{mosquitto.host}:{mosquitto.port}", GW1, "", timeout_s=10)
    with Outbox(tmp_path / "o.db", wallclock=cloud.clock.now) as ob:
        fill(ob)
        async with background(worker.run()), background(up.run()):
            await asyncio.wait_for(worker.ready.wait(), 10)
            await asyncio.wait_for(up.connected.wait(), 10)
            pb = ob.next_batch(GW1)
            assert pb is not None and pb.content_type == MSGPACK_CONTENT_TYPE
            ack = await up.send(pb)
            ob.ack(ack)
    assert ack.telemetry_stored == 4 and up.body == "msgpack"
    assert worker.metrics.messages.labels("stored")._value.get() == 1
    assert len(cloud.state.store.query(MANHOLE_1, M, T0 - 1, T0 + 3600)) == 3


async def old_mqtt_cloud(host: str, port: int, gw: str, formats: list[str], ready: asyncio.Event) -> None:
    """An MQTT ingest worker as it was before the binary body: it parses every payload as JSON and answers
    what it cannot parse with ``batch_id: null`` (it could not read one)."""
    async with aiomqtt.Client(host, port, identifier=f"old-cloud-{secrets.token_hex(4)}") as c:
        await c.subscribe(mqtt_up_topic(gw), qos=1)
        ready.set()
        async for msg in c.messages:
            assert isinstance(msg.payload, bytes)
            formats.append(sniff(msg.payload) or "?")
            try:
                batch = UplinkBatch.model_validate_json(msg.payload)
            except ValidationError as exc:
                e = exc.errors()[0]
                detail = f"not a valid UplinkBatch: 1 error(s): {'.'.join(map(str, e['loc']))}: {e['msg']}"
                doc = {"batch_id": None, "error": "validation", "detail": detail}
                await c.publish(mqtt_ack_topic(gw), json.dumps(doc), qos=1)
                continue
            ack = UplinkAck(batch_id=batch.batch_id, telemetry_stored=batch.n_records, committed_at=T0)
            await c.publish(mqtt_ack_topic(gw), ack.model_dump_json(), qos=1)


async def test_mqtt_older_cloud_gets_json_and_the_uplink_remembers(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    gw = f"gw-{secrets.token_hex(3)}"
    formats: list[str] = []
    ready = asyncio.Event()
    up = MqttUplink(f"mqtt://{mosquitto.host}:{mosquitto.port}", gw, "", timeout_s=10)
    with Outbox(tmp_path / "o.db") as ob:
        fill(ob)
        async with (
            background(up.run()),
            background(old_mqtt_cloud(mosquitto.host, mosquitto.port, gw, formats, ready)),
        ):
            await asyncio.wait_for(up.connected.wait(), 10)
            await asyncio.wait_for(ready.wait(), 10)
            for seq in (10, 11):
                pb = ob.next_batch(gw)
                assert pb is not None
                ack = await up.send(pb)
                assert ack.batch_id == pb.batch_id and ack.telemetry_stored == pb.n_readings
                ob.ack(ack)
                ob.commit([readings(M, MANHOLE_1, [seq])], [])
    assert up.body == "json"
    assert formats == [MSGPACK_CONTENT_TYPE, JSON_CONTENT_TYPE, JSON_CONTENT_TYPE]
    assert msgpack.version >= (1, 0)
