"""Cayenne Low Power Payload (LPP): the de-facto generic payload of off-the-shelf LoRaWAN sensors.

Why Vigil speaks it: many third-party manhole-cover and smoke sensors sold in China and elsewhere ship
with an LPP encoder ("compatible with Cayenne / ChirpStack codec"). Decoding it lets a gateway accept such
devices before anyone writes a vendor codec; Vigil's own devices use :mod:`firmware_bridge.payload`.

Wire format (myDevicesIoT cayenne-docs ``docs/LORA.md``): a sequence of ``[channel u8][type u8][value]``
records, values big-endian, each type with a fixed size, signedness and resolution::

    type  name            size  resolution          signed
    0x00  digital_input    1    1                   no
    0x01  digital_output   1    1                   no
    0x02  analog_input     2    0.01                yes
    0x03  analog_output    2    0.01                yes
    0x65  illuminance      2    1 lux               no
    0x66  presence         1    1                   no
    0x67  temperature      2    0.1 °C              yes
    0x68  humidity         1    0.5 %RH             no
    0x71  accelerometer    6    0.001 g per axis    yes (x, y, z)
    0x73  barometer        2    0.1 hPa             no
    0x86  gyrometer        6    0.01 °/s per axis   yes (x, y, z)
    0x88  gps              9    lat, lon 0.0001°;   yes (3 B each)
                                alt 0.01 m

:func:`decode` raises only :class:`DecodeError` (reasons ``"lpp_type"``, ``"length"``); :func:`encode`
raises ``ValueError`` for values a type cannot carry (a programming error, not bad input).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from firmware_bridge.errors import DecodeError


@dataclass(frozen=True, slots=True)
class LppType:
    """One LPP data type: ``fields`` big-endian integers of ``width`` bytes each, value = raw * scale."""

    code: int
    name: str
    width: int
    fields: int
    scale: float
    signed: bool

    @property
    def size(self) -> int:
        return self.width * self.fields


@dataclass(frozen=True, slots=True)
class LppValue:
    """One LPP record; ``value`` is a tuple for the multi-axis types (accelerometer, gyrometer, GPS)."""

    channel: int
    type: int
    name: str
    value: float | tuple[float, ...]


DIGITAL_INPUT = 0x00
DIGITAL_OUTPUT = 0x01
ANALOG_INPUT = 0x02
ANALOG_OUTPUT = 0x03
ILLUMINANCE = 0x65
PRESENCE = 0x66
TEMPERATURE = 0x67
HUMIDITY = 0x68
ACCELEROMETER = 0x71
BAROMETER = 0x73
GYROMETER = 0x86
GPS = 0x88

TYPES: dict[int, LppType] = {
    t.code: t
    for t in (
        LppType(DIGITAL_INPUT, "digital_input", 1, 1, 1.0, False),
        LppType(DIGITAL_OUTPUT, "digital_output", 1, 1, 1.0, False),
        LppType(ANALOG_INPUT, "analog_input", 2, 1, 0.01, True),
        LppType(ANALOG_OUTPUT, "analog_output", 2, 1, 0.01, True),
        LppType(ILLUMINANCE, "illuminance", 2, 1, 1.0, False),
        LppType(PRESENCE, "presence", 1, 1, 1.0, False),
        LppType(TEMPERATURE, "temperature", 2, 1, 0.1, True),
        LppType(HUMIDITY, "humidity", 1, 1, 0.5, False),
        LppType(ACCELEROMETER, "accelerometer", 2, 3, 0.001, True),
        LppType(BAROMETER, "barometer", 2, 1, 0.1, False),
        LppType(GYROMETER, "gyrometer", 2, 3, 0.01, True),
        # GPS mixes resolutions (lat/lon 0.0001°, alt 0.01 m); handled in _scales().
        LppType(GPS, "gps", 3, 3, 0.0001, True),
    )
}
BY_NAME: dict[str, LppType] = {t.name: t for t in TYPES.values()}


def _scales(t: LppType) -> tuple[float, ...]:
    if t.code == GPS:
        return (0.0001, 0.0001, 0.01)
    return (t.scale,) * t.fields


@functools.cache
def _plan(code: int) -> tuple[tuple[float, int], ...]:
    """(scale, decimal places) per field of a type, computed once."""
    return tuple((s, _digits(s)) for s in _scales(TYPES[code]))


def _digits(scale: float) -> int:
    """Decimal places of a resolution, to round away float noise (0.1 * 272 -> 27.2, not 27.2000...03)."""
    s = f"{scale:.10f}".rstrip("0")
    return len(s.split(".")[1]) if "." in s else 0


def decode(data: bytes) -> list[LppValue]:
    """Decode a whole LPP payload; an empty payload is an empty list.

    >>> [(v.channel, v.name, v.value) for v in decode(bytes.fromhex("03670110056700FF"))]
    [(3, 'temperature', 27.2), (5, 'temperature', 25.5)]
    >>> encode([value(1, "gps", (42.3519, -87.9094, 10.0))]).hex()
    '018806765ff2960a0003e8'
    """
    data = bytes(data)
    out: list[LppValue] = []
    i, n = 0, len(data)
    while i < n:
        if n - i < 2:
            raise DecodeError(f"LPP record at offset {i} has no type byte", reason="length", data=data)
        channel, code = data[i], data[i + 1]
        t = TYPES.get(code)
        if t is None:
            raise DecodeError(
                f"unknown LPP type 0x{code:02x} at offset {i + 1}", reason="lpp_type", data=data
            )
        start = i + 2
        end = start + t.size
        if end > n:
            raise DecodeError(
                f"LPP {t.name} on channel {channel} needs {t.size} bytes, {n - start} left",
                reason="length",
                data=data,
            )
        parts = []
        for k, (scale, digits) in enumerate(_plan(code)):
            raw = int.from_bytes(
                data[start + k * t.width : start + (k + 1) * t.width], "big", signed=t.signed
            )
            parts.append(round(raw * scale, digits))
        value: float | tuple[float, ...] = parts[0] if t.fields == 1 else tuple(parts)
        out.append(LppValue(channel=channel, type=code, name=t.name, value=value))
        i = end
    return out


def encode(values: Iterable[LppValue]) -> bytes:
    """Encode records; values are rounded to the type's resolution. Out-of-range values raise ValueError."""
    buf = bytearray()
    for v in values:
        t = TYPES.get(v.type)
        if t is None:
            raise ValueError(f"unknown LPP type 0x{v.type:02x}")
        if not 0 <= v.channel <= 255:
            raise ValueError(f"LPP channel {v.channel} is not a byte")
        parts = (v.value,) if isinstance(v.value, int | float) else tuple(v.value)
        if len(parts) != t.fields:
            raise ValueError(f"LPP {t.name} takes {t.fields} value(s), got {len(parts)}")
        buf += bytes((v.channel, t.code))
        for part, scale in zip(parts, _scales(t), strict=True):
            if not math.isfinite(float(part)):
                raise ValueError(f"LPP {t.name} value {part} is not finite")
            raw = round(float(part) / scale)
            try:
                buf += raw.to_bytes(t.width, "big", signed=t.signed)
            except OverflowError as exc:
                raise ValueError(f"LPP {t.name} value {part} does not fit {t.width} byte(s)") from exc
    return bytes(buf)


def value(channel: int, name: str, v: float | tuple[float, ...]) -> LppValue:
    """Convenience constructor by type name: ``value(3, "temperature", 27.2)``."""
    t = BY_NAME[name]
    return LppValue(channel=channel, type=t.code, name=t.name, value=v)
