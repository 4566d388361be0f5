"""MQTT ingest workers: gateways publish :class:`~alerts.contract.UplinkBatch` documents, workers store them.

Why it is built this way:

- **Shared subscription** ``$share/vigil-ingest/vigil/v1/gw/+/up`` (MQTT 5, Mosquitto 2): the broker hands
  each message to one member of the group, so adding a worker process adds throughput with no
  coordination between workers.
- **Persistent session, manual acknowledgement.** Each worker has a *stable* client id, connects with
  ``clean_start=False`` and a session expiry, and sends the PUBACK of a message only after
  :meth:`IngestService.ingest <cloud.ingest.IngestService.ingest>` returned, i.e. after the commit. A
  worker that dies mid-batch leaves the message un-acknowledged in its session and the broker redelivers
  it when the worker (same client id) comes back; storage is idempotent (``batch_id``, and
  ``(device_id, time, seq)``), so the redelivery is stored once and answered ``duplicate=true``.
  aiomqtt 2 acknowledges on receipt (no manual ack), so this module drives paho-mqtt 2 directly
  (``manual_ack=True`` + ``client.ack(mid, qos)``), with its socket driven by the asyncio loop.
- **Bounded in-flight work.** ``receive_maximum`` (MQTT 5 flow control) asks the broker to keep at most
  that many un-acked messages in flight, and the worker stops reading the socket while that many wait in
  its hand-off queue (Mosquitto 2.0 does not always honour ReceiveMaximum, so the pause is what really
  bounds memory). If the queue's hard bound is reached anyway, the message is dropped *without* an ack
  (``vigil_cloud_mqtt_dropped_total``) and the worker reconnects, so the broker redelivers it.
- **Several waiting messages are handled together.** The consumer takes every message already waiting
  (up to ``max_group``) as one group. If the service offers ``ingest_many`` (:class:`GroupIngestor`: all
  of a group's batches in one transaction), the group costs one commit; otherwise the group's batches are
  ingested concurrently. Either way each gateway's ack is published as soon as its batch is committed,
  and the PUBACKs go out in the order the messages arrived, after their commits. ``receive_maximum`` is
  twice the group so the next group is already waiting while one is being committed.
- **An alert lane that never waits behind telemetry.** Gateways publish batches carrying alert steps on
  ``vigil/v1/gw/{id}/alert`` (:func:`alerts.contract.mqtt_alert_topic`). Each worker holds a second
  session for it (client id ``<client_id>-alerts``, shared subscription
  ``$share/<group>-alerts/vigil/v1/gw/+/alert``) with its own hand-off queue and consumer task, so an
  alert batch is committed and acknowledged while the telemetry session still holds a backlog: on one
  session the broker queues an alarm storm's alert batches behind the same round's telemetry (p50 10.6 s
  publish -> ack at full district size). Same PUBACK-after-commit, idempotency and poison rules; alert
  steps on ``.../up`` (older gateways) are still accepted. ``alert_lane=False`` runs the telemetry
  session only.
- **Falling behind is visible**: ``vigil_cloud_mqtt_backlog_messages`` (received, not yet acknowledged),
  ``vigil_cloud_mqtt_oldest_message_age_seconds`` (how long the oldest of them has waited),
  ``vigil_cloud_mqtt_saturated`` (1 while the worker holds its whole receive window or stopped reading,
  so new messages wait at the broker) per worker, and the ``vigil_cloud_mqtt_message_seconds`` (receipt
  -> PUBACK) and ``vigil_cloud_mqtt_group_messages`` histograms. A worker that falls behind shows as
  ``saturated`` 1 with an age that keeps growing; alert on the age (e.g. over 30 s for a minute).
- **Acknowledge to the gateway only after commit**: the :class:`~alerts.contract.UplinkAck` goes to
  ``vigil/v1/gw/{gateway_id}/ack`` before the PUBACK of the batch, at QoS 0 (see
  ``_Connection.publish``; a lost ack only makes the gateway re-send, and a re-sent batch is
  answered ``duplicate=true``).
- **Two payload formats, told apart by the first byte** (:func:`alerts.uplink_body.sniff`): a JSON
  document starts with ``{``, the columnar binary body (``application/vnd.vigil.uplink+msgpack``) with a
  msgpack map header (``0x80``-``0x8f``, ``0xde``, ``0xdf``); the two sets cannot overlap. Not the MQTT 5
  content-type property: gateways publish with MQTT 3.1.1 clients too, and a broker bridge may drop
  properties. Not a topic suffix: every broker ACL (``pattern write vigil/v1/gw/%u/up``) and the shared
  subscription would have to change. Both formats go through :func:`alerts.uplink_body.decode_batch`, the
  decoder the HTTP route uses.
- **Poison messages do not loop.** A payload that is not a valid ``UplinkBatch``, a topic without a valid
  gateway id, a batch whose ``gateway_id`` differs from the topic's, or a batch the service refuses (4xx
  class :class:`~cloud.errors.CloudError`) is counted, logged with the first bytes of the payload,
  acknowledged, and answered with an error document on the ack topic::

      {"batch_id": "<id or null>", "error": "<code>", "detail": "<why>"}

  A :class:`~cloud.errors.StorageError` (the database is down) is *not* a poison message: the worker keeps
  the message and retries with jittered backoff until it is stored or the connection is lost.
- **Reconnect with jittered exponential backoff** and resubscribe on every connect.

Security: on MQTT the broker authenticates gateways; the shipped Mosquitto files
(``deploy/mosquitto/vigil-gateways.acl``: the certificate's CN is the username, ``%u``) let a gateway
publish only under its own id (``docs/mtls.md``), which is why the topic's gateway id is the authority
here (``docs/timeseries.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from alerts.contract import UplinkAck, UplinkBatch, mqtt_ack_topic
from alerts.uplink_body import BodyError, decode_batch, sniff
from cloud.errors import CloudError, StorageError
from cloud.limits import RateLimitedError, install_log_throttle, uninstall_log_throttle
from firmware_bridge.backoff import Backoff

log = logging.getLogger(__name__)

SHARE_GROUP = "vigil-ingest"
UP_FILTER = "vigil/v1/gw/+/up"
ALERT_FILTER = "vigil/v1/gw/+/alert"
_TOPIC = re.compile(r"^vigil/v1/gw/([A-Za-z0-9_.:\-]{1,64})/(?:up|alert)$")
_LOG_BYTES = 200


class Ingestor(Protocol):
    """What the worker needs from :class:`cloud.ingest.IngestService`."""

    async def ingest(self, batch: UplinkBatch, *, gateway_id: str) -> UplinkAck: ...


@runtime_checkable
class GroupIngestor(Protocol):
    """An :class:`Ingestor` that can also store several batches in one transaction.

    ``ingest_many([(batch, gateway_id), ...])`` returns one entry per item, in order: its
    :class:`UplinkAck` (committed), or the :class:`~cloud.errors.CloudError` that refused that item alone
    (over quota, forbidden; nothing of it stored). It raises :class:`~cloud.errors.StorageError` when the
    transaction as a whole failed (nothing of the group committed): the worker retries the group.
    """

    async def ingest(self, batch: UplinkBatch, *, gateway_id: str) -> UplinkAck: ...

    async def ingest_many(self, items: Sequence[tuple[UplinkBatch, str]]) -> list[UplinkAck | CloudError]: ...


class MqttIngestError(Exception):
    """Base of this module's errors."""


class BrokerConnectError(MqttIngestError):
    """The broker refused the connection or the subscription (bad credentials, not authorised)."""


@dataclass(frozen=True, slots=True)
class MqttIngestConfig:
    """One worker's settings. ``client_id`` must be stable across restarts of *this* worker (e.g.
    ``ingest-<host>-<n>``) and unique among workers: the broker keeps un-acked messages in that session."""

    host: str
    port: int = 1883
    client_id: str = "vigil-ingest-0"
    group: str = SHARE_GROUP
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 24 * 3600
    receive_maximum: int = 16
    #: messages already waiting that are taken (and committed) together; at most ``receive_maximum``
    max_group: int = 8
    connect_timeout_s: float = 10.0
    ingest_timeout_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    unexpected_error_attempts: int = 3
    #: which topic this session consumes: gateways' telemetry (``up``) or their alert lane (``alert``)
    lane: Literal["up", "alert"] = "up"
    #: a telemetry worker also runs the alert lane's session (:meth:`alert_config`)
    alert_lane: bool = True

    @property
    def subscription(self) -> str:
        return f"$share/{self.group}/{ALERT_FILTER if self.lane == 'alert' else UP_FILTER}"

    def alert_config(self) -> MqttIngestConfig:
        """The alert lane's session: its own stable client id and share group, same broker and limits."""
        return replace(
            self,
            client_id=f"{self.client_id}-alerts",
            group=f"{self.group}-alerts",
            lane="alert",
            alert_lane=False,
        )


class MqttIngestMetrics:
    """``vigil_cloud_mqtt_*`` metrics; pass the app's registry to expose them on ``/metrics``.

    Counters and histograms are shared by the process's workers; the backlog gauges are per worker
    (label ``worker`` = its client id), read from the workers when scraped.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.workers: weakref.WeakSet[IngestWorker] = weakref.WeakSet()
        self.message_seconds = Histogram(
            "vigil_cloud_mqtt_message_seconds",
            "Receipt of an uplink message -> its PUBACK (waiting in the worker + ingest + commit)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=r,
        )
        self.group_messages = Histogram(
            "vigil_cloud_mqtt_group_messages",
            "Uplink messages handled together (one transaction when the service has ingest_many)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        r.register(_BacklogCollector(self.workers))
        self.messages = Counter(
            "vigil_cloud_mqtt_messages_total",
            "Uplink messages handled, by result (stored, duplicate, malformed, rejected, rate_limited, "
            "abandoned)",
            ["result"],
            registry=r,
        )
        self.storage_retries = Counter(
            "vigil_cloud_mqtt_storage_retries_total",
            "Ingest attempts that failed with a storage error",
            registry=r,
        )
        self.dropped = Counter(
            "vigil_cloud_mqtt_dropped_total",
            "Messages dropped un-acked because the hand-off queue was full",
            registry=r,
        )
        self.connects = Counter(
            "vigil_cloud_mqtt_connects_total", "Successful broker connections", registry=r
        )
        self.connect_failures = Counter(
            "vigil_cloud_mqtt_connect_failures_total", "Failed connection attempts", registry=r
        )


class _BacklogCollector(Collector):
    """Per-worker backlog gauges, computed when scraped (no timer keeps them fresh)."""

    def __init__(self, workers: weakref.WeakSet[IngestWorker]) -> None:
        self._workers = workers

    def collect(self) -> Iterable[GaugeMetricFamily]:
        backlog = GaugeMetricFamily(
            "vigil_cloud_mqtt_backlog_messages",
            "Uplink messages this worker received and has not acknowledged yet",
            labels=["worker"],
        )
        age = GaugeMetricFamily(
            "vigil_cloud_mqtt_oldest_message_age_seconds",
            "How long the oldest received, not yet acknowledged message has waited (0 if none)",
            labels=["worker"],
        )
        saturated = GaugeMetricFamily(
            "vigil_cloud_mqtt_saturated",
            "1 while the worker holds its whole receive window or stopped reading: new messages wait at "
            "the broker",
            labels=["worker"],
        )
        now = time.monotonic()
        for w in list(self._workers):
            n, oldest = w.backlog()
            backlog.add_metric([w.config.client_id], n)
            age.add_metric([w.config.client_id], 0.0 if oldest is None else max(0.0, now - oldest))
            saturated.add_metric([w.config.client_id], 1.0 if w.saturated else 0.0)
        yield backlog
        yield age
        yield saturated

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


def gateway_of_topic(topic: str) -> str | None:
    """``vigil/v1/gw/{gateway_id}/up`` or ``.../alert`` -> ``gateway_id``; ``None`` for any other topic."""
    m = _TOPIC.match(topic)
    return m.group(1) if m else None


def backoff_delays(initial: float, maximum: float, rng: random.Random | None = None) -> Iterator[float]:
    """Jittered exponential backoff delays, forever: the one helper, :class:`firmware_bridge.backoff.Backoff`
    ("equal jitter": attempt n waits between half and all of min(maximum, initial * 2**n) seconds)."""
    return iter(Backoff(initial=min(initial, maximum), maximum=maximum, rng=rng or random.Random()))


@dataclass(slots=True)
class _Delivery:
    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: float = field(default_factory=time.monotonic)


class _Connection:
    """One paho client for one broker connection, driven by the asyncio loop (no network thread).

    paho's external-loop hooks (``on_socket_open`` / ``on_socket_register_write`` ...) register the socket
    with the event loop, as aiomqtt does; unlike aiomqtt we can *stop reading* (:meth:`pause_reading`)
    when the hand-off queue is full, which pushes back on the broker through TCP. Only the blocking TCP
    connect runs in a thread; the hooks it triggers hop back to the loop.
    """

    def __init__(
        self,
        cfg: MqttIngestConfig,
        loop: asyncio.AbstractEventLoop,
        generation: int,
        deliver: Callable[[_Delivery], None],
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.loop = loop
        self.generation = generation
        self._deliver = deliver
        self.connected: asyncio.Future[None] = loop.create_future()
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if cfg.username is not None:
            self.client.username_pw_set(cfg.username, cfg.password)
        c = self.client
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        c.on_socket_open = lambda _c, _u, sock: self._on_loop(self._sock_open, sock)
        c.on_socket_close = lambda _c, _u, sock: self._on_loop(self._sock_close, sock)
        c.on_socket_register_write = lambda _c, _u, sock: self._on_loop(self._want_write, sock, True)
        c.on_socket_unregister_write = lambda _c, _u, sock: self._on_loop(self._want_write, sock, False)
        self._cfg = cfg
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = cfg.session_expiry_s
        props.ReceiveMaximum = cfg.receive_maximum
        self._props = props
        self._closed = False
        self._fd: int | None = None
        self._reading = False
        self._paused = False
        self._writing = False
        self._misc: asyncio.Task[None] | None = None

    # --- socket plumbing (always on the loop thread) -----------------------------------------------------
    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _sock_open(self, sock: Any) -> None:
        if self._closed:
            return
        self._fd = sock.fileno()
        self._update_reader()
        if self.client.want_write():
            self._want_write(sock, True)

    def _sock_close(self, sock: Any) -> None:
        if self._fd is not None:
            if self._reading:
                self.loop.remove_reader(self._fd)
            if self._writing:
                self.loop.remove_writer(self._fd)
        self._fd, self._reading, self._writing = None, False, False

    def _want_write(self, sock: Any, on: bool) -> None:
        if self._fd is None or self._closed:
            return
        if on and not self._writing:
            self.loop.add_writer(self._fd, self.client.loop_write)
            self._writing = True
        elif not on and self._writing:
            self.loop.remove_writer(self._fd)
            self._writing = False

    def _update_reader(self) -> None:
        want = self._fd is not None and not self._paused and not self._closed
        if want and not self._reading:
            assert self._fd is not None
            self.loop.add_reader(self._fd, self.client.loop_read)
            self._reading = True
        elif not want and self._reading and self._fd is not None:
            self.loop.remove_reader(self._fd)
            self._reading = False

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_reading(self) -> None:
        self._paused = True
        self._update_reader()

    def resume_reading(self) -> None:
        self._paused = False
        self._update_reader()

    async def _misc_loop(self) -> None:
        while True:  # keepalive pings and ping-timeout detection
            self.client.loop_misc()
            await asyncio.sleep(1.0)

    @staticmethod
    def _set(fut: asyncio.Future[Any], value: Any = None, exc: BaseException | None = None) -> None:
        if not fut.done():
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

    # --- paho callbacks (loop thread) --------------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._set(self.connected, exc=BrokerConnectError(f"broker refused the connection: {reason}"))
            return
        self._set(self.connected)
        result, _mid = client.subscribe(self._cfg.subscription, qos=1)
        if result != 0:
            self._set(self.subscribed, exc=BrokerConnectError(f"subscribe failed: {result}"))
        elif getattr(flags, "session_present", False):
            # A resumed session keeps its subscription, and the broker sends the session's queued messages
            # right after CONNACK. Under load they fill the queue, reading pauses (back-pressure), and the
            # SUBACK behind them cannot be read in time: waiting for it made a restarted worker time out,
            # reconnect and time out again, forever (fault suite, worker kill -9 at load 13-20).
            self._set(self.subscribed)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        bad = [r for r in reasons if r.is_failure]
        if bad:
            self._set(self.subscribed, exc=BrokerConnectError(f"subscription refused: {bad[0]}"))
        else:
            self._set(self.subscribed)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._deliver(_Delivery(self.generation, msg.mid, msg.qos, msg.topic, bytes(msg.payload)))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._set(self.lost, str(reason))
        self._set(self.connected, exc=BrokerConnectError(f"disconnected before CONNACK: {reason}"))
        self._set(self.subscribed, exc=BrokerConnectError(f"disconnected before SUBACK: {reason}"))

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def open(self) -> None:
        cfg = self._cfg
        try:
            async with asyncio.timeout(cfg.connect_timeout_s):
                await asyncio.to_thread(
                    self.client.connect,
                    cfg.host,
                    cfg.port,
                    cfg.keepalive_s,
                    clean_start=False,
                    properties=self._props,
                )
        except (OSError, TimeoutError) as exc:
            raise BrokerConnectError(f"cannot reach broker {cfg.host}:{cfg.port}: {exc!r}") from exc
        self._misc = self.loop.create_task(self._misc_loop(), name=f"mqtt-misc[{cfg.client_id}]")
        stage = "CONNACK"
        try:
            async with asyncio.timeout(cfg.connect_timeout_s):
                await asyncio.shield(self.connected)
            stage = "SUBACK"
            async with asyncio.timeout(cfg.connect_timeout_s):
                await asyncio.shield(self.subscribed)
        except TimeoutError as exc:
            raise BrokerConnectError(f"no {stage} within {cfg.connect_timeout_s:g} s") from exc

    def publish(self, topic: str, payload: bytes) -> None:
        # QoS 0 on purpose. paho's loop_read handles one packet per un-acked outgoing QoS>0 message per
        # call, and the broker's PUBACKs for QoS 1 acks cannot be read while we pause reading: under load
        # the two fed each other and broke the queue bound (measured). A lost ack costs nothing: the
        # gateway re-sends the batch and gets ``duplicate=true`` (alerts/contract.py).
        self.client.publish(topic, payload, qos=0)

    def ack(self, d: _Delivery) -> None:
        if d.qos > 0:
            self.client.ack(d.mid, d.qos)

    def drop(self) -> None:
        """Close the connection from our side (the session stays on the broker)."""
        self.client.disconnect()

    async def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self.client.disconnect()
            if self.client.want_write():
                self.client.loop_write()  # flush DISCONNECT; paho closes the socket after sending it
        self._closed = True
        if self._misc is not None:
            # not awaited: awaiting it under suppress(CancelledError) would also swallow a cancel of the
            # task closing us (the connection loop, stopped while it closes a failed connection)
            self._misc.cancel()
        sock = self.client.socket()
        self._sock_close(sock)
        if sock is not None:  # DISCONNECT could not be flushed: close it ourselves
            with contextlib.suppress(OSError):
                sock.close()
        for fut in (self.connected, self.subscribed, self.lost):
            if fut.done() and not fut.cancelled():
                fut.exception()  # mark retrieved
            else:
                fut.cancel()


class IngestWorker:
    """One MQTT ingest worker. ``await worker.run()`` until cancelled; ``worker.ready`` is set once the
    shared subscription is active (for tests and health checks). A telemetry worker with
    ``config.alert_lane`` runs its alert lane as ``worker.alerts`` (a worker of its own, in the same
    task group; its ``ready`` says when the alert subscription is active)."""

    def __init__(
        self,
        config: MqttIngestConfig,
        service: Ingestor,
        *,
        metrics: MqttIngestMetrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.service = service
        self.metrics = metrics or MqttIngestMetrics()
        self.metrics.workers.add(self)
        self.ready = asyncio.Event()
        self._sleep = sleep
        # Reading pauses at ``receive_maximum`` queued messages; the hard bound leaves room for what one
        # socket read can still carry (Mosquitto 2.0 was measured to exceed ReceiveMaximum under load).
        self._high_water = config.receive_maximum
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue(maxsize=4 * config.receive_maximum + 32)
        self._max_group = max(1, min(config.max_group, config.receive_maximum))
        self._conn: _Connection | None = None
        self._generation = 0
        # received and not yet acknowledged (queued or being handled), oldest first: the backlog gauges
        self._in_hand: dict[int, float] = {}
        self._poisoned: set[int] = set()  # deliveries answered with an error document, to acknowledge
        self.alerts: IngestWorker | None = (
            IngestWorker(config.alert_config(), service, metrics=self.metrics, sleep=sleep)
            if config.alert_lane and config.lane == "up"
            else None
        )

    def backlog(self) -> tuple[int, float | None]:
        """``(messages received and not yet acknowledged, monotonic receipt time of the oldest)``."""
        for received in self._in_hand.values():
            return len(self._in_hand), received
        return 0, None

    @property
    def saturated(self) -> bool:
        """The broker can hand this worker nothing more: its receive window is full or reading is paused."""
        conn = self._conn
        return len(self._in_hand) >= self.config.receive_maximum or (conn is not None and conn.paused)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._connection_loop(), name=f"mqtt-ingest-connect[{self.config.client_id}]")
            tg.create_task(self._consume_loop(), name=f"mqtt-ingest-consume[{self.config.client_id}]")
            if self.alerts is not None:
                tg.create_task(self.alerts.run(), name=f"mqtt-ingest-alerts[{self.config.client_id}]")

    # --- connection management --------------------------------------------------------------------------
    def _deliver(self, d: _Delivery) -> None:
        conn = self._conn
        if (
            conn is not None
            and conn.generation == d.generation
            and self._queue.qsize() + 1 >= self._high_water
        ):
            conn.pause_reading()  # TCP back-pressure on the broker until the consumer catches up
        try:
            self._queue.put_nowait(d)
            self._in_hand[id(d)] = d.received
        except asyncio.QueueFull:
            # Not acked. The broker only redelivers on a session resume, so drop the connection: the
            # reconnect resumes the session and everything un-acked (this message included) comes again.
            self.metrics.dropped.inc()
            log.warning("ingest queue full; reconnecting so the broker redelivers", extra={"topic": d.topic})
            if conn is not None and conn.generation == d.generation:
                conn.drop()

    async def _connection_loop(self) -> None:
        delays = backoff_delays(self.config.backoff_initial_s, self.config.backoff_max_s)
        loop = asyncio.get_running_loop()
        while True:
            self._generation += 1
            conn = _Connection(self.config, loop, self._generation, self._deliver)
            # Current before CONNACK: a resumed session's redeliveries arrive before our SUBACK.
            self._conn = conn
            try:
                await conn.open()
            except (BrokerConnectError, TimeoutError) as exc:
                self.metrics.connect_failures.inc()
                self._conn = None
                await conn.close()
                delay = next(delays)
                log.warning(
                    "MQTT connect failed; retrying", extra={"error": str(exc), "retry_in_s": round(delay, 2)}
                )
                await self._sleep(delay)
                continue
            except BaseException:
                self._conn = None
                await conn.close()
                raise
            self.metrics.connects.inc()
            delays = backoff_delays(self.config.backoff_initial_s, self.config.backoff_max_s)
            self.ready.set()
            log.info(
                "MQTT ingest worker subscribed",
                extra={"client_id": self.config.client_id, "subscription": self.config.subscription},
            )
            try:
                reason = await asyncio.shield(conn.lost)
            finally:
                self.ready.clear()
                self._conn = None
                await conn.close()
            log.warning("MQTT connection lost; reconnecting", extra={"reason": reason})
            await self._sleep(next(delays))

    # --- message handling -------------------------------------------------------------------------------
    async def _consume_loop(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self._max_group and not self._queue.empty():
                group.append(self._queue.get_nowait())
            conn = self._conn
            if conn is not None and self._queue.qsize() < self._high_water:
                conn.resume_reading()
            try:
                await self._handle_group(group)
            finally:
                for d in group:
                    self._in_hand.pop(id(d), None)
                    self._queue.task_done()

    async def _handle_group(self, group: list[_Delivery]) -> None:
        """Ingest the group's valid batches (one transaction with ``ingest_many``, else concurrently),
        answer each gateway as soon as its batch is committed, then PUBACK in arrival order."""
        self.metrics.group_messages.observe(len(group))
        work: list[tuple[_Delivery, UplinkBatch, str]] = []
        answered: set[int] = set()  # committed and answered, or poison (answered with an error)
        for d in group:
            prepared = self._prepare(d)
            if prepared is not None:
                work.append((d, *prepared))
            elif id(d) in self._poisoned:
                answered.add(id(d))
        if work:
            acks = await self._ingest_group(work)
            for (d, batch, gateway_id), ack in zip(work, acks, strict=True):
                if (ack is not None and self._answer(d, batch, gateway_id, ack)) or id(d) in self._poisoned:
                    answered.add(id(d))
        now = time.monotonic()
        for d in group:
            self._poisoned.discard(id(d))
            conn = self._current(d)
            if id(d) in answered and conn is not None:
                conn.ack(d)
                self.metrics.message_seconds.observe(now - d.received)

    def _current(self, d: _Delivery) -> _Connection | None:
        """The connection a delivery can still be answered on (its own); ``None`` if that one is gone:
        the broker will redeliver the message on the resumed session, so we must not touch it."""
        conn = self._conn
        return conn if conn is not None and conn.generation == d.generation else None

    def _prepare(self, d: _Delivery) -> tuple[UplinkBatch, str] | None:
        """The batch and gateway of a message, or ``None`` when it was abandoned or poison (answered)."""
        if self._current(d) is None:
            self.metrics.messages.labels("abandoned").inc()
            return None
        gateway_id = gateway_of_topic(d.topic)
        if gateway_id is None:
            self._poison(
                d, None, None, "bad_topic", f"topic {d.topic!r} is not vigil/v1/gw/<gateway_id>/up|alert"
            )
            return None
        media = sniff(d.payload)
        if media is None:
            self._poison(
                d,
                gateway_id,
                None,
                "validation",
                "payload is neither a JSON object nor the binary body "
                f"(first byte {d.payload[:1].hex() or 'none'})",
            )
            return None
        try:
            batch = decode_batch(d.payload, media)
        except BodyError as exc:
            self._poison(
                d,
                gateway_id,
                exc.batch_id,
                "validation",
                f"not a valid UplinkBatch: {len(exc.errors)} error(s): {exc.detail}",
            )
            return None
        if batch.gateway_id != gateway_id:
            self._poison(
                d,
                gateway_id,
                batch.batch_id,
                "forbidden",
                f"batch names gateway {batch.gateway_id!r} but arrived on {gateway_id!r}'s topic",
            )
            return None
        return batch, gateway_id

    def _answer(self, d: _Delivery, batch: UplinkBatch, gateway_id: str, ack: UplinkAck) -> bool:
        """Publish the gateway's ack of a committed batch; ``False`` if its connection is gone."""
        conn = self._current(d)
        if conn is None:  # stored, but the connection went: the redelivery will be answered duplicate=true
            self.metrics.messages.labels("abandoned").inc()
            return False
        # a version-1 gateway gets a version-1 ack (no refusal fields, no via), as on HTTP; ``via`` names
        # this session's topic, so a gateway that sent the batch on both knows which copy is answered
        ack = ack.model_copy(update={"via": self.config.lane})
        conn.publish(mqtt_ack_topic(gateway_id), json.dumps(ack.for_version(batch.contract_version)).encode())
        self.metrics.messages.labels("duplicate" if ack.duplicate else "stored").inc()
        return True

    async def _ingest_group(self, work: list[tuple[_Delivery, UplinkBatch, str]]) -> list[UplinkAck | None]:
        if len(work) > 1 and isinstance(self.service, GroupIngestor):
            acks = await self._ingest_many_until_stored(self.service, work)
            if acks is not None:
                return acks
        return list(await asyncio.gather(*(self._ingest_until_stored(d, b, g) for d, b, g in work)))

    async def _ingest_many_until_stored(
        self, service: GroupIngestor, work: list[tuple[_Delivery, UplinkBatch, str]]
    ) -> list[UplinkAck | None] | None:
        """One transaction for the group, retried on storage errors; ``None``: do them one by one."""
        delays = backoff_delays(self.config.backoff_initial_s, self.config.backoff_max_s)
        while True:
            try:
                async with asyncio.timeout(self.config.ingest_timeout_s):
                    results = await service.ingest_many([(b, g) for _d, b, g in work])
            except (StorageError, TimeoutError) as exc:
                self.metrics.storage_retries.inc()
                log.warning(
                    "group ingest failed with a storage error; retrying",
                    extra={"batches": len(work), "error": str(exc)},
                )
            except Exception:  # supervisor boundary: the per-message path isolates a poison batch
                log.exception("unexpected group ingest failure; ingesting one by one")
                return None
            else:
                if len(results) != len(work):
                    log.error("ingest_many returned %d results for %d batches", len(results), len(work))
                    return None
                out: list[UplinkAck | None] = []
                for (d, batch, gateway_id), res in zip(work, results, strict=True):
                    if isinstance(res, UplinkAck):
                        out.append(res)
                    else:
                        self._refused(d, gateway_id, batch, res)
                        out.append(None)
                return out
            if all(self._current(d) is None for d, _b, _g in work):
                self.metrics.messages.labels("abandoned").inc(len(work))
                return [None] * len(work)
            await self._sleep(next(delays))

    def _refused(self, d: _Delivery, gateway_id: str, batch: UplinkBatch, exc: CloudError) -> None:
        if isinstance(exc, RateLimitedError):  # over quota: answered like HTTP's 429; the gateway retries
            self._poison(d, gateway_id, batch.batch_id, exc.code, exc.detail, retry_after_s=exc.retry_after_s)
        else:  # refused (4xx class): retrying cannot help
            self._poison(d, gateway_id, batch.batch_id, exc.code, exc.detail)

    async def _ingest_until_stored(
        self, d: _Delivery, batch: UplinkBatch, gateway_id: str
    ) -> UplinkAck | None:
        delays = backoff_delays(self.config.backoff_initial_s, self.config.backoff_max_s)
        unexpected = 0
        while True:
            try:
                async with asyncio.timeout(self.config.ingest_timeout_s):
                    return await self.service.ingest(batch, gateway_id=gateway_id)
            except (StorageError, TimeoutError) as exc:
                self.metrics.storage_retries.inc()
                log.warning(
                    "ingest failed with a storage error; retrying",
                    extra={"batch_id": batch.batch_id, "gateway_id": gateway_id, "error": str(exc)},
                )
            except CloudError as exc:  # refused (over quota, 4xx class): retrying the same way cannot help
                self._refused(d, gateway_id, batch, exc)
                return None
            except Exception as exc:  # supervisor boundary: a bug must not loop forever on one message
                unexpected += 1
                log.exception(
                    "unexpected ingest failure", extra={"batch_id": batch.batch_id, "attempt": unexpected}
                )
                if unexpected >= self.config.unexpected_error_attempts:
                    self._poison(d, gateway_id, batch.batch_id, "internal", f"{type(exc).__name__}: {exc}")
                    return None
            if self._current(d) is None:
                self.metrics.messages.labels("abandoned").inc()
                return None
            await self._sleep(next(delays))

    def _poison(
        self,
        d: _Delivery,
        gateway_id: str | None,
        batch_id: str | None,
        code: str,
        detail: str,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        result = (
            "malformed"
            if code in ("bad_topic", "validation")
            else "rate_limited"
            if code == "rate_limited"
            else "rejected"
        )
        self.metrics.messages.labels(result).inc()
        log.warning(
            "uplink message %s: %s",
            result,
            detail,
            extra={
                "topic": d.topic,
                "code": code,
                "batch_id": batch_id,
                "payload_head": d.payload[:_LOG_BYTES].hex(),
                "payload_len": len(d.payload),
            },
        )
        conn = self._current(d)
        if conn is None:
            return
        self._poisoned.add(id(d))
        if gateway_id is not None:
            body: dict[str, object] = {"batch_id": batch_id, "error": code, "detail": detail}
            if retry_after_s is not None:
                body["retry_after_s"] = round(retry_after_s, 1)
            conn.publish(mqtt_ack_topic(gateway_id), json.dumps(body).encode())


async def serve(settings: Any, config: MqttIngestConfig, *, workers: int = 1, registry: Any = None) -> None:
    """Run ``workers`` ingest workers in this process in front of the cloud's own IngestService.

    ``settings`` is a :class:`cloud.settings.CloudSettings` (same database and time-series URLs as the HTTP
    service). Worker ``k`` uses client id ``<config.client_id>-<k>`` (``<config.client_id>-<k>-alerts`` for
    its alert lane), so restarting the process resumes the same sessions. Runs until cancelled; the
    database and store are closed on the way out. For a
    ``vigil cloud mqtt-ingest`` command, call ``asyncio.run(serve(settings, config, workers=n))``.
    """
    from cloud.api.state import CloudState

    if workers < 1:
        raise ValueError("workers must be >= 1")
    # a hostile gateway's poison messages must not flood the journal; the filter goes away with the
    # service (it sits on the process's root handlers, which outlive an in-process serve())
    throttle = install_log_throttle()
    try:
        state = await asyncio.to_thread(CloudState.build, settings)
        metrics = MqttIngestMetrics(registry if registry is not None else state.metrics.registry)
        try:
            async with asyncio.TaskGroup() as tg:
                for k in range(workers):
                    cfg = replace(config, client_id=f"{config.client_id}-{k}")
                    worker = IngestWorker(cfg, state.ingest, metrics=metrics)
                    tg.create_task(worker.run(), name=f"mqtt-ingest-worker[{cfg.client_id}]")
        finally:
            await asyncio.to_thread(state.close)
    finally:
        uninstall_log_throttle(throttle)
