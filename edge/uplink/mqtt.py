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
batch id, idempotent) on ``.../up``, so it is delivered either way. The lane is judged missing only on
evidence (docs/contract.md, "Alert lane"):

- the lane copy got no answer, the ``.../up`` copy published after it on the *same connection* was
  answered, and no copy on the lane has been answered so far;
- and ``.../up`` was not silent on this connection before the lane copy was published: a connection made
  after a lost one or a failed attempt (broker or network outage) is silent until something on ``.../up``
  is answered, and so is one on which an ``.../up`` publish went unanswered (cloud or database down). An
  ack that comes back when the cloud returns says nothing about the lane (the cloud's two sessions
  reconnect independently), so it never switches the lane off.

Otherwise the batch is delivered (or retried by the sender, on the lane) and the lane stays in use.

Which copy an ack answers: a current cloud says so (``UplinkAck.via``: ``"up"`` or ``"alert"``).

- ``via="alert"`` proves the lane: back in use at once (a lane copy that was merely late), and the lane is
  *proven on this connection* (the broker's ACL and the cloud's alert session both carry it).
- ``via="up"`` answering the ``.../up`` copy while the lane copy is unanswered is evidence under the rules
  above, except on a connection where the lane was proven: then the lane's silence is its session lagging
  (the cloud restarted its alert sessions alone, or they reconnect later than telemetry), like an outage,
  and the lane is kept, for at most ``alert_reprobe_min_s`` counted from the first lane copy left
  unanswered since the last lane answer. Past that it is judged missing as usual (a cloud reconfigured
  without the lane), and a new connection needs a new proof.
- an answer without ``via`` (a cloud that predates the field, or rolled back to one; error documents)
  falls back to counting, whatever was proven before: answers are counted per alert batch, and an answer
  beyond the number of ``.../up`` copies published must come from a lane copy, which puts the lane back
  in use; the ``.../up`` copy answered so while no lane copy was is evidence under the rules above.

A lane judged missing is re-probed after ``alert_reprobe_min_s`` (default 30 s), doubling up to
``alert_reprobe_s`` (900 s) while it keeps failing, reset by any lane answer, and at once after a reconnect
(:class:`~edge.uplink.alert_lane.AlertLane`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

import aiomqtt

from alerts.contract import UplinkAck, mqtt_ack_topic, mqtt_alert_topic, mqtt_up_topic
from alerts.uplink_body import MSGPACK_CONTENT_TYPE
from edge.outbox import BodyFormat, PendingBatch
from edge.uplink.alert_lane import AlertLane
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

if TYPE_CHECKING:
    from edge.metrics import GatewayMetrics

log = logging.getLogger(__name__)

#: alert batches whose answers are counted (lane vs. ``.../up`` copies); older ones are forgotten first
_TRACKED_BATCHES = 256


#: ``UplinkAck.via`` as read from a document (``None``: absent, or not a value this gateway knows)
Via = Literal["up", "alert"] | None


class _Copies:
    """Copies of one alert batch published on ``.../up``, answers received for it (any copy), and whether
    an answer named the lane (``via="alert"``)."""

    __slots__ = ("answers", "lane", "up")

    def __init__(self) -> None:
        self.up = 0
        self.answers = 0
        self.lane = False


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
        alert_reprobe_min_s: float = 30.0,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``alert_reprobe_min_s`` / ``alert_reprobe_s``: the first and the longest fallback period of the
        alert lane; ``metrics``: export the lane's state (``vigil_gateway_alert_lane_*``); ``clock`` (tests):
        the monotonic clock of those periods."""
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
        self.lane = AlertLane(
            enabled=alert_topic,
            reprobe_min_s=alert_reprobe_min_s,
            reprobe_max_s=alert_reprobe_s,
            clock=clock,
            topic=self.alert_topic,
            up_topic=self.up_topic,
        )
        if metrics is not None:
            metrics.watch_alert_lane(self.lane)
        self._epoch = 0  # connections made so far: a verdict needs the same connection throughout
        self._silent = False  # .../up unanswered on this connection since it was made or last answered
        self._clock = clock
        self._lane_proof: int | None = None  # the connection (epoch) on which an ack named the lane
        self._lane_quiet_since: float | None = None  # clock(): first lane copy unanswered since a lane ack
        self._lag_logged: float | None = None  # the silence last logged as the lane's session lagging
        self._copies: OrderedDict[str, _Copies] = OrderedDict()  # alert batches published on the lane
        self._on_up: set[str] = set()  # batches waiting for an answer to a copy published on .../up
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
                    self._epoch += 1
                    # after an outage (a lost session, a failed attempt) nothing is known of the cloud yet
                    self._silent = self.reconnects_total > 0
                    self._lane_quiet_since = None  # the proof was for the old connection
                    self.lane.reconnected()
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

    def _answered(self, batch_id: str, via: Via) -> None:
        """The cloud answered a copy of ``batch_id`` (an ack, or an error document naming it), on the
        topic ``via`` names (``None``: not said)."""
        copies = self._copies.get(batch_id)
        if copies is not None:
            copies.answers += 1
        if via == "alert":  # the lane answered: proven on this connection, in use at once
            self._lane_proof, self._lane_quiet_since = self._epoch, None
            if copies is not None:
                copies.lane = True
            self.lane.answered()
            return
        if via == "up":
            if batch_id in self._on_up:  # a copy waiting on .../up (not a stale one): answered
                self._silent = False
            return
        if batch_id in self._on_up:
            self._silent = False  # .../up is answered on this connection (or the lane, late: unknown)
        if copies is not None and copies.answers > copies.up:  # beyond the copies on .../up: the lane's
            self.lane.answered()

    def _dispatch(self, body: bytes) -> None:
        """An ack, or an error document ``{"batch_id", "error", "detail"}`` (docs/contract.md)."""
        try:
            doc = json.loads(body)
            if isinstance(doc, dict) and isinstance(doc.get("batch_id"), str):
                via = doc.get("via")
                self._answered(doc["batch_id"], via if via in ("up", "alert") else None)
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
            if isinstance(doc, dict) and doc.get("via") not in (None, "up", "alert", "http"):
                doc = {k: v for k, v in doc.items() if k != "via"}  # a later cloud's value: not ours to read
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
        """Alert batches on the alert lane; one the lane does not answer in time is re-published on
        ``.../up``, and the lane is judged missing only on evidence (module docstring)."""
        if batch.n_alerts == 0 or not self.alert_lane:
            return await self._publish(
                batch, payload, binary=binary, topic=self.up_topic, wait_s=self.timeout_s
            )
        epoch, silent, sent_at = self._epoch, self._silent, self._clock()
        copies = self._track(batch.batch_id)
        try:
            return await self._publish(
                batch, payload, binary=binary, topic=self.alert_topic, wait_s=self.alert_fallback_s
            )
        except UplinkUnavailable as exc:
            if exc.reason != "ack_timeout":
                raise  # disconnected, or refused by the cloud: nothing learnt about the lane
        if epoch == self._epoch and self._lane_quiet_since is None and not copies.lane:
            self._lane_quiet_since = sent_at  # the lane's first unanswered copy since it last answered
        try:
            ack = await self._publish(
                batch, payload, binary=binary, topic=self.up_topic, wait_s=self.timeout_s
            )
        except _BinaryNotRead:  # answered on .../up (a cloud that predates the binary body and the lane)
            self._judge(copies, epoch, silent, None)
            raise
        self._judge(copies, epoch, silent, ack.via if ack.via in ("up", "alert") else None)
        return ack

    def _track(self, batch_id: str) -> _Copies:
        copies = self._copies.get(batch_id)
        if copies is None:
            copies = self._copies[batch_id] = _Copies()
            while len(self._copies) > _TRACKED_BATCHES:
                self._copies.popitem(last=False)
        return copies

    def _judge(self, copies: _Copies, epoch: int, silent: bool, via: Via) -> None:
        """The ``.../up`` copy was answered (by an ack naming ``via``), the lane copy was not (in time): is
        that evidence?"""
        if epoch != self._epoch or silent:
            log.debug(
                "告警批次已改由 %s 送达；告警通道无应答发生在断线或云端无应答期间，"
                "不作判定，继续使用告警通道 / "
                "alert batch delivered on %s; the lane's silence fell in an outage (no evidence), lane kept",
                self.up_topic,
                self.up_topic,
            )
            return
        if via is None:  # a cloud that does not say which copy it answers: count
            if copies.answers <= copies.up:  # no answer to a lane copy so far
                self.lane.missing()
            return
        if copies.lane:  # the lane answered this batch after all (late): proven, nothing missing
            return
        quiet = self._lane_quiet_since
        if (
            self._lane_proof == self._epoch
            and quiet is not None
            and self._clock() - quiet < self.lane.reprobe_min_s
        ):
            lag_log = log.info if self._lag_logged != quiet else log.debug  # once per silence
            self._lag_logged = quiet
            lag_log(
                "告警通道在本连接上已确认过，其无应答 %.1f 秒视为云端告警会话滞后，继续使用告警通道 / "
                "the lane answered earlier on this connection; silent for %.1f s, taken as the cloud's "
                "alert session lagging (no evidence), lane kept",
                self._clock() - quiet,
                self._clock() - quiet,
            )
            return
        self.lane.missing()

    @property
    def alert_lane(self) -> bool:
        """Alert batches go to ``alert_topic`` now (enabled, and not in a fallback period)."""
        return self.alert_lane_enabled and self.lane.use_lane()

    @property
    def alert_fallbacks_total(self) -> int:
        """Times the lane was judged missing."""
        return self.lane.fallbacks_total

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
        on_up = topic == self.up_topic
        if on_up:
            self._on_up.add(batch.batch_id)
            copies = self._copies.get(batch.batch_id)
            if copies is not None:
                copies.up += 1
        epoch = self._epoch
        try:
            await client.publish(topic, payload, qos=1, timeout=self.timeout_s)
            async with asyncio.timeout(wait_s):
                ack = await fut
        except aiomqtt.MqttError as exc:
            raise UplinkUnavailable(f"publish failed: {exc}", reason="publish") from exc
        except TimeoutError as exc:
            if on_up and epoch == self._epoch:
                self._silent = True  # the cloud does not answer on .../up: its lane cannot be judged
            raise UplinkUnavailable(
                f"no ack for batch {batch.batch_id} on {topic} within {wait_s} s", reason="ack_timeout"
            ) from exc
        finally:
            self._waiting.pop(batch.batch_id, None)
            self._binary.discard(batch.batch_id)
            self._on_up.discard(batch.batch_id)
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
