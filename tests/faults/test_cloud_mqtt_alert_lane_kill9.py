"""``kill -9`` of MQTT ingest workers while they hold alert batches of the alert lane
(``vigil/v1/gw/{id}/alert``, issue 12): nothing the broker acknowledged is lost, nothing is stored twice.

As ``test_cloud_mqtt_worker_kill9.py`` (whose kit this reuses), but each gateway publishes as a gateway
does: batches carrying alert steps on ``.../alert``, telemetry-only batches on ``.../up``. A killed
worker's alert session (client id ``<client-id>-0-alerts``) comes back with the restarted process and the
broker redelivers the alert batches it held un-acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import httpx

from alerts.contract import UplinkBatch, mqtt_ack_topic, mqtt_alert_topic, mqtt_up_topic
from cloud.db import Database
from tests.faults.ledger import Ledger, scale
from tests.faults.test_cloud_kill9 import make_batch
from tests.faults.test_cloud_mqtt_worker_kill9 import (
    WorkerProcess,
    doubles_by_counter,
    mqtt_env,
    provision_fleet,
    reconcile,
    wait_stored,
    watch,
)
from tests.servers import MosquittoServer, PostgresServer


@dataclass
class LanedWorkerProcess(WorkerProcess):
    """Ready once every worker's *two* sessions (telemetry and alert lane) have connected."""

    async def _wait_subscribed(self, url: str, timeout: float) -> None:
        assert self.proc is not None
        async with httpx.AsyncClient() as client, asyncio.timeout(timeout):
            while True:  # an external process: poll its metrics until both sessions of every worker connected
                assert self.proc.poll() is None, self.tail()
                with contextlib.suppress(httpx.HTTPError):
                    for line in (await client.get(url, timeout=2)).text.splitlines():
                        name, _, value = line.partition(" ")
                        if name == "vigil_cloud_mqtt_connects_total" and float(value) >= 2 * self.workers:
                            return
                await asyncio.sleep(0.05)


@dataclass
class LaneGateway:
    """Publishes QoS 1 batches at a steady pace, those with alert steps on the alert lane; ``accepted``
    holds the batches the broker PUBACKed (the same contract as ``MqttGateway``, without resends)."""

    gateway_id: str
    devices: list[str]
    t0: float
    broker: MosquittoServer
    pace_s: float = 0.05
    sent: list[UplinkBatch] = field(default_factory=list)
    accepted: dict[str, UplinkBatch] = field(default_factory=dict)
    acks: list[dict[str, object]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        k = 0
        while not stop.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    self.broker.host, self.broker.port, identifier=f"gw-{uuid.uuid4().hex[:8]}", timeout=5
                ) as c:
                    await c.subscribe(mqtt_ack_topic(self.gateway_id), qos=0)
                    collector = asyncio.create_task(self._collect(c), name=f"acks[{self.gateway_id}]")
                    try:
                        while not stop.is_set():
                            k += 1
                            batch = make_batch(self.gateway_id, self.devices, k, self.t0, alert_every=2)
                            self.sent.append(batch)
                            topic = (mqtt_alert_topic if batch.alerts else mqtt_up_topic)(self.gateway_id)
                            await c.publish(topic, batch.model_dump_json(), qos=1)
                            self.accepted[batch.batch_id] = batch  # the broker's PUBACK arrived
                            await asyncio.sleep(self.pace_s)
                    finally:
                        collector.cancel()
                        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                            await collector
            await asyncio.sleep(0.1)

    async def _collect(self, c: aiomqtt.Client) -> None:
        async for m in c.messages:
            self.acks.append(json.loads(bytes(m.payload)))


async def test_mqtt_workers_killed_mid_alert_batch_lose_and_double_nothing(
    tmp_path: Path, pg_server: PostgresServer, mosquitto: MosquittoServer
) -> None:
    rng = random.Random(12)
    url = pg_server.create_database("vigil_mqtt_alert_lane_kill9")
    group = f"lane{uuid.uuid4().hex[:6]}"
    env = mqtt_env(tmp_path, url, mosquitto, group)
    fleet = await asyncio.to_thread(provision_fleet, env, scale(3, 4), scale(30, 60))
    db = Database(url)
    workers: list[WorkerProcess] = [
        LanedWorkerProcess(env, tmp_path / f"worker{i}.log", client_id=f"ingest-lane-{group}-{i}")
        for i in range(2)
    ]
    gateways = [LaneGateway(gw, fleet.devices[gw], time.time() - 6 * 3600, mosquitto) for gw in fleet.tokens]
    ledger = Ledger("cloud_mqtt_alert_lane_kill9")
    stop, publishing = asyncio.Event(), asyncio.Event()
    try:
        await asyncio.gather(*(w.start() for w in workers))
        pubs = [asyncio.create_task(g.run(publishing), name=f"gateway[{g.gateway_id}]") for g in gateways]
        watcher = asyncio.create_task(watch(workers, stop), name="watch-workers")
        for _ in range(scale(2, 40)):
            await asyncio.sleep(rng.uniform(0.3, 1.2))  # a random moment while alert batches are in flight
            victim = rng.choice(workers)
            victim.kill9()
            ledger.kills += 1
            if watcher.done():
                watcher.result()
            await victim.start(timeout=scale(60, 300))
            ledger.restarts += 1
        publishing.set()
        await asyncio.gather(*pubs)
        accepted = [b for g in gateways for b in g.accepted.values()]
        assert await wait_stored(db, {b.batch_id for b in accepted}), (
            "accepted batches missing from the store"
        )
        stop.set()
        await watcher
        codes = [w.stop() for w in workers]
        assert set(codes) <= {0, -signal.SIGTERM}, [w.tail() for w in workers]
        reconcile(ledger, db, gateways, accepted)  # type: ignore[arg-type]
        print(ledger.summary(), ledger.extra)
        ledger.check()
        doubles_by_counter(ledger, accepted)()
        # the alert batches had no subscriber but the workers' alert sessions: stored means the lane took them
        assert any(b.alerts for b in accepted) and ledger.kills > 0
    finally:
        stop.set()
        publishing.set()
        for w in workers:
            w.ensure_dead()
        db.close()
