"""LoRaWAN 1.0.x: public vectors, MIC/crypto, FCnt reconstruction and replay, truncation, corruption, fuzz."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import ChecksumError, DecodeError, ReplayError
from firmware_bridge.lorawan import (
    DOWNLINK,
    MAX_FCNT_GAP,
    UPLINK,
    FrameCounterTracker,
    LoRaWANKeys,
    MType,
    build_uplink,
    compute_mic,
    crypt_frm_payload,
    decode_uplink,
    parse_phy_payload,
    reconstruct_fcnt,
    verify_mic,
)

# Vectors from anthonykirby/lora-packet: __tests__/mic_test.ts and __tests__/decrypt_test.ts.
NWK_SKEY = bytes.fromhex("44024241ed4ce9a68c6a8bc055233fd3")
APP_SKEY = bytes.fromhex("ec925802ae430ca77fd3dd73cb2cc588")
KEYS = LoRaWANKeys(dev_addr=0x49BE7DF1, nwk_skey=NWK_SKEY, app_skey=APP_SKEY, dev_eui="00112233445566AA")
TEST_FRAME = bytes.fromhex("40F17DBE4900020001954378762B11FF0D")  # FCnt 2, FPort 1, "test", MIC 2b11ff0d
FOX_FRAME = bytes.fromhex(  # decrypt_test.ts "should decrypt large payload", FCnt 4
    "40f17dbe490004000155332de41a11adc072553544429ce7787707d1c316e027e7e5e334263376affb8aa17ad30075293f28dea8a20af3c5e7"
)
EMPTY_FRAME = bytes.fromhex("40F17DBE49000300012A3518AF")  # mic_test.ts: FCnt 3, FPort 1, no payload
ACK_DOWNLINK = bytes.fromhex("60f17dbe4920020001f9d65d27")  # mic_test.ts "MIC for ACK" (unconfirmed down)


def test_vector_test_payload() -> None:
    up = decode_uplink(TEST_FRAME, KEYS)
    assert (up.dev_addr, up.fcnt, up.fport, up.payload, up.confirmed, up.fopts) == (
        0x49BE7DF1,
        2,
        1,
        b"test",
        False,
        b"",
    )
    assert up.dev_eui == "00112233445566aa"
    frame = parse_phy_payload(TEST_FRAME)
    assert frame.mic.hex() == "2b11ff0d"
    assert compute_mic(NWK_SKEY, frame.dev_addr, 2, UPLINK, TEST_FRAME[:-4]).hex() == "2b11ff0d"
    assert frame.dev_addr_hex == "49be7df1"


def test_vector_large_payload_spans_three_blocks() -> None:
    up = decode_uplink(FOX_FRAME, KEYS)
    assert up.payload == b"The quick brown fox jumps over the lazy dog."
    assert up.fcnt == 4


def test_vector_empty_payload() -> None:
    up = decode_uplink(EMPTY_FRAME, KEYS)
    assert (up.fcnt, up.fport, up.payload) == (3, 1, b"")


def test_vector_bad_mic_detected() -> None:
    # mic_test.ts "should detect incorrect data packet MIC": last byte AA instead of AF.
    with pytest.raises(ChecksumError) as ei:
        decode_uplink(bytes.fromhex("40F17DBE49000300012A3518AA"), KEYS)
    assert ei.value.reason == "mic"


def test_vector_wrong_key_and_flipped_ciphertext() -> None:
    frame = parse_phy_payload(TEST_FRAME)
    # decrypt_test.ts "bad key scrambles payload".
    bad_key = bytes.fromhex("ec925802ae430ca77fd3dd73cb2cc580")
    assert crypt_frm_payload(bad_key, frame.dev_addr, 2, UPLINK, frame.frm_payload).hex() == "5999fc3f"
    # decrypt_test.ts "bad data lightly scrambles payload" (CTR-like: one flipped bit, one changed char).
    flipped = parse_phy_payload(bytes.fromhex("40F17DBE4900020001954478762B11FF0D"))
    assert crypt_frm_payload(APP_SKEY, frame.dev_addr, 2, UPLINK, flipped.frm_payload) == b"tbst"
    # ... and the gateway never hands that out: the MIC catches it.
    with pytest.raises(ChecksumError):
        decode_uplink(bytes.fromhex("40F17DBE4900020001954478762B11FF0D"), KEYS)


def test_vector_downlink_ack_mic_and_refusal() -> None:
    frame = parse_phy_payload(ACK_DOWNLINK)
    assert frame.mtype == MType.UNCONFIRMED_DOWN and frame.direction == DOWNLINK and frame.ack
    assert verify_mic(frame, NWK_SKEY, 2)
    with pytest.raises(DecodeError) as ei:
        decode_uplink(ACK_DOWNLINK, KEYS)
    assert ei.value.reason == "mtype"


def test_vector_fopts_parse() -> None:
    # fopts_test.ts "parse packets from github issue #18": FOpts 091103, FPort 8.
    frame = parse_phy_payload(bytes.fromhex("4084412505A3010009110308B33750F504D4B86A"))
    assert frame.fopts == bytes.fromhex("091103")
    assert (frame.fport, frame.fcnt16, frame.dev_addr) == (8, 1, 0x05254184)
    assert frame.frm_payload == bytes.fromhex("B33750F5") and frame.mic == bytes.fromhex("04D4B86A")
    assert frame.adr and frame.ack


def test_vector_downlink_with_fopts_mic_and_decrypt() -> None:
    # fopts_test.ts "should decode packet with Lorawan1.0 Encrypted Fopts" (brocaar/lorawan example).
    frame = parse_phy_payload(base64.b64decode("YAQDAgEDAAAirAoB8LRo3ape0To="))
    nwk = bytes([1] * 15 + [0])
    app = bytes(range(16, 0, -1))
    assert frame.dev_addr == 0x01020304 and frame.fopts == bytes.fromhex("22ac0a")
    assert compute_mic(nwk, frame.dev_addr, 0, DOWNLINK, frame.raw[:-4]).hex() == "aa5ed13a"
    assert crypt_frm_payload(app, frame.dev_addr, 0, DOWNLINK, frame.frm_payload).hex() == "01020304"


@pytest.mark.parametrize(
    ("hexstr", "reason"),
    [
        ("0039363463336913AA05693574323831330489C65B1304", "mtype"),  # mic_test.ts join request
        ("20386337CCBBAAE7CD2C010000D9D0A6E7", "mtype"),  # mic_test.ts join accept
        ("E0F17DBE4900020001954378762B11FF0D", "mtype"),  # proprietary MHDR 0xE0
        ("41F17DBE4900020001954378762B11FF0D", "major"),  # Major bits 01
    ],
)
def test_non_data_frames_refused(hexstr: str, reason: str) -> None:
    with pytest.raises(DecodeError) as ei:
        decode_uplink(bytes.fromhex(hexstr), KEYS)
    assert ei.value.reason == reason


def test_build_uplink_reproduces_public_vector() -> None:
    assert build_uplink(KEYS, 2, 1, b"test") == TEST_FRAME
    assert build_uplink(KEYS, 4, 1, b"The quick brown fox jumps over the lazy dog.") == FOX_FRAME


def test_round_trip_confirmed_with_fopts_and_flags() -> None:
    frame = build_uplink(KEYS, 77, 42, b"\x01\x02\x03", confirmed=True, fopts=b"\x02", fctrl_flags=0x80)
    up = decode_uplink(frame, KEYS, last_fcnt=76)
    assert (up.fcnt, up.fport, up.payload, up.confirmed, up.fopts) == (77, 42, b"\x01\x02\x03", True, b"\x02")
    assert parse_phy_payload(frame).adr


def test_fport0_uses_nwkskey() -> None:
    frame = build_uplink(KEYS, 10, 0, b"\x02")
    up = decode_uplink(frame, KEYS)
    assert (up.fport, up.payload) == (0, b"\x02")
    raw = parse_phy_payload(frame).frm_payload
    assert crypt_frm_payload(NWK_SKEY, KEYS.dev_addr, 10, UPLINK, raw) == b"\x02"
    assert crypt_frm_payload(APP_SKEY, KEYS.dev_addr, 10, UPLINK, raw) != b"\x02"


def test_fport0_with_fopts_is_malformed() -> None:
    body = bytes([0x40]) + (0x49BE7DF1).to_bytes(4, "little") + bytes([0x01, 0x05, 0x00, 0x02, 0x00, 0xAA])
    frame = body + compute_mic(NWK_SKEY, 0x49BE7DF1, 5, UPLINK, body)
    with pytest.raises(DecodeError) as ei:
        decode_uplink(frame, KEYS)
    assert ei.value.reason == "fopts"


def test_wrong_keys_and_wrong_dev_addr() -> None:
    other = LoRaWANKeys(0x49BE7DF1, bytes(16), APP_SKEY)
    with pytest.raises(ChecksumError):
        decode_uplink(TEST_FRAME, other)
    elsewhere = LoRaWANKeys(0x01020304, NWK_SKEY, APP_SKEY)
    with pytest.raises(DecodeError) as ei:
        decode_uplink(TEST_FRAME, elsewhere)
    assert ei.value.reason == "dev_addr"


@pytest.mark.parametrize(
    ("fcnt16", "last", "expected"),
    [
        (2, None, 2),
        (3, 2, 3),
        (2, 2, 2),  # retransmission: same counter, caller calls it a replay
        (0, 0xFFFF, 0x10000),  # wrap at 65536
        (1, 0xFFFF, 0x10001),
        (5, 0x10003, 0x10005),
        (0xFFFF, 0x1FFFE, 0x1FFFF),
        (1, 5, 0x10001),  # below the last low bits: next block (then refused by the gap check)
    ],
)
def test_reconstruct_fcnt(fcnt16: int, last: int | None, expected: int) -> None:
    assert reconstruct_fcnt(fcnt16, last) == expected


def test_uplinks_across_the_16_bit_wrap() -> None:
    tracker = FrameCounterTracker()
    got = []
    for fcnt in range(65533, 65540):
        frame = build_uplink(KEYS, fcnt, 1, fcnt.to_bytes(4, "big"))
        up = decode_uplink(frame, KEYS, tracker.last(KEYS.dev_addr))
        tracker.commit(up.dev_addr, up.fcnt)
        got.append((up.fcnt, int.from_bytes(up.payload, "big")))
    assert got == [(n, n) for n in range(65533, 65540)]
    assert tracker.last(KEYS.dev_addr) == 65539


def test_replay_of_last_frame() -> None:
    up = decode_uplink(TEST_FRAME, KEYS)
    with pytest.raises(ReplayError) as ei:
        decode_uplink(TEST_FRAME, KEYS, last_fcnt=up.fcnt)
    assert ei.value.reason == "replay" and ei.value.data == TEST_FRAME


def test_replay_of_an_older_frame_is_a_replay_not_a_mic_error() -> None:
    old = build_uplink(KEYS, 50, 1, b"old")
    with pytest.raises(ReplayError) as ei:
        decode_uplink(old, KEYS, last_fcnt=100)
    assert ei.value.reason == "replay"


def test_counter_jump_beyond_max_gap() -> None:
    frame = build_uplink(KEYS, 10 + MAX_FCNT_GAP + 1, 1, b"x")
    with pytest.raises(ReplayError) as ei:
        decode_uplink(frame, KEYS, last_fcnt=10)
    assert ei.value.reason == "fcnt_gap"
    ok = build_uplink(KEYS, 10 + MAX_FCNT_GAP, 1, b"x")
    assert decode_uplink(ok, KEYS, last_fcnt=10).fcnt == 10 + MAX_FCNT_GAP


def test_tracker_check_and_update() -> None:
    t = FrameCounterTracker()
    assert t.check_and_update(1, 65535) == 65535
    assert t.check_and_update(1, 0) == 65536
    with pytest.raises(ReplayError):
        t.check_and_update(1, 0)
    with pytest.raises(ReplayError):
        t.check_and_update(1, 65535)  # would be 131071: a gap, not a fresh frame
    assert t.last(1) == 65536
    t.commit(1, 10)  # never moves backwards
    assert t.last(1) == 65536
    t.reset(1)
    assert t.check_and_update(1, 0) == 0


def test_tracker_is_bounded_and_evicts_least_recent() -> None:
    t = FrameCounterTracker(max_devices=3)
    for addr in range(5):
        t.check_and_update(addr, 1)
    t.check_and_update(2, 2)  # touch 2: now most recent
    t.check_and_update(5, 1)
    assert len(t) == 3 and t.evicted_total == 3
    assert t.last(0) is None and t.last(1) is None and t.last(3) is None
    assert t.last(2) == 2 and t.last(4) == 1 and t.last(5) == 1


def test_tracker_snapshot_restore_via_json() -> None:
    t = FrameCounterTracker()
    t.commit(0x49BE7DF1, 70000)
    t.commit(0x01020304, 3)
    snap = json.loads(json.dumps(t.snapshot()))
    assert snap == {"49be7df1": 70000, "01020304": 3}
    r = FrameCounterTracker.restore(snap)
    assert r.last(0x49BE7DF1) == 70000 and r.last(0x01020304) == 3
    with pytest.raises(ReplayError):
        r.check_and_update(0x49BE7DF1, 70000 & 0xFFFF)
    with pytest.raises(ValueError):
        FrameCounterTracker.restore({"49be7df1": -1})


def test_truncation_at_every_offset() -> None:
    for frame in (TEST_FRAME, FOX_FRAME):
        for cut in range(len(frame)):
            with pytest.raises(DecodeError):
                decode_uplink(frame[:cut], KEYS)
        for cut in range(12):
            with pytest.raises(DecodeError) as ei:
                parse_phy_payload(frame[:cut])
            assert ei.value.reason == "length"


def test_every_single_bit_flip_is_rejected() -> None:
    for i in range(len(TEST_FRAME)):
        for bit in range(8):
            bad = bytearray(TEST_FRAME)
            bad[i] ^= 1 << bit
            with pytest.raises(DecodeError):
                decode_uplink(bytes(bad), KEYS)


def test_fopts_len_overrun() -> None:
    bad = bytearray(TEST_FRAME)
    bad[5] = 0x0F  # FOptsLen 15 in a 17-byte frame
    with pytest.raises(DecodeError) as ei:
        parse_phy_payload(bytes(bad))
    assert ei.value.reason == "length"


def test_key_validation() -> None:
    with pytest.raises(ValueError):
        LoRaWANKeys(1, bytes(15), bytes(16))
    with pytest.raises(ValueError):
        LoRaWANKeys(1, bytes(16), bytes(16), dev_eui="xyz")
    with pytest.raises(ValueError):
        build_uplink(KEYS, 1, 224, b"")
    assert "nwk_skey" not in repr(KEYS) and "app_skey" not in repr(KEYS)  # secrets never logged
    assert LoRaWANKeys.from_hex("49be7df1", NWK_SKEY.hex(), APP_SKEY.hex()).dev_addr == 0x49BE7DF1


@settings(max_examples=800)
@given(st.binary(max_size=64), st.one_of(st.none(), st.integers(0, 2**32)))
def test_fuzz_random_bytes(data: bytes, last: int | None) -> None:
    try:
        up = decode_uplink(data, KEYS, last)
    except DecodeError:
        return
    raise AssertionError(f"random bytes passed the MIC: {up}")


@settings(max_examples=300)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 223),
    st.binary(max_size=51),
    st.booleans(),
    st.binary(max_size=15),
)
def test_fuzz_build_decode_round_trip(
    fcnt: int, fport: int, payload: bytes, confirmed: bool, fopts: bytes
) -> None:
    frame = build_uplink(KEYS, fcnt, fport, payload, confirmed, fopts=fopts)
    last = fcnt - 1 if fcnt else None
    up = decode_uplink(frame, KEYS, last)
    assert (up.fcnt, up.fport, up.payload, up.confirmed, up.fopts) == (fcnt, fport, payload, confirmed, fopts)


def test_docstring_examples_run() -> None:
    import doctest

    import firmware_bridge.lorawan as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
