"""NB-IoT module URC decoder: manual examples, any chunking, rejects, resync, bounded buffer, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.nbiot import (
    PATH_CDP,
    PATH_LWM2M,
    PATH_UDP,
    NbiotPayload,
    ReadRequest,
    UrcDecoder,
    UrcEvent,
    format_nnmi,
    format_nsonmi,
    format_nsorf_response,
    format_qlwdatarecv,
    read_command,
)

# Transcript built from the Quectel BC95 AT Commands Manual examples (AT+NNMI, +NSONMI / AT+NSORF,
# "0,192.53.100.53,5683,4,AABBCCDD,0") and the Quectel BC26 LwM2M application note
# ("+QLWDATARECV: 19,1,0,4,AAAA0000"); URC names as parsed by RT-Thread-packages/at_device
# class/bc28/at_socket_bc28.c. Echo, OK and unrelated URCs are interleaved as a real module sends them.
TRANSCRIPT = (
    b"AT+NNMI=1\r\r\nOK\r\n"
    b"\r\n+CSCON:1\r\n"
    b"\r\n+NNMI:2,A101\r\n"
    b"\r\n+NSONMI:0,4\r\n"
    b"AT+NSORF=0,4\r\r\n"
    b"0,192.53.100.53,5683,4,AABBCCDD,0\r\n\r\nOK\r\n"
    b"\r\n+QLWDATARECV: 19,1,0,4,AAAA0000\r\n"
    b"\r\n+CEREG:1\r\n"
)
EXPECTED: list[UrcEvent] = [
    NbiotPayload(PATH_CDP, b"\xa1\x01"),
    ReadRequest(0, 4),
    NbiotPayload(PATH_UDP, bytes.fromhex("AABBCCDD"), 0, "192.53.100.53", 5683),
    NbiotPayload(PATH_LWM2M, bytes.fromhex("AAAA0000")),
]


def _feed_all(dec: UrcDecoder, chunks: list[bytes]) -> list[UrcEvent]:
    out: list[UrcEvent] = []
    for c in chunks:
        out += dec.feed(c)
    return out


def test_transcript_in_one_chunk() -> None:
    dec = UrcDecoder()
    assert dec.feed(TRANSCRIPT) == EXPECTED
    assert not dec.rejects
    assert dec.ignored == {"echo": 2, "final": 2, "other": 2}
    assert dec.payloads_total == 3 and dec.pending == 0


def test_transcript_byte_by_byte() -> None:
    dec = UrcDecoder()
    assert _feed_all(dec, [TRANSCRIPT[i : i + 1] for i in range(len(TRANSCRIPT))]) == EXPECTED


@settings(max_examples=300)
@given(st.lists(st.integers(1, len(TRANSCRIPT)), max_size=30))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [TRANSCRIPT[a:b] for a, b in zip([0, *points], [*points, len(TRANSCRIPT)], strict=True)]
    assert _feed_all(UrcDecoder(), chunks) == EXPECTED


def test_read_command() -> None:
    assert read_command(ReadRequest(1, 512)) == b"AT+NSORF=1,512\r\n"


def test_nsorf_with_remaining_asks_for_the_rest_and_caps_read_size() -> None:
    dec = UrcDecoder(max_read=512)
    events = dec.feed(format_nsorf_response(1, "10.0.0.2", 9000, b"\x01" * 3, remaining=700))
    assert events == [NbiotPayload(PATH_UDP, b"\x01\x01\x01", 1, "10.0.0.2", 9000), ReadRequest(1, 512)]
    assert dec.feed(format_nsonmi(2, 2000)) == [ReadRequest(2, 512)]


def test_prefixed_nsorf_and_inline_nsonmi_forms() -> None:
    dec = UrcDecoder()
    # Some BC95 firmware prefixes the AT+NSORF response with "+NSORF:".
    assert dec.feed(b"+NSORF:0,218.75.104.131,18080,2,0102,0\r\n") == [
        NbiotPayload(PATH_UDP, b"\x01\x02", 0, "218.75.104.131", 18080)
    ]
    # AT+NSONMI=2 mode: the datagram inline in the URC.
    assert dec.feed(b"+NSONMI:1,10.1.2.3,5683,2,ABCD\r\n") == [
        NbiotPayload(PATH_UDP, b"\xab\xcd", 1, "10.1.2.3", 5683)
    ]


def test_builders_round_trip() -> None:
    data = bytes(range(256))
    dec = UrcDecoder()
    wire = format_nnmi(data) + format_qlwdatarecv(b"\x00") + format_nsonmi(3, 256)
    wire += format_nsorf_response(3, "fe80::1", 65535, data)
    assert dec.feed(wire) == [
        NbiotPayload(PATH_CDP, data),
        NbiotPayload(PATH_LWM2M, b"\x00"),
        ReadRequest(3, 256),
        NbiotPayload(PATH_UDP, data, 3, "fe80::1", 65535),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"+NNMI:3,A101", "length"),
        (b"+NNMI:2,A10", "hex"),
        (b"+NNMI:2,ZZ01", "malformed"),
        (b"+QLWDATARECV: 19,1,0,5,AAAA0000", "length"),
        (b"0,1.2.3.4,5683,1,AABB,0", "length"),
        (b"0,1.2.3.4,70000,1,AA,0", "malformed"),
        (b"+NSONMI:", "malformed"),
        (b"+NNMI:2,\xa1\x01", "garbage"),
    ],
)
def test_bad_lines_are_counted_and_neighbours_survive(line: bytes, reason: str) -> None:
    dec = UrcDecoder()
    events = dec.feed(format_nnmi(b"\x01") + line + b"\r\n" + format_nnmi(b"\x02"))
    assert events == [NbiotPayload(PATH_CDP, b"\x01"), NbiotPayload(PATH_CDP, b"\x02")]
    assert dec.rejects == {reason: 1}
    assert dec.last_reject == line


def test_overlong_line_is_rejected_and_decoder_resyncs() -> None:
    dec = UrcDecoder(max_line=64)
    assert dec.feed(b"+NNMI:100," + b"A" * 100) == []
    assert dec.pending == 0  # dropped, not buffered without bound
    assert dec.rejects == {"overlong": 1}
    assert dec.feed(b"B" * 200) == []  # still the same overlong line: not counted twice, not buffered
    assert dec.pending == 0 and dec.rejects == {"overlong": 1}
    assert dec.feed(b"CC\r\n" + format_nnmi(b"\x07")) == [NbiotPayload(PATH_CDP, b"\x07")]


def test_on_reject_callback_gets_reason_and_bytes() -> None:
    seen: list[tuple[str, bytes]] = []
    dec = UrcDecoder(on_reject=lambda reason, line: seen.append((reason, line)))
    assert dec.feed(b"+NNMI:3,A101\r\n+NNMI:1,FF\r\n") == [NbiotPayload(PATH_CDP, b"\xff")]
    assert seen == [("length", b"+NNMI:3,A101")]


def test_overlong_complete_line_in_one_chunk() -> None:
    dec = UrcDecoder(max_line=64)
    events = dec.feed(b"+NNMI:40," + b"AB" * 40 + b"\r\n" + format_nnmi(b"\x09"))
    assert events == [NbiotPayload(PATH_CDP, b"\x09")]
    assert dec.rejects == {"overlong": 1}


def test_lf_only_line_endings_and_errors() -> None:
    dec = UrcDecoder()
    assert dec.feed(b"ERROR\n+CME ERROR: 4\n+NNMI:1,FF\n") == [NbiotPayload(PATH_CDP, b"\xff")]
    assert dec.ignored["final"] == 2


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_fuzz_random_bytes_never_raise_and_stay_bounded(chunks: list[bytes]) -> None:
    dec = UrcDecoder(max_line=128)
    for c in chunks:
        for ev in dec.feed(c):
            assert isinstance(ev, NbiotPayload | ReadRequest)
        assert dec.pending <= 128


@settings(max_examples=300)
@given(st.binary(max_size=60), st.integers(1, 20))
def test_fuzz_garbage_then_valid_urc_still_decodes(garbage: bytes, step: int) -> None:
    dec = UrcDecoder()
    wire = garbage + b"\r\n" + format_nnmi(b"\x42\x43")
    events: list[UrcEvent] = []
    for i in range(0, len(wire), step):
        events += dec.feed(wire[i : i + step])
    assert events[-1] == NbiotPayload(PATH_CDP, b"\x42\x43")


def test_docstring_examples_run() -> None:
    import doctest

    import firmware_bridge.nbiot as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
