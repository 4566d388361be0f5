"""The gateway's MQTT uplink over TLS (``mqtts://`` + ``uplink.ca_file``) against Mosquitto's TLS listener.

Mosquitto (tests/servers.py) gets a second listener with a certificate from a throw-away CA
(tests/cloud/test_tls.py make_pki), TLS 1.2 minimum. The gateway's uplink publishes over TLS; a stand-in
for the cloud's MQTT ingest answers the ack on the plain loopback listener of the same broker (the wire
contract is in alerts/contract.py; the real ingest is tested in tests/cloud/test_mqtt_ingest*.py).
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from alerts.contract import UplinkBatch
from edge.config import parse_config
from edge.outbox import Outbox
from edge.uplink.mqtt import MqttUplink
from firmware_bridge.transports.mqtt import close_on_failed_handshake
from tests.cloud.test_tls import Pki, make_pki
from tests.edge.helpers import alert, manhole_batch
from tests.edge.test_uplink_mqtt import background, fake_cloud
from tests.servers import MosquittoServer, free_port, start_mosquitto


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MosquittoServer, int, Pki]]:
    pki = make_pki(tmp_path_factory.mktemp("mqtt-pki"))
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        "tls_version tlsv1.2\n"
    )
    broker = start_mosquitto(tmp_path_factory.mktemp("mqtt-tls"), extra_config=extra)
    try:
        yield broker, tls_port, pki
    finally:
        broker.stop()


async def test_uplink_over_mqtts_with_the_configured_ca(
    tmp_path: Path, tls_broker: tuple[MosquittoServer, int, Pki]
) -> None:
    broker, tls_port, pki = tls_broker
    gw = f"gw-{secrets.token_hex(3)}"
    cfg = parse_config(
        f"""
[gateway]
id = "{gw}"
credential = ""
data_dir = "{tmp_path / "data"}"

[uplink]
mode = "mqtt"
url = "mqtts://localhost:{tls_port}"
ca_file = "{pki.ca}"
""",
        tmp_path / "gateway.toml",
    )
    assert cfg.uplink.plaintext_warning() is None
    seen: list[UplinkBatch] = []
    with Outbox(tmp_path / "o.db") as ob:
        ob.commit([manhole_batch(5)], [alert(1)])
        up = MqttUplink(cfg.uplink.url, gw, "", timeout_s=5, ca_file=cfg.uplink.ca_file)
        assert up.tls is not None and up.tls.minimum_version >= ssl.TLSVersion.TLSv1_2
        ready = asyncio.Event()
        async with (
            background(up.run()),
            background(fake_cloud(broker.host, broker.port, gw, seen, ready=ready)),
        ):
            async with asyncio.timeout(20):
                await up.connected.wait()
                await ready.wait()
            pb = ob.next_batch(gw)
            assert pb is not None
            ack = await up.send(pb)
            assert ack.batch_id == pb.batch_id
            ob.ack(ack)
    assert [a.alert_id for a in seen[0].alerts] == [alert(1).alert_id]


async def test_untrusted_broker_certificate_is_refused(tls_broker: tuple[MosquittoServer, int, Pki]) -> None:
    _, tls_port, pki = tls_broker
    # the uplink without the private CA (system trust store) never gets a session
    up = MqttUplink(f"mqtts://localhost:{tls_port}", f"gw-{secrets.token_hex(3)}", "", timeout_s=5)
    up.max_backoff_s = 0.05
    async with background(up.run()):
        async with asyncio.timeout(20):
            while up.reconnects_total < 2:
                await asyncio.sleep(0.02)
        assert not up.connected.is_set()
    # and the reason is the certificate
    ctx = close_on_failed_handshake(ssl.create_default_context(cafile=str(pki.other_ca)))
    with pytest.raises(aiomqtt.MqttError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        async with aiomqtt.Client("localhost", tls_port, tls_context=ctx, timeout=5):
            pass
