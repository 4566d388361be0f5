"""MQTT ingest workers against a real Mosquitto (``mosquitto`` fixture): shared subscriptions split the
stream, manual acks make a crash redeliver, poison messages are answered and do not loop.

Every test uses its own share group, client ids and gateway ids, so tests never see each other's messages
(the up-topic filter is fixed by the contract, ``alerts/contract.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import numpy as np

from alerts.contract import TelemetryBlock, UplinkAck, UplinkBatch, mqtt_ack_topic, mqtt_up_topic
from cloud.errors import PermissionDeniedError, StorageError
from cloud.mqtt_ingest import (
    IngestWorker,
    MqttIngestConfig,
    backoff_delays,
    gateway_of_topic,
)
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from tests.aio import cancel_and_wait
from tests.servers import MosquittoServer

T0 = 1_700_000_000.0


def make_batch(gateway_id: str, i: int, n: int = 5) -> UplinkBatch:
    rb = ReadingBatch(
        kind=DeviceKind.MANHOLE,
        device_id=np.array([f"{gateway_id}-mh{j}" for j in range(n)]),
        seq=np.full(n, i, dtype=np.uint32),
        time=np.full(n, T0 + i),
        battery_pct=np.full(n, 90.0),
        flags=np.zeros(n, dtype=np.uint32),
        values=np.full((n, 8), float(i)),
        fw_version=np.ones(n, dtype=np.uint16),
    )
    return UplinkBatch(
        batch_id=f"b-{gateway_id}-{i:05d}",
        gateway_id=gateway_id,
        sent_at=T0 + i,
        telemetry=[TelemetryBlock.from_batch(rb)],
    )


class FakeIngest:
    """Idempotent on batch_id like cloud.ingest.IngestService; records which worker stored what."""

    def __init__(self) -> None:
        self.stored: dict[str, str] = {}  # batch_id -> worker name
        self.calls: Counter[str] = Counter()
        self.changed = asyncio.Condition()

    def for_worker(self, name: str, *, hang_on: str | None = None, fail_first: int = 0) -> WorkerView:
        return WorkerView(self, name, hang_on, fail_first)


class WorkerView:
    def __init__(self, core: FakeIngest, name: str, hang_on: str | None, fail_first: int) -> None:
        self.core, self.name, self.hang_on, self.fail_left = core, name, hang_on, fail_first
        self.hung = asyncio.Event()

    async def ingest(self, batch: UplinkBatch, *, gateway_id: str) -> UplinkAck:
        assert batch.gateway_id == gateway_id
        self.core.calls[batch.batch_id] += 1
        if self.fail_left > 0:
            self.fail_left -= 1
            raise StorageError("database is down (test)")
        if batch.gateway_id.endswith("-refused"):
            raise PermissionDeniedError("not your devices (test)", device_ids=["x"])
        dup = batch.batch_id in self.core.stored
        if not dup:
            self.core.stored[batch.batch_id] = self.name
        async with self.core.changed:
            self.core.changed.notify_all()
        if batch.batch_id == self.hang_on:
            self.hung.set()
            await asyncio.Event().wait()  # committed, then the worker "dies" before acknowledging
        return UplinkAck(
            batch_id=batch.batch_id,
            duplicate=dup,
            telemetry_stored=0 if dup else len(batch.telemetry[0]),
            committed_at=T0,
        )


def cfg(mosquitto: MosquittoServer, group: str, client_id: str) -> MqttIngestConfig:
    return MqttIngestConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=client_id,
        group=group,
        session_expiry_s=120,
        receive_maximum=4,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )


@contextlib.asynccontextmanager
async def running(worker: IngestWorker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run(), name="test-worker")
    try:
        await asyncio.wait_for(worker.ready.wait(), 10)
        yield task
    finally:
        # bounded, a lost cancel repeated: a worker that ignores its stop fails here with where it waits
        await cancel_and_wait(task)


@contextlib.asynccontextmanager
async def gateway_client(
    mosquitto: MosquittoServer, gateway_id: str
) -> AsyncIterator[tuple[aiomqtt.Client, list[dict[str, object]]]]:
    acks: list[dict[str, object]] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"gw-{uuid.uuid4().hex[:8]}") as c:
        await c.subscribe(mqtt_ack_topic(gateway_id), qos=1)

        async def collect() -> None:
            async for m in c.messages:
                acks.append(json.loads(bytes(m.payload)))

        t = asyncio.create_task(collect(), name="ack-collector")
        try:
            yield c, acks
        finally:
            await cancel_and_wait(t)


async def wait_until(pred: object, timeout: float = 15.0) -> None:
    async def loop() -> None:
        while not pred():  # type: ignore[operator]
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), timeout)


def uid() -> str:
    return uuid.uuid4().hex[:10]


def test_gateway_of_topic() -> None:
    # Topic layout: alerts/contract.py mqtt_up_topic
    assert gateway_of_topic(mqtt_up_topic("gw-01")) == "gw-01"
    assert gateway_of_topic("vigil/v1/gw/gw-01/ack") is None
    assert gateway_of_topic("vigil/v1/gw/bad id/up") is None
    assert gateway_of_topic("vigil/v1/gw//up") is None


def test_backoff_is_bounded_and_grows() -> None:
    import random

    d = backoff_delays(0.5, 8.0, random.Random(1))
    xs = [next(d) for _ in range(20)]
    assert all(0.25 <= x <= 8.0 for x in xs)
    assert max(xs[10:]) > 1.0  # grows past the initial delay


async def test_two_workers_split_a_stream_without_loss_or_double_storage(mosquitto: MosquittoServer) -> None:
    group, gw = f"g{uid()}", f"gw{uid()}"
    core = FakeIngest()
    w1 = IngestWorker(cfg(mosquitto, group, f"w1-{uid()}"), core.for_worker("w1"))
    w2 = IngestWorker(cfg(mosquitto, group, f"w2-{uid()}"), core.for_worker("w2"))
    n = 60
    async with running(w1), running(w2), gateway_client(mosquitto, gw) as (pub, acks):
        for i in range(n):
            await pub.publish(mqtt_up_topic(gw), make_batch(gw, i).model_dump_json(), qos=1)
        await wait_until(lambda: len(acks) >= n)
    assert sorted(core.stored) == sorted(f"b-{gw}-{i:05d}" for i in range(n))
    by_worker = Counter(core.stored.values())
    assert by_worker["w1"] > 0 and by_worker["w2"] > 0, by_worker  # the group really split the stream
    assert all(v == 1 for v in core.calls.values())
    parsed = [UplinkAck.model_validate(a) for a in acks]
    assert sorted(a.batch_id for a in parsed) == sorted(core.stored)
    assert not any(a.duplicate for a in parsed)


async def test_worker_killed_mid_batch_gets_redelivery_stored_once(mosquitto: MosquittoServer) -> None:
    group, gw, client_id = f"g{uid()}", f"gw{uid()}", f"w-{uid()}"
    core = FakeIngest()
    n, crash_at = 12, 3
    crashing = core.for_worker("first", hang_on=f"b-{gw}-{crash_at:05d}")
    async with gateway_client(mosquitto, gw) as (pub, acks):
        async with running(IngestWorker(cfg(mosquitto, group, client_id), crashing)):
            for i in range(n):
                await pub.publish(mqtt_up_topic(gw), make_batch(gw, i).model_dump_json(), qos=1)
            await asyncio.wait_for(crashing.hung.wait(), 10)
        # killed: batch 3 is committed but neither acknowledged to the gateway nor PUBACKed to the broker
        assert f"b-{gw}-{crash_at:05d}" in core.stored
        assert all(a["batch_id"] != f"b-{gw}-{crash_at:05d}" for a in acks)
        restarted = core.for_worker("second")
        async with running(IngestWorker(cfg(mosquitto, group, client_id), restarted)):
            await wait_until(
                lambda: len(core.stored) == n and any(a["batch_id"] == f"b-{gw}-{crash_at:05d}" for a in acks)
            )
            await wait_until(lambda: {a["batch_id"] for a in acks} == set(core.stored))
    assert core.calls[f"b-{gw}-{crash_at:05d}"] == 2  # redelivered once...
    crash_acks = [UplinkAck.model_validate(a) for a in acks if a["batch_id"] == f"b-{gw}-{crash_at:05d}"]
    assert [a.duplicate for a in crash_acks] == [True]  # ...and answered as already stored
    assert sorted(core.stored) == sorted(f"b-{gw}-{i:05d}" for i in range(n))


async def test_malformed_and_forbidden_messages_are_answered_acked_and_do_not_block(
    mosquitto: MosquittoServer,
) -> None:
    group, gw = f"g{uid()}", f"gw{uid()}"
    core = FakeIngest()
    worker = IngestWorker(cfg(mosquitto, group, f"w-{uid()}"), core.for_worker("w"))
    async with running(worker), gateway_client(mosquitto, gw) as (pub, acks):
        await pub.publish(mqtt_up_topic(gw), b"\x00\xffnot json", qos=1)
        await pub.publish(mqtt_up_topic(gw), json.dumps({"batch_id": "b-missing-fields"}), qos=1)
        await pub.publish(mqtt_up_topic(gw), make_batch("someone-else", 1).model_dump_json(), qos=1)
        await pub.publish(mqtt_up_topic(gw), make_batch(gw, 7).model_dump_json(), qos=1)
        await wait_until(lambda: len(acks) >= 4)
    errors = [a for a in acks if "error" in a]
    assert [e["error"] for e in errors] == ["validation", "validation", "forbidden"]
    assert errors[1]["batch_id"] == "b-missing-fields"
    assert errors[2]["batch_id"] == "b-someone-else-00001"
    assert list(core.stored) == [f"b-{gw}-00007"]  # the valid neighbour is stored
    m = worker.metrics.messages
    assert m.labels("malformed")._value.get() == 2
    assert m.labels("rejected")._value.get() == 1
    assert m.labels("stored")._value.get() == 1
    assert core.calls == Counter({f"b-{gw}-00007": 1})  # poison never reached the service, nothing looped


async def test_service_refusal_is_answered_with_its_error_code(mosquitto: MosquittoServer) -> None:
    group, gw = f"g{uid()}", f"gw{uid()}-refused"
    core = FakeIngest()
    async with (
        running(IngestWorker(cfg(mosquitto, group, f"w-{uid()}"), core.for_worker("w"))),
        gateway_client(mosquitto, gw) as (pub, acks),
    ):
        await pub.publish(mqtt_up_topic(gw), make_batch(gw, 1).model_dump_json(), qos=1)
        await wait_until(lambda: len(acks) >= 1)
    assert acks == [{"batch_id": f"b-{gw}-00001", "error": "forbidden", "detail": "not your devices (test)"}]


async def test_storage_errors_are_retried_until_stored(mosquitto: MosquittoServer) -> None:
    group, gw = f"g{uid()}", f"gw{uid()}"
    core = FakeIngest()
    worker = IngestWorker(cfg(mosquitto, group, f"w-{uid()}"), core.for_worker("w", fail_first=3))
    async with running(worker), gateway_client(mosquitto, gw) as (pub, acks):
        await pub.publish(mqtt_up_topic(gw), make_batch(gw, 1).model_dump_json(), qos=1)
        await wait_until(lambda: len(acks) >= 1)
    assert core.calls[f"b-{gw}-00001"] == 4
    assert UplinkAck.model_validate(acks[0]).duplicate is False
    assert worker.metrics.storage_retries._value.get() == 3


async def test_worker_reconnects_after_broker_restart(tmp_path: object) -> None:
    from tests.servers import start_mosquitto

    broker = start_mosquitto(tmp_path)  # type: ignore[arg-type]
    try:
        group, gw = f"g{uid()}", f"gw{uid()}"
        core = FakeIngest()
        worker = IngestWorker(cfg(broker, group, f"w-{uid()}"), core.for_worker("w"))
        async with running(worker):
            broker.restart()  # same port, persistent session on disk
            await wait_until(lambda: worker.metrics.connects._value.get() >= 2)
            await asyncio.wait_for(worker.ready.wait(), 10)
            async with gateway_client(broker, gw) as (pub, acks):
                await pub.publish(mqtt_up_topic(gw), make_batch(gw, 1).model_dump_json(), qos=1)
                await wait_until(lambda: len(acks) >= 1)
        assert list(core.stored) == [f"b-{gw}-00001"]
    finally:
        broker.stop()


async def test_a_flood_with_a_slow_service_stays_bounded_and_loses_nothing(
    mosquitto: MosquittoServer,
) -> None:
    """The worker stops reading the socket instead of queueing without bound (conventions: every queue is
    bounded); nothing is dropped, nothing is stored twice."""
    group, gw = f"g{uid()}", f"gw{uid()}"
    core = FakeIngest()
    view = core.for_worker("slow")
    gate = asyncio.Event()
    inner = view.ingest

    async def slow_ingest(batch: UplinkBatch, *, gateway_id: str) -> UplinkAck:
        await gate.wait()  # the database is stalled until the whole flood has been published
        return await inner(batch, gateway_id=gateway_id)

    view.ingest = slow_ingest  # type: ignore[method-assign]
    worker = IngestWorker(cfg(mosquitto, group, f"w-{uid()}"), view)
    peak = 0
    deliver = worker._deliver

    def spy(d: object) -> None:
        nonlocal peak
        deliver(d)  # type: ignore[arg-type]
        peak = max(peak, worker._queue.qsize())

    worker._deliver = spy  # type: ignore[method-assign]
    n = 150
    async with running(worker), gateway_client(mosquitto, gw) as (pub, acks):
        for i in range(n):
            await pub.publish(mqtt_up_topic(gw), make_batch(gw, i).model_dump_json(), qos=1)
        gate.set()
        await wait_until(lambda: len(acks) >= n, timeout=30)
    assert peak <= worker._queue.maxsize
    assert worker.metrics.dropped._value.get() == 0
    assert sorted(core.stored) == sorted(f"b-{gw}-{i:05d}" for i in range(n))
    assert all(v == 1 for v in core.calls.values())


_CRASHING_WORKER = r"""
import asyncio, sqlite3, sys
sys.path.insert(0, sys.argv[1])
from alerts.contract import UplinkAck
from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig

host, port, group, client_id, db, hang_on = sys.argv[2:8]

class FileIngest:
    async def ingest(self, batch, *, gateway_id):
        with sqlite3.connect(db) as c:
            c.execute("CREATE TABLE IF NOT EXISTS b (id TEXT PRIMARY KEY)")
            dup = c.execute("INSERT OR IGNORE INTO b VALUES (?)", (batch.batch_id,)).rowcount == 0
        c.close()
        if batch.batch_id == hang_on:
            print("HUNG", flush=True)  # committed; now wait to be killed before acknowledging
            await asyncio.Event().wait()
        return UplinkAck(batch_id=batch.batch_id, duplicate=dup, committed_at=0)

cfg = MqttIngestConfig(host=host, port=int(port), client_id=client_id, group=group, session_expiry_s=120)
asyncio.run(IngestWorker(cfg, FileIngest()).run())
"""


async def test_worker_process_killed_with_sigkill_gets_redelivery(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """A real crash: the worker process dies with SIGKILL (no DISCONNECT, no PUBACK) after committing."""
    import sqlite3
    import sys

    group, gw, client_id = f"g{uid()}", f"gw{uid()}", f"w-{uid()}"
    db = tmp_path / "ingested.db"
    hang_on = f"b-{gw}-00002"
    script = tmp_path / "worker.py"
    script.write_text(_CRASHING_WORKER)
    root = str(Path(__file__).resolve().parents[2])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        root,
        mosquitto.host,
        str(mosquitto.port),
        group,
        client_id,
        str(db),
        hang_on,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with gateway_client(mosquitto, gw) as (pub, acks):
            # the subprocess subscribes in its own time: publish batch 0 until it is acknowledged
            async def first_acked() -> None:
                while not acks:
                    await pub.publish(mqtt_up_topic(gw), make_batch(gw, 0).model_dump_json(), qos=1)
                    await asyncio.sleep(0.2)

            await asyncio.wait_for(first_acked(), 20)
            for i in range(1, 6):
                await pub.publish(mqtt_up_topic(gw), make_batch(gw, i).model_dump_json(), qos=1)
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"HUNG"
            proc.kill()
            await proc.wait()
            assert all(a["batch_id"] != hang_on for a in acks)

            core = FakeIngest()  # the restarted worker, same client id: resumes the session
            with sqlite3.connect(db) as c:
                for (bid,) in c.execute("SELECT id FROM b"):
                    core.stored[bid] = "crashed"
            c.close()
            async with running(IngestWorker(cfg(mosquitto, group, client_id), core.for_worker("restarted"))):
                await wait_until(lambda: {f"b-{gw}-{i:05d}" for i in range(6)} <= set(core.stored))
                await wait_until(lambda: any(a["batch_id"] == hang_on for a in acks))
        assert core.calls[hang_on] == 1  # redelivered to the restarted worker...
        assert [a["duplicate"] for a in acks if a["batch_id"] == hang_on] == [True]  # ...stored once
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
