"""The gateway's exceptions: one tree, one base, so a caller can catch "anything the gateway refused".

::

    VigilGatewayError                 base of everything the gateway raises on purpose
    ├── ConfigError (ValueError)      gateway.toml is missing, not TOML, or does not validate (key + line)
    ├── DeviceListError (ValueError)  devices.csv cannot be read or holds a bad row (file:line)
    ├── SourceError                   a source cannot recover by itself (its supervisor restarts it)
    ├── OutboxError                   the outbox file cannot be opened or written (disk full, corrupt)
    ├── ActionError                   a local action failed (exit status, timeout, modem error)
    ├── MetricsPortInUse (OSError)    the metrics port is taken: the message says which key to change
    └── UplinkError                   a batch was not acknowledged; it stays in the outbox and is retried
        ├── UplinkUnavailable         cloud unreachable: refused, timeout, 5xx, broker down
        ├── UplinkAuthError           401/403: the credential is wrong (retried: an operator may fix it)
        ├── UplinkRejected            another 4xx: the cloud refused the batch (retried slowly)
        │   ├── UplinkTooLarge        413: refused unread; the batch is split into smaller ones
        │   └── UplinkInvalid         400/422: refused content; split to isolate the bad record
        └── UplinkProtocolError       2xx but the body is not an UplinkAck for this batch

Each class is defined here and re-exported where it is raised (``edge.config.ConfigError``,
``edge.outbox.OutboxError``, ``edge.uplink.UplinkError`` ...). Codec errors stay
:class:`firmware_bridge.errors.DecodeError`: a bad frame is counted, never raised out of a source.
Every message says what to do about it.
"""

from __future__ import annotations

from pathlib import Path

from firmware_bridge.devicelist import DeviceListError as _DeviceListFormatError


class VigilGatewayError(Exception):
    """Base of every exception the gateway raises on purpose."""


class ConfigError(VigilGatewayError, ValueError):
    """The configuration file is missing, not TOML, or does not validate.

    ``problems`` is a list of ``(key_path, line, message)``; ``line`` is 1-based or ``None``.
    """

    def __init__(self, path: Path | str, problems: list[tuple[str, int | None, str]]) -> None:
        self.path = str(path)
        self.problems = problems
        lines = [f"{self.path}: invalid gateway configuration"]
        for key, line, msg in problems:
            where = f"line {line}: " if line else ""
            lines.append(f"  {where}{key}: {msg}")
        super().__init__("\n".join(lines))


class DeviceListError(VigilGatewayError, _DeviceListFormatError):
    """devices.csv is missing, missing a column or holds an invalid row (the message names the line)."""


class SourceError(VigilGatewayError, RuntimeError):
    """A source is misconfigured or its transport failed in a way it cannot recover from by itself."""


class OutboxError(VigilGatewayError, RuntimeError):
    """The outbox file cannot be opened or written (disk full, read-only, corrupt)."""


class ActionError(VigilGatewayError, RuntimeError):
    """A local action failed (command exit status, timeout, modem error)."""


class MetricsPortInUse(VigilGatewayError, OSError):
    """The metrics endpoint's port is taken by another process."""


class UplinkError(VigilGatewayError):
    """A batch was not acknowledged. ``reason`` labels ``vigil_gateway_uplink_errors_total``."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class UplinkUnavailable(UplinkError):
    reason = "unavailable"


class UplinkAuthError(UplinkError):
    reason = "auth"


class UplinkRejected(UplinkError):
    reason = "rejected"


class UplinkTooLarge(UplinkRejected):
    reason = "too_large"


class UplinkInvalid(UplinkRejected):
    reason = "invalid"


class UplinkProtocolError(UplinkError):
    reason = "protocol"


__all__ = [
    "ActionError",
    "ConfigError",
    "DeviceListError",
    "MetricsPortInUse",
    "OutboxError",
    "SourceError",
    "UplinkAuthError",
    "UplinkError",
    "UplinkInvalid",
    "UplinkProtocolError",
    "UplinkRejected",
    "UplinkTooLarge",
    "UplinkUnavailable",
    "VigilGatewayError",
]
