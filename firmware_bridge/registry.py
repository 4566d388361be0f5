"""The one explicit registry of device kinds.

Adding a kind means writing ``firmware_bridge/<kind>.py``, ``edge/<kind>.py`` and ``simulators/<kind>.py``
and adding one line here (and one in the edge and simulator registries); see
``docs/adding-a-device-kind.md``. No folder scanning, no class names in strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from firmware_bridge import manhole, smoke_alarm, wristband
from firmware_bridge.errors import DecodeError
from firmware_bridge.kernel.records import Channel, DeviceKind, Flag, KindSchema, Reading
from firmware_bridge.payload import PayloadCodec


@dataclass(frozen=True)
class KindSpec:
    """Everything the pipeline needs to know about one device kind's wire format."""

    kind: DeviceKind
    codec: PayloadCodec
    heartbeat_s: float

    @property
    def schema(self) -> KindSchema:
        return self.codec.schema

    @property
    def channels(self) -> tuple[Channel, ...]:
        return self.codec.channels

    @property
    def flags(self) -> tuple[Flag, ...]:
        return self.codec.flags

    @property
    def kind_code(self) -> int:
        return self.codec.kind_code

    @cached_property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.codec.channels)

    def channel_index(self, name: str) -> int:
        return self.channel_names.index(name)

    def flag(self, name: str) -> Flag:
        for f in self.codec.flags:
            if f.name == name:
                return f
        raise KeyError(f"{self.kind} has no flag {name!r}")


def _spec(module: object) -> KindSpec:
    return KindSpec(kind=module.KIND, codec=module.CODEC, heartbeat_s=module.HEARTBEAT_S)  # type: ignore[attr-defined]


KINDS: MappingProxyType[DeviceKind, KindSpec] = MappingProxyType(
    {
        DeviceKind.MANHOLE: _spec(manhole),
        DeviceKind.SMOKE_ALARM: _spec(smoke_alarm),
        DeviceKind.WRISTBAND: _spec(wristband),
    }
)
BY_CODE: Mapping[int, KindSpec] = MappingProxyType({s.kind_code: s for s in KINDS.values()})
"""Kind dispatch, in one place: the header's kind byte -> the kind's spec (scalar and vectorised below)."""
KIND_BYTE = 1
"""Offset of the kind code in every Vigil payload header (``docs/payloads.md``)."""


def spec(kind: DeviceKind | str) -> KindSpec:
    return KINDS[DeviceKind(kind)]


def kind_of_payload(payload: bytes | bytearray | memoryview) -> DeviceKind:
    """Which kind a Vigil payload belongs to, from its header's kind byte (byte 1).

    Only the kind byte is looked at; the chosen codec checks the rest.
    """
    data = bytes(payload)
    if len(data) < 2:
        raise DecodeError(
            f"payload of {len(data)} bytes is too short for a header", reason="length", data=data
        )
    s = BY_CODE.get(data[KIND_BYTE])
    if s is None:
        raise DecodeError(f"unknown kind code 0x{data[KIND_BYTE]:02x}", reason="kind", data=data)
    return s.kind


def kind_codes(payloads: Sequence[bytes | bytearray | memoryview]) -> npt.NDArray[np.int64]:
    """The kind byte of many payloads at once (-1 where a payload is too short for a header); look the
    codes up in :data:`BY_CODE` to group a batch by kind for ``decode_many``."""
    return np.fromiter(
        (p[KIND_BYTE] if len(p) > KIND_BYTE else -1 for p in payloads), dtype=np.int64, count=len(payloads)
    )


def decode_payload(payload: bytes | bytearray | memoryview, *, device_id: str, time: float) -> Reading:
    """Decode a Vigil payload of any kind, choosing the codec by the header's kind byte.

    Raises :class:`DecodeError` (never anything else) when the bytes are not a valid payload.
    """
    return KINDS[kind_of_payload(payload)].codec.decode(payload, device_id=device_id, time=time)
