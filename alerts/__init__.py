"""alerts: the alerting domain.

- :mod:`alerts.contract`: the gateway-to-cloud uplink contract (alert steps, telemetry blocks, acks);
- :mod:`alerts.detection`: vectorised detection (per-kind rules, detectors, episodes), pure and usable by
  the gateway daemon and by cloud workers alike;
- incidents, routing, rosters, escalation, work orders and KPIs (the closed loop) as pure policy over
  plain data, time passed in.

The event vocabulary itself (event types, severities) is in the shared kernel,
:mod:`firmware_bridge.kernel.events`. Exports are lazy (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CONTRACT_VERSION": "alerts.contract",
    "AlertEvent": "alerts.contract",
    "GatewayStatus": "alerts.contract",
    "TelemetryBlock": "alerts.contract",
    "UplinkAck": "alerts.contract",
    "UplinkBatch": "alerts.contract",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alerts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
