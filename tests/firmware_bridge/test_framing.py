"""SLIP / COBS vectors, the link-frame layout, and the stream decoder under chunking, noise and fuzz.

Vector sources (cited per test):
- SLIP: rhjdjong/SlipLib ``tests/unit/test_slip.py`` (MIT) and RFC 1055 (END 0xC0, ESC 0xDB, ESC_END 0xDC,
  ESC_ESC 0xDD).
- COBS: cmcqueen/cobs-python ``src/cobs/cobs/test.py`` (MIT), ``PredefinedEncodingsTests``,
  ``PredefinedDecodeErrorTests``, ``ZerosTest``, ``NonZerosTest``.
- CRC-16/CCITT-FALSE check value 0x29B1: reveng CRC catalogue.
"""

from __future__ import annotations

import doctest
import logging
from collections.abc import Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from firmware_bridge.crc import crc16_ccitt_false, crc16_ccitt_false_table
from firmware_bridge.errors import DecodeError
from firmware_bridge.framing import (
    REJECT_REASONS,
    FrameDecoder,
    LinkFrame,
    cobs_decode,
    cobs_encode,
    decode_frame,
    decode_link_body,
    device_id_from_int,
    device_id_to_int,
    encode_frame,
    encode_link_body,
    slip_decode,
    slip_encode,
)

END, ESC, ESC_END, ESC_ESC = b"\xc0", b"\xdb", b"\xdc", b"\xdd"


# --------------------------------------------------------------------------------------- SLIP vectors
# rhjdjong/SlipLib tests/unit/test_slip.py, TestEncoding / TestDecoding.
SLIPLIB_MESSAGES = [b"", b"hallo", b"x", b"a\0b"]
SLIPLIB_SPECIAL_ENCODING = [
    (END, ESC + ESC_END),
    (ESC, ESC + ESC_ESC),
    (ESC + ESC_END, ESC + ESC_ESC + ESC_END),
    (ESC + ESC_ESC, ESC + ESC_ESC + ESC_ESC),
    (ESC + END, ESC + ESC_ESC + ESC + ESC_END),
    (ESC + ESC, ESC + ESC_ESC + ESC + ESC_ESC),
]
SLIPLIB_SPECIAL_DECODING = [
    (ESC + ESC_ESC, ESC),
    (ESC + ESC_END, END),
    (ESC_ESC + ESC + ESC_END, ESC_ESC + END),
    (ESC_END + ESC + ESC_ESC, ESC_END + ESC),
    (ESC + ESC_ESC + ESC + ESC_END, ESC + END),
    (ESC + ESC_END + ESC + ESC_ESC, END + ESC),
]
SLIPLIB_INVALID = [ESC + b"x", b"abc" + ESC, b"a" + END + b"z"]


@pytest.mark.parametrize("msg", SLIPLIB_MESSAGES)
def test_sliplib_plain_messages(msg: bytes) -> None:
    assert slip_encode(msg) == END + msg + END
    assert slip_decode(END + msg + END) == msg


@pytest.mark.parametrize(("msg", "packet"), SLIPLIB_SPECIAL_ENCODING)
def test_sliplib_special_character_encoding(msg: bytes, packet: bytes) -> None:
    assert slip_encode(msg) == END + packet + END


@pytest.mark.parametrize(("packet", "msg"), SLIPLIB_SPECIAL_DECODING)
def test_sliplib_special_character_decoding(packet: bytes, msg: bytes) -> None:
    assert slip_decode(END + packet + END) == msg


@pytest.mark.parametrize("packet", SLIPLIB_INVALID)
def test_sliplib_invalid_packets_raise_typed_error(packet: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        slip_decode(END + packet + END)
    assert info.value.reason == "escape"
    assert info.value.data == END + packet + END


# --------------------------------------------------------------------------------------- COBS vectors
# cmcqueen/cobs-python src/cobs/cobs/test.py, PredefinedEncodingsTests.predefined_encodings.
COBS_PREDEFINED = [
    (b"", b"\x01"),
    (b"1", b"\x021"),
    (b"12345", b"\x0612345"),
    (b"12345\x006789", b"\x0612345\x056789"),
    (b"\x0012345\x006789", b"\x01\x0612345\x056789"),
    (b"12345\x006789\x00", b"\x0612345\x056789\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x00\x00", b"\x01\x01\x01\x01"),
    (bytes(range(1, 254)), b"\xfe" + bytes(range(1, 254))),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),  # 254 non-zero bytes: FF .., no trailing 01
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(0, 256)), b"\x01\xff" + bytes(range(1, 255)) + b"\x02\xff"),
]
# ... PredefinedDecodeErrorTests.decode_error_test_strings
COBS_DECODE_ERRORS = [b"\x00", b"\x05123", b"\x051234\x00", b"\x0512\x004"]


@pytest.mark.parametrize(("raw", "encoded"), COBS_PREDEFINED)
def test_cobs_python_predefined_encodings(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


@pytest.mark.parametrize("encoded", COBS_DECODE_ERRORS)
def test_cobs_python_decode_errors(encoded: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        cobs_decode(encoded)
    assert info.value.reason == "escape"


def _non_zero_bytes(length: int) -> bytes:
    # cobs-python test.py: infinite_non_zero_generator / non_zero_bytes, transcribed.
    def gen() -> Iterator[int]:
        while True:
            for i in range(1, 50):
                yield from range(1, 256, i)

    g = gen()
    return bytes(next(g) for _ in range(length))


def _simple_encode_non_zeros_only(data: bytes) -> bytes:
    # cobs-python test.py: NonZerosTest.simple_encode_non_zeros_only.
    return b"".join(bytes([len(data[i : i + 254]) + 1]) + data[i : i + 254] for i in range(0, len(data), 254))


def test_cobs_python_zeros_and_non_zeros() -> None:
    # cobs-python test.py: ZerosTest.test_zeros, NonZerosTest.test_non_zeros / _and_trailing_zero.
    for length in range(0, 520, 7):
        assert cobs_encode(b"\x00" * length) == b"\x01" * (length + 1)
        assert cobs_decode(b"\x01" * (length + 1)) == b"\x00" * length
    for length in [*range(1, 20), 253, 254, 255, 507, 508, 509, 762, 999]:
        data = _non_zero_bytes(length)
        assert cobs_encode(data) == _simple_encode_non_zeros_only(data)
        tail = b"\x01\x01" if length % 254 == 0 else b"\x01"
        assert cobs_encode(data + b"\x00") == _simple_encode_non_zeros_only(data) + tail
        assert cobs_decode(cobs_encode(data + b"\x00")) == data + b"\x00"


@given(st.binary(max_size=1200))
@settings(max_examples=300)
def test_cobs_round_trip_has_no_zero_and_bounded_overhead(data: bytes) -> None:
    enc = cobs_encode(data)
    assert b"\x00" not in enc
    assert len(enc) <= len(data) + 1 + len(data) // 254  # cobs-python RandomDataTest bound
    assert cobs_decode(enc) == data


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_slip_round_trip(data: bytes) -> None:
    enc = slip_encode(data)
    assert END not in enc[1:-1]
    assert slip_decode(enc) == data


# --------------------------------------------------------------------------------------- link frame
def test_worked_example_from_docs() -> None:
    # docs/framing.md worked example; CRC-16/CCITT-FALSE over id+payload = 0x319D (checked against the
    # table-driven reference whose check value for "123456789" is 0x29B1, reveng catalogue).
    body = bytes.fromhex("70b3d57ed0001234") + b"\x01\xc0"
    assert crc16_ccitt_false_table(body) == 0x319D
    wire = encode_frame("70B3D57ED0001234", b"\x01\xc0")
    assert wire.hex(" ") == "c0 70 b3 d5 7e d0 00 12 34 01 db dc 31 9d c0"
    assert FrameDecoder().feed(wire) == [LinkFrame("70b3d57ed0001234", b"\x01\xc0")]
    assert decode_frame(wire) == LinkFrame("70b3d57ed0001234", b"\x01\xc0")
    cobs_wire = encode_frame("70b3d57ed0001234", b"\x01\xc0", framing="cobs")
    assert cobs_wire.hex(" ") == "00 06 70 b3 d5 7e d0 07 12 34 01 c0 31 9d 00"
    assert decode_frame(cobs_wire, framing="cobs").payload == b"\x01\xc0"


def test_imei_is_carried_as_its_integer_value() -> None:
    imei = "860123456789012"  # 15 digits; 860123456789012 == 0x00030E47191ADA14
    assert device_id_to_int(imei) == 860123456789012
    frame = FrameDecoder().feed(encode_frame(imei, b"\x01"))[0]
    assert frame.device_id == "00030e47191ada14" == device_id_from_int(860123456789012)


@pytest.mark.parametrize("bad", ["", "12345", "zz00000000000000", "8601234567890123x", "86012345678901a"])
def test_bad_device_id_is_a_typed_error(bad: str) -> None:
    with pytest.raises(DecodeError) as info:
        encode_frame(bad, b"")
    assert info.value.reason == "device_id"


def test_device_id_from_int_bounds() -> None:
    assert device_id_from_int(2**64 - 1) == "ffffffffffffffff"
    with pytest.raises(DecodeError):
        device_id_from_int(2**64)


def test_decode_frame_reports_the_reason() -> None:
    wire = bytearray(encode_frame("0000000000000001", b"abc"))
    wire[9] ^= 0x01
    with pytest.raises(DecodeError) as info:
        decode_frame(bytes(wire))
    assert info.value.reason == "crc"
    with pytest.raises(DecodeError) as info:
        decode_frame(END + b"abc" + END)
    assert info.value.reason == "short"


def test_unstuffed_link_body_round_trip_and_errors() -> None:
    body = encode_link_body("70b3d57ed0001234", b"\x01\xc0")
    assert body.hex(" ") == "70 b3 d5 7e d0 00 12 34 01 c0 31 9d"  # docs/framing.md worked example
    assert decode_link_body(body) == LinkFrame("70b3d57ed0001234", b"\x01\xc0")
    with pytest.raises(DecodeError) as info:
        decode_link_body(body[:-1] + b"\x00")
    assert info.value.reason == "crc" and info.value.data == body[:-1] + b"\x00"
    with pytest.raises(DecodeError) as info:
        decode_link_body(body[:9])
    assert info.value.reason == "short"


def test_docstring_examples() -> None:
    import firmware_bridge.framing as framing

    assert doctest.testmod(framing).failed == 0


def test_unknown_framing_is_rejected() -> None:
    with pytest.raises(ValueError, match="framing"):
        FrameDecoder(framing="hdlc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_frame"):
        FrameDecoder(max_frame=4)


# --------------------------------------------------------------------------------------- stream decoder
def _frames(n: int) -> list[LinkFrame]:
    return [
        LinkFrame(f"{i * 0x0101010101:016x}", bytes([i % 256, 0xC0, 0xDB, i % 7]) * (i % 5)) for i in range(n)
    ]


def test_byte_at_a_time_and_one_big_chunk_agree() -> None:
    frames = _frames(50)
    stream = b"".join(f.encode() for f in frames)
    one = FrameDecoder()
    assert one.feed(stream) == frames
    bytewise = FrameDecoder()
    out = [f for i in range(len(stream)) for f in bytewise.feed(stream[i : i + 1])]
    assert out == frames
    assert bytewise.frames_total == 50 and bytewise.rejects.total() == 0 and bytewise.pending == 0


def test_each_reject_reason_is_counted_and_neighbours_survive() -> None:
    seen: list[tuple[str, bytes]] = []
    dec = FrameDecoder(max_frame=32, on_reject=lambda reason, raw: seen.append((reason, raw)))
    good = LinkFrame("0123456789abcdef", b"ok")
    bad_crc = bytearray(slip_encode(bytes.fromhex("0123456789abcdef") + b"ok\x00\x00"))
    stream = (
        good.encode()
        + bytes(bad_crc)
        + good.encode()
        + END
        + b"ab"
        + END  # short
        + good.encode()
        + END
        + b"0123456789"
        + ESC
        + b"x"
        + END  # escape
        + good.encode()
        + END
        + b"A" * 100
        + END  # oversize (complete segment longer than the bound)
        + good.encode()
    )
    assert dec.feed(stream) == [good] * 5
    assert dec.rejects == {"crc": 1, "short": 1, "escape": 1, "oversize": 1}
    assert [r for r, _ in seen] == ["crc", "short", "escape", "oversize"]
    assert seen[1] == ("short", b"ab")
    assert dec.last_reject is not None and dec.last_reject[0] == "oversize"
    assert set(dec.rejects) <= set(REJECT_REASONS)


def test_unescaped_oversize_body_is_rejected_after_unstuffing() -> None:
    # 40 ESC_END pairs = 80 raw bytes (within 2*32+2) but 40 decoded bytes > max_frame 32.
    dec = FrameDecoder(max_frame=32)
    assert dec.feed(END + (ESC + ESC_END) * 40 + END) == []
    assert dec.rejects == {"oversize": 1}


def test_runaway_stream_is_bounded_and_resynchronises() -> None:
    dec = FrameDecoder(max_frame=32)
    good = LinkFrame("00000000000000aa", b"after")
    for _ in range(200):
        assert dec.feed(b"\x55" * 7) == []
        assert dec.pending <= dec.max_raw
    assert dec.rejects == {"oversize": 1}  # counted once, not once per chunk
    assert dec.feed(good.encode() + good.encode()) == [good, good]
    assert dec.rejects == {"oversize": 1}


def test_reject_is_logged_with_its_bytes(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="firmware_bridge.framing"):
        FrameDecoder().feed(END + b"\x01\x02\x03" + END)
    assert "short" in caplog.text and "01 02 03" in caplog.text


def test_reset_drops_the_partial_frame() -> None:
    dec = FrameDecoder()
    good = LinkFrame("00000000000000bb", b"x")
    wire = good.encode()
    dec.feed(wire[:6])
    assert dec.pending == 5
    dec.reset()
    assert dec.pending == 0
    assert dec.feed(wire) == [good]


# ---- property: any list of frames, any chunking, garbage / corruption / truncation in between ----------
def _reference_unstuff(framing: str, seg: bytes) -> bytes | None:
    """Byte-by-byte SLIP unescape written from RFC 1055 (independent of the decoder's bytes.replace trick)."""
    if framing == "cobs":
        try:
            return cobs_decode(seg)
        except DecodeError:
            return None
    out, i = bytearray(), 0
    while i < len(seg):
        b = seg[i]
        if b == 0xDB:
            if i + 1 >= len(seg) or seg[i + 1] not in (0xDC, 0xDD):
                return None
            out.append(0xC0 if seg[i + 1] == 0xDC else 0xDB)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def _reference_valid(framing: str, seg: bytes) -> bool:
    body = _reference_unstuff(framing, seg)
    # crc16_ccitt_false (C) is held equal to the table-driven reference by test_crc.py.
    return body is not None and 10 <= len(body) <= 512 and crc16_ccitt_false(body) == 0


frame_st = st.builds(LinkFrame, st.integers(0, 2**64 - 1).map(device_id_from_int), st.binary(max_size=48))
item_st = st.one_of(
    st.tuples(st.just("ok"), frame_st, st.just(0), st.just(0)),
    st.tuples(st.just("corrupt"), frame_st, st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), frame_st, st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=24), st.just(0), st.just(0)),
)


def _wire(framing: str, kind: str, obj: LinkFrame | bytes, pos: int, mask: int) -> bytes:
    if kind == "garbage":
        assert isinstance(obj, bytes)
        return obj
    assert isinstance(obj, LinkFrame)
    wire = obj.encode(framing)  # type: ignore[arg-type]
    if kind == "corrupt":  # flip bits of one byte of the unstuffed frame: CRC-16 catches every such error
        body = bytearray(bytes.fromhex(obj.device_id) + obj.payload)
        body += crc16_ccitt_false_table(bytes(body)).to_bytes(2, "big")
        body[pos % len(body)] ^= mask
        return slip_encode(body) if framing == "slip" else b"\x00" + cobs_encode(body) + b"\x00"
    if kind == "truncate":  # keep the opening delimiter and at least one byte, lose the closing delimiter
        return wire[: 2 + pos % (len(wire) - 3)]
    return wire


@pytest.mark.parametrize("framing", ["slip", "cobs"])
@given(items=st.lists(item_st, max_size=16), data=st.data())
@settings(max_examples=300)
def test_any_chunking_with_noise_yields_every_intact_frame_once_in_order(
    framing: str, items: list[tuple[str, LinkFrame | bytes, int, int]], data: st.DataObject
) -> None:
    delim = b"\xc0" if framing == "slip" else b"\x00"
    stream = b"".join(_wire(framing, *item) for item in items) + delim  # final delimiter flushes the tail
    segments = [s for s in stream.split(delim) if s]
    expected = [obj for kind, obj, _, _ in items if kind == "ok"]
    # A noise segment that happens to carry a valid CRC (p = 2**-16) is a real frame to any receiver: skip.
    assume(sum(_reference_valid(framing, s) for s in segments) == len(expected))

    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    dec = FrameDecoder(framing=framing)  # type: ignore[arg-type]
    out: list[LinkFrame] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += dec.feed(stream[a:b])

    assert out == expected
    assert dec.frames_total == len(expected)
    bad = sum(1 for kind, *_ in items if kind in ("corrupt", "truncate"))
    assert dec.rejects.total() == len(segments) - len(expected) >= bad
    assert dec.pending == 0


@given(
    noise=st.binary(max_size=3000),
    cuts=st.lists(st.integers(0, 3000), max_size=20),
    max_frame=st.sampled_from([10, 16, 64, 512]),
    framing=st.sampled_from(["slip", "cobs"]),
)
@settings(max_examples=400)
def test_fuzz_random_bytes_only_counts_rejects(
    noise: bytes, cuts: list[int], max_frame: int, framing: str
) -> None:
    dec = FrameDecoder(max_frame=max_frame, framing=framing)  # type: ignore[arg-type]
    bounds = sorted(c % (len(noise) + 1) for c in cuts)
    for a, b in zip([0, *bounds], [*bounds, len(noise)], strict=True):
        for frame in dec.feed(noise[a:b]):
            assert isinstance(frame, LinkFrame) and len(frame.device_id) == 16
        assert dec.pending <= dec.max_raw
    assert set(dec.rejects) <= set(REJECT_REASONS)
    delim = b"\xc0" if framing == "slip" else b"\x00"
    assert dec.frames_total + dec.rejects.total() <= noise.count(delim) + 1
    # After any noise, a delimiter-led frame is always received intact.
    good = LinkFrame("feedfacecafebeef", b"\xc0\x00\xdb"[: max_frame - 10])
    assert dec.feed(good.encode(framing)) == [good]  # type: ignore[arg-type]
