"""MQTT uplink: publish batches on ``vigil/v1/gw/{id}/up`` (QoS 1), delete only on the cloud's ack message.

A broker PUBACK only means the broker has the message; the record leaves the outbox when the cloud's
:class:`~alerts.contract.UplinkAck` arrives on ``vigil/v1/gw/{id}/ack`` (after its database commit). The
session is persistent (``clean_session=False``, fixed client id) and the ack topic is re-subscribed on every
reconnect; reconnects back off with jitter. aiomqtt errors are translated into uplink errors here.

Payload: the columnar binary body (``uplink.body = "msgpack"``, the default; the cloud's workers tell it from
JSON by its first byte) or JSON. A cloud whose workers predate the binary body answer it with an error
document ``{"batch_id": null, "error": "validation", "detail": "... Invalid JSON ..."}`` (they could not even
read the batch id): the waiting batch is then re-published as JSON at once, and this uplink publishes JSON
from then on (until the gateway restarts).

Alert lane (``alert_topic=True``, the default; gateway setting ``uplink.mqtt_alert_topic``): a batch that
carries alert steps goes to ``vigil/v1/gw/{id}/alert``, which the cloud's workers consume on a session of
its own, so it is not queued behind telemetry at the broker. A cloud that predates the lane has no
subscriber there, and a broker whose ACL lacks the ``.../alert`` line acknowledges and drops the publish;
either way no ack comes. So an alert batch that got no ack within ``alert_fallback_s`` is re-published (same
batch id, idempotent) on ``.../up``; if *that* one is acknowledged, this uplink publishes alert batches on
``.../up`` for ``alert_reprobe_s`` and then tries the lane again (an ack cannot say which copy it answers,
so a cloud whose lane was merely slower than ``alert_fallback_s``, e.g. during a database outage, gets it
back). If neither is acknowledged the cloud is down, not old: the lane stays on and the sender retries as
usual (docs/contract.md, "MQTT").
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from pathlib import Path
from urllib.parse import urlparse

import aiomqtt

from alerts.contract import UplinkAck, mqtt_ack_topic, mqtt_alert_topic, mqtt_up_topic
from alerts.uplink_body import MSGPACK_CONTENT_TYPE
from edge.outbox import BodyFormat, PendingBatch
from edge.uplink.base import (
    UplinkAuthError,
    UplinkError,
    UplinkInvalid,
    UplinkProtocolError,
    UplinkRejected,
    UplinkThrottled,
    UplinkTooLarge,
    UplinkUnavailable,
    parse_ack,
)
from firmware_bridge.backoff import Backoff
from firmware_bridge.transports.mqtt import close_on_failed_handshake

log = logging.getLogger(__name__)


class _BinaryNotRead(Exception):
    """The cloud's worker tried to read the binary payload as JSON: it predates the binary body."""


class MqttUplink:
    def __init__(
        self,
        url: str,
        gateway_id: str,
        credential: str,
        *,
        timeout_s: float = 10.0,
        max_backoff_s: float = 30.0,
        ca_file: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        body: BodyFormat = "msgpack",
        alert_topic: bool = True,
        alert_fallback_s: float | None = None,
        alert_reprobe_s: float = 900.0,
    ) -> None:
        u = urlparse(url)
        #: the payload format sent; becomes "json" when the cloud does not read the binary body
        self.body: BodyFormat = body
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        self.tls: ssl.SSLContext | None = None
        if u.scheme == "mqtts":  # TLS 1.2+, the broker's certificate and host name verified
            self.tls = close_on_failed_handshake(
                ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            )
            if client_cert:
                self.tls.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        self.gateway_id = gateway_id
        self.credential = credential
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.up_topic = mqtt_up_topic(gateway_id)
        self.alert_topic = mqtt_alert_topic(gateway_id)
        self.alert_lane_enabled = alert_topic
        self.alert_fallback_s = timeout_s if alert_fallback_s is None else alert_fallback_s
        self.alert_reprobe_s = alert_reprobe_s
        self._lane_off_until = 0.0  # monotonic; the alert lane is not used before then
        self.alert_fallbacks_total = 0
        self.ack_topic = mqtt_ack_topic(gateway_id)
        self._client: aiomqtt.Client | None = None
        self._waiting: dict[str, asyncio.Future[UplinkAck]] = {}
        self._binary: set[str] = set()  # waiting batches that were published as the binary body
        self.connected = asyncio.Event()
        self.reconnects_total = 0

    async def run(self) -> None:
        """Keep the session up forever: connect, subscribe to acks, dispatch them; back off on failure."""
        backoff = Backoff(initial=min(0.5, self.max_backoff_s), maximum=self.max_backoff_s)
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=f"vigil-gw-{self.gateway_id}"[:64],
                    clean_session=False,
                    username=self.gateway_id,
                    password=self.credential or None,
                    tls_context=self.tls,
                    timeout=self.timeout_s,
                ) as client:
                    await client.subscribe(self.ack_topic, qos=1)
                    self._client = client
                    self.connected.set()
                    backoff.reset()
                    log.info("uplink MQTT connected to %s:%d", self.host, self.port)
                    async for msg in client.messages:
                        self._dispatch(
                            bytes(msg.payload) if isinstance(msg.payload, bytes | bytearray) else b""
                        )
            except aiomqtt.MqttError as exc:
                log.warning("uplink MQTT session lost (%s); retrying with backoff", exc)
            finally:
                self._client = None
                self.connected.clear()
                for fut in self._waiting.values():
                    if not fut.done():
                        fut.set_exception(UplinkUnavailable("MQTT session lost while waiting for an ack"))
            self.reconnects_total += 1
            await backoff.sleep()

    def _dispatch(self, body: bytes) -> None:
        """An ack, or an error document ``{"batch_id", "error", "detail"}`` (docs/contract.md)."""
        try:
            doc = json.loads(body)
            if isinstance(doc, dict) and "error" in doc and _json_parse_failure(doc):
                for bid in self._binary:  # no batch id: the cloud could not read ours as JSON
                    fut = self._waiting.get(bid)
                    if fut is not None and not fut.done():
                        fut.set_exception(_BinaryNotRead(str(doc.get("detail", ""))[:200]))
                return
            if isinstance(doc, dict) and "error" in doc:
                fut = self._waiting.get(str(doc.get("batch_id")))
                if fut is not None and not fut.done():
                    code = str(doc["error"])[:40]
                    if code == "rate_limited":  # over quota: retry later, like HTTP 429
                        wait = doc.get("retry_after_s")
                        fut.set_exception(
                            UplinkThrottled(
                                f"cloud: over quota: {doc.get('detail', '')}"[:300],
                                reason=code,
                                retry_after_s=float(wait) if isinstance(wait, int | float) else 0.0,
                            )
                        )
                        return
                    cls: type[UplinkError] = {
                        "unauthenticated": UplinkAuthError,
                        "forbidden": UplinkAuthError,
                        "payload_too_large": UplinkTooLarge,
                        "validation": UplinkInvalid,
                        "bad_request": UplinkInvalid,
                        "storage_unavailable": UplinkUnavailable,
                        "internal": UplinkUnavailable,  # a cloud bug: retried, and isolated if it persists
                    }.get(code, UplinkRejected)
                    fut.set_exception(
                        cls(f"cloud refused the batch: {code}: {doc.get('detail', '')}"[:300], reason=code)
                    )
                return
            ack = UplinkAck.model_validate(doc)
        except ValueError:
            log.warning("ignoring a malformed ack message: %r", body[:200])
            return
        fut = self._waiting.get(ack.batch_id)
        if fut is not None and not fut.done():
            fut.set_result(ack)

    async def send(self, batch: PendingBatch) -> UplinkAck:
        if self.body == "msgpack" and batch.content_type == MSGPACK_CONTENT_TYPE:
            try:
                return await self._send_on_lane(batch, batch.body, binary=True)
            except _BinaryNotRead as exc:
                log.warning(
                    "the cloud does not read the binary uplink body (%s); publishing JSON from now on", exc
                )
                self.body = "json"
        return await self._send_on_lane(batch, batch.as_json(), binary=False)

    async def _send_on_lane(self, batch: PendingBatch, payload: bytes, *, binary: bool) -> UplinkAck:
        """Alert batches on the alert lane, falling back to ``.../up`` if the cloud does not answer there."""
        if batch.n_alerts == 0 or not self.alert_lane:
            return await self._publish(
                batch, payload, binary=binary, topic=self.up_topic, wait_s=self.timeout_s
            )
        try:
            return await self._publish(
                batch, payload, binary=binary, topic=self.alert_topic, wait_s=self.alert_fallback_s
            )
        except UplinkUnavailable as exc:
            if exc.reason != "ack_timeout":
                raise
        try:
            ack = await self._publish(
                batch, payload, binary=binary, topic=self.up_topic, wait_s=self.timeout_s
            )
        except _BinaryNotRead:
            self._alert_lane_off()  # a cloud that predates the binary body predates the alert lane too
            raise
        self._alert_lane_off()
        return ack

    @property
    def alert_lane(self) -> bool:
        """Alert batches go to ``alert_topic`` now (enabled, and not in a fallback period)."""
        return self.alert_lane_enabled and time.monotonic() >= self._lane_off_until

    def _alert_lane_off(self) -> None:
        self._lane_off_until = time.monotonic() + self.alert_reprobe_s
        self.alert_fallbacks_total += 1
        log.warning(
            "云端未在告警通道 %s 上确认，%g 秒内改用 %s 发送告警 / "
            "the cloud did not answer on the alert topic %s; publishing alert batches on %s for %g s "
            "(cloud predates the alert lane, or the broker ACL lacks the .../alert line)",
            self.alert_topic,
            self.alert_reprobe_s,
            self.up_topic,
            self.alert_topic,
            self.up_topic,
            self.alert_reprobe_s,
        )

    async def _publish(
        self, batch: PendingBatch, payload: bytes, *, binary: bool, topic: str, wait_s: float
    ) -> UplinkAck:
        client = self._client
        if client is None:
            raise UplinkUnavailable(
                f"MQTT broker {self.host}:{self.port} not connected", reason="disconnected"
            )
        fut: asyncio.Future[UplinkAck] = asyncio.get_running_loop().create_future()
        self._waiting[batch.batch_id] = fut
        if binary:
            self._binary.add(batch.batch_id)
        try:
            await client.publish(topic, payload, qos=1, timeout=self.timeout_s)
            ack = await asyncio.wait_for(fut, wait_s)
        except aiomqtt.MqttError as exc:
            raise UplinkUnavailable(f"publish failed: {exc}", reason="publish") from exc
        except TimeoutError as exc:
            raise UplinkUnavailable(
                f"no ack for batch {batch.batch_id} on {topic} within {wait_s} s", reason="ack_timeout"
            ) from exc
        finally:
            self._waiting.pop(batch.batch_id, None)
            self._binary.discard(batch.batch_id)
        if ack.batch_id != batch.batch_id:
            raise UplinkProtocolError("ack for the wrong batch")
        return parse_ack(ack.model_dump_json().encode(), batch.batch_id)

    async def aclose(self) -> None:
        return None


def _json_parse_failure(doc: dict[str, object]) -> bool:
    """An error document of a worker that could not parse the payload as JSON at all (no batch id)."""
    return (
        doc.get("batch_id") is None
        and doc.get("error") == "validation"
        and "Invalid JSON" in str(doc.get("detail"))
    )
