"""Broker restarts under the gateway's MQTT uplink: nothing the gateway accepted is lost or stored twice.

The gateway (a real ``vigil gateway`` subprocess reading SLIP frames from a pseudo-terminal) uplinks with
``[uplink] mode = "mqtt"``: batches go QoS 1 to ``vigil/v1/gw/{id}/up`` on a real Mosquitto running the
shipped ``deploy/mosquitto/vigil-durability.conf``; two of the cloud's MQTT ingest workers
(``cloud/mqtt_ingest.py``, shared subscription, PUBACK after commit) store them through the real ingest
service into the cloud's SQLite time-series store and answer on the gateway's ack topic. The broker is
restarted again and again at random moments (seeded) while frames flow: alternately ``kill -9`` (it loses
what it had not saved yet) and a clean stop. A record leaves the gateway's outbox only on the cloud's ack,
so at the end every frame the gateway accepted must be in the store exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import tty
from pathlib import Path

import pytest

from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig
from firmware_bridge.framing import encode_frame
from tests.aio import cancel_and_wait
from tests.edge.helpers import device_id, manhole_payload
from tests.edge.test_daemon_kill9 import write_all
from tests.faults.gateway_kit import (
    Daemon,
    Key,
    accepted_keys,
    durable_broker_config,
    load,
    poll,
    real_cloud,
    store_keys,
    waiting,
    write_config,
)
from tests.faults.ledger import Ledger, scale
from tests.servers import free_port, start_mosquitto

N_DEV = 200
GW = "gw-faults-broker"


@pytest.mark.parametrize("seed", [41])
async def test_broker_restarts_lose_nothing_the_gateway_accepted(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    restarts = scale(3, 40)
    ledger = Ledger("gateway_broker_restart")
    broker = await asyncio.to_thread(start_mosquitto, tmp_path / "broker", None, durable_broker_config())
    (tmp_path / "cloud").mkdir()
    ts_path = tmp_path / "cloud" / "vigil-ts.db"
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    metrics_port = free_port()
    config = write_config(
        tmp_path / "gateway.toml",
        gateway_id=GW,
        data_dir=tmp_path / "data",
        sources=f'[[sources.serial]]\nname = "radio0"\nport = "{os.ttyname(slave)}"',
        uplink=f'[uplink]\nmode = "mqtt"\nurl = "mqtt://{broker.host}:{broker.port}"\ntimeout_s = 2\n'
        "batch_max_records = 300\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.5\n",
        metrics_port=metrics_port,
    )
    outbox = tmp_path / "data" / "outbox.sqlite3"
    daemon = Daemon(config, metrics_port, tmp_path / "daemon.log", "radio0")
    sent: set[Key] = set()
    seq = 0
    kinds = {"kill -9": 0, "clean": 0}

    async def radio() -> None:
        """One round of telemetry from every manhole cover, written in pieces at a radio's pace."""
        nonlocal seq
        seq += 1
        stream = b"".join(encode_frame(device_id(i), manhole_payload(i, seq)) for i in range(N_DEV))
        sent.update((device_id(i), seq) for i in range(N_DEV))
        ledger.sent += N_DEV
        pos = 0
        while pos < len(stream):
            n = rng.randrange(500, 4000)
            await asyncio.to_thread(write_all, master, stream[pos : pos + n])
            pos += n
            await asyncio.sleep(rng.random() * 0.02)

    def restart_broker(hard: bool) -> None:
        assert broker.proc is not None
        if hard:
            os.kill(broker.proc.pid, signal.SIGKILL)
            broker.proc.wait()
            broker.proc = None
        else:
            broker.stop()
        broker.start()

    try:
        async with (
            real_cloud(tmp_path / "cloud", GW, [(device_id(i), "manhole") for i in range(N_DEV)]) as st,
            contextlib.AsyncExitStack() as workers,
        ):
            for n in range(2):
                cfg = MqttIngestConfig(
                    host=broker.host,
                    port=broker.port,
                    client_id=f"ingest-faults-{n}",
                    session_expiry_s=3600,
                    backoff_initial_s=0.05,
                    backoff_max_s=0.5,
                )
                worker = IngestWorker(cfg, st.ingest)
                task = asyncio.create_task(worker.run(), name=f"ingest-{n}")
                workers.push_async_callback(stop_task, task)
                await asyncio.wait_for(worker.ready.wait(), 30)
            await daemon.start()
            for r in range(restarts):
                for _ in range(scale(1, 3)):
                    await radio()
                await asyncio.sleep(rng.random() * 0.5)  # restart at a random moment while batches fly
                hard = r % 2 == 0
                kinds["kill -9" if hard else "clean"] += 1
                before = accepted_keys(outbox, store_keys(ts_path))
                await asyncio.to_thread(restart_broker, hard)
                after = accepted_keys(outbox, store_keys(ts_path))
                assert before <= after, f"{len(before - after)} accepted frame(s) lost by a broker restart"
            await radio()
            await poll(
                lambda: sent <= set(store_keys(ts_path)) and not waiting(outbox),
                120,
                "every frame stored and the outbox drained",
            )
            errors = await daemon.samples("vigil_gateway_uplink_errors_total{")
            assert daemon.stop() == 0
        stored = store_keys(ts_path)
        ledger.kills, ledger.restarts = kinds["kill -9"], restarts
        ledger.reconcile(sent | accepted_keys(outbox, stored), stored.elements())
        ledger.extra.update(
            broker_restarts=kinds,
            broker_config="deploy/mosquitto/vigil-durability.conf",
            ingest_workers=2,
            gateway_uplink_errors={k.split('"')[1]: int(v) for k, v in errors.items()},
            store="cloud SQLite time-series (real ingest service)",
            load_average_1m_end=load(),
        )
        print(ledger.summary(), ledger.extra)
        assert daemon.traceback_free()
        ledger.check()
    finally:
        daemon.cleanup()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(broker.stop)
        os.close(master)
        os.close(slave)


async def stop_task(task: asyncio.Task[None]) -> None:
    await cancel_and_wait(task)
