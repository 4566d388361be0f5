"""``kill -9`` of MQTT ingest workers mid-batch, again and again: nothing the broker acknowledged is lost,
nothing is stored twice (issue 11).

Two ``vigil cloud mqtt-ingest`` processes (as deployed: the app's ingest service, PostgreSQL for the
database and the time series) share the broker's subscription. Gateways publish QoS 1 batches (readings
and alert steps) at a steady rate; a batch counts as *accepted* when the broker's PUBACK arrived, and the
gateways do not resend anything. Meanwhile the test SIGKILLs a random worker process at seeded random
moments and starts it again with the same client id, so its broker session (and every batch it held
un-acknowledged) comes back to it. A worker acknowledges only after the commit, so a kill between commit
and PUBACK redelivers a stored batch, which is answered ``duplicate=true`` and stored once.

The helpers here (worker processes, publishing gateways, the store reader) are shared by
``test_broker_restart.py`` and ``test_cloud_pg_restart.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import httpx
from sqlalchemy import text

from alerts.contract import UplinkBatch, mqtt_ack_topic, mqtt_up_topic
from cloud.db import Database
from tests.faults.ledger import Ledger, long_run, scale
from tests.faults.test_cloud_kill9 import (
    CloudProcess,
    Fleet,
    batches_and_counters,
    cloud_env,
    make_batch,
    provision,
    reading_keys,
    step_keys,
    stored_readings_pg,
    stored_steps,
)
from tests.servers import MosquittoServer, PostgresServer, free_port


# --- worker processes -----------------------------------------------------------------------------------
@dataclass
class WorkerProcess(CloudProcess):
    """``vigil cloud mqtt-ingest --client-id <stable id>``: restarting it resumes its broker sessions."""

    client_id: str = ""
    workers: int = 1
    metrics_port: int = field(default_factory=free_port)

    async def start(self, timeout: float = 60.0) -> None:
        self.proc = self.spawn(
            "mqtt-ingest",
            "--workers",
            str(self.workers),
            "--client-id",
            self.client_id,
            "--metrics-port",
            str(self.metrics_port),
        )
        self.starts += 1
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            await self._wait_subscribed(url, timeout)
        except TimeoutError:
            raise AssertionError(
                f"worker {self.client_id} did not subscribe within {timeout} s of its start "
                f"(start {self.starts}): {self.tail()}"
            ) from None

    async def _wait_subscribed(self, url: str, timeout: float) -> None:
        assert self.proc is not None
        async with httpx.AsyncClient() as client, asyncio.timeout(timeout):
            while True:  # an external process: poll its metrics until every worker has subscribed
                assert self.proc.poll() is None, self.tail()
                with contextlib.suppress(httpx.HTTPError):
                    for line in (await client.get(url, timeout=2)).text.splitlines():
                        name, _, value = line.partition(" ")
                        if name == "vigil_cloud_mqtt_connects_total" and float(value) >= self.workers:
                            return
                await asyncio.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def mqtt_env(tmp_path: Path, url: str, broker: MosquittoServer, group: str, **extra: str) -> dict[str, str]:
    """One deployment on PostgreSQL (database and time series), workers on ``broker`` in share ``group``."""
    return cloud_env(
        tmp_path,
        url,
        url,
        VIGIL_CLOUD_MQTT_HOST=broker.host,
        VIGIL_CLOUD_MQTT_PORT=str(broker.port),
        VIGIL_CLOUD_MQTT_GROUP=group,
        VIGIL_CLOUD_RUN_JOBS="false",  # a district runs jobs in their own processes (docs/deploy-district.md)
        **extra,
    )


# --- gateways publishing over MQTT ----------------------------------------------------------------------
@dataclass
class MqttGateway:
    """A gateway publishing QoS 1 batches at a steady pace. ``accepted`` holds the batches the broker
    PUBACKed; a publish the broker did not acknowledge (broker down) is not accepted and, if ``resend``,
    published again after a reconnect (same batch id), as the gateway's outbox does."""

    gateway_id: str
    devices: list[str]
    t0: float
    broker: MosquittoServer
    pace_s: float = 0.03
    resend: bool = False
    sent: list[UplinkBatch] = field(default_factory=list)
    accepted: dict[str, UplinkBatch] = field(default_factory=dict)
    accepted_at: dict[str, float] = field(default_factory=dict)
    acks: list[dict[str, object]] = field(default_factory=list)
    unacked_publishes: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        k = 0
        pending: UplinkBatch | None = None
        while not stop.is_set():
            try:
                async with aiomqtt.Client(
                    self.broker.host, self.broker.port, identifier=f"gw-{uuid.uuid4().hex[:8]}", timeout=5
                ) as c:
                    await c.subscribe(mqtt_ack_topic(self.gateway_id), qos=0)
                    collector = asyncio.create_task(self._collect(c), name=f"acks[{self.gateway_id}]")
                    try:
                        while not stop.is_set():
                            if pending is None:
                                k += 1
                                pending = make_batch(self.gateway_id, self.devices, k, self.t0)
                                self.sent.append(pending)
                            await c.publish(mqtt_up_topic(self.gateway_id), pending.model_dump_json(), qos=1)
                            self.accepted[pending.batch_id] = pending  # the broker's PUBACK arrived
                            self.accepted_at[pending.batch_id] = time.monotonic()
                            pending = None
                            await asyncio.sleep(self.pace_s)
                    finally:
                        collector.cancel()
                        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                            await collector
            except aiomqtt.MqttError:  # the broker went away: this publish was not acknowledged
                self.unacked_publishes += pending is not None
                if not self.resend:
                    pending = None
                await asyncio.sleep(0.1)

    async def _collect(self, c: aiomqtt.Client) -> None:
        async for m in c.messages:
            self.acks.append(json.loads(bytes(m.payload)))


# --- the store ------------------------------------------------------------------------------------------
def ingested(db: Database) -> set[str]:
    with db.read() as s:
        return {b for (b,) in s.execute(text("SELECT batch_id FROM ingested_batches"))}


async def wait_stored(db: Database, want: set[str], stall_s: float = 30.0, cap_s: float = 900.0) -> bool:
    """Poll the database until every batch in ``want`` is committed; False once nothing new was committed
    for ``stall_s`` seconds (the ledger then says what is missing). A large backlog may take long to drain,
    so only a stall ends the wait early."""
    start = last_change = time.monotonic()
    seen = -1
    while time.monotonic() - last_change < stall_s and time.monotonic() - start < cap_s:
        have = await asyncio.to_thread(ingested, db)
        if want <= have:
            return True
        if len(have) != seen:
            seen, last_change = len(have), time.monotonic()
        await asyncio.sleep(0.2)
    return False


def reconcile(ledger: Ledger, db: Database, gateways: list[MqttGateway], accepted: list[UplinkBatch]) -> None:
    """Fill ``ledger`` from the store: readings and alert steps of ``accepted`` batches, once each."""
    sent = [b for g in gateways for b in g.sent]
    ledger.sent = sum(len(list(reading_keys(b))) + len(b.alerts) for b in sent)
    keys = [k for b in accepted for k in (*reading_keys(b), *step_keys(b))]
    ledger.reconcile(keys, stored_readings_pg(db) + stored_steps(db))
    batches, readings_total = batches_and_counters(db)
    ledger.extra.update(
        batches_published=len(sent),
        batches_accepted=len(accepted),
        batches_stored=len(batches),
        batches_stored_twice=sum(n > 1 for n in batches.values()),
        readings_total_counter=readings_total,
        duplicate_acks=sum(1 for g in gateways for a in g.acks if a.get("duplicate")),
    )


def provision_fleet(env: dict[str, str], gateways: int, devices: int) -> Fleet:
    """Gateways with ids of their own (``gw-<group>-NN``): tests sharing a broker never see each other's
    acks."""
    return provision(env, gateways, devices, prefix=f"gw-{env['VIGIL_CLOUD_MQTT_GROUP']}")


async def watch(procs: list[WorkerProcess], stop: asyncio.Event) -> None:
    """Fail at once when a worker process exits on its own (a crash loop is a bug)."""
    while not stop.is_set():
        for p in procs:
            if p.proc is not None and p.proc.poll() is not None:
                raise AssertionError(f"worker {p.client_id} exited with {p.proc.returncode}: {p.tail()}")
        await asyncio.sleep(0.1)


def doubles_by_counter(ledger: Ledger, accepted: list[UplinkBatch]) -> Callable[[], None]:
    def check() -> None:
        n = sum(len(blk) for b in accepted for blk in b.telemetry)
        got = ledger.extra["readings_total_counter"]
        assert got == n, f"devices.readings_total is {got}, {n} readings accepted (a batch committed twice?)"
        assert ledger.extra["batches_stored_twice"] == 0

    return check


# --- the scenario ---------------------------------------------------------------------------------------
async def test_mqtt_workers_killed_mid_batch_lose_and_double_nothing(
    tmp_path: Path, pg_server: PostgresServer, mosquitto: MosquittoServer
) -> None:
    rng = random.Random(21)
    url = pg_server.create_database("vigil_mqtt_kill9")
    group = f"faults{uuid.uuid4().hex[:6]}"
    env = mqtt_env(tmp_path, url, mosquitto, group)
    fleet = await asyncio.to_thread(provision_fleet, env, scale(3, 4), scale(30, 60))
    db = Database(url)
    workers = [
        WorkerProcess(env, tmp_path / f"worker{i}.log", client_id=f"ingest-faults-{group}-{i}")
        for i in range(2)
    ]
    t0 = time.time() - 6 * 3600
    pace = 0.05 if long_run() else 0.1  # seconds between one gateway's batches
    gateways = [MqttGateway(gw, fleet.devices[gw], t0, mosquitto, pace_s=pace) for gw in fleet.tokens]
    ledger = Ledger("cloud_mqtt_worker_kill9")
    stop, publishing = asyncio.Event(), asyncio.Event()
    try:
        await asyncio.gather(*(w.start() for w in workers))
        pubs = [asyncio.create_task(g.run(publishing), name=f"gateway[{g.gateway_id}]") for g in gateways]
        watcher = asyncio.create_task(watch(workers, stop), name="watch-workers")
        restart_s: list[float] = []  # kill -> the restarted worker subscribed again
        for _ in range(scale(1, 40)):
            await asyncio.sleep(rng.uniform(0.3, 1.2))  # a random moment while batches are in flight
            victim = rng.choice(workers)
            victim.kill9()  # the watcher ignores a process we killed (proc is None until restarted)
            ledger.kills += 1
            if watcher.done():
                watcher.result()
            t_start = time.monotonic()
            await victim.start(timeout=scale(60, 300))
            restart_s.append(round(time.monotonic() - t_start, 1))
            ledger.restarts += 1
        publishing.set()
        await asyncio.gather(*pubs)
        accepted = [b for g in gateways for b in g.accepted.values()]
        await wait_stored(db, {b.batch_id for b in accepted})
        stop.set()
        await watcher
        codes = [w.stop() for w in workers]
        assert set(codes) <= {0, -signal.SIGTERM}, [w.tail() for w in workers]
        reconcile(ledger, db, gateways, accepted)
        ledger.extra["restart_to_subscribed_s_max"] = max(restart_s)
        print(ledger.summary(), ledger.extra)
        ledger.check()
        doubles_by_counter(ledger, accepted)()
        assert ledger.accepted > 0 and ledger.kills > 0
    finally:
        stop.set()
        publishing.set()
        for w in workers:
            w.ensure_dead()
        db.close()
