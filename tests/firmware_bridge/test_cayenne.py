"""Cayenne LPP codec: public vectors, every type, truncation, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import cayenne
from firmware_bridge.cayenne import LppValue, decode, encode
from firmware_bridge.errors import DecodeError

# Vectors: myDevicesIoT cayenne-docs, docs/LORA.md ("Cayenne Low Power Payload", examples section).
DOC_VECTORS = [
    (
        "03670110056700FF",
        [LppValue(3, 0x67, "temperature", 27.2), LppValue(5, 0x67, "temperature", 25.5)],
    ),
    ("0167FFD7", [LppValue(1, 0x67, "temperature", -4.1)]),
    ("067104D2FB2E0000", [LppValue(6, 0x71, "accelerometer", (1.234, -1.234, 0.0))]),
    ("018806765FF2960A0003E8", [LppValue(1, 0x88, "gps", (42.3519, -87.9094, 10.0))]),
]


@pytest.mark.parametrize(("hexstr", "expected"), DOC_VECTORS)
def test_doc_vectors_decode(hexstr: str, expected: list[LppValue]) -> None:
    assert decode(bytes.fromhex(hexstr)) == expected


@pytest.mark.parametrize(("hexstr", "expected"), DOC_VECTORS)
def test_doc_vectors_encode_byte_exact(hexstr: str, expected: list[LppValue]) -> None:
    assert encode(expected).hex().upper() == hexstr


@pytest.mark.parametrize(
    ("name", "value", "wire"),
    [
        # Sizes and resolutions: cayenne-docs docs/LORA.md data-types table.
        ("digital_input", 1.0, "0000" + "01"),
        ("digital_output", 0.0, "0001" + "00"),
        ("analog_input", -3.25, "0002" + "FEBB"),
        ("analog_output", 12.34, "0003" + "04D2"),
        ("illuminance", 65535.0, "0065" + "FFFF"),
        ("presence", 1.0, "0066" + "01"),
        ("temperature", -0.1, "0067" + "FFFF"),
        ("humidity", 63.5, "0068" + "7F"),
        ("barometer", 1013.2, "0073" + "2794"),
        ("gyrometer", (-1.0, 0.5, 327.67), "0086" + "FF9C" + "0032" + "7FFF"),
    ],
)
def test_every_type_round_trips(name: str, value: float | tuple[float, ...], wire: str) -> None:
    v = cayenne.value(0, name, value)
    assert encode([v]).hex().upper() == wire
    assert decode(bytes.fromhex(wire)) == [v]


def test_empty_payload_is_empty_list() -> None:
    assert decode(b"") == []


def test_unknown_type_is_a_typed_error() -> None:
    with pytest.raises(DecodeError) as ei:
        decode(bytes.fromhex("0167FFD7" + "02FE00"))
    assert ei.value.reason == "lpp_type"
    assert ei.value.data == bytes.fromhex("0167FFD702FE00")


def test_truncation_at_every_offset() -> None:
    whole = bytes.fromhex("".join(h for h, _ in DOC_VECTORS))
    boundaries = {0}
    pos = 0
    for h, _ in DOC_VECTORS:
        pos += len(h) // 2
        boundaries.add(pos)
    # Inside the first vector there is also the boundary after ch3's temperature.
    boundaries.add(4)
    for cut in range(len(whole)):
        prefix = whole[:cut]
        if cut in boundaries:
            decode(prefix)  # a record boundary: a shorter but valid payload
        else:
            with pytest.raises(DecodeError) as ei:
                decode(prefix)
            assert ei.value.reason == "length"


@pytest.mark.parametrize(
    "bad",
    [
        LppValue(0, 0x67, "temperature", 3276.8),  # > int16 * 0.1
        LppValue(0, 0x68, "humidity", -0.5),  # unsigned
        LppValue(0, 0x67, "temperature", float("nan")),
        LppValue(0, 0x67, "temperature", float("inf")),
        LppValue(300, 0x67, "temperature", 1.0),
        LppValue(0, 0x71, "accelerometer", (1.0, 2.0)),
        LppValue(0, 0x42, "nope", 1.0),
    ],
)
def test_encode_refuses_unrepresentable_values(bad: LppValue) -> None:
    with pytest.raises(ValueError):
        encode([bad])


@settings(max_examples=1000)
@given(st.binary(max_size=48))
def test_fuzz_only_decode_error_and_canonical_round_trip(data: bytes) -> None:
    try:
        values = decode(data)
    except DecodeError as exc:
        assert exc.reason in {"length", "lpp_type"}
        return
    # Anything that decodes re-encodes to the very same bytes (no precision lost by the scaling).
    assert encode(values) == data


@settings(max_examples=150)
@given(
    st.lists(st.tuples(st.integers(0, 255), st.sampled_from(sorted(cayenne.TYPES)), st.data()), max_size=6)
)
def test_generated_records_round_trip(records: list[tuple[int, int, st.DataObject]]) -> None:
    values = []
    for channel, code, draw in records:
        t = cayenne.TYPES[code]
        bits = 8 * t.width
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if t.signed else (0, (1 << bits) - 1)
        raws = [draw.draw(st.integers(lo, hi)) for _ in range(t.fields)]
        wire = bytes([channel, code]) + b"".join(r.to_bytes(t.width, "big", signed=t.signed) for r in raws)
        values.append(wire)
    payload = b"".join(values)
    assert encode(decode(payload)) == payload


def test_docstring_examples_run() -> None:
    import doctest

    import firmware_bridge.cayenne as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
