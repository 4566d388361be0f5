"""Frames -> batches -> decode -> detect -> outbox, with no per-reading Python loop on the hot path.

Why batches: a 10,000-device fleet delivers frames one at a time, but decoding (``decode_many``) and
detection (``DetectionEngine.process``) are vectorised over numpy columns and the outbox pays one fsync per
transaction. So frames are collected for a short window (``batch_window_ms``, default 50 ms) or up to
``batch_max_frames``, whichever comes first, then handled together. A life-safety frame waits at most one
window before its alert is durable.

Threading: decoding, detection and the outbox commit run on the outbox's single worker thread (one
``Outbox.call``), so the engine and the database are only ever touched by one thread and the event loop stays
free to read ports. The commit is the accept point: once it returns, every frame of the batch, its
telemetry and every alert step it caused are durable together.
"""

from __future__ import annotations

import asyncio
import logging
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
from firmware_bridge.kernel.records import ReadingBatch
from firmware_bridge.registry import BY_CODE, kind_codes

log = logging.getLogger(__name__)


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
        self.state = state
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
        """Wait for one frame, then gather more until the window closes or the batch is full."""
        frames = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while len(frames) < self.max_frames:
            try:
                frames.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                frames.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
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
