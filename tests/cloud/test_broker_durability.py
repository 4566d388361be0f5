"""A broker crash must not lose a backlog held for the cloud (issue 11), with the shipped configuration.

While the cloud's MQTT ingest workers are down, Mosquitto holds the gateways' batches for the workers'
persistent sessions. With its defaults it writes that state every 30 minutes, so a crash (kill -9) loses
what it had acknowledged to the gateways; ``deploy/mosquitto/vigil-durability.conf`` saves every second.
Both are run here against a real Mosquitto, a real ingest worker and the real ingest service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from pathlib import Path

import aiomqtt

from alerts.contract import mqtt_up_topic
from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import GW1, MANHOLE_1, T0, Cloud, batch, readings
from tests.cloud.test_mqtt_ingest import running, wait_until
from tests.servers import MosquittoServer, start_mosquitto

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "vigil-durability.conf"


def shipped_config() -> str:
    """The shipped file, minus its production path (the test broker keeps its files in a temp dir)."""
    lines = SHIPPED.read_text().splitlines()
    return "\n".join(ln for ln in lines if not ln.startswith("persistence_location")) + "\n"


async def backlog_then_crash(cloud: Cloud, broker: MosquittoServer, n: int) -> int:
    """Cloud down, ``n`` batches acknowledged by the broker, broker killed; returns readings stored after."""
    cfg = MqttIngestConfig(
        host=broker.host, port=broker.port, client_id=f"w-{uuid.uuid4().hex[:6]}",
        group=f"g{uuid.uuid4().hex[:6]}", session_expiry_s=3600, backoff_initial_s=0.05, backoff_max_s=0.2,
    )  # fmt: skip
    async with running(IngestWorker(cfg, cloud.state.ingest)):
        pass  # the worker's persistent session and shared subscription now exist; the cloud goes down
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"gw-{uuid.uuid4().hex[:6]}") as gw:
        for i in range(n):  # QoS 1: each publish returns after the broker's PUBACK
            b = batch(
                f"dur-{cfg.group}-{i:04d}", readings(DeviceKind.MANHOLE, MANHOLE_1, [i], t0=T0 + 60 * i)
            )
            await gw.publish(mqtt_up_topic(GW1), b.model_dump_json(), qos=1)
    await asyncio.sleep(2.5)  # longer than the shipped autosave interval, far shorter than the default
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGKILL)
    broker.proc.wait()
    broker.proc = None
    broker.start()

    def stored() -> int:
        return len(cloud.state.store.query(MANHOLE_1, DeviceKind.MANHOLE, T0 - 1, T0 + 60 * n))

    async with running(IngestWorker(cfg, cloud.state.ingest)):
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: stored() >= n, timeout=10)
    return stored()


async def test_shipped_config_keeps_the_backlog_across_a_broker_crash(
    cloud_sqlite: Cloud, tmp_path: Path
) -> None:
    broker = start_mosquitto(tmp_path / "shipped", extra_config=shipped_config())
    try:
        stored = await backlog_then_crash(cloud_sqlite, broker, 30)
    finally:
        broker.stop()
    assert stored == 30
    dev = cloud_sqlite.state.registry.get(MANHOLE_1, "admin")
    assert dev.readings_total == 30


async def test_default_autosave_loses_the_backlog_on_a_crash(cloud_sqlite: Cloud, tmp_path: Path) -> None:
    """Why the shipped file exists: the same run with Mosquitto's default autosave interval."""
    broker = start_mosquitto(tmp_path / "default")
    try:
        stored = await backlog_then_crash(cloud_sqlite, broker, 30)
    finally:
        broker.stop()
    assert stored < 30
