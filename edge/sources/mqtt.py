"""MQTT sources: our payloads, ChirpStack v4 uplink events, or raw LoRaWAN PHYPayloads.

Formats (``[[sources.mqtt]] format``):

- ``vigil``: topic ``vigil/v1/dev/{kind}/{device_id}/up``, message = the Vigil payload bytes;
- ``chirpstack``: topic ``application/{app}/device/{dev_eui}/event/up``, message = ChirpStack uplink
  JSON whose ``data`` (already decrypted by the network server) is the Vigil payload; the device id is
  the DevEUI;
- ``lorawan``: topic ``vigil/v1/lora/{gateway_id}/rx``, message = a raw PHYPayload decrypted here with the
  device's keys from devices.csv (:mod:`edge.sources.lora`).

The transport (:class:`firmware_bridge.transports.mqtt.MqttTransport`) reconnects with a persistent
session and resubscribes; this module only maps messages to frames.
"""

from __future__ import annotations

import asyncio
import contextlib

from edge.config import MqttSource
from edge.sources.base import FrameSink
from edge.sources.lora import LoRaWANSessions
from firmware_bridge.errors import DecodeError
from firmware_bridge.kernel.clock import Clock


def frame_from_message(
    fmt: str, topic: str, payload: bytes, sessions: LoRaWANSessions | None
) -> tuple[str, bytes] | None:
    """Map one MQTT message to ``(device_id, vigil payload)``; ``None`` for messages that carry no uplink.

    Raises :class:`DecodeError` for a message that should have been an uplink but is not valid.
    """
    if fmt == "vigil":
        parts = topic.split("/")
        if len(parts) != 6 or parts[:3] != ["vigil", "v1", "dev"] or parts[5] != "up":
            raise DecodeError(
                f"topic {topic!r} is not vigil/v1/dev/{{kind}}/{{device_id}}/up", reason="topic"
            )
        return parts[4].lower(), payload
    if fmt == "chirpstack":
        from firmware_bridge import chirpstack

        if not topic.endswith("/event/up"):
            return None  # status / join / ack / log events carry no sensor data
        up = chirpstack.parse_uplink(payload)
        if up.f_port == 0 or not up.data:
            return None
        return up.dev_eui.lower(), up.data
    if fmt == "lorawan":
        if sessions is None:
            raise DecodeError("no LoRaWAN sessions configured (devices_file)", reason="no_keys")
        return sessions.decode(payload)
    raise ValueError(f"unknown MQTT source format {fmt!r}")


async def run_mqtt_source(
    cfg: MqttSource,
    name: str,
    sink: FrameSink,
    sessions: LoRaWANSessions | None,
    clock: Clock,
    gateway_id: str,
) -> None:
    from firmware_bridge.transports.mqtt import MqttTransport

    password = cfg.password_file.read_text(encoding="utf-8").strip() if cfg.password_file else None
    transport = MqttTransport(
        cfg.host,
        cfg.port,
        client_id=cfg.client_id or f"vigil-gw-{gateway_id}-{name}"[:64],
        topics=[(t, cfg.qos) for t in cfg.topics],
        username=cfg.username,
        password=password,
        clean_session=False,
    )

    async def mirror_state() -> None:
        """Keep ``vigil_gateway_source_up`` in step with the transport's reconnects (1 Hz, a flag read)."""
        while True:
            sink.mark_up(name, bool(transport.connected))
            await asyncio.sleep(1.0)

    async with transport:
        await transport.wait_connected()
        sink.mark_up(name, True)
        watcher = asyncio.create_task(mirror_state(), name=f"source-state:{name}")
        try:
            async for msg in transport.messages():
                now = clock.now()
                try:
                    hit = frame_from_message(cfg.format, msg.topic, bytes(msg.payload), sessions)
                except DecodeError as exc:
                    sink.reject(
                        name,
                        exc.reason,
                        exc.data if exc.data is not None else bytes(msg.payload)[:256],
                        f"{msg.topic}: {exc}",
                    )
                    continue
                if hit is not None:
                    sink.offer((hit[0], hit[1], now, name))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            sink.mark_up(name, False)
