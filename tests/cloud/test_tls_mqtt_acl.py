"""Gateways on MQTT are bound to their certificate: the shipped Mosquitto files (deploy/mosquitto/).

``vigil-gateways.conf`` with ``vigil-cloud.acl`` and ``vigil-gateways.acl`` is used as shipped, only ports
and paths replaced, after ``vigil-durability.conf`` as in ``/etc/mosquitto/conf.d/``, on the real Mosquitto
(tests/servers.py). Certificates come from a throw-away CA
(tests/cloud/test_tls.py ``make_pki`` / ``issue_client``): CN ``gw-a`` and ``gw-b``. The cloud's MQTT ingest
worker (cloud/mqtt_ingest.py) logs in on the loopback listener with its password; gateways use the TLS
listener with their certificate. Gateway A's certificate cannot publish on B's topic (the message never
reaches the subscribed worker), cannot read B's acks and cannot take B's session; its own batches are
acknowledged end to end through the real uplink and the real worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from alerts.contract import mqtt_ack_topic, mqtt_alert_topic, mqtt_up_topic
from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig
from edge.uplink.mqtt import MqttUplink
from firmware_bridge.transports.mqtt import close_on_failed_handshake
from tests.aio import cancel_and_wait
from tests.cloud.crlkit import empty_crl
from tests.cloud.test_mqtt_ingest import FakeIngest, make_batch, running, uid
from tests.cloud.test_tls import Pki, issue_client, make_pki
from tests.servers import MosquittoServer, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "mosquitto"
WORKER, WORKER_PASSWORD = "vigil-ingest", "worker-secret-for-tests"


def render(
    conf: str,
    *,
    plain_port: int,
    tls_port: int,
    pki: Pki,
    d: Path,
    client_ca: Path | None = None,
    crl: Path | None = None,
) -> str:
    """The shipped listener file with this test's ports and files (the gateway CA is ``client_ca``, else the
    test CA; the CRL is ``crl``, else the test CA's empty one). Nothing else changed."""
    out = conf.replace("listener 1883 127.0.0.1", f"listener {plain_port} 127.0.0.1")
    out = out.replace("listener 8883\n", f"listener {tls_port} 127.0.0.1\n")
    out = out.replace("/etc/mosquitto/certs/broker.pem", str(pki.server_cert))
    out = out.replace("/etc/mosquitto/certs/broker.key", str(pki.server_key))
    out = out.replace("/etc/vigil/tls/gateway-ca.pem", str(client_ca or pki.ca))
    # crlfile is shipped on (the file must exist): the test CA's empty CRL unless ``crl`` is given
    out = out.replace("\ncrlfile /etc/vigil/tls/gateway-ca.crl\n", f"\ncrlfile {crl or empty_crl(pki)}\n")
    for name in ("vigil-passwd", "vigil-cloud.acl", "vigil-gateways.acl"):
        out = out.replace(f"/etc/mosquitto/{name}", str(d / name))
    assert "/etc/" not in re.sub(r"(?m)^#.*$", "", out), out  # every path replaced
    return out


@dataclass
class ShippedMosquitto(MosquittoServer):
    """tests/servers.py's Mosquitto with the shipped listeners: its own base config cannot be used, because
    ``per_listener_settings`` must come before its ``allow_anonymous``."""

    listeners: str = ""

    def start(self) -> None:
        conf = self.directory / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{self.listeners}\nlog_dest file {self.log_path}\n"
            f"log_type error\nlog_type warning\nlog_type notice\n{user}"
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, self.proc, log=self.log_path)


@dataclass(frozen=True)
class Broker:
    server: ShippedMosquitto
    tls_port: int
    pki: Pki
    certs: dict[str, tuple[Path, Path]]

    def tls(self, gw: str | None) -> ssl.SSLContext:
        ctx = close_on_failed_handshake(ssl.create_default_context(cafile=str(self.pki.ca)))
        if gw is not None:
            ctx.load_cert_chain(*(str(p) for p in self.certs[gw]))
        return ctx

    def gateway(self, gw: str, **kw: object) -> aiomqtt.Client:
        """A raw MQTT client with ``gw``'s certificate; ``username`` / ``identifier`` may claim others."""
        return aiomqtt.Client("localhost", self.tls_port, tls_context=self.tls(gw), timeout=10, **kw)  # type: ignore[arg-type]

    def worker(self, **kw: object) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            self.server.port,
            username=WORKER,
            password=WORKER_PASSWORD,
            timeout=10,
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    d = tmp_path_factory.mktemp("mqtt-acl")
    pki = make_pki(d)
    certs = {gw: issue_client(pki, gw) for gw in ("gw-a", "gw-b")}
    for name in ("vigil-cloud.acl", "vigil-gateways.acl"):
        shutil.copy(DEPLOY / name, d / name)
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(d / "vigil-passwd"), WORKER, WORKER_PASSWORD],
        check=True,
        capture_output=True,
    )
    plain, tls_port = free_port(), free_port()
    listeners = render(
        (DEPLOY / "vigil-gateways.conf").read_text(), plain_port=plain, tls_port=tls_port, pki=pki, d=d
    )
    # as in /etc/mosquitto/conf.d/: vigil-durability.conf is read first and combines with the listeners
    durability = (DEPLOY / "vigil-durability.conf").read_text()
    assert "persistence_location /var/lib/mosquitto/\n" in durability
    durability = durability.replace("persistence_location /var/lib/mosquitto/", f"persistence_location {d}/")
    server = ShippedMosquitto("127.0.0.1", plain, d, listeners=durability + "\n" + listeners)
    server.start()
    try:
        yield Broker(server, tls_port, pki, certs)
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def collecting(client: aiomqtt.Client, *filters: str) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Subscribed to ``filters`` (SUBACK received, each granted) and collecting what arrives."""
    got: list[tuple[str, bytes]] = []
    for f in filters:
        granted = await client.subscribe(f, qos=1)
        codes = [g.value if isinstance(g, ReasonCode) else int(g) for g in granted or ()]
        assert codes == [1], (f, granted)

    async def collect() -> None:
        async for m in client.messages:
            got.append((str(m.topic), bytes(m.payload) if isinstance(m.payload, bytes | bytearray) else b""))

    task = asyncio.create_task(collect())
    try:
        yield got
    finally:
        await cancel_and_wait(task)


async def until(pred: object, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_gateway_publishes_only_on_its_own_topic(broker: Broker) -> None:
    async with (
        broker.worker(identifier=f"observer-{uid()}") as observer,
        collecting(observer, "vigil/v1/gw/+/up", "vigil/v1/gw/+/alert") as seen,
    ):
        # A's certificate, claiming B's username and client id: the broker uses the CN for both
        async with broker.gateway(
            "gw-a", username="gw-b", password="gw-b-token", identifier="vigil-gw-gw-b"
        ) as a:
            await a.publish(mqtt_up_topic("gw-b"), b"forged", qos=1)  # acknowledged, and dropped
            await a.publish(mqtt_alert_topic("gw-b"), b"forged alert", qos=1)
            await a.publish("vigil/v1/gw/gw-a/../gw-b/up", b"dots", qos=1)
            await a.publish(mqtt_up_topic("gw-a"), b"own", qos=1)
            # one publisher's QoS 1 messages reach a subscriber in order: "forged" would come before "own"
            await until(lambda: any(p == b"own" for _, p in seen))
        assert seen == [(mqtt_up_topic("gw-a"), b"own")]


async def test_a_gateway_cannot_read_anothers_acks_or_take_its_session(broker: Broker) -> None:
    async with (
        broker.gateway("gw-b", identifier="vigil-gw-gw-b") as b,
        collecting(b, mqtt_ack_topic("gw-b")) as b_acks,
    ):
        # A connects with B's client id; Mosquitto 2.0 grants any subscription and checks the ACL on each
        # delivered message, so A may subscribe to B's acks (and to wildcards) but receives none of them
        async with (
            broker.gateway("gw-a", identifier="vigil-gw-gw-b") as a,
            collecting(a, mqtt_ack_topic("gw-b"), "vigil/v1/gw/+/ack", "vigil/v1/gw/#") as a_seen,
            broker.worker(identifier=f"w-{uid()}") as w,
        ):
            await w.publish(mqtt_ack_topic("gw-b"), b"ack for b", qos=1)
            await w.publish(mqtt_ack_topic("gw-a"), b"ack for a", qos=1)
            # in order for each subscriber: once A has its own ack, B's would have come first
            await until(lambda: a_seen and b_acks)
            # B kept its session although A connected with B's client id: B's publish is still acknowledged
            await b.publish(mqtt_up_topic("gw-b"), b"b still here", qos=1)
        assert {m for m in a_seen} == {(mqtt_ack_topic("gw-a"), b"ack for a")}
        assert b_acks == [(mqtt_ack_topic("gw-b"), b"ack for b")]


async def test_without_a_certificate_or_the_workers_password_nothing_connects(broker: Broker) -> None:
    with pytest.raises(aiomqtt.MqttError):  # the TLS listener requires a client certificate
        async with aiomqtt.Client("localhost", broker.tls_port, tls_context=broker.tls(None), timeout=5):
            pass
    for creds in ({}, {"username": WORKER, "password": "wrong"}, {"username": "gw-a", "password": "x"}):
        with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed|[Bb]ad user name or password"):
            async with aiomqtt.Client("127.0.0.1", broker.server.port, timeout=5, **creds):  # type: ignore[arg-type]
                pass


async def test_the_gateways_uplink_and_the_cloud_worker_through_the_shipped_acls(broker: Broker) -> None:
    core = FakeIngest()
    worker = IngestWorker(
        MqttIngestConfig(
            host="127.0.0.1",
            port=broker.server.port,
            client_id=f"ingest-{uid()}",
            group=f"g{uid()}",
            username=WORKER,
            password=WORKER_PASSWORD,
            session_expiry_s=60,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
        ),
        core.for_worker("w"),
    )
    cert, key = broker.certs["gw-a"]
    up = MqttUplink(
        f"mqtts://localhost:{broker.tls_port}",
        "gw-a",
        "token-is-ignored-by-the-broker",
        timeout_s=10,
        ca_file=broker.pki.ca,
        client_cert=cert,
        client_key=key,
    )
    task = asyncio.create_task(up.run())
    try:
        async with running(worker):  # its shared subscription was granted (SUBACK) on the loopback listener
            async with asyncio.timeout(20):  # the uplink's session: its certificate, its ack topic
                await up.connected.wait()
            # a batch on A's topic is stored by the worker and answered on A's ack topic, which A may read
            batch, alert_batch = make_batch("gw-a", 1), make_batch("gw-a", 2)
            async with broker.gateway("gw-a") as a, collecting(a, mqtt_ack_topic("gw-a")) as acks:
                await a.publish(mqtt_up_topic("gw-a"), batch.model_dump_json(), qos=1)
                await until(lambda: acks)
                # the alert lane (its own topic, read by the worker's second session) passes the ACLs too
                await a.publish(mqtt_alert_topic("gw-a"), alert_batch.model_dump_json(), qos=1)
                await until(lambda: len(acks) == 2)
        assert [json.loads(p)["batch_id"] for _, p in acks] == [batch.batch_id, alert_batch.batch_id]
        assert core.stored == {batch.batch_id: "w", alert_batch.batch_id: "w"}
    finally:
        await cancel_and_wait(task)
