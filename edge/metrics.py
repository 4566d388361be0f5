"""Prometheus metrics of the gateway, served by prometheus-client's own HTTP server.

Why our own registry: several gateways (or tests) in one process must not share counters. The endpoint is
``prometheus_client.start_http_server`` on that registry (``/metrics``; any other path serves the same
text, so ``/healthz`` answers 200 while the daemon runs); the daemon shuts it down on exit.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` durations); ``vigil gateway status``
reads them back and explains them in plain words (:mod:`edge.status`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.errors import MetricsPortInUse

if TYPE_CHECKING:
    from edge.uplink.alert_lane import AlertLane

log = logging.getLogger(__name__)


class GatewayMetrics:
    """All gateway metrics on one private registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frames = Counter(
            "vigil_gateway_frames_total", "Frames accepted from a source", ["source"], registry=r
        )
        self.rejects = Counter(
            "vigil_gateway_rejects_total",
            "Frames rejected, by source and reason",
            ["source", "reason"],
            registry=r,
        )
        self.detect_seconds = Histogram(
            "vigil_gateway_detect_batch_seconds",
            "Decode + detect time of one batch",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.commit_seconds = Histogram(
            "vigil_gateway_outbox_commit_seconds",
            "Outbox commit time of one batch",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.outbox_depth = Gauge(
            "vigil_gateway_outbox_depth", "Records waiting, by lane", ["lane"], registry=r
        )
        self.outbox_oldest = Gauge(
            "vigil_gateway_outbox_oldest_age_seconds", "Age of the oldest record in the outbox", registry=r
        )
        self.outbox_bytes = Gauge("vigil_gateway_outbox_bytes", "Bytes of records in the outbox", registry=r)
        self.uplink_up = Gauge(
            "vigil_gateway_uplink_up", "1 if the last uplink attempt succeeded", registry=r
        )
        self.uplink_down_since = Gauge(
            "vigil_gateway_uplink_down_since_seconds",
            "UTC epoch when the cloud became unreachable (0 = up)",
            registry=r,
        )
        self.uplink_errors = Counter(
            "vigil_gateway_uplink_errors_total", "Failed uplink attempts, by reason", ["reason"], registry=r
        )
        self.uplink_batches = Counter(
            "vigil_gateway_uplink_batches_total", "Batches acknowledged", registry=r
        )
        self.dropped = Counter(
            "vigil_gateway_dropped_total", "Records dropped, by what and why", ["what"], registry=r
        )
        self.unknown_devices = Counter(
            "vigil_gateway_unknown_devices_total", "Frames from devices not in devices_file", registry=r
        )
        self.alerts = Counter(
            "vigil_gateway_alerts_total", "Alert steps produced", ["event_type", "phase"], registry=r
        )
        self.source_up = Gauge(
            "vigil_gateway_source_up", "1 while a source is connected", ["source"], registry=r
        )
        self.source_restarts = Counter(
            "vigil_gateway_source_restarts_total",
            "Times a failing source was restarted",
            ["source"],
            registry=r,
        )
        self.actions = Counter(
            "vigil_gateway_actions_total",
            "Local life-safety actions, by action and result",
            ["action", "result"],
            registry=r,
        )
        self.queue_depth = Gauge("vigil_gateway_queue_depth", "Frames waiting to be decoded", registry=r)
        self.started = Gauge(
            "vigil_gateway_start_time_seconds", "UTC epoch when the daemon started", registry=r
        )

    def watch_alert_lane(self, lane: AlertLane) -> None:
        """Export the MQTT alert lane's state, read when scraped (an expired fallback shows as ``probing``
        without waiting for the next alert batch): ``vigil_gateway_alert_lane_state{state}`` (1 for the
        current one of ``in_use``, ``probing``, ``fallback``, ``disabled``),
        ``vigil_gateway_alert_lane_fallback_until_seconds`` (UTC epoch; 0 unless in fallback),
        ``vigil_gateway_alert_lane_reprobe_seconds`` (the next fallback period if the lane fails again) and
        ``vigil_gateway_alert_lane_fallbacks_total``. Absent with an HTTP uplink."""
        self.registry.register(_AlertLaneCollector(lane))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _AlertLaneCollector(Collector):
    def __init__(self, lane: AlertLane) -> None:
        self.lane = lane

    def collect(self) -> Iterator[Metric]:
        from edge.uplink.alert_lane import STATES

        current = self.lane.state
        state = GaugeMetricFamily(
            "vigil_gateway_alert_lane_state",
            "MQTT alert lane: 1 for the current state (in_use, probing, fallback to .../up, disabled)",
            labels=["state"],
        )
        for name in STATES:
            state.add_metric([name], 1.0 if name == current else 0.0)
        yield state
        yield GaugeMetricFamily(
            "vigil_gateway_alert_lane_fallback_until_seconds",
            "UTC epoch until which alert batches go on .../up (0 = not in fallback)",
            value=self.lane.fallback_until() or 0.0,
        )
        yield GaugeMetricFamily(
            "vigil_gateway_alert_lane_reprobe_seconds",
            "The next fallback period if the alert lane is judged missing again",
            value=self.lane.next_period_s,
        )
        yield CounterMetricFamily(
            "vigil_gateway_alert_lane_fallbacks",
            "Times the alert lane was judged missing (alert batches sent on .../up for a while)",
            value=self.lane.fallbacks_total,
        )


class MetricsServer:
    """``GET /metrics`` over HTTP: prometheus-client's own server (a daemon thread), bound to our registry.

    A port that is taken is a :class:`~edge.errors.MetricsPortInUse` that says how to fix it.
    """

    def __init__(self, metrics: GatewayMetrics, bind: str, port: int) -> None:
        self.metrics = metrics
        self.bind = bind
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> int:
        try:
            self._server, self._thread = start_http_server(
                self.port, addr=self.bind, registry=self.metrics.registry
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MetricsPortInUse(
                    f"metrics port {self.bind}:{self.port} is in use (another gateway or exporter?): "
                    "set [metrics] port to a free one, or enabled = false"
                ) from exc
            raise
        self.port = int(self._server.server_port)
        log.debug("metrics on http://%s:%d/metrics", self.bind, self.port)
        return self.port

    async def close(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
