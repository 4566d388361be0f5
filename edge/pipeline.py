"""Frames -> batches -> decode -> detect -> outbox, with no per-reading Python loop on the hot path.

Why batches: a 10,000-device fleet delivers frames one at a time, but decoding (``decode_many``) and
detection (``DetectionEngine.process``) are vectorised over numpy columns and the outbox pays one fsync per
transaction. So frames are collected for a short window (``batch_window_ms``, default 50 ms) or up to
``batch_max_frames``, whichever comes first, then handled together: one ``decode_many`` and one
``process`` call per device kind for every frame of the window. A frame waits at most one window before its
alert is durable; a frame that sets a life-safety bit (SOS, the band's fall flag, smoke / heat / CO alarm,
cover open, a manhole's own alarm: :data:`URGENT_FLAGS`) its device's previous frame did not carry, or
repeats one at least 10 s after the device's last urgent frame, closes the batch at once, with the frames
already queued, so a fall or a fire does not wait for the window (``urgent_flush``, default on;
:class:`UrgentFilter`); within ``urgent_gap_ms`` (20 ms) of the previous urgent close it closes that long
after it instead, so an alarm storm cannot cut the stream into one batch per frame. The window is the
merge window: a longer one means fewer, larger detection calls per kind (the engine's cost is mostly per
call for small batches, ``docs/detection.md``) and at most that much added delay for the other alarms;
measured in ``docs/gateway.md``.

Frames being gathered are held on the pipeline (:meth:`Pipeline.take_held`), not in a local variable, so
a shutdown that stops the pipeline in the middle of a window still commits them.

Threading: decoding, detection and the outbox commit run on the outbox's single worker thread (one
``Outbox.call``), so the engine and the database are only ever touched by one thread and the event loop stays
free to read ports. The commit is the accept point: once it returns, every frame of the batch, its
telemetry and every alert step it caused are durable together.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from alerts.contract import AlertEvent
from edge.metrics import GatewayMetrics
from edge.outbox import Outbox, OutboxError, frame_key
from edge.sources.base import FrameSink, SourceFrame
from edge.sources.devices import DeviceList
from firmware_bridge.kernel.clock import Clock
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import BY_CODE, KIND_BYTE, KINDS, kind_codes

log = logging.getLogger(__name__)

# the payload flag bits that close a batch at once: the device says a life-safety condition holds now
# (the header's 16-bit big-endian flag word is bytes 4-5, ``firmware_bridge.payload``)
URGENT_FLAG_NAMES: dict[DeviceKind, tuple[str, ...]] = {
    DeviceKind.MANHOLE: ("cover_open", "alarm"),
    DeviceKind.SMOKE_ALARM: ("smoke_alarm", "heat_alarm", "co_alarm"),
    DeviceKind.WRISTBAND: ("sos", "fall"),
}
URGENT_FLAGS: dict[int, int] = {
    KINDS[k].kind_code: sum(KINDS[k].flag(n).mask for n in names) for k, names in URGENT_FLAG_NAMES.items()
}
_FLAGS_AT = 4


def urgent_bits(payload: bytes) -> int:
    """The life-safety bits a frame's payload carries (cheap: two bytes, no decode); 0 for a short or
    unknown payload (its batch then closes at the window, as any other)."""
    if len(payload) < _FLAGS_AT + 2:
        return 0
    return URGENT_FLAGS.get(payload[KIND_BYTE], 0) & ((payload[_FLAGS_AT] << 8) | payload[_FLAGS_AT + 1])


def is_urgent(payload: bytes) -> bool:
    """Whether a frame's payload carries a life-safety bit."""
    return bool(urgent_bits(payload))


class UrgentFilter:
    """Which frames close their batch at once: those that *set* a life-safety bit their device's previous
    frame did not carry (an SOS pressed, a smoke alarm starting, a cover lifted), and a *repeat* of a bit
    at least ``repeat_s`` (receive time) after the device's last urgent frame.

    A device in alarm repeats its bit in every uplink, and the repeats matter: a fire is often decided on
    the alarm's second smoke frame, a fall on the band's stillness summary that still carries the fall
    flag, CO on the frame after the alarm. Real devices repeat every 10 s or more, so ``repeat_s`` (10 s)
    lets those through; what it stops is a burst of repeats (a backlog replayed after an outage, a
    device spamming its alarm) cutting the stream into one batch per frame when the gateway is busiest
    (measured in docs/gateway.md: flushing on every repeat gave 13 frames a batch and 2.5-2.8x the detection
    CPU at 2,000 frames/s). A stopped repeat waits at most the window, like every other frame. Only
    devices with a bit set are remembered (at most ``max_devices``; past it the memory restarts, so
    repeats flush again until it refills: it never delays)."""

    def __init__(self, repeat_s: float = 10.0, max_devices: int = 100_000) -> None:
        self.repeat_s = repeat_s
        self.max_devices = max_devices
        self._seen: dict[str, tuple[int, float]] = {}  # device -> (its bits, receive time of its flush)

    def __call__(self, device_id: str, payload: bytes, t: float) -> bool:
        bits = urgent_bits(payload)
        prev = self._seen.get(device_id)
        if not bits:
            if prev is not None:
                del self._seen[device_id]
            return False
        if prev is not None and not bits & ~prev[0] and t - prev[1] < self.repeat_s:
            if bits != prev[0]:
                self._seen[device_id] = (bits, prev[1])
            return False
        if prev is None and len(self._seen) >= self.max_devices:
            self._seen.clear()
        self._seen[device_id] = (bits, t)
        return True


class Engine(Protocol):
    """What the pipeline needs from :class:`alerts.detection.engine.DetectionEngine`."""

    def process(self, batch: ReadingBatch, now: float) -> list[AlertEvent]: ...

    def tick(self, now: float) -> list[AlertEvent]: ...

    def snapshot(self) -> bytes: ...


@dataclass
class BatchResult:
    accepted: int = 0
    alerts: list[AlertEvent] = field(default_factory=list)
    rejects: Counter[tuple[str, str]] = field(default_factory=Counter)
    samples: dict[tuple[str, str], tuple[bytes | None, str]] = field(default_factory=dict)


class Pipeline:
    """Owns the engine; turns queued frames into committed outbox records."""

    def __init__(
        self,
        engine: Engine,
        outbox: Outbox,
        metrics: GatewayMetrics,
        clock: Clock,
        *,
        devices: DeviceList | None = None,
        accept_unknown: bool = True,
        window_s: float = 0.05,
        max_frames: int = 2000,
        urgent_flush: bool = True,
        urgent_gap_s: float = 0.02,
        state: Callable[[], dict[str, bytes]] | None = None,
    ) -> None:
        self.engine = engine
        self.outbox = outbox
        self.metrics = metrics
        self.clock = clock
        self.devices = devices
        self._known = np.array(sorted(devices.devices), dtype=np.str_) if devices is not None else None
        self.accept_unknown = accept_unknown
        self.window_s = window_s
        self.max_frames = max_frames
        self.urgent_flush = urgent_flush
        self.urgent_gap_s = urgent_gap_s
        self._urgent_closed = -math.inf  # loop time the last urgent batch closed
        self.state = state
        self._held: list[SourceFrame] = []  # frames of the window being gathered (see take_held)
        self._urgent = UrgentFilter()
        self.urgent_batches_total = 0
        self.unknown_seen: set[str] = set()
        self.frames_total = 0
        self.rejects_total = 0
        self.batches_total = 0
        self._progress: asyncio.Condition | None = None

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds after a committed batch (tests, tools); no polling."""
        if self._progress is None:
            self._progress = asyncio.Condition()
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(predicate)

    # -- the asyncio side ---------------------------------------------------------------------------------
    async def collect(self, queue: asyncio.Queue[SourceFrame]) -> list[SourceFrame]:
        """Wait for one frame, then gather more until the window closes, the batch is full, or an urgent
        frame (:class:`UrgentFilter`) arrived: then the frames already queued join it and it closes at
        once - or, when the previous urgent batch closed less than ``urgent_gap_s`` ago, that long after
        it (so a storm of alarms cannot cut the stream into one batch per frame).

        The frames are held on the pipeline while gathered (:meth:`take_held`): a cancelled collect
        (shutdown) leaves them there to be committed instead of losing them.
        """
        held = self._held
        if not held:
            held.append(await queue.get())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        urgent = False
        if self._is_urgent(held[0]):
            urgent = True
            deadline = min(deadline, max(loop.time(), self._urgent_closed + self.urgent_gap_s))
        while len(held) < self.max_frames:
            try:
                f = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        f = await queue.get()
                except TimeoutError:
                    break
            held.append(f)
            if self._is_urgent(f) and not urgent:
                urgent = True
                deadline = min(deadline, max(loop.time(), self._urgent_closed + self.urgent_gap_s))
        if urgent:
            self.urgent_batches_total += 1
            self._urgent_closed = loop.time()
        return self.take_held()

    def _is_urgent(self, f: SourceFrame) -> bool:
        return self.urgent_flush and self._urgent(f[0], f[1], f[2])

    def take_held(self) -> list[SourceFrame]:
        """The frames gathered for a batch not yet handed over (empty after a completed collect)."""
        frames, self._held = self._held, []
        return frames

    async def run(self, sink: FrameSink, on_alerts: Callable[[list[AlertEvent]], None]) -> None:
        """Forever: collect a batch, process and commit it, then publish its alerts."""
        while True:
            frames = await self.collect(sink.queue)
            self.metrics.queue_depth.set(sink.queue.qsize())
            try:
                result = await self.outbox.call(self.handle, frames)
            except OutboxError as exc:
                # disk full / read-only / corrupt: these frames were never accepted; say so loudly, keep going
                self.metrics.dropped.labels("outbox_error").inc(len(frames))
                log.error("outbox commit failed, %d frames NOT accepted: %s", len(frames), exc)
                sink.settle(frames, False)
                await asyncio.sleep(1.0)
                continue
            sink.settle(frames, True)
            for (source, reason), n in result.rejects.items():
                data, msg = result.samples.get((source, reason), (None, ""))
                sink.reject(source, reason, data, msg, count=n)
            self.batches_total += 1
            if result.alerts:
                on_alerts(result.alerts)
            if self._progress is not None:
                async with self._progress:
                    self._progress.notify_all()

    # -- the worker-thread side ---------------------------------------------------------------------------
    def handle(self, frames: Sequence[SourceFrame]) -> BatchResult:
        """Decode, detect and commit one batch of frames (runs on the outbox thread)."""
        res = BatchResult()
        t0 = time.perf_counter()
        ids, payloads, times, sources = (list(c) for c in zip(*frames, strict=True))
        n = len(ids)
        keep = np.ones(n, dtype=bool)
        ids_arr = np.array(ids, dtype=np.str_)
        src_arr = np.array(sources, dtype=np.str_)
        if self._known is not None:
            unknown = ~np.isin(ids_arr, self._known)
            if unknown.any():
                self.metrics.unknown_devices.inc(int(unknown.sum()))
                new = set(ids_arr[unknown].tolist()) - self.unknown_seen
                if new and len(self.unknown_seen) < 10_000:
                    self.unknown_seen |= new
                    log.warning(
                        "frames from %d device(s) not in devices_file, e.g. %s", len(new), sorted(new)[:5]
                    )
                if not self.accept_unknown:
                    for src, cnt in Counter(src_arr[unknown].tolist()).items():
                        res.rejects[(src, "unknown_device")] += cnt
                    keep &= ~unknown
        # de-duplicate: within the batch and against frames committed within the window
        keys = [frame_key(d, p) for d, p in zip(ids, payloads, strict=True)]
        first = np.zeros(n, dtype=bool)
        first[list({k: i for i, k in reversed(list(enumerate(keys)))}.values())] = True
        fresh = np.array(self.outbox.unseen(keys), dtype=bool) & first
        dup = keep & ~fresh
        if dup.any():
            for src, cnt in Counter(src_arr[dup].tolist()).items():
                res.rejects[(src, "duplicate")] += cnt
        keep &= fresh
        codes = kind_codes(payloads)  # kind dispatch: firmware_bridge.registry, one place
        times_arr = np.asarray(times, dtype=np.float64)
        now = self.clock.now()
        telemetry: list[ReadingBatch] = []
        accepted = np.zeros(n, dtype=bool)
        bad_kind = keep & ~np.isin(codes, list(BY_CODE))
        for i in np.flatnonzero(bad_kind):
            reason = "length" if codes[i] < 0 else "kind"
            res.rejects[(sources[i], reason)] += 1
            res.samples.setdefault(
                (sources[i], reason), (payloads[i], f"device {ids[i]}: no valid kind code")
            )
        for code, spec in BY_CODE.items():
            rows = np.flatnonzero(keep & (codes == code))
            if not len(rows):
                continue
            batch, rejects = spec.codec.decode_many(
                [payloads[i] for i in rows], device_ids=ids_arr[rows], times=times_arr[rows]
            )
            ok = np.ones(len(rows), dtype=bool)
            for j, err in rejects:
                ok[j] = False
                key = (sources[rows[j]], err.reason)
                res.rejects[key] += 1
                res.samples.setdefault(key, (err.data, f"device {ids[rows[j]]}: {err}"))
            accepted[rows[ok]] = True
            if len(batch):
                telemetry.append(batch)
                try:
                    res.alerts.extend(self.engine.process(batch, now))
                except Exception:  # boundary: a detector bug must not lose the telemetry it was judging
                    self.metrics.dropped.labels("detection_skipped").inc(len(batch))
                    log.exception("detection failed on %d %s readings; kept them", len(batch), batch.kind)
        self.metrics.detect_seconds.observe(time.perf_counter() - t0)
        t1 = time.perf_counter()
        acc_idx = np.flatnonzero(accepted)
        self.outbox.commit(
            telemetry, res.alerts, [keys[i] for i in acc_idx], self.state() if self.state else None
        )
        self.metrics.commit_seconds.observe(time.perf_counter() - t1)
        for src, cnt in Counter(src_arr[acc_idx].tolist()).items():
            self.metrics.frames.labels(src).inc(cnt)
        for a in res.alerts:
            self.metrics.alerts.labels(a.event_type.value, a.phase.value).inc()
        res.accepted = len(acc_idx)
        self.frames_total += res.accepted
        self.rejects_total += sum(res.rejects.values())
        return res

    def tick(self) -> list[AlertEvent]:
        """Time-driven detection (durations elapsing, silent devices); commits what it raises."""
        alerts = self.engine.tick(self.clock.now())
        if alerts:
            self.outbox.commit((), alerts)
            for a in alerts:
                self.metrics.alerts.labels(a.event_type.value, a.phase.value).inc()
        return alerts

    def save_snapshot(self) -> int:
        data = self.engine.snapshot()
        self.outbox.put_state("engine_snapshot", data)
        if self.state:
            for k, v in self.state().items():
                self.outbox.put_state(k, v)
        return len(data)
