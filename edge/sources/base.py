"""What every source shares: the bounded frame queue, reject accounting, and the device list.

A source's only job is to turn bytes from a port, a broker or a socket into
``(device_id, payload, receive_time, source_name)`` tuples and hand them to :class:`FrameSink`. Decoding the
payload, detection and storage happen downstream in batches (:mod:`edge.pipeline`).

Overflow policy of the queue: stream sources (serial) ``await put`` and so push back into the kernel's
buffer; datagram sources (MQTT, UDP) ``offer`` and a full queue drops the newest frame, counted as
``vigil_gateway_dropped_total{what="queue_full"}`` (those transports could not wait anyway). An MQTT frame
dropped so is not acknowledged to the broker, which redelivers it (:mod:`edge.sources.mqtt`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from edge.errors import SourceError as SourceError
from edge.metrics import GatewayMetrics

log = logging.getLogger("edge.sources")

SourceFrame = tuple[str, bytes, float, str]  # device_id, payload, receive_time (UTC s), source name


class FrameSink:
    """The one bounded queue between all sources and the pipeline, plus per-source reject accounting."""

    def __init__(self, metrics: GatewayMetrics, maxsize: int = 100_000, log_interval_s: float = 10.0) -> None:
        self.queue: asyncio.Queue[SourceFrame] = asyncio.Queue(maxsize)
        self.metrics = metrics
        self.log_interval_s = log_interval_s
        self._last_log: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self.dropped = 0
        self.rejects_total = 0
        self._up: dict[str, asyncio.Event] = {}
        # frame id -> (frame, callback): told once the pipeline committed (True) or failed to (False)
        self._on_commit: dict[int, tuple[SourceFrame, Callable[[bool], None]]] = {}

    def mark_up(self, source: str, up: bool) -> None:
        """A source reports that its transport is connected (``vigil_gateway_source_up``)."""
        self.metrics.source_up.labels(source).set(1 if up else 0)
        ev = self._up.setdefault(source, asyncio.Event())
        if up:
            ev.set()
        else:
            ev.clear()

    async def wait_up(self, source: str) -> None:
        """Wait until ``source`` is connected (tests, start-up ordering)."""
        await self._up.setdefault(source, asyncio.Event()).wait()

    async def put(self, frame: SourceFrame) -> None:
        """Hand over a frame, waiting while the queue is full (back-pressure for stream sources)."""
        await self.queue.put(frame)

    def offer(self, frame: SourceFrame, on_commit: Callable[[bool], None] | None = None) -> bool:
        """Hand over a frame without waiting; a full queue drops it (counted, ``on_commit`` not called).

        ``on_commit(ok)`` is called once the pipeline committed the frame's batch to the outbox (``True``)
        or failed to (``False``): the MQTT source acknowledges to the broker only then."""
        try:
            self.queue.put_nowait(frame)
            if on_commit is not None:
                self._on_commit[id(frame)] = (frame, on_commit)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            self.metrics.dropped.labels("queue_full").inc()
            self.reject(frame[3], "queue_full", None, "frame queue full; dropping the newest frame")
            return False

    def settle(self, frames: Iterable[SourceFrame], ok: bool) -> None:
        """The pipeline reports a batch committed (``ok``) or not: run the frames' ``on_commit`` callbacks."""
        for frame in frames:
            entry = self._on_commit.get(id(frame))
            if entry is None or entry[0] is not frame:
                continue
            del self._on_commit[id(frame)]
            try:
                entry[1](ok)
            except Exception:  # a source's callback must never stop the pipeline
                log.exception("%s: commit callback failed", frame[3])

    def reject(self, source: str, reason: str, data: bytes | None, message: str = "", count: int = 1) -> None:
        """Count rejected frames; log one with its bytes, at most once per interval per (source, reason)."""
        self.metrics.rejects.labels(source, reason).inc(count)
        self.rejects_total += count
        key = (source, reason)
        now = time.monotonic()
        last = self._last_log.get(key)
        if last is not None and now - last < self.log_interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + count
            return
        self._last_log[key] = now
        extra = self._suppressed.pop(key, 0) + count - 1
        shown = (
            ""
            if data is None
            else data[:64].hex(" ") + (f" (+{len(data) - 64} bytes)" if len(data) > 64 else "")
        )
        log.warning(
            "%s: rejected frame (%s)%s%s%s",
            source,
            reason,
            f": {message}" if message else "",
            f" bytes={shown}" if shown else "",
            f" [{extra} similar suppressed]" if extra else "",
        )
