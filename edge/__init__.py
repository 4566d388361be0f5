"""The Vigil edge gateway: sources -> batched decode -> vectorised detection -> crash-safe outbox -> cloud.

Public API (``docs/gateway.md``)::

    from edge import Gateway, load_config, run_gateway

    cfg = load_config("/etc/vigil/gateway.toml")   # ConfigError names the key and the line
    run_gateway(cfg)                               # until SIGTERM; or `await Gateway(cfg).run(stop)`

Every exception the gateway raises on purpose is a :class:`VigilGatewayError` (:mod:`edge.errors`).
Daemon parts: :mod:`edge.config`, :mod:`edge.sources`, :mod:`edge.pipeline`, :mod:`edge.outbox`,
:mod:`edge.uplink`, :mod:`edge.actions`, :mod:`edge.metrics`, :mod:`edge.status`, :mod:`edge.daemon`.
Detection is :mod:`alerts.detection`. Exports are lazy (PEP 562) so ``vigil --help`` is fast on a Pi.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ActionError": "edge.errors",
    "ConfigError": "edge.errors",
    "DeviceListError": "edge.errors",
    "MetricsPortInUse": "edge.errors",
    "OutboxError": "edge.errors",
    "SourceError": "edge.errors",
    "UplinkAuthError": "edge.errors",
    "UplinkError": "edge.errors",
    "UplinkInvalid": "edge.errors",
    "UplinkProtocolError": "edge.errors",
    "UplinkRejected": "edge.errors",
    "UplinkTooLarge": "edge.errors",
    "UplinkUnavailable": "edge.errors",
    "VigilGatewayError": "edge.errors",
    "GatewayConfig": "edge.config",
    "load_config": "edge.config",
    "parse_config": "edge.config",
    "Gateway": "edge.daemon",
    "run_gateway": "edge.daemon",
    "Outbox": "edge.outbox",
    "iter_alert_events": "edge.outbox",
    "iter_telemetry": "edge.outbox",
    "DeviceList": "edge.sources.devices",
    "load_devices": "edge.sources.devices",
    "gateway_status": "edge.status",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
