"""CRC check values and properties.

Check values: the reveng CRC catalogue ("Catalogue of parametrised CRC algorithms", Greg Cook,
https://reveng.sourceforge.io/crc-catalogue/16.htm and /17plus.htm), ``check`` = CRC of ASCII "123456789":
CRC-16/IBM-3740 (alias CCITT-FALSE) 0x29B1, CRC-16/MODBUS 0x4B37, CRC-32/ISO-HDLC 0xCBF43926.
"""

from __future__ import annotations

import binascii
import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.crc import crc16_ccitt_false, crc16_ccitt_false_table, crc16_modbus, crc32

CHECK = b"123456789"


def test_check_values_from_reveng_catalogue() -> None:
    assert crc16_ccitt_false(CHECK) == 0x29B1
    assert crc16_ccitt_false_table(CHECK) == 0x29B1
    assert crc16_modbus(CHECK) == 0x4B37
    assert crc32(CHECK) == 0xCBF43926


def test_docstring_examples() -> None:
    import firmware_bridge.crc as crc

    result = doctest.testmod(crc)
    assert result.failed == 0 and result.attempted >= 4


def test_empty_input_is_the_init_value() -> None:
    assert crc16_ccitt_false(b"") == 0xFFFF
    assert crc16_modbus(b"") == 0xFFFF
    assert crc32(b"") == 0


def test_modbus_known_frame() -> None:
    # Modbus-RTU "read holding registers" request 01 03 00 00 00 0A; CRC C5CD sent low byte first (CD C5).
    # Source: "Modbus over Serial Line Specification V1.02" (modbus.org), CRC appended low byte first; the
    # frame "01 03 00 00 00 0A C5 CD" is the widely published read-10-registers example frame.
    assert crc16_modbus(bytes.fromhex("01030000000A")).to_bytes(2, "little") == bytes.fromhex("C5CD")


def test_accepts_bytearray_and_memoryview() -> None:
    assert crc16_ccitt_false(bytearray(CHECK)) == 0x29B1
    assert crc16_modbus(memoryview(CHECK)) == 0x4B37
    assert crc16_ccitt_false_table(memoryview(CHECK)) == 0x29B1


def test_bad_init_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="init"):
        crc16_ccitt_false(CHECK, init=0x10000)


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_table_matches_stdlib_fast_path(data: bytes, init: int) -> None:
    assert (
        crc16_ccitt_false_table(data, init) == crc16_ccitt_false(data, init) == binascii.crc_hqx(data, init)
    )


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_ccitt_can_be_continued_over_pieces(a: bytes, b: bytes) -> None:
    assert crc16_ccitt_false(b, init=crc16_ccitt_false(a)) == crc16_ccitt_false(a + b)


@given(st.binary(min_size=1, max_size=200))
def test_residue_is_zero_with_crc_appended(data: bytes) -> None:
    # Non-reflected, no final XOR: CRC(data || CRC_BE) == 0; Modbus (reflected) the same with CRC_LE.
    assert crc16_ccitt_false(data + crc16_ccitt_false(data).to_bytes(2, "big")) == 0
    assert crc16_modbus(data + crc16_modbus(data).to_bytes(2, "little")) == 0


@given(st.binary(min_size=1, max_size=200), st.data())
def test_every_single_byte_error_is_detected(data: bytes, draw: st.DataObject) -> None:
    i = draw.draw(st.integers(0, len(data) - 1))
    mask = draw.draw(st.integers(1, 255))
    bad = bytearray(data)
    bad[i] ^= mask
    assert crc16_ccitt_false(bytes(bad)) != crc16_ccitt_false(data)
    assert crc16_modbus(bytes(bad)) != crc16_modbus(data)
