"""MQTT sources: our payloads, ChirpStack v4 uplink events, or raw LoRaWAN PHYPayloads.

Formats (``[[sources.mqtt]] format``):

- ``vigil``: topic ``vigil/v1/dev/{kind}/{device_id}/up``, message = the Vigil payload bytes;
- ``chirpstack``: topic ``application/{app}/device/{dev_eui}/event/up``, message = ChirpStack uplink
  JSON whose ``data`` (already decrypted by the network server) is the Vigil payload; the device id is
  the DevEUI;
- ``lorawan``: topic ``vigil/v1/lora/{gateway_id}/rx``, message = a raw PHYPayload decrypted here with the
  device's keys from devices.csv (:mod:`edge.sources.lora`).

Delivery (at least once, nothing lost on kill -9): the client connects with a fixed client id and a
persistent session (``clean_session=False``) and acknowledges each QoS 1/2 message to the broker only once
its frame is committed to the outbox (``FrameSink.offer(..., on_commit)``, told by the pipeline), as
``cloud/mqtt_ingest.py`` does. A message that is not committed stays un-acknowledged in the session: a
failed commit or a full frame queue drops the connection so that the broker redelivers it on the resumed
session; a crash does the same on restart. Duplicates are removed by the pipeline's de-duplication.

Flow control: messages held un-acknowledged are bounded by count (``max_pending``) and bytes
(``max_pending_bytes``). Over the bound the source stops reading (QoS 1/2: the broker's in-flight window
then holds the rest on the broker), never drops them silently. What is dropped is counted in
``vigil_gateway_dropped_total{what=...}``: ``mqtt_too_large`` (over ``max_message_bytes``; acknowledged,
since a redelivery could never fit), ``mqtt_qos0_overflow`` (QoS 0 over the bound: the broker cannot
redeliver those anyway), ``mqtt_not_committed`` (left un-acknowledged for redelivery).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from edge.config import MqttSource
from edge.sources.base import FrameSink
from edge.sources.lora import LoRaWANSessions
from firmware_bridge.backoff import Backoff
from firmware_bridge.errors import DecodeError
from firmware_bridge.kernel.clock import Clock

log = logging.getLogger("edge.sources.mqtt")

_CONNECTION_ERRORS = (aiomqtt.MqttError, OSError, TimeoutError)


class _Redeliver(Exception):
    """Drop the connection so that the broker redelivers what we left un-acknowledged."""


@dataclass(slots=True)
class MqttFlow:
    """Accounting of one MQTT source: what it holds un-acknowledged, its peak, what it dropped."""

    pending: int = 0
    pending_bytes: int = 0
    peak_bytes: int = 0
    peak: int = 0
    acked: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    throttled: int = 0
    reconnects: int = 0
    space: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, size: int) -> None:
        self.pending += 1
        self.pending_bytes += size
        self.peak = max(self.peak, self.pending)
        self.peak_bytes = max(self.peak_bytes, self.pending_bytes)

    def release(self, size: int) -> None:
        self.pending -= 1
        self.pending_bytes -= size
        self.space.set()


flows: dict[str, MqttFlow] = {}
"""Per source name, the flow accounting of the running MQTT sources (status, tests)."""


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
    password = cfg.password_file.read_text(encoding="utf-8").strip() if cfg.password_file else None
    client_id = cfg.client_id or f"vigil-gw-{gateway_id}-{name}"[:64]
    flow = flows[name] = MqttFlow()
    backoff = Backoff(initial=0.5, maximum=30.0, rng=random.Random())
    max_bytes = max(cfg.max_pending_bytes, cfg.max_message_bytes)

    def drop(what: str, n: int = 1) -> None:
        flow.dropped[what] = flow.dropped.get(what, 0) + n
        sink.metrics.dropped.labels(what).inc(n)

    async def session() -> None:
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=client_id,
            username=cfg.username,
            password=password,
            clean_session=False,
            keepalive=30,
            timeout=10.0,
        )
        paho: Any = client._client  # aiomqtt acks on receipt; we ack after the commit
        paho.manual_ack_set(True)
        redeliver = asyncio.Event()

        def settle_cb(
            mid: int, qos: int, size: int, counter: tuple[int, int] | None
        ) -> Callable[[bool], None]:
            def done(ok: bool) -> None:
                flow.release(size)
                if ok and counter is not None and sessions is not None:
                    sessions.confirm(counter)  # a LoRaWAN frame counter is persisted once committed
                if redeliver.is_set():
                    return  # this connection is being dropped: the broker redelivers on the next one
                if ok:
                    if qos > 0:
                        paho.ack(mid, qos)
                    flow.acked += 1
                else:
                    drop("mqtt_not_committed")
                    redeliver.set()

            return done

        async def read() -> None:
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload or "").encode()
                size = len(payload) + len(m.topic.value)
                qos = int(m.qos)
                if len(payload) > cfg.max_message_bytes:
                    drop("mqtt_too_large")
                    sink.reject(name, "too_large", payload[:256], f"{m.topic.value}: {len(payload)} bytes")
                    if qos > 0:
                        paho.ack(m.mid, qos)
                    continue
                while flow.pending > 0 and (
                    flow.pending_bytes + size > max_bytes or flow.pending >= cfg.max_pending
                ):
                    if qos == 0:
                        break
                    flow.throttled += 1  # stop reading: the broker holds the rest in its in-flight window
                    flow.space.clear()
                    await flow.space.wait()
                    if redeliver.is_set():
                        raise _Redeliver
                if flow.pending > 0 and (
                    flow.pending_bytes + size > max_bytes or flow.pending >= cfg.max_pending
                ):
                    drop("mqtt_qos0_overflow")
                    continue
                now = clock.now()
                counter: tuple[int, int] | None = None
                try:
                    if cfg.format == "lorawan" and sessions is not None:
                        dev, data, counter = sessions.decode_counted(payload)  # confirmed on commit
                        hit: tuple[str, bytes] | None = (dev, data)
                    else:
                        hit = frame_from_message(cfg.format, m.topic.value, payload, sessions)
                except DecodeError as exc:
                    data = exc.data if exc.data is not None else payload[:256]
                    sink.reject(name, exc.reason, data, f"{m.topic}: {exc}")
                    hit = None
                if hit is None:
                    if qos > 0:
                        paho.ack(m.mid, qos)
                    continue
                flow.take(size)
                cb = settle_cb(m.mid, qos, size, counter)
                if not sink.offer((hit[0], hit[1], now, name), cb):
                    cb(False)  # not queued: leave it un-acked and reconnect so the broker redelivers it

        async def watch() -> None:
            await redeliver.wait()
            raise _Redeliver

        async def mirror_state() -> None:
            """Keep ``vigil_gateway_source_up`` in step with the connection (1 Hz, a flag read)."""
            while True:
                sink.mark_up(name, bool(paho.is_connected()))
                await asyncio.sleep(1.0)

        async with client:
            await client.subscribe([(t, int(cfg.qos)) for t in cfg.topics])
            sink.mark_up(name, True)
            backoff.reset()
            log.info("MQTT source %s connected to %s:%d as %s", name, cfg.host, cfg.port, client_id)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(read(), name=f"mqtt-read:{name}")
                    tg.create_task(watch(), name=f"mqtt-redeliver:{name}")
                    tg.create_task(mirror_state(), name=f"source-state:{name}")
            finally:
                redeliver.set()  # late commits of this connection must not ack on a dead client

    try:
        while True:
            try:
                await session()
            except* _Redeliver:
                log.warning("MQTT source %s: un-committed messages; reconnecting for redelivery", name)
                delay = 0.0
            except* _CONNECTION_ERRORS as eg:
                log.warning("MQTT source %s lost %s:%d: %s", name, cfg.host, cfg.port, eg.exceptions[0])
                delay = backoff.next()
            else:
                delay = backoff.next()
            sink.mark_up(name, False)
            flow.reconnects += 1
            await asyncio.sleep(delay)
    finally:
        sink.mark_up(name, False)
