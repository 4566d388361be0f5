"""firmware_bridge: bytes on a wire -> typed readings.

Sans-I/O codecs for Vigil's own payloads and for what real deployments send (Cayenne LPP, LoRaWAN,
ChirpStack, Semtech UDP, NB-IoT module URCs, CTWing / OneNET pushes), serial framing, and transports that
only move bytes.
"""

from firmware_bridge.errors import ChecksumError, DecodeError, ReplayError, TransportError, VigilBridgeError
from firmware_bridge.records import Channel, DeviceKind, Flag, Reading, ReadingBatch
from firmware_bridge.registry import KINDS, KindSpec, decode_payload, kind_of_payload, spec

__all__ = [
    "KINDS",
    "Channel",
    "ChecksumError",
    "DecodeError",
    "DeviceKind",
    "Flag",
    "KindSpec",
    "Reading",
    "ReadingBatch",
    "ReplayError",
    "TransportError",
    "VigilBridgeError",
    "decode_payload",
    "kind_of_payload",
    "spec",
]
