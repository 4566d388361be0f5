"""Gateway sources end to end through the daemon: MQTT (our payloads, ChirpStack v4 JSON, raw LoRaWAN
PHYPayloads) against a real Mosquitto, the Semtech UDP packet-forwarder listener, NB-IoT URCs on a pty.

Formats: ChirpStack v4 uplink events (chirpstack-docs integrations/events.md), Semtech UDP PUSH_DATA /
PUSH_ACK (Lora-net/packet_forwarder PROTOCOL.TXT), Quectel BC95/BC28 ``+NNMI:<len>,<hex>`` URCs.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import socket
import time
import tty
from pathlib import Path

import aiomqtt

from edge.config import parse_config
from edge.outbox import iter_alert_events, iter_telemetry
from firmware_bridge import chirpstack, nbiot, semtech_udp
from firmware_bridge.kernel.events import EventType
from firmware_bridge.lorawan import LoRaWANKeys, build_uplink
from tests.edge.helpers import manhole_payload, smoke_payload
from tests.edge.test_daemon import running
from tests.servers import MosquittoServer


def write_devices(path: Path, rows: list[tuple[str, str, LoRaWANKeys | None]]) -> Path:
    lines = ["device_id,kind,name,dev_addr,nwk_skey,app_skey,profile"]
    for dev, kind, k in rows:
        keys = f"{k.dev_addr:08x},{k.nwk_skey.hex()},{k.app_skey.hex()}" if k else ",,"
        lines.append(f"{dev},{kind},n,{keys},")
    path.write_text("\n".join(lines) + "\n")
    return path


def sample(gw, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return gw.metrics.registry.get_sample_value(name, labels) or 0.0


def read_line(fd: int, timeout: float = 10.0) -> bytes:
    """Read what the gateway wrote to the modem, up to CR LF (run in a thread; bounded by ``timeout``)."""
    out = b""
    deadline = time.monotonic() + timeout
    while not out.endswith(b"\r\n"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no command line from the gateway; got {out!r}")
        if select.select([fd], [], [], 0.1)[0]:
            out += os.read(fd, 1)
    return out


def rand_dev() -> str:
    return secrets.token_hex(8)


async def test_mqtt_sources_vigil_chirpstack_lorawan(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    d_vigil, d_cs, d_lora, d_fire = rand_dev(), rand_dev(), rand_dev(), rand_dev()
    keys = LoRaWANKeys(
        int(secrets.token_hex(4), 16), secrets.token_bytes(16), secrets.token_bytes(16), d_lora
    )
    devices = write_devices(tmp_path / "devices.csv", [(d_lora, "manhole", keys)])
    gw_id = f"gw-{secrets.token_hex(3)}"
    cfg = parse_config(
        f"""
[gateway]
id = "{gw_id}"
data_dir = "{tmp_path / "data"}"
devices_file = "{devices}"
[[sources.mqtt]]
name = "ours"
host = "{mosquitto.host}"
port = {mosquitto.port}
topics = ["vigil/v1/dev/+/+/up"]
[[sources.mqtt]]
name = "cs"
host = "{mosquitto.host}"
port = {mosquitto.port}
topics = ["application/{gw_id}/device/+/event/+"]
format = "chirpstack"
[[sources.mqtt]]
name = "lora"
host = "{mosquitto.host}"
port = {mosquitto.port}
topics = ["vigil/v1/lora/{gw_id}/rx"]
format = "lorawan"
[uplink]
mode = "none"
[detection]
batch_window_ms = 10
[metrics]
enabled = false
""",
        tmp_path / "gw.toml",
    )
    async with running(cfg) as gw, aiomqtt.Client(mosquitto.host, mosquitto.port) as pub:
        await pub.publish(f"vigil/v1/dev/manhole/{d_vigil}/up", manhole_payload(1, 1), qos=1)
        await pub.publish(f"vigil/v1/dev/smoke_alarm/{d_fire}/up", smoke_payload(2, 5, fire=True), qos=1)
        topic, body = chirpstack.build_uplink(
            d_cs, 3, 10, manhole_payload(3, 3), time=1_700_000_000.0, application_id=gw_id
        )
        await pub.publish(topic, body, qos=1)
        await pub.publish(f"application/{gw_id}/device/{d_cs}/event/status", b"{}", qos=1)  # no data: ignored
        await pub.publish(f"application/{gw_id}/device/{d_cs}/event/up", b"{not json", qos=1)  # counted
        phy = build_uplink(keys, 7, 10, manhole_payload(4, 7))
        await pub.publish(f"vigil/v1/lora/{gw_id}/rx", phy, qos=1)
        await pub.publish(f"vigil/v1/lora/{gw_id}/rx", phy, qos=1)  # the same radio frame again
        await pub.publish(f"vigil/v1/lora/{gw_id}/rx", phy[:-1] + bytes([phy[-1] ^ 1]), qos=1)  # bad MIC
        # one more good frame per source: messages on a subscription arrive in order, so once these are
        # accepted every earlier message of that source has been handled
        await pub.publish(
            f"vigil/v1/lora/{gw_id}/rx", build_uplink(keys, 8, 10, manhole_payload(4, 8)), qos=1
        )
        await gw.pipeline.wait_for(lambda: gw.pipeline.frames_total >= 5)
        assert sample(gw, "vigil_gateway_frames_total", source="ours") == 2
        assert sample(gw, "vigil_gateway_frames_total", source="cs") == 1
        assert sample(gw, "vigil_gateway_frames_total", source="lora") == 2
        assert sample(gw, "vigil_gateway_rejects_total", source="lora", reason="mic") == 1
        assert sample(gw, "vigil_gateway_rejects_total", source="cs", reason="json") == 1
        # the repeated LoRaWAN frame is refused by the frame counter before it reaches the pipeline
        assert sample(gw, "vigil_gateway_rejects_total", source="lora", reason="replay") == 1
        # devices not in devices.csv are counted (accepted by default)
        assert sample(gw, "vigil_gateway_unknown_devices_total") == 3
    ids = {d for b in iter_telemetry(cfg.outbox_path) for d in b.device_id}
    assert ids == {d_vigil, d_fire, d_cs, d_lora}
    assert [a.device_id for a in iter_alert_events(cfg.outbox_path) if a.event_type is EventType.FIRE] == [
        d_fire
    ]


async def test_semtech_udp_listener(tmp_path: Path) -> None:
    dev = rand_dev()
    keys = LoRaWANKeys(0x26011BDA, bytes(range(16)), bytes(range(16, 32)), dev)
    devices = write_devices(tmp_path / "devices.csv", [(dev, "manhole", keys)])
    cfg = parse_config(
        f"""
[gateway]
id = "gw-udp"
data_dir = "{tmp_path / "data"}"
devices_file = "{devices}"
[sources.udp]
name = "pf"
bind = "127.0.0.1"
port = 0
[detection]
batch_window_ms = 10
[metrics]
enabled = false
""",
        tmp_path / "gw.toml",
    )
    good = build_uplink(keys, 1, 10, manhole_payload(1, 1))
    bad_mic = build_uplink(keys, 2, 10, manhole_payload(1, 2))[:-1] + b"\x00"
    good2 = build_uplink(keys, 3, 10, manhole_payload(1, 3))
    dgram = semtech_udp.build_push_data(
        0x1234, bytes.fromhex("b827ebfffe000001"), [semtech_udp.Rxpk(data=p) for p in (good, bad_mic, good2)]
    )
    async with running(cfg) as gw:
        assert gw.udp_port is not None
        port = await asyncio.wait_for(gw.udp_port, 5)
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            addr = ("127.0.0.1", port)
            await loop.sock_sendto(s, dgram, addr)
            ack, _ = await asyncio.wait_for(loop.sock_recvfrom(s, 64), 5)
            await loop.sock_sendto(s, b"\x02\x00", addr)  # a runt datagram: counted, no crash
            await loop.sock_sendto(s, semtech_udp.build_pull_data(0x1235, bytes(8)), addr)
            # handled in order: after this ack the runt was already counted
            pull_ack, _ = await asyncio.wait_for(loop.sock_recvfrom(s, 64), 5)
        assert ack == bytes([2, 0x12, 0x34, semtech_udp.PUSH_ACK])  # PROTOCOL.TXT: version, token, PUSH_ACK
        assert pull_ack == bytes([2, 0x12, 0x35, semtech_udp.PULL_ACK])
        await gw.pipeline.wait_for(lambda: gw.pipeline.frames_total >= 2)
        assert sample(gw, "vigil_gateway_rejects_total", source="pf", reason="mic") == 1
        assert gw.sink.rejects_total == 2  # the bad MIC and the runt datagram
    assert sum(len(b) for b in iter_telemetry(cfg.outbox_path)) == 2


async def test_nbiot_urcs_on_a_pty(tmp_path: Path) -> None:
    import binascii

    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    try:
        cfg = parse_config(
            f"""
[gateway]
id = "gw-nb"
data_dir = "{tmp_path / "data"}"
[[sources.serial]]
name = "nb"
port = "{os.ttyname(slave)}"
baudrate = 9600
framing = "nbiot"
[detection]
batch_window_ms = 10
[metrics]
enabled = false
""",
            tmp_path / "gw.toml",
        )
        dev = rand_dev()

        def body(payload: bytes) -> bytes:
            b = bytes.fromhex(dev) + payload
            return b + binascii.crc_hqx(b, 0xFFFF).to_bytes(2, "big")

        bad_crc = bytearray(body(manhole_payload(1, 2)))
        bad_crc[-1] ^= 0xFF
        async with running(cfg) as gw:
            os.write(master, b"AT\r\r\nOK\r\n" + nbiot.format_nnmi(body(manhole_payload(1, 1))))
            os.write(master, nbiot.format_nnmi(bytes(bad_crc)) + b"+NNMI:4,ZZ\r\n")
            os.write(master, nbiot.format_nnmi(body(manhole_payload(1, 3))))
            await gw.pipeline.wait_for(lambda: gw.pipeline.frames_total >= 2)
            assert sample(gw, "vigil_gateway_rejects_total", source="nb", reason="crc") == 1
            # UDP path (BC28): +NSONMI announces data, the gateway must fetch it with AT+NSORF
            udp_body = body(manhole_payload(1, 4))
            os.write(master, nbiot.format_nsonmi(1, len(udp_body)))
            command = await asyncio.to_thread(read_line, master)
            assert command == b"AT+NSORF=1,%d\r\n" % len(udp_body)
            os.write(master, nbiot.format_nsorf_response(1, "10.0.0.7", 5683, udp_body))
            await gw.pipeline.wait_for(lambda: gw.pipeline.frames_total >= 3)
    finally:
        os.close(master)
        os.close(slave)
    assert sorted(s for b in iter_telemetry(cfg.outbox_path) for s in b.seq) == [1, 3, 4]
