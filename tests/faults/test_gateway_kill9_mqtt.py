"""Gateway kill -9 on its MQTT source: no broker-acknowledged frame is lost or stored twice (issue 11).

A real Mosquitto runs with the shipped ``deploy/mosquitto/vigil-durability.conf``; a publisher (the
devices' side) sends QoS 1 frames and keeps every frame the broker PUBACKed. ``vigil gateway`` reads them
through its MQTT source (persistent session, acknowledgement to the broker after the outbox commit) and
uplinks to a real HTTP cloud. The gateway is SIGKILLed at random moments (seeded) while frames flow, and
also stays dead for a while so the broker holds a backlog for its session. Before each kill the test records
what the gateway had accepted; after it, all of that must still be there. At the end every
broker-acknowledged frame must be stored in the cloud exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from pathlib import Path

import aiomqtt
import pytest

from tests.edge.helpers import manhole_payload
from tests.faults.gateway_kit import (
    Daemon,
    FaultyCloud,
    Key,
    accepted_keys,
    durable_broker_config,
    fleet,
    http_uplink,
    load,
    poll,
    write_config,
)
from tests.faults.ledger import Ledger, scale
from tests.servers import free_port, start_mosquitto


@pytest.mark.parametrize("seed", [11])
async def test_kill_9_loses_no_broker_acknowledged_frame(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    kills = scale(2, 40)
    devices = fleet(200)
    ledger = Ledger("gateway_kill9_mqtt")
    broker = await asyncio.to_thread(start_mosquitto, tmp_path / "broker", None, durable_broker_config())
    cloud = FaultyCloud(port=free_port())
    await cloud.start()
    metrics_port = free_port()
    config = write_config(
        tmp_path / "gateway.toml",
        gateway_id="gw-faults-mqtt",
        data_dir=tmp_path / "data",
        sources=f"""[[sources.mqtt]]
name = "mq"
host = "{broker.host}"
port = {broker.port}
client_id = "gw-faults-mqtt-mq"
topics = ["vigil/v1/dev/+/+/up"]
qos = 1""",
        uplink=http_uplink(cloud.url, backoff_initial_s=0.05, backoff_max_s=0.2),
        metrics_port=metrics_port,
    )
    outbox = tmp_path / "data" / "outbox.sqlite3"
    daemon = Daemon(config, metrics_port, tmp_path / "daemon.log", "mq")
    broker_acked: set[Key] = set()
    stop_publishing = asyncio.Event()

    async def devices_publish(pub: aiomqtt.Client) -> None:
        """The devices' side: QoS 1 publishes, 20 in flight; a frame counts once its PUBACK came back."""
        i = 0
        while not stop_publishing.is_set():
            n = len(devices)
            idx = [((i + j) % n, 1 + (i + j) // n) for j in range(20)]
            chunk = [(devices[d], s) for d, s in idx]
            i += 20
            results = await asyncio.gather(
                *(
                    pub.publish(
                        f"vigil/v1/dev/manhole/{devices[d]}/up", manhole_payload(d, s), qos=1, timeout=30
                    )
                    for d, s in idx
                ),
                return_exceptions=True,
            )
            ledger.sent += len(chunk)
            broker_acked.update(k for k, r in zip(chunk, results, strict=True) if r is None)
            await asyncio.sleep(rng.random() * 0.03)  # pacing of a fleet, not synchronisation

    try:
        # the gateway's persistent session exists from its first start on: from then on the broker keeps
        # what it acknowledged to the devices for the gateway, also while the gateway is dead
        await daemon.start()
        quiet = logging.getLogger("tests.faults.devices")  # aiomqtt warns about > 10 publishes in flight
        quiet.setLevel(logging.ERROR)
        async with aiomqtt.Client(
            broker.host, broker.port, identifier=f"devices-{seed}", logger=quiet
        ) as pub:
            publisher = asyncio.create_task(devices_publish(pub), name="devices")
            try:
                for _ in range(kills):
                    await asyncio.sleep(rng.uniform(0.2, 1.5))  # kill at a random moment while frames flow
                    before = accepted_keys(outbox, cloud.stored())
                    daemon.kill9()
                    after = accepted_keys(outbox, cloud.stored())
                    assert before <= after, f"{len(before - after)} accepted frame(s) lost by kill -9"
                    await asyncio.sleep(rng.random() * 0.5)  # dead for a while: the broker holds a backlog
                    await daemon.start()
            finally:
                stop_publishing.set()
                await publisher
        # last run: no kill; the broker redelivers its backlog, the gateway drains to the cloud
        await poll(
            lambda: broker_acked <= set(cloud.stored()), 120, "every broker-acknowledged frame stored", 0.5
        )
        assert daemon.stop() == 0
        stored = cloud.stored()
        ledger.kills, ledger.restarts = daemon.kills, daemon.starts - 1
        ledger.reconcile(broker_acked | accepted_keys(outbox, stored), stored.elements())
        ledger.extra.update(
            broker_acknowledged=len(broker_acked),
            batches=len(cloud.batches),
            broker_config="deploy/mosquitto/vigil-durability.conf",
            load_average_1m_end=load(),
        )
        print(ledger.summary(), ledger.extra)
        assert daemon.traceback_free()
        ledger.check()
    finally:
        daemon.cleanup()
        await cloud.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(broker.stop)
