"""alerts: the event and alert vocabulary and the gateway-to-cloud contract, shared by edge and cloud."""

from alerts.contract import (
    CONTRACT_VERSION,
    AlertEvent,
    GatewayStatus,
    TelemetryBlock,
    UplinkAck,
    UplinkBatch,
)
from alerts.events import KIND_EVENTS, LIFE_SAFETY, AlertPhase, EventType, Severity, alert_id

__all__ = [
    "CONTRACT_VERSION",
    "KIND_EVENTS",
    "LIFE_SAFETY",
    "AlertEvent",
    "AlertPhase",
    "EventType",
    "GatewayStatus",
    "Severity",
    "TelemetryBlock",
    "UplinkAck",
    "UplinkBatch",
    "alert_id",
]
