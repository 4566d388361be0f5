"""Gateway -> cloud uplinks (HTTPS batches or MQTT) and the sender loop that drains the outbox."""

from edge.uplink.base import (
    Uplink,
    UplinkAuthError,
    UplinkError,
    UplinkInvalid,
    UplinkProtocolError,
    UplinkRejected,
    UplinkThrottled,
    UplinkTooLarge,
    UplinkUnavailable,
)
from edge.uplink.sender import UplinkSender

__all__ = [
    "Uplink",
    "UplinkAuthError",
    "UplinkError",
    "UplinkInvalid",
    "UplinkProtocolError",
    "UplinkRejected",
    "UplinkSender",
    "UplinkThrottled",
    "UplinkTooLarge",
    "UplinkUnavailable",
]
