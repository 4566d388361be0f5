"""The exceptions firmware_bridge raises.

Every decoder raises only :class:`DecodeError` (or a subclass) for bad input; anything else escaping a
decoder is a bug, and the fuzz tests in ``tests/firmware_bridge`` hold every decoder to that.

    VigilBridgeError
    ├── DecodeError            bytes/JSON that do not form a valid frame (carries a short ``reason``)
    │   ├── ChecksumError      CRC or MIC mismatch
    │   └── ReplayError        LoRaWAN frame counter not increasing
    └── TransportError         a serial port or broker failed underneath us
"""

from __future__ import annotations


class VigilBridgeError(Exception):
    """Base class of every error raised by :mod:`firmware_bridge`."""


class DecodeError(VigilBridgeError, ValueError):
    """The input is not a valid frame.

    ``reason`` is a short machine-friendly tag (``"crc"``, ``"length"``, ``"version"`` ...) used as the
    label of reject counters; ``str(err)`` is the one-line human explanation.
    """

    def __init__(self, message: str, *, reason: str = "malformed", data: bytes | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.data = data


class ChecksumError(DecodeError):
    """A CRC or message integrity code did not match."""

    def __init__(self, message: str, *, reason: str = "checksum", data: bytes | None = None) -> None:
        super().__init__(message, reason=reason, data=data)


class ReplayError(DecodeError):
    """A frame counter did not increase (replayed or duplicated frame)."""

    def __init__(self, message: str, *, reason: str = "replay", data: bytes | None = None) -> None:
        super().__init__(message, reason=reason, data=data)


class TransportError(VigilBridgeError, OSError):
    """A transport (serial port, MQTT broker) failed."""
