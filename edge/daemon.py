"""The gateway daemon: one asyncio process, one TaskGroup of named tasks, graceful SIGTERM.

Tasks: ``source:<name>`` (one per configured source, each behind a supervisor that logs, counts and
restarts it with backoff: a failing UART never takes MQTT down), ``pipeline`` (batch -> decode -> detect
-> outbox), ``uplink`` (outbox -> cloud) and ``uplink-session`` (MQTT connection upkeep), ``actions``
(local life-safety actions), ``tick`` (time-driven detection), ``snapshot`` (engine state into the
outbox), ``housekeeping`` (outbox age bounds, gauges), ``metrics`` (HTTP endpoint).

Shutdown (SIGTERM/SIGINT): stop reading, process the frames of the window being gathered and those
already queued, commit, store the engine and
LoRaWAN frame-counter snapshots, close the outbox. A ``kill -9`` skips all that and loses nothing that
was accepted: see :mod:`edge.outbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from alerts.contract import AlertEvent
from edge.actions import ActionRunner
from edge.config import GatewayConfig, MqttSource, SerialSource, UdpSource
from edge.metrics import GatewayMetrics, MetricsServer
from edge.outbox import Outbox, OutboxStats
from edge.pipeline import Pipeline
from edge.sources.base import FrameSink
from edge.sources.devices import DeviceList, load_devices
from edge.sources.lora import LoRaWANSessions
from edge.uplink.base import Uplink
from edge.uplink.sender import UplinkSender
from firmware_bridge.backoff import Backoff
from firmware_bridge.kernel.aio import recancel
from firmware_bridge.kernel.clock import AcceleratedClock, Clock, SystemClock

log = logging.getLogger(__name__)

VERSION = "0.1.0"


class _Shutdown(Exception):
    """Raised inside the TaskGroup to stop every task."""


def make_clock(cfg: GatewayConfig) -> Clock:
    if cfg.clock.file is not None:
        return AcceleratedClock.load(cfg.clock.file)
    return SystemClock()


def make_engine(outbox: Outbox, cfg: GatewayConfig) -> Any:
    from alerts.detection.engine import DetectionEngine

    profiles = None
    if cfg.detection.profiles_file is not None:
        import tomllib

        from alerts.detection.profiles import ProfileSet

        profiles = ProfileSet.from_mapping(
            tomllib.loads(cfg.detection.profiles_file.read_text(encoding="utf-8"))
        )
    data = outbox.get_state("engine_snapshot")
    if data:
        try:
            engine = DetectionEngine.restore(data, profiles)
            log.info("detection state restored (%d devices)", engine.devices)
            return engine
        except Exception as exc:  # a corrupt snapshot must not stop the gateway: start fresh, say so
            log.error("engine snapshot unusable (%s); starting with empty detection state", exc)
    return DetectionEngine(profiles)


class Gateway:
    """Build everything from a config; :meth:`run` until ``stop`` is set or SIGTERM arrives."""

    def __init__(
        self, cfg: GatewayConfig, *, clock: Clock | None = None, uplink: Uplink | None = None
    ) -> None:
        self.cfg = cfg
        self._tasks: list[asyncio.Task[None]] = []  # the run's TaskGroup's tasks (re-cancelled, see recancel)
        self._recanceller: asyncio.Task[None] | None = None
        self.clock = clock or make_clock(cfg)
        self.metrics = GatewayMetrics()
        self.devices: DeviceList | None = (
            load_devices(cfg.gateway.devices_file) if cfg.gateway.devices_file else None
        )
        o = cfg.outbox
        self.outbox = Outbox(
            cfg.outbox_path,
            max_bytes=o.max_bytes,
            max_age_s=o.max_age_s,
            alert_max_age_s=o.alert_max_age_s,
            synchronous=o.synchronous,
            dedupe_window_s=o.dedupe_window_s,
            live_window_s=cfg.uplink.live_window_s,
            wallclock=self.clock.now,  # ages in the gateway's time (simulated when a clock file is set)
        )
        self.outbox.body_format = cfg.uplink.body  # batches rendered once, in the body the uplink sends
        try:
            self.engine = make_engine(self.outbox, cfg)
            self.sessions = LoRaWANSessions(self.devices)
            self.sessions.restore(self.outbox.get_state("lorawan_fcnt"))
        except BaseException:
            self.outbox.close()
            raise
        self.sink = FrameSink(self.metrics, cfg.detection.queue_size)
        self.pipeline = Pipeline(
            self.engine,
            self.outbox,
            self.metrics,
            self.clock,
            devices=self.devices,
            accept_unknown=cfg.gateway.accept_unknown_devices,
            window_s=cfg.detection.batch_window_ms / 1000,
            max_frames=cfg.detection.batch_max_frames,
            urgent_flush=cfg.detection.urgent_flush,
            urgent_gap_s=cfg.detection.urgent_gap_ms / 1000,
        )
        self.uplink = uplink if uplink is not None else self._make_uplink()
        u = cfg.uplink
        self.sender = (
            None
            if self.uplink is None
            else UplinkSender(
                self.outbox,
                self.uplink,
                self.metrics,
                cfg.gateway.id,
                max_records=u.batch_max_records,
                max_bytes=u.batch_max_bytes,
                backoff_initial_s=u.backoff_initial_s,
                backoff_max_s=u.backoff_max_s,
                backlog_records_per_s=u.backlog_records_per_s,
                status=self.status_snapshot,
                heartbeat_s=u.heartbeat_s,
                linger_s=u.linger_s,
                committed=self._readings_committed,
            )
        )
        self.actions = ActionRunner(
            cfg.actions, self.metrics, cloud_up=self._cloud_up, alert_acked=self._alert_acked
        )
        self.metrics_server = MetricsServer(self.metrics, cfg.metrics.bind, cfg.metrics.port)
        self.started = asyncio.Event()
        self.udp_port: asyncio.Future[int] | None = None
        self.t0 = time.time()
        self._stats = OutboxStats()

    def _make_uplink(self) -> Uplink | None:
        u = self.cfg.uplink
        credential = self.cfg.read_credential()
        warning = u.plaintext_warning()  # http:// or mqtt:// to another machine (docs/security.md)
        if warning is not None:
            log.warning("%s / %s", *warning)
        if u.mode == "http":
            from edge.uplink.http import HttpUplink

            return HttpUplink(
                u.url,
                credential,
                timeout_s=u.timeout_s,
                ca_file=u.ca_file,
                client_cert=u.client_cert,
                client_key=u.client_key,
                body=u.body,
            )
        if u.mode == "mqtt":
            from edge.uplink.mqtt import MqttUplink

            return MqttUplink(
                u.url,
                self.cfg.gateway.id,
                credential,
                timeout_s=u.timeout_s,
                ca_file=u.ca_file,
                client_cert=u.client_cert,
                client_key=u.client_key,
                body=u.body,
                alert_topic=u.mqtt_alert_topic,
                alert_reprobe_min_s=u.mqtt_alert_reprobe_min_s,
                alert_reprobe_s=u.mqtt_alert_reprobe_max_s,
                metrics=self.metrics,
            )
        return None

    def _readings_committed(self) -> int:
        """Readings committed to the outbox so far (the sender's linger ends when a batch's worth waits)."""
        return self.pipeline.frames_total

    def _cloud_up(self) -> bool | None:
        return False if self.sender is None else self.sender.up

    async def _alert_acked(self, alert: AlertEvent) -> bool:
        return not await self.outbox.call(self.outbox.alert_pending, alert.alert_id)

    def status_snapshot(self) -> dict[str, Any]:
        s = self._stats
        return {
            "version": VERSION,
            "uptime_s": round(time.time() - self.t0, 1),
            "outbox_depth": sum(s.depth.values()),
            "outbox_oldest_age_s": round(s.oldest_age_s, 1),
            "frames_total": self.pipeline.frames_total,
            "rejects_total": self.sink.rejects_total,
        }

    def _on_alerts(self, alerts: list[AlertEvent]) -> None:
        self.actions.submit(alerts)
        if self.sender is not None:
            self.sender.notify()

    # -- tasks --------------------------------------------------------------------------------------------
    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """The supervisor boundary: a source that fails is logged, counted and restarted with backoff."""
        backoff = Backoff(initial=0.5, maximum=30.0)
        while True:
            started = time.monotonic()
            try:
                await factory()
                log.warning("source %s stopped; restarting", name)
            except Exception:  # the one place a broad catch is right: isolate a failing source
                log.exception("source %s failed; restarting", name)
            self.metrics.source_restarts.labels(name).inc()
            if time.monotonic() - started > 60:
                backoff.reset()
            await backoff.sleep()

    def _source_factory(self, name: str, src: object) -> Callable[[], Awaitable[None]]:
        gw = self.cfg.gateway.id
        if isinstance(src, SerialSource):
            from edge.sources.serial import run_serial_source

            return lambda: run_serial_source(src, name, self.sink, self.clock)
        if isinstance(src, MqttSource):
            from edge.sources.mqtt import run_mqtt_source

            return lambda: run_mqtt_source(src, name, self.sink, self.sessions, self.clock, gw)
        assert isinstance(src, UdpSource)
        from edge.sources.udp import run_udp_source

        self.udp_port = asyncio.get_running_loop().create_future()
        return lambda: run_udp_source(src, name, self.sink, self.sessions, self.clock, self.udp_port)

    async def _every(self, seconds: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            await fn()

    async def _tick(self) -> None:
        alerts = await self.outbox.call(self.pipeline.tick)
        if alerts:
            self._on_alerts(alerts)

    async def _snapshot(self) -> None:
        await self.outbox.call(self._save_state)

    def _save_state(self) -> None:
        self.pipeline.save_snapshot()
        self.outbox.put_state("lorawan_fcnt", self.sessions.snapshot())

    async def _housekeeping(self) -> None:
        dropped = await self.outbox.call(self.outbox.prune)
        for what, n in dropped.items():
            self.metrics.dropped.labels(what).inc(n)
            log.warning("outbox age bound: dropped %d %s", n, what)
        self._stats = s = await self.outbox.call(self.outbox.stats)
        for lane, n in s.depth.items():
            self.metrics.outbox_depth.labels(lane).set(n)
        self.metrics.outbox_oldest.set(s.oldest_age_s)
        self.metrics.outbox_bytes.set(s.bytes)
        self.metrics.queue_depth.set(self.sink.queue.qsize())

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        self.metrics.started.set(self.t0)
        self.metrics.uplink_up.set(0)
        overflow = self.outbox.dropped.get("telemetry_overflow", 0)
        if overflow:
            self.metrics.dropped.labels("telemetry_overflow_before_restart").inc(overflow)
        try:
            if self.cfg.metrics.enabled:
                await self.metrics_server.start()
            await self._housekeeping()
            async with asyncio.TaskGroup() as tg:

                def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
                    self._tasks.append(tg.create_task(coro, name=name))

                for name, src in self.cfg.source_names():
                    spawn(self._supervise(name, self._source_factory(name, src)), name=f"source:{name}")
                spawn(self.pipeline.run(self.sink, self._on_alerts), name="pipeline")
                if self.sender is not None and self.uplink is not None:
                    spawn(self.uplink.run(), name="uplink-session")
                    spawn(self.sender.run(), name="uplink")
                spawn(self.actions.run(), name="actions")
                spawn(self._every(self.cfg.detection.tick_interval_s, self._tick), name="tick")
                spawn(self._every(self.cfg.detection.snapshot_interval_s, self._snapshot), name="snapshot")
                spawn(self._every(5.0, self._housekeeping), name="housekeeping")
                spawn(self._stopper(stop), name="stopper")
                self.started.set()
        except* _Shutdown:
            pass
        finally:
            if self._recanceller is not None:
                self._recanceller.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            await self._shutdown()

    async def _stopper(self, stop: asyncio.Event) -> None:
        await stop.wait()
        log.info("stopping: flushing queued frames and saving state")
        # outside the group: it must outlive the group's cancellation
        self._recanceller = asyncio.get_running_loop().create_task(
            recancel(self._tasks), name="shutdown-recancel"
        )
        raise _Shutdown

    async def _shutdown(self) -> None:
        try:
            # the window the pipeline was gathering when it stopped (older), then what is still queued
            frames = self.pipeline.take_held()
            while not self.sink.queue.empty():
                frames.append(self.sink.queue.get_nowait())
            for i in range(0, len(frames), self.pipeline.max_frames):
                chunk = frames[i : i + self.pipeline.max_frames]
                await self.outbox.call(self.pipeline.handle, chunk)
                self.sink.settle(chunk, True)  # committed: LoRaWAN counters may now be saved (below)
            await self.outbox.call(self._save_state)
            await self.metrics_server.close()
            if self.uplink is not None:
                await self.uplink.aclose()
        finally:
            self.outbox.close()
            log.info("gateway stopped; outbox closed")


def run_gateway(cfg: GatewayConfig) -> int:
    """Entry point of ``vigil gateway``: run until SIGTERM. Start-up errors print one line and exit 1."""
    from alerts.detection.profiles import ProfileError
    from edge.errors import VigilGatewayError

    try:
        gw = Gateway(cfg)
    except (VigilGatewayError, ProfileError, OSError, ValueError) as exc:
        log.error("cannot start the gateway: %s", exc)
        return 1
    try:
        asyncio.run(gw.run())
    except (VigilGatewayError, BaseExceptionGroup) as exc:  # e.g. MetricsPortInUse: says what to change
        errors = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        if not all(isinstance(e, VigilGatewayError) for e in errors):
            raise
        for e in errors:
            log.error("cannot start the gateway: %s", e)
        return 1
    return 0


def uplink_state(outbox_path: object) -> dict[str, Any]:
    from edge.outbox import read_state

    raw = read_state(outbox_path, "uplink_state")  # type: ignore[arg-type]
    return json.loads(raw) if raw else {}
