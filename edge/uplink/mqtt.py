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
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from pathlib import Path
from urllib.parse import urlparse

import aiomqtt

from alerts.contract import UplinkAck, mqtt_ack_topic, mqtt_up_topic
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
                return await self._publish(batch, batch.body, binary=True)
            except _BinaryNotRead as exc:
                log.warning(
                    "the cloud does not read the binary uplink body (%s); publishing JSON from now on", exc
                )
                self.body = "json"
        return await self._publish(batch, batch.as_json(), binary=False)

    async def _publish(self, batch: PendingBatch, payload: bytes, *, binary: bool) -> UplinkAck:
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
            await client.publish(self.up_topic, payload, qos=1, timeout=self.timeout_s)
            ack = await asyncio.wait_for(fut, self.timeout_s)
        except aiomqtt.MqttError as exc:
            raise UplinkUnavailable(f"publish failed: {exc}", reason="publish") from exc
        except TimeoutError as exc:
            raise UplinkUnavailable(
                f"no ack for batch {batch.batch_id} within {self.timeout_s} s", reason="ack_timeout"
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
