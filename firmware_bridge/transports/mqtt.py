"""An MQTT subscription as an async message stream that survives broker restarts.

Built on aiomqtt (itself a thin asyncio layer over paho-mqtt). What this adds, and why:

* **Reconnect forever** with jittered exponential backoff (``min_backoff`` doubling up to ``max_backoff``),
  and **re-subscribe on every connect**. The session is persistent by default (``clean_session=False``
  with a fixed ``client_id``), so the broker queues QoS >= 1 messages while we are away; we subscribe
  again anyway because a broker that lost its state (restart without persistence, failover to another
  cluster node) would otherwise leave us connected but deaf: the classic "reconnects without its
  subscriptions" bug of other gateways.
* **One bounded queue that outlives connections**, bounded by count (``queue_size``) *and* by payload
  bytes (``queue_bytes``, 16 MiB by default: a flood of 1 MB messages cannot grow memory without bound).
  When either bound is hit the named ``overflow`` policy decides (:class:`OverflowPolicy`, default
  ``drop_oldest``: keep the freshest data); a single message larger than ``queue_bytes`` is dropped on
  arrival. Every drop is counted (``dropped_total``, ``dropped_bytes_total`` and ``drops`` by reason:
  ``queue_full``, ``bytes_full``, ``oversize``), reported through the optional ``on_drop(reason, n_bytes)``
  callback (a caller's Prometheus counter) and logged, at most once per ``log_interval_s`` with the counts
  since the last line. The queue is never recreated on reconnect, so nothing already received is lost
  around an outage.
* ``publish`` waits (up to ``timeout``) for a connection and, if the connection breaks mid-publish, retries
  on the next one (at-least-once; downstream de-duplicates by ``(device_id, seq, time)``).
* The connection loop is one named task in an :class:`asyncio.TaskGroup` owned by the context manager.

Errors surface as :class:`~firmware_bridge.errors.TransportError`. The password is never logged or shown in
``repr``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Self

import aiomqtt

from firmware_bridge.backoff import Backoff
from firmware_bridge.errors import TransportError
from firmware_bridge.kernel.aio import recancelling

__all__ = ["MqttMessage", "MqttTransport", "OverflowPolicy", "close_on_failed_handshake"]

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (aiomqtt.MqttError, OSError, TimeoutError)
_SUBACK_FAILURE = 0x80


class OverflowPolicy(StrEnum):
    """What happens to a message arriving when the queue is full, by count or by bytes (both count it)."""

    DROP_OLDEST = "drop_oldest"
    """Evict the oldest queued message: the consumer sees the freshest state (default)."""
    DROP_NEWEST = "drop_newest"
    """Discard the arriving message: the consumer sees an unbroken prefix."""


@dataclass(frozen=True, slots=True)
class MqttMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails.

    paho-mqtt (``Client._ssl_wrap_socket``) drops the socket without closing it when the TLS handshake
    fails (an untrusted broker certificate), leaking one file descriptor per reconnect attempt until the
    garbage collector finds it. Installed on the caller's context only if it uses the stock socket class.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def close_on_failed_handshake(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Make ``ctx``'s sockets close themselves when the TLS handshake fails (paho-mqtt leaks them).

    For any aiomqtt/paho client given ``tls_context=ctx``; a no-op if ``ctx`` already uses a custom
    socket class. Returns ``ctx``.
    """
    if ctx.sslsocket_class is ssl.SSLSocket:
        ctx.sslsocket_class = _ClosingSSLSocket
    return ctx


def _valid_filter(topic: str) -> bool:
    """MQTT 3.1.1 section 4.7: ``#`` only as the whole last level, ``+`` only as a whole level, no NUL."""
    if not topic or "\0" in topic or len(topic.encode()) > 65535:
        return False
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def _refused(granted: object) -> bool:
    """A SUBACK return code (int for MQTT 3.1.1, paho ``ReasonCode`` for 5) that refuses the filter."""
    value = getattr(granted, "value", granted)
    return isinstance(value, int) and value >= _SUBACK_FAILURE


class MqttTransport:
    """``async with MqttTransport(host, port, client_id=..., topics=[("t/#", 1)]) as mq: ...``.

    Entering starts the connection loop and returns at once (the broker may be down: it keeps trying);
    use :meth:`wait_connected` to wait for the first subscription. Counters: ``reconnects_total``,
    ``received_total``, ``dropped_total``, ``dropped_bytes_total``, ``drops`` (by reason),
    ``published_total``; state: ``connected`` (connected *and* subscribed), ``last_error``, ``queued``,
    ``queued_bytes``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        topics: Sequence[tuple[str, int]],
        username: str | None = None,
        password: str | None = None,
        clean_session: bool = False,
        queue_size: int = 10_000,
        queue_bytes: int = 16 * 1024 * 1024,
        on_drop: Callable[[str, int], None] | None = None,
        log_interval_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
        overflow: OverflowPolicy | str = OverflowPolicy.DROP_OLDEST,
        max_backoff: float = 30.0,
        min_backoff: float = 0.5,
        keepalive: int = 30,
        timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if queue_bytes < 1:
            raise ValueError(f"queue_bytes must be >= 1, got {queue_bytes}")
        for topic, qos in topics:
            if qos not in (0, 1, 2) or not _valid_filter(topic):
                raise ValueError(
                    f"bad subscription {(topic, qos)!r}: need a valid MQTT topic filter and qos 0, 1 or 2"
                )
        self.host = host
        self.port = port
        self.client_id = client_id
        self.topics = list(topics)
        self.username = username
        self._password = password
        self.clean_session = clean_session
        self.tls = close_on_failed_handshake(tls) if tls is not None else None
        self.overflow = OverflowPolicy(overflow)
        self.keepalive = keepalive
        self.timeout = timeout
        self._backoff = Backoff(
            initial=min(min_backoff, max_backoff), maximum=max_backoff, rng=rng or random.Random()
        )
        self._queue: asyncio.Queue[MqttMessage] = asyncio.Queue(maxsize=queue_size)
        self.queue_bytes = queue_bytes
        self.queued_bytes = 0
        self._on_drop = on_drop
        self._log_interval_s = log_interval_s
        self._last_drop_log = -math.inf
        self._unlogged: dict[str, int] = {}
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._closed = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.reconnects_total = 0
        self.received_total = 0
        self.dropped_total = 0
        self.dropped_bytes_total = 0
        self.drops: dict[str, int] = {"queue_full": 0, "bytes_full": 0, "oversize": 0}
        self.published_total = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return (
            f"<MqttTransport {self.client_id}@{self.host}:{self.port} {state} "
            f"queued={self._queue.qsize()} dropped={self.dropped_total} reconnects={self.reconnects_total}>"
        )

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("MqttTransport is already running")
        self._closed.clear()
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        self._task = tg.create_task(self._run(), name=f"mqtt-transport:{self.client_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed.set()
        task = self._task
        if task is not None:
            task.cancel()
        tg, self._tg, self._task = self._tg, None, None
        if tg is not None:
            # the connection loop may be inside aiomqtt's connect, subscribe or disconnect, which await
            # with ``wait_for`` and may lose this cancel on Python 3.11 (gh-86296): it is repeated
            async with recancelling([task] if task is not None else []):
                # Hand the group only cancellation / interpreter exits: an ordinary exception from the
                # body of ``async with`` must reach the caller as itself, not wrapped in an ExceptionGroup.
                if exc is not None and not isinstance(exc, Exception):
                    await tg.__aexit__(exc_type, exc, tb)
                else:
                    await tg.__aexit__(None, None, None)

    async def wait_connected(self) -> None:
        """Wait until connected and subscribed (wrap in ``asyncio.timeout``)."""
        await self._connected.wait()

    def _client_for_attempt(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self.username,
            password=self._password,
            clean_session=self.clean_session,
            tls_context=self.tls,
            keepalive=self.keepalive,
            timeout=self.timeout,
        )

    async def _run(self) -> None:
        while True:
            try:
                client = self._client_for_attempt()
                async with client:
                    granted = await client.subscribe(self.topics) if self.topics else []
                    failed = [t for (t, _), g in zip(self.topics, granted, strict=False) if _refused(g)]
                    if failed:
                        log.error("MQTT broker %s:%d refused subscriptions %s", self.host, self.port, failed)
                    self._client = client
                    self.connected = True
                    self._disconnected.clear()
                    self._connected.set()
                    self._backoff.reset()
                    log.info(
                        "MQTT %s connected to %s:%d, subscribed to %d filters",
                        self.client_id,
                        self.host,
                        self.port,
                        len(self.topics),
                    )
                    async for m in client.messages:
                        self._enqueue(
                            MqttMessage(str(m.topic), _payload_bytes(m.payload), int(m.qos), bool(m.retain))
                        )
                    raise aiomqtt.MqttError("message stream ended")
            except _CONNECTION_ERRORS as exc:
                self.last_error = str(exc) or type(exc).__name__
            except Exception as exc:  # supervisor boundary: log, count, restart; never kill the gateway
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("MQTT %s connection loop failed unexpectedly", self.client_id)
            finally:
                self.connected = False
                self._client = None
                self._connected.clear()
                self._disconnected.set()
            self.reconnects_total += 1
            delay = self._backoff.next()
            log.warning(
                "MQTT %s lost %s:%d (%s); reconnecting in %.2f s",
                self.client_id,
                self.host,
                self.port,
                self.last_error,
                delay,
            )
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------------------------------ receiving
    def _enqueue(self, msg: MqttMessage) -> None:
        self.received_total += 1
        q = self._queue
        size = len(msg.payload)
        if size > self.queue_bytes:
            self._drop("oversize", size)
            return
        while q.full() or self.queued_bytes + size > self.queue_bytes:
            reason = "queue_full" if q.full() else "bytes_full"
            if self.overflow is OverflowPolicy.DROP_NEWEST:
                self._drop(reason, size)
                return
            self._drop(reason, len(self._take_nowait().payload))
        q.put_nowait(msg)
        self.queued_bytes += size

    def _take_nowait(self) -> MqttMessage:
        msg = self._queue.get_nowait()
        self.queued_bytes -= len(msg.payload)
        return msg

    def _drop(self, reason: str, n_bytes: int) -> None:
        """Count one dropped message everywhere, and log it (at most one line per ``log_interval_s``)."""
        self.dropped_total += 1
        self.dropped_bytes_total += n_bytes
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        if self._on_drop is not None:
            self._on_drop(reason, n_bytes)
        now = time.monotonic()
        if now - self._last_drop_log >= self._log_interval_s:
            self._last_drop_log = now
            since = ", ".join(f"{k} {v}" for k, v in sorted(self._unlogged.items()))
            self._unlogged.clear()
            log.warning(
                "MQTT %s queue bounds (%d messages / %d bytes, policy %s): dropped %s since the last "
                "report, %d (%d bytes) in total",
                self.client_id,
                self._queue.maxsize,
                self.queue_bytes,
                self.overflow.value,
                since,
                self.dropped_total,
                self.dropped_bytes_total,
            )

    async def messages(self) -> AsyncGenerator[MqttMessage, None]:
        """Every received message in arrival order, across reconnects; ends when the transport closes."""
        q = self._queue
        while True:
            if not q.empty():
                yield self._take_nowait()
                continue
            if self._closed.is_set():
                return
            getter = asyncio.ensure_future(q.get())
            closer = asyncio.ensure_future(self._closed.wait())
            try:
                await asyncio.wait((getter, closer), return_when=asyncio.FIRST_COMPLETED)
            finally:
                closer.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                msg = getter.result()
                self.queued_bytes -= len(msg.payload)
                yield msg

    # ------------------------------------------------------------------------------------------ sending
    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        *,
        retain: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish once the broker has it (PUBACK for QoS 1); raises :class:`TransportError` on timeout."""
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(None if math.isinf(limit) else limit):
                while True:
                    if self._closed.is_set():
                        raise TransportError("MQTT transport is closed")
                    await self._connected.wait()
                    client = self._client
                    if client is None:
                        continue
                    try:
                        await client.publish(topic, payload, qos=qos, retain=retain, timeout=math.inf)
                    except aiomqtt.MqttError as exc:
                        self.last_error = str(exc)
                        log.info("MQTT publish to %s interrupted (%s); retrying after reconnect", topic, exc)
                        if self._client is client:
                            await self._disconnected.wait()
                        continue
                    self.published_total += 1
                    return
        except TimeoutError as exc:
            raise TransportError(
                f"MQTT publish to {topic!r} not acknowledged within {limit} s "
                f"({self.last_error or 'not connected'})"
            ) from exc
