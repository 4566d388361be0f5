"""The alert lane (issue 12), against a real Mosquitto: a gateway's alert batches go to
``vigil/v1/gw/{id}/alert`` and the worker's own alert session commits and acknowledges them while its
telemetry session still holds a backlog; alert steps on ``.../up`` (older gateways) still work; a gateway
whose cloud predates the lane falls back to ``.../up``.

Helpers (gateway client, ``running``, ``wait_until``) come from ``test_mqtt_ingest.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from alerts.contract import (
    UplinkAck,
    UplinkBatch,
    mqtt_alert_topic,
    mqtt_up_topic,
)
from cloud.errors import CloudError
from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig, gateway_of_topic
from edge.outbox import Outbox
from edge.uplink import UplinkUnavailable
from edge.uplink.mqtt import MqttUplink
from tests.aio import cancel_and_wait
from tests.cloud.test_mqtt_ingest import T0, FakeIngest, gateway_client, make_batch, running, uid, wait_until
from tests.edge.helpers import alert
from tests.servers import MosquittoServer


def config(mosquitto: MosquittoServer, group: str, client_id: str, **kw: object) -> MqttIngestConfig:
    return MqttIngestConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=client_id,
        group=group,
        session_expiry_s=120,
        receive_maximum=4,
        max_group=2,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        **kw,  # type: ignore[arg-type]
    )


def alert_batch(gateway_id: str, i: int) -> UplinkBatch:
    return UplinkBatch(
        batch_id=f"a-{gateway_id}-{i:05d}", gateway_id=gateway_id, sent_at=T0, alerts=[alert(i)]
    )


class GatedIngest:
    """A stand-in ``IngestService`` (with ``ingest_many``) that records commits in order; telemetry batches
    wait on ``gate`` (a slow database under a telemetry backlog), batches with alert steps do not."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.telemetry_waiting = asyncio.Event()
        self.commits: list[str] = []

    async def _one(self, batch: UplinkBatch) -> UplinkAck:
        if not batch.alerts:
            self.telemetry_waiting.set()
            await self.gate.wait()
        dup = batch.batch_id in self.commits
        if not dup:
            self.commits.append(batch.batch_id)
        return UplinkAck(batch_id=batch.batch_id, duplicate=dup, committed_at=T0)

    async def ingest(self, batch: UplinkBatch, *, gateway_id: str) -> UplinkAck:
        assert batch.gateway_id == gateway_id
        return await self._one(batch)

    async def ingest_many(self, items: Sequence[tuple[UplinkBatch, str]]) -> list[UplinkAck | CloudError]:
        return [await self._one(b) for b, _g in items]


def test_alert_topic_names_its_gateway() -> None:
    assert mqtt_alert_topic("gw-01") == "vigil/v1/gw/gw-01/alert"
    assert gateway_of_topic(mqtt_alert_topic("gw-01")) == "gw-01"
    assert gateway_of_topic("vigil/v1/gw/gw-01/alerts") is None
    cfg = MqttIngestConfig(host="h", client_id="ingest-a-0", group="vigil-ingest").alert_config()
    assert (cfg.client_id, cfg.subscription) == (
        "ingest-a-0-alerts",
        "$share/vigil-ingest-alerts/vigil/v1/gw/+/alert",
    )


async def test_alert_batch_is_committed_and_acked_while_telemetry_backlog_waits(
    mosquitto: MosquittoServer,
) -> None:
    group, gw = f"g{uid()}", f"gw{uid()}"
    service = GatedIngest()
    worker = IngestWorker(config(mosquitto, group, f"w-{uid()}"), service)
    assert worker.alerts is not None
    n = 10  # more than the telemetry session's receive window: part of the backlog waits at the broker
    async with running(worker), gateway_client(mosquitto, gw) as (pub, acks):
        await asyncio.wait_for(worker.alerts.ready.wait(), 10)
        for i in range(n):
            await pub.publish(mqtt_up_topic(gw), make_batch(gw, i).model_dump_json(), qos=1)
        await asyncio.wait_for(service.telemetry_waiting.wait(), 10)  # the telemetry session is stuck
        await pub.publish(mqtt_alert_topic(gw), alert_batch(gw, 1).model_dump_json(), qos=1)
        await wait_until(lambda: len(acks) >= 1)
        # the alert batch was committed and acknowledged first, the whole telemetry backlog still waiting
        assert service.commits == [f"a-{gw}-00001"]
        assert [a["batch_id"] for a in acks] == [f"a-{gw}-00001"]
        service.gate.set()
        await wait_until(lambda: len(acks) >= n + 1)
    assert sorted(service.commits[1:]) == sorted(f"b-{gw}-{i:05d}" for i in range(n))
    assert not any(a.get("duplicate") for a in acks)


async def test_alert_steps_on_the_up_topic_still_work(mosquitto: MosquittoServer) -> None:
    group, gw = f"g{uid()}", f"gw{uid()}"
    service = GatedIngest()
    service.gate.set()
    worker = IngestWorker(config(mosquitto, group, f"w-{uid()}"), service)
    async with running(worker), gateway_client(mosquitto, gw) as (pub, acks):
        mixed = make_batch(gw, 7).model_copy(update={"alerts": [alert(7)]})
        await pub.publish(mqtt_up_topic(gw), alert_batch(gw, 2).model_dump_json(), qos=1)
        await pub.publish(mqtt_up_topic(gw), mixed.model_dump_json(), qos=1)
        await wait_until(lambda: len(acks) >= 2)
    assert sorted(str(a["batch_id"]) for a in acks) == sorted([f"a-{gw}-00002", f"b-{gw}-00007"])
    assert sorted(service.commits) == sorted([f"a-{gw}-00002", f"b-{gw}-00007"])


async def test_gateway_publishes_alert_batches_on_the_alert_lane(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    group, gw = f"g{uid()}", f"gw{uid()}"
    service = GatedIngest()  # gate closed: a telemetry batch on the alert lane would never be acked
    worker = IngestWorker(config(mosquitto, group, f"w-{uid()}", alert_lane=True), service)
    up = MqttUplink(f"mqtt://{mosquitto.host}:{mosquitto.port}", gw, "", timeout_s=10)
    with Outbox(tmp_path / "o.db") as ob:
        ob.commit([], [alert(3)])
        async with running(worker):
            assert worker.alerts is not None
            await asyncio.wait_for(worker.alerts.ready.wait(), 10)
            session = asyncio.create_task(up.run(), name="uplink")
            try:
                await asyncio.wait_for(up.connected.wait(), 10)
                pb = ob.next_batch(gw)
                assert pb is not None and pb.n_alerts == 1
                ack = await up.send(pb)
            finally:
                await cancel_and_wait(session, errors=False)
    assert ack.batch_id == pb.batch_id and service.commits == [pb.batch_id]
    assert up.alert_lane and up.alert_fallbacks_total == 0


async def test_gateway_falls_back_to_up_when_the_cloud_has_no_alert_lane(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    group, gw = f"g{uid()}", f"gw{uid()}"
    service = GatedIngest()
    old_cloud = IngestWorker(config(mosquitto, group, f"w-{uid()}", alert_lane=False), service)
    assert old_cloud.alerts is None
    up = MqttUplink(f"mqtt://{mosquitto.host}:{mosquitto.port}", gw, "", timeout_s=10, alert_fallback_s=0.5)
    with Outbox(tmp_path / "o.db") as ob:
        ob.commit([], [alert(4)])
        async with running(old_cloud):
            session = asyncio.create_task(up.run(), name="uplink")
            try:
                await asyncio.wait_for(up.connected.wait(), 10)
                first = ob.next_batch(gw)
                assert first is not None and first.n_alerts >= 1
                ob.ack(await up.send(first))
                assert not up.alert_lane and up.alert_fallbacks_total == 1
                ob.commit([], [alert(5)])
                second = ob.next_batch(gw)
                assert second is not None
                ob.ack(await up.send(second))  # straight to .../up now: no second fallback
                assert up.alert_fallbacks_total == 1
            finally:
                await cancel_and_wait(session, errors=False)
    assert service.commits == [first.batch_id, second.batch_id]


async def test_gateway_tries_the_alert_lane_again_after_the_fallback_period(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    group, gw = f"g{uid()}", f"gw{uid()}"
    service = GatedIngest()
    old_cloud = IngestWorker(config(mosquitto, group, f"w-{uid()}", alert_lane=False), service)
    up = MqttUplink(
        f"mqtt://{mosquitto.host}:{mosquitto.port}",
        gw,
        "",
        timeout_s=10,
        alert_fallback_s=0.3,
        alert_reprobe_s=0,
    )
    with Outbox(tmp_path / "o.db") as ob:
        async with running(old_cloud):
            session = asyncio.create_task(up.run(), name="uplink")
            try:
                await asyncio.wait_for(up.connected.wait(), 10)
                for i in (6, 7):
                    ob.commit([], [alert(i)])
                    pb = ob.next_batch(gw)
                    assert pb is not None
                    ob.ack(await up.send(pb))
            finally:
                await cancel_and_wait(session, errors=False)
    assert up.alert_fallbacks_total == 2 and len(service.commits) == 2  # the lane was tried each time


async def test_a_cloud_that_answers_nowhere_keeps_the_alert_lane(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    gw = f"gw{uid()}"
    up = MqttUplink(f"mqtt://{mosquitto.host}:{mosquitto.port}", gw, "", timeout_s=0.3, alert_fallback_s=0.3)
    with Outbox(tmp_path / "o.db") as ob:
        ob.commit([], [alert(8)])
        pb = ob.next_batch(gw)
        assert pb is not None
        session = asyncio.create_task(up.run(), name="uplink")
        try:
            await asyncio.wait_for(up.connected.wait(), 10)
            with pytest.raises(UplinkUnavailable) as e:  # no worker at all: the cloud is down, not old
                await up.send(pb)
            assert e.value.reason == "ack_timeout"
        finally:
            await cancel_and_wait(session, errors=False)
    assert up.alert_lane and up.alert_fallbacks_total == 0


async def test_alert_batch_held_by_a_dead_worker_is_redelivered_to_its_alert_session(
    mosquitto: MosquittoServer,
) -> None:
    group, gw, client_id = f"g{uid()}", f"gw{uid()}", f"w-{uid()}"
    core = FakeIngest()
    held = f"b-{gw}-00003"
    batches = [make_batch(gw, i).model_copy(update={"alerts": [alert(i)]}) for i in range(6)]
    crashing = core.for_worker("first", hang_on=held)
    async with gateway_client(mosquitto, gw) as (pub, acks):
        first = IngestWorker(config(mosquitto, group, client_id), crashing)
        async with running(first):
            assert first.alerts is not None
            await asyncio.wait_for(first.alerts.ready.wait(), 10)
            for b in batches:
                await pub.publish(mqtt_alert_topic(gw), b.model_dump_json(), qos=1)
            await asyncio.wait_for(crashing.hung.wait(), 10)
        # dead: the alert batch is committed but neither acknowledged to the gateway nor PUBACKed
        assert held in core.stored and all(a["batch_id"] != held for a in acks)
        async with running(IngestWorker(config(mosquitto, group, client_id), core.for_worker("second"))):
            await wait_until(lambda: {a["batch_id"] for a in acks} == {b.batch_id for b in batches})
    assert core.calls[held] == 2  # redelivered to the same alert session (client id "<id>-alerts")...
    assert [a["duplicate"] for a in acks if a["batch_id"] == held] == [True]  # ...and answered as stored
    assert sorted(core.stored) == sorted(b.batch_id for b in batches)
