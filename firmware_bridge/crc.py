"""Cyclic redundancy checks used on Vigil's links.

Why these three:

* **CRC-16/CCITT-FALSE** (poly 0x1021, init 0xFFFF, no reflection, no final XOR) protects Vigil's own
  serial link frames (:mod:`firmware_bridge.framing`). It detects every burst error up to 16 bits, so any
  single corrupted byte in a frame is always caught; it is cheap on an 8-bit MCU and the most common
  16-bit CRC in radio-module firmware.
* **CRC-16/MODBUS** (reflected poly 0xA001, init 0xFFFF) is what RS-485 / Modbus-RTU sensors use; some
  manhole-cover gas probes speak it.
* **CRC-32** (IEEE 802.3, as zlib) for larger blobs (firmware images, recorded captures).

All three are table-driven. CCITT-FALSE and CRC-32 also have C implementations in the standard library
(``binascii.crc_hqx`` is exactly CRC-16/CCITT-FALSE when started at 0xFFFF; ``zlib.crc32``); those are the
fast paths used on the hot path, and the tests hold the pure-Python table against them so the table stays
the documented reference.

Check values for ASCII ``123456789`` (reveng CRC catalogue): CRC-16/MODBUS 0x4B37, CRC-16/CCITT-FALSE
0x29B1, CRC-32 0xCBF43926.
"""

from __future__ import annotations

import binascii
import zlib
from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = [
    "CCITT_TABLE",
    "MODBUS_TABLE",
    "Buffer",
    "crc16_ccitt_false",
    "crc16_ccitt_false_table",
    "crc16_modbus",
    "crc32",
]


def _make_msb_table(poly: int) -> tuple[int, ...]:
    """256-entry table for a non-reflected (MSB-first) 16-bit CRC."""
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


def _make_lsb_table(poly_reflected: int) -> tuple[int, ...]:
    """256-entry table for a reflected (LSB-first) 16-bit CRC."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly_reflected if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


CCITT_TABLE: tuple[int, ...] = _make_msb_table(0x1021)
MODBUS_TABLE: tuple[int, ...] = _make_lsb_table(0xA001)


def crc16_ccitt_false_table(data: Buffer, init: int = 0xFFFF) -> int:
    """Reference table-driven CRC-16/CCITT-FALSE (slow path; kept as the documented algorithm)."""
    crc = init & 0xFFFF
    table = CCITT_TABLE
    for b in memoryview(data).cast("B"):
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ b]
    return crc


def crc16_ccitt_false(data: Buffer, init: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data``; ``init`` lets a CRC be continued over several pieces.

    >>> hex(crc16_ccitt_false(b"123456789"))
    '0x29b1'
    >>> crc16_ccitt_false(b"6789", init=crc16_ccitt_false(b"12345")) == 0x29B1
    True
    """
    if not 0 <= init <= 0xFFFF:
        raise ValueError(f"CRC-16 init must be 0..0xFFFF, got {init:#x}")
    # binascii.crc_hqx is the same polynomial, MSB-first, no final XOR: CCITT-FALSE when init=0xFFFF.
    return binascii.crc_hqx(data, init)


def crc16_modbus(data: Buffer) -> int:
    """CRC-16/MODBUS of ``data`` (transmitted low byte first on the wire).

    >>> hex(crc16_modbus(b"123456789"))
    '0x4b37'
    """
    crc = 0xFFFF
    table = MODBUS_TABLE
    for b in memoryview(data).cast("B"):
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def crc32(data: Buffer) -> int:
    """CRC-32 (IEEE 802.3 / zlib) of ``data``.

    >>> hex(crc32(b"123456789"))
    '0xcbf43926'
    """
    return zlib.crc32(data) & 0xFFFFFFFF
