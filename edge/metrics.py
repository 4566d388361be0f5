"""Prometheus metrics of the gateway, and a tiny asyncio HTTP endpoint that serves them.

Why our own registry and server: several gateways (or tests) in one process must not share counters, and
``prometheus_client.start_http_server`` runs a thread we could not close cleanly. The asyncio server lives
in the daemon's TaskGroup, so shutting down the daemon closes it.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` durations); ``vigil gateway status``
reads them back and explains them in plain words (:mod:`edge.status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """Serve ``GET /metrics`` (and ``/healthz``) over HTTP/1.0 on an asyncio server."""

    def __init__(self, metrics: GatewayMetrics, bind: str, port: int) -> None:
        self.metrics = metrics
        self.bind = bind
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.bind, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", self.bind, self.port)
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path.startswith("/metrics"):
                body, status, ctype = self.metrics.render(), "200 OK", CONTENT_TYPE_LATEST
            elif path.startswith("/healthz"):
                body, status, ctype = b"ok\n", "200 OK", "text/plain"
            else:
                body, status, ctype = b"not found\n", "404 Not Found", "text/plain"
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
