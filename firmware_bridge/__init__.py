"""firmware_bridge: bytes on a wire -> typed readings, over the shared kernel.

Sans-I/O codecs for Vigil's own payloads and for what real deployments send (Cayenne LPP, LoRaWAN,
ChirpStack, Semtech UDP, NB-IoT module URCs, CTWing / OneNET pushes), serial framing, and transports that
only move bytes. :mod:`firmware_bridge.kernel` is the shared kernel everything else imports (kinds,
records, the event vocabulary, clocks); it imports nothing of ours.

Exports are lazy (PEP 562) so that importing the kernel, or ``vigil --help`` on a Pi, loads no codec.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ChecksumError": "firmware_bridge.errors",
    "DecodeError": "firmware_bridge.errors",
    "ReplayError": "firmware_bridge.errors",
    "TransportError": "firmware_bridge.errors",
    "VigilBridgeError": "firmware_bridge.errors",
    "Channel": "firmware_bridge.kernel.records",
    "DeviceKind": "firmware_bridge.kernel.records",
    "Flag": "firmware_bridge.kernel.records",
    "KindSchema": "firmware_bridge.kernel.records",
    "Reading": "firmware_bridge.kernel.records",
    "ReadingBatch": "firmware_bridge.kernel.records",
    "KINDS": "firmware_bridge.registry",
    "KindSpec": "firmware_bridge.registry",
    "decode_payload": "firmware_bridge.registry",
    "kind_of_payload": "firmware_bridge.registry",
    "spec": "firmware_bridge.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'firmware_bridge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
