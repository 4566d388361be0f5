"""MQTT ingest workers under load, against a real Mosquitto: waiting messages are committed together, and a
worker that falls behind shows it in its metrics (backlog, age of the oldest message, reading paused).

Helpers (the stand-in ingest service, the gateway client) come from ``test_mqtt_ingest.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from alerts.contract import UplinkAck, UplinkBatch, mqtt_up_topic
from cloud.errors import CloudError, StorageError
from cloud.limits import RateLimitedError
from cloud.mqtt_ingest import GroupIngestor, IngestWorker, MqttIngestConfig, MqttIngestMetrics
from tests.cloud.test_mqtt_ingest import (
    FakeIngest,
    WorkerView,
    gateway_client,
    make_batch,
    running,
    uid,
    wait_until,
)
from tests.servers import MosquittoServer


def config(mosquitto: MosquittoServer, group: str, client_id: str) -> MqttIngestConfig:
    return MqttIngestConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=client_id,
        group=group,
        session_expiry_s=120,
        receive_maximum=8,
        max_group=4,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )


class GroupView(WorkerView):
    """The stand-in service with ``ingest_many``: one "transaction" per call, recorded; waits on a gate."""

    def __init__(self, core: FakeIngest, *, refuse: str | None = None, fail_first: int = 0) -> None:
        super().__init__(core, "grouped", None, 0)
        self.gate = asyncio.Event()
        self.groups: list[list[str]] = []
        self.refuse = refuse
        self.group_failures_left = fail_first

    async def ingest(self, batch: UplinkBatch, *, gateway_id: str) -> UplinkAck:
        await self.gate.wait()
        self.groups.append([batch.batch_id])
        return await super().ingest(batch, gateway_id=gateway_id)

    async def ingest_many(self, items: Sequence[tuple[UplinkBatch, str]]) -> list[UplinkAck | CloudError]:
        await self.gate.wait()
        if self.group_failures_left > 0:  # the whole transaction failed: nothing of it is stored
            self.group_failures_left -= 1
            raise StorageError("database is down (test)")
        self.groups.append([b.batch_id for b, _ in items])
        out: list[UplinkAck | CloudError] = []
        for batch, gateway_id in items:
            if batch.batch_id == self.refuse:
                out.append(RateLimitedError("over quota (test)", retry_after_s=2.0))
            else:
                out.append(await super().ingest(batch, gateway_id=gateway_id))
        return out


def sample(metrics: MqttIngestMetrics, name: str, worker: str | None = None) -> float:
    value = metrics.registry.get_sample_value(name, {"worker": worker} if worker else {})
    assert value is not None, name
    return value


async def test_waiting_messages_are_committed_together_and_each_answered(mosquitto: MosquittoServer) -> None:
    group, gw, client_id = f"g{uid()}", f"gw{uid()}", f"w-{uid()}"
    core = FakeIngest()
    view = GroupView(core, refuse=f"b-{gw}-00005", fail_first=1)
    assert isinstance(view, GroupIngestor)
    worker = IngestWorker(config(mosquitto, group, client_id), view)
    n = 12
    async with running(worker), gateway_client(mosquitto, gw) as (pub, acks):
        for i in range(n):
            await pub.publish(mqtt_up_topic(gw), make_batch(gw, i).model_dump_json(), qos=1)
        await wait_until(lambda: worker.backlog()[0] >= 4)  # the stalled service lets them pile up
        view.gate.set()
        await wait_until(lambda: len(acks) >= n)
        await wait_until(lambda: worker.backlog()[0] == 0)
    # several messages per transaction (at most max_group), every batch exactly once in some group
    assert max(len(g) for g in view.groups) > 1
    assert max(len(g) for g in view.groups) <= 4
    assert sorted(b for g in view.groups for b in g) == sorted(f"b-{gw}-{i:05d}" for i in range(n))
    assert worker.metrics.storage_retries._value.get() == 1  # the failed group was retried whole
    # each gateway answer: stored ones acknowledged, the refused one answered with its error, nothing lost
    refused = [a for a in acks if a.get("error")]
    assert refused == [
        {
            "batch_id": f"b-{gw}-00005",
            "error": "rate_limited",
            "detail": "over quota (test)",
            "retry_after_s": 2.0,
        }
    ]
    stored = {UplinkAck.model_validate(a).batch_id for a in acks if not a.get("error")}
    assert stored == {f"b-{gw}-{i:05d}" for i in range(n)} - {f"b-{gw}-00005"}
    assert sorted(core.stored) == sorted(stored)
    assert sample(worker.metrics, "vigil_cloud_mqtt_group_messages_sum") == n

    # every message was PUBACKed: the same session resumed later redelivers nothing. A resumed session
    # sends what it kept before anything new, so once a new batch is answered, nothing old is coming.
    again = GroupView(core)
    again.gate.set()
    worker2 = IngestWorker(config(mosquitto, group, client_id), again)
    async with running(worker2), gateway_client(mosquitto, gw) as (pub, acks2):
        await pub.publish(mqtt_up_topic(gw), make_batch(gw, n).model_dump_json(), qos=1)
        await wait_until(lambda: len(acks2) >= 1)
    assert again.groups == [[f"b-{gw}-{n:05d}"]]
    assert all(v == 1 for v in core.calls.values())


async def test_a_worker_that_falls_behind_shows_it_in_its_metrics(mosquitto: MosquittoServer) -> None:
    group, gw, client_id = f"g{uid()}", f"gw{uid()}", f"w-{uid()}"
    core = FakeIngest()
    view = core.for_worker("slow")
    gate = asyncio.Event()
    inner = view.ingest

    async def slow_ingest(batch: UplinkBatch, *, gateway_id: str) -> UplinkAck:
        await gate.wait()  # the database stalls
        return await inner(batch, gateway_id=gateway_id)

    view.ingest = slow_ingest  # type: ignore[method-assign]
    metrics = MqttIngestMetrics()
    worker = IngestWorker(config(mosquitto, group, client_id), view, metrics=metrics)
    n = 30
    async with running(worker), gateway_client(mosquitto, gw) as (pub, acks):
        assert sample(metrics, "vigil_cloud_mqtt_backlog_messages", client_id) == 0
        assert sample(metrics, "vigil_cloud_mqtt_oldest_message_age_seconds", client_id) == 0
        for i in range(n):
            await pub.publish(mqtt_up_topic(gw), make_batch(gw, i).model_dump_json(), qos=1)
        # behind: its receive window is full (the rest waits at the broker) and the oldest one's age grows
        await wait_until(lambda: sample(metrics, "vigil_cloud_mqtt_saturated", client_id) == 1)
        backlog = sample(metrics, "vigil_cloud_mqtt_backlog_messages", client_id)
        assert backlog >= 4
        first_age = sample(metrics, "vigil_cloud_mqtt_oldest_message_age_seconds", client_id)
        await wait_until(
            lambda: (
                sample(metrics, "vigil_cloud_mqtt_oldest_message_age_seconds", client_id) > first_age + 0.2
            )
        )
        assert sample(metrics, "vigil_cloud_mqtt_message_seconds_count") == 0  # nothing acknowledged yet
        gate.set()  # the database is back: the worker catches up and the gauges fall back
        await wait_until(lambda: len(acks) >= n, timeout=30)
        await wait_until(lambda: sample(metrics, "vigil_cloud_mqtt_backlog_messages", client_id) == 0)
        assert sample(metrics, "vigil_cloud_mqtt_oldest_message_age_seconds", client_id) == 0
        assert sample(metrics, "vigil_cloud_mqtt_saturated", client_id) == 0
    assert sample(metrics, "vigil_cloud_mqtt_message_seconds_count") == n
    # the stalled ones waited at least as long as the stall was observed
    assert sample(metrics, "vigil_cloud_mqtt_message_seconds_sum") > first_age
    assert sorted(core.stored) == sorted(f"b-{gw}-{i:05d}" for i in range(n))
    assert all(v == 1 for v in core.calls.values())


async def test_a_group_failing_unexpectedly_is_ingested_one_by_one(mosquitto: MosquittoServer) -> None:
    """A bug behind ``ingest_many`` (not a storage error) must not block the group: the worker falls back
    to one ``ingest`` per message, so a poison batch only ever poisons itself."""
    group, gw = f"g{uid()}", f"gw{uid()}"
    core = FakeIngest()

    class Broken(GroupView):
        group_calls = 0

        async def ingest_many(self, items: Sequence[tuple[UplinkBatch, str]]) -> list[UplinkAck | CloudError]:
            await self.gate.wait()
            self.group_calls += 1
            raise RuntimeError("bug in the group path (test)")

    view = Broken(core)
    worker = IngestWorker(config(mosquitto, group, f"w-{uid()}"), view)
    n = 8
    async with running(worker), gateway_client(mosquitto, gw) as (pub, acks):
        for i in range(n):
            await pub.publish(mqtt_up_topic(gw), make_batch(gw, i).model_dump_json(), qos=1)
        await wait_until(lambda: worker.backlog()[0] >= 2)
        view.gate.set()
        await wait_until(lambda: len(acks) >= n)
    assert view.group_calls >= 1  # a group was tried...
    assert view.groups and all(len(g) == 1 for g in view.groups)  # ...and every batch went through ingest()
    assert sorted(core.stored) == sorted(f"b-{gw}-{i:05d}" for i in range(n))
    assert all(v == 1 for v in core.calls.values())
    assert not any(a.get("error") for a in acks)
