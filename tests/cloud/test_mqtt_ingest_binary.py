"""MQTT ingest workers with the columnar binary body (docs/contract.md, *Binary body*) through a real
Mosquitto into the real :class:`cloud.ingest.IngestService`: binary and JSON payloads on the same topic are
both stored (told apart by their first byte), malformed binary payloads are answered with an error
document naming the field and never stored.
"""

from __future__ import annotations

import asyncio
import uuid

import msgpack
import numpy as np

from alerts.contract import UplinkAck, mqtt_up_topic
from alerts.uplink_body import encode_batch
from cloud.mqtt_ingest import IngestWorker
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import GW1, MANHOLE_1, T0, Cloud, batch, readings
from tests.cloud.test_mqtt_ingest import gateway_client, running, wait_until
from tests.cloud.test_mqtt_ingest_service import cfg
from tests.servers import MosquittoServer

M = DeviceKind.MANHOLE


async def test_binary_and_json_payloads_are_both_stored(
    cloud_sqlite: Cloud, mosquitto: MosquittoServer
) -> None:
    cloud = cloud_sqlite
    worker = IngestWorker(
        cfg(mosquitto, f"g{uuid.uuid4().hex[:8]}", f"w-{uuid.uuid4().hex[:6]}"), cloud.state.ingest
    )
    batches = [
        batch(f"mqtt-bin-{i:04d}", readings(M, MANHOLE_1, [2 * i + 1, 2 * i + 2], t0=T0 + 120 * i))
        for i in range(6)
    ]
    async with running(worker), gateway_client(mosquitto, GW1) as (pub, acks):
        for i, b in enumerate(batches):  # alternating formats, as gateways of two versions would
            payload = encode_batch(b) if i % 2 == 0 else b.model_dump_json().encode()
            await pub.publish(mqtt_up_topic(GW1), payload, qos=1)
        await pub.publish(mqtt_up_topic(GW1), encode_batch(batches[1]), qos=1)  # a JSON batch re-sent binary
        await wait_until(lambda: len(acks) >= 7)
    parsed = [UplinkAck.model_validate(a) for a in acks]
    assert sorted({a.batch_id for a in parsed}) == [b.batch_id for b in batches]
    assert (
        sum(a.telemetry_stored for a in parsed if not a.duplicate) == 12
        and sum(a.duplicate for a in parsed) == 1
    )
    series = await asyncio.to_thread(cloud.state.store.query, MANHOLE_1, M, T0 - 1, T0 + 3600)
    assert len(series) == 12
    assert worker.metrics.messages.labels("stored")._value.get() == 6


async def test_malformed_binary_payloads_are_answered_by_field_and_not_stored(
    cloud_sqlite: Cloud, mosquitto: MosquittoServer
) -> None:
    cloud = cloud_sqlite
    worker = IngestWorker(
        cfg(mosquitto, f"g{uuid.uuid4().hex[:8]}", f"w-{uuid.uuid4().hex[:6]}"), cloud.state.ingest
    )
    good = batch("mqtt-bad-0001", readings(M, MANHOLE_1, [1, 2]))
    doc = msgpack.unpackb(encode_batch(good))
    doc["telemetry"][0]["battery_pct"] = ["<f8", np.array([50.0, 101.0]).tobytes()]
    async with running(worker), gateway_client(mosquitto, GW1) as (pub, acks):
        await pub.publish(mqtt_up_topic(GW1), msgpack.packb(doc), qos=1)
        await pub.publish(mqtt_up_topic(GW1), encode_batch(good)[:-3], qos=1)  # truncated
        await pub.publish(mqtt_up_topic(GW1), b"\x93\x01\x02\x03", qos=1)  # msgpack, but not a map
        await wait_until(lambda: len(acks) >= 3)
    assert [a["error"] for a in acks] == ["validation"] * 3
    assert acks[0]["batch_id"] == "mqtt-bad-0001" and "telemetry.0.battery_pct.1" in str(acks[0]["detail"])
    assert acks[1]["batch_id"] is None and "msgpack" in str(acks[1]["detail"])
    assert "neither a JSON object nor the binary body (first byte 93)" in str(acks[2]["detail"])
    assert worker.metrics.messages.labels("malformed")._value.get() == 3
    series = await asyncio.to_thread(cloud.state.store.query, MANHOLE_1, M, T0 - 1, T0 + 3600)
    assert len(series) == 0
