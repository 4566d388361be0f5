"""Prometheus metrics of the cloud service (``GET /metrics``), all named ``vigil_cloud_*``.

Each app instance owns its own :class:`~prometheus_client.CollectorRegistry`, so several apps in one
process (tests, the MQTT worker beside the HTTP app) never collide on names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CloudMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "vigil_cloud_http_requests_total",
            "HTTP requests by route template and status",
            ["route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "vigil_cloud_http_request_seconds", "HTTP request latency", ["route"], registry=r
        )
        self.rejects = Counter(
            "vigil_cloud_rejects_total",
            "Requests refused with a 4xx, by reason (unauthenticated, forbidden, validation, too_large ...)",
            ["reason"],
            registry=r,
        )
        self.batches = Counter(
            "vigil_cloud_ingest_batches_total",
            "Uplink batches by result (stored, duplicate, forbidden, error)",
            ["result"],
            registry=r,
        )
        self.readings = Counter("vigil_cloud_ingest_readings_total", "Readings newly stored", registry=r)
        self.reading_duplicates = Counter(
            "vigil_cloud_ingest_reading_duplicates_total",
            "Readings already stored (re-sent frames)",
            registry=r,
        )
        self.alert_steps = Counter(
            "vigil_cloud_alert_events_total",
            "Alert lifecycle steps stored, by source and phase",
            ["source", "phase"],
            registry=r,
        )
        self.seq_gaps = Counter(
            "vigil_cloud_seq_gaps_total", "Missing device sequence numbers detected (lost frames)", registry=r
        )
        self.forbidden_devices = Counter(
            "vigil_cloud_forbidden_devices_total",
            "Device ids a gateway tried to write for without being assigned them",
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "vigil_cloud_ingest_seconds", "Time from receiving a batch to its commit", registry=r
        )
        self.sink_errors = Counter(
            "vigil_cloud_alert_sink_errors_total", "Failures of the post-commit alert sink", registry=r
        )
        self.certificate_refusals = Counter(
            "vigil_cloud_gateway_certificate_refusals_total",
            "Gateway requests refused: client certificate another's, missing or revoked (docs/mtls.md)",
            ["reason"],
            registry=r,
        )
        for reason in (
            "certificate_mismatch",
            "certificate_required",
            "certificate_revoked",
        ):  # at 0 before the first refusal
            self.certificate_refusals.labels(reason)
        self.connectivity_alerts = Counter(
            "vigil_cloud_connectivity_alerts_total",
            "DEVICE_SILENT / GATEWAY_OFFLINE steps raised",
            ["event_type", "phase"],
            registry=r,
        )
        self.push_messages = Counter(
            "vigil_cloud_push_messages_total",
            "Operator-platform push messages by platform and result",
            ["platform", "result"],
            registry=r,
        )
        self.silent_devices = Gauge(
            "vigil_cloud_silent_devices", "Devices currently silent past their profile interval", registry=r
        )
        self.silence_held_devices = Gauge(
            "vigil_cloud_silence_held_devices",
            "Overdue devices not judged silent because their gateway reports a backlog reaching back before",
            registry=r,
        )
        self.offline_gateways = Gauge(
            "vigil_cloud_offline_gateways", "Gateways currently offline", registry=r
        )
