"""MQTT uplink (edge/uplink/mqtt.py) against real Mosquitto brokers: QoS 1 up, delete only on the cloud's
ack message (alerts/contract.py topics), persistent session, resubscribe after a broker restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from alerts.contract import UplinkAck, UplinkBatch, mqtt_ack_topic, mqtt_up_topic
from alerts.uplink_body import decode_batch, sniff
from edge.metrics import GatewayMetrics
from edge.outbox import Outbox
from edge.uplink import UplinkAuthError, UplinkSender, UplinkUnavailable
from edge.uplink.mqtt import MqttUplink
from tests.aio import cancel_and_wait
from tests.edge.helpers import alert, manhole_batch
from tests.servers import MosquittoServer, start_mosquitto


async def fake_cloud(
    host: str,
    port: int,
    gw: str,
    seen: list[UplinkBatch],
    ack: bool = True,
    ready: asyncio.Event | None = None,
) -> None:
    """Subscribe to the gateway's up topic; "commit" and answer on its ack topic (what H6's cloud does)."""
    async with aiomqtt.Client(host, port, identifier=f"cloud-{secrets.token_hex(4)}") as c:
        await c.subscribe(mqtt_up_topic(gw), qos=1)  # returns after SUBACK
        if ready is not None:
            ready.set()
        async for msg in c.messages:
            assert isinstance(msg.payload, bytes)
            batch = decode_batch(msg.payload, sniff(msg.payload) or "")
            dup = any(b.batch_id == batch.batch_id for b in seen)
            if not dup:
                seen.append(batch)
            if ack:
                reply = UplinkAck(batch_id=batch.batch_id, duplicate=dup, committed_at=1_700_000_000.0)
                await c.publish(mqtt_ack_topic(gw), reply.model_dump_json(), qos=1)


@contextlib.asynccontextmanager
async def background(coro) -> AsyncIterator[asyncio.Task[None]]:  # type: ignore[no-untyped-def]
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        await cancel_and_wait(task)


async def test_send_is_acknowledged_by_the_cloud_message(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    gw = f"gw-{secrets.token_hex(3)}"
    seen: list[UplinkBatch] = []
    with Outbox(tmp_path / "o.db") as ob:
        ob.commit([manhole_batch(5)], [alert(1)])
        up = MqttUplink(f"mqtt://{mosquitto.host}:{mosquitto.port}", gw, "", timeout_s=2)
        ready = asyncio.Event()
        async with (
            background(up.run()),
            background(fake_cloud(mosquitto.host, mosquitto.port, gw, seen, ready=ready)),
        ):
            await asyncio.wait_for(up.connected.wait(), 10)
            await asyncio.wait_for(ready.wait(), 10)
            pb = ob.next_batch(gw)
            assert pb is not None
            ack = await up.send(pb)
            assert ack.batch_id == pb.batch_id
            ob.ack(ack)
            assert [a.alert_id for a in seen[0].alerts] == [alert(1).alert_id]


async def test_no_ack_means_not_delivered(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    gw = f"gw-{secrets.token_hex(3)}"
    seen: list[UplinkBatch] = []
    with Outbox(tmp_path / "o.db") as ob:
        ob.commit([], [alert(1)])
        up = MqttUplink(f"mqtt://{mosquitto.host}:{mosquitto.port}", gw, "", timeout_s=0.5)
        pb = ob.next_batch(gw)
        assert pb is not None
        with pytest.raises(UplinkUnavailable, match="not connected"):
            await up.send(pb)
        async with (
            background(up.run()),
            background(fake_cloud(mosquitto.host, mosquitto.port, gw, seen, ack=False)),
        ):
            await asyncio.wait_for(up.connected.wait(), 10)
            with pytest.raises(UplinkUnavailable) as e:
                await up.send(pb)  # the broker took it (PUBACK) but the cloud never confirmed its commit
            assert e.value.reason == "ack_timeout"
        assert ob.alert_pending(alert(1).alert_id)  # so it stays in the outbox


async def test_broker_restart_resubscribes_and_drains(tmp_path: Path) -> None:
    broker = await asyncio.to_thread(start_mosquitto, tmp_path / "broker")
    gw = f"gw-{secrets.token_hex(3)}"
    seen: list[UplinkBatch] = []
    try:
        with Outbox(tmp_path / "o.db") as ob:
            up = MqttUplink(f"mqtt://{broker.host}:{broker.port}", gw, "", timeout_s=1, max_backoff_s=0.5)
            sender = UplinkSender(ob, up, GatewayMetrics(), gw, backoff_initial_s=0.05, backoff_max_s=0.3)
            async with background(up.run()), background(sender.run()):
                await asyncio.wait_for(up.connected.wait(), 10)
                await asyncio.to_thread(broker.stop)
                ob.commit([manhole_batch(4)], [alert(2)])  # produced while the broker is down
                sender.notify()
                await asyncio.to_thread(broker.start)
                async with background(fake_cloud(broker.host, broker.port, gw, seen)):
                    async with asyncio.timeout(30):
                        while ob.stats().depth != {"alert": 0, "live": 0, "backlog": 0}:
                            await asyncio.sleep(0.05)  # outside-observable state: poll with a deadline
            assert up.reconnects_total >= 1
            assert (
                sum(len(b.alerts) for b in seen) == 1 and sum(len(t) for b in seen for t in b.telemetry) == 4
            )
    finally:
        await asyncio.to_thread(broker.stop)


async def test_error_document_on_the_ack_topic(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    gw = f"gw-{secrets.token_hex(3)}"
    with Outbox(tmp_path / "o.db") as ob:
        ob.commit([], [alert(1)])
        pb = ob.next_batch(gw)
        assert pb is not None
        up = MqttUplink(f"mqtt://{mosquitto.host}:{mosquitto.port}", gw, "", timeout_s=5)

        async def refusing_cloud(ready: asyncio.Event) -> None:
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as c:
                await c.subscribe(mqtt_up_topic(gw), qos=1)
                ready.set()
                async for msg in c.messages:
                    assert isinstance(msg.payload, bytes)
                    bid = decode_batch(msg.payload, sniff(msg.payload) or "").batch_id
                    doc = {"batch_id": bid, "error": "forbidden", "detail": "device not assigned"}
                    await c.publish(mqtt_ack_topic(gw), json.dumps(doc), qos=1)

        ready = asyncio.Event()
        async with background(up.run()), background(refusing_cloud(ready)):
            await asyncio.wait_for(up.connected.wait(), 10)
            await asyncio.wait_for(ready.wait(), 10)
            with pytest.raises(UplinkAuthError) as e:  # as HTTP's 403: the credential/config is wrong
                await up.send(pb)
            assert e.value.reason == "forbidden"
