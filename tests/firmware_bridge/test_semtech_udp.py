"""Semtech UDP packet-forwarder protocol: PROTOCOL.TXT examples, ACKs, partial rejects, truncation, fuzz."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import ChecksumError, DecodeError
from firmware_bridge.lorawan import LoRaWANKeys, decode_uplink
from firmware_bridge.semtech_udp import (
    PULL_ACK,
    PULL_DATA,
    PULL_RESP,
    PUSH_ACK,
    PUSH_DATA,
    TX_ACK,
    Datagram,
    Rxpk,
    ack_for,
    build_ack,
    build_pull_data,
    build_push_data,
    parse_datagram,
)

EUI = bytes.fromhex("AA555A0000000101")

# Lora-net/packet_forwarder PROTOCOL.TXT section 4, upstream example (whitespace removed). Note that its
# first rxpk "data" mixes '-' with '+': it is not valid base64 in either alphabet, a real-world bad entry.
PROTOCOL_RXPK = (
    b'{"rxpk":[{"time":"2013-03-31T16:21:17.528002Z","tmst":3512348611,"chan":2,"rfch":0,"freq":866.349812,'
    b'"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/6","rssi":-35,"lsnr":5.1,"size":32,'
    b'"data":"-DS4CGaDCdG+48eJNM3Vai-zDpsR71Pn9CPA9uCON84"},'
    b'{"time":"2013-03-31T16:21:17.530974Z","tmst":3512348514,"chan":9,"rfch":1,"freq":869.1,"stat":1,'
    b'"modu":"FSK","datr":50000,"rssi":-75,"size":16,"data":"VEVTVF9QQUNLRVRfMTIzNA=="},'
    b'{"time":"2013-03-31T16:21:17.532038Z","tmst":3316387610,"chan":0,"rfch":0,"freq":863.00981,"stat":1,'
    b'"modu":"LORA","datr":"SF10BW125","codr":"4/7","rssi":-38,"lsnr":5.5,"size":32,'
    b'"data":"ysgRl452xNLep9S1NTIg2lomKDxUgn3DJ7DE+b00Ass"}]}'
)
# PROTOCOL.TXT section 4, "stat" example.
PROTOCOL_STAT = (
    b'{"stat":{"time":"2014-01-12 08:59:28 GMT","lati":46.24000,"long":3.25230,"alti":145,"rxnb":2,'
    b'"rxok":2,"rxfw":2,"ackr":100.0,"dwnb":2,"txnb":2}}'
)
# PROTOCOL.TXT section 6, downstream example.
PROTOCOL_TXPK = (
    b'{"txpk":{"imme":true,"freq":864.123456,"rfch":0,"powe":14,"modu":"LORA","datr":"SF11BW125",'
    b'"codr":"4/6","ipol":false,"size":32,"data":"H3P3N2i9qc4yt7rK7ldqoeCVJGBybzPY5h1Dd7P7p8v"}}'
)


def _push(body: bytes, token: int = 0x1234, version: int = 2) -> bytes:
    return bytes([version]) + token.to_bytes(2, "big") + bytes([PUSH_DATA]) + EUI + body


def test_protocol_example_keeps_good_rxpk_and_records_the_bad_one() -> None:
    d = parse_datagram(_push(PROTOCOL_RXPK, version=1))
    assert d.type == PUSH_DATA and d.version == 1 and d.token == 0x1234
    assert d.gateway_eui == EUI and d.gateway_eui_hex == "aa555a0000000101"
    assert len(d.rxpk) == 2
    fsk, lora = d.rxpk
    assert fsk.data == b"TEST_PACKET_1234"
    assert (fsk.rssi, fsk.freq, fsk.datr, fsk.modu, fsk.tmst, fsk.chan) == (
        -75.0,
        869.1,
        "50000",
        "FSK",
        3512348514,
        9,
    )
    assert len(lora.data) == 32 and lora.lsnr == 5.5 and lora.datr == "SF10BW125" and lora.codr == "4/7"
    assert lora.time == "2013-03-31T16:21:17.532038Z"
    assert [e.reason for e in d.rejects] == ["base64"]
    assert d.rejects[0].data is not None and b"-DS4CGaDCdG" in d.rejects[0].data  # logged with its bytes
    assert "rxpk[0]" in str(d.rejects[0])


def test_protocol_stat_only() -> None:
    d = parse_datagram(_push(PROTOCOL_STAT))
    assert d.rxpk == [] and d.rejects == []
    assert d.stat is not None and d.stat["rxok"] == 2 and d.stat["ackr"] == 100.0


def test_pull_resp_txpk() -> None:
    d = parse_datagram(bytes([2, 0, 0, PULL_RESP]) + PROTOCOL_TXPK)
    assert d.type == PULL_RESP and d.gateway_eui is None
    assert d.txpk is not None and d.txpk["powe"] == 14


@pytest.mark.parametrize("version", [1, 2])
def test_acks_echo_version_and_token(version: int) -> None:
    d = parse_datagram(_push(PROTOCOL_STAT, token=0xBEEF, version=version))
    assert build_ack(d) == bytes([version, 0xBE, 0xEF, PUSH_ACK])
    pull = parse_datagram(build_pull_data(0x0102, EUI, version=version))
    assert pull.type == PULL_DATA and pull.gateway_eui == EUI
    assert build_ack(pull) == bytes([version, 0x01, 0x02, PULL_ACK])
    ack = parse_datagram(bytes([version, 0xBE, 0xEF, PUSH_ACK]))
    assert ack.type == PUSH_ACK and build_ack(ack) is None


def test_ack_from_header_alone_matches_build_ack() -> None:
    for wire in (_push(PROTOCOL_RXPK, token=0x0A0B, version=1), build_pull_data(7, EUI), _push(b"{not json")):
        assert ack_for(wire) is not None
    assert ack_for(_push(PROTOCOL_RXPK, token=0x0A0B, version=1)) == build_ack(
        parse_datagram(_push(PROTOCOL_RXPK, token=0x0A0B, version=1))
    )
    assert ack_for(build_pull_data(7, EUI)) == bytes([2, 0, 7, PULL_ACK])
    assert ack_for(bytes([2, 0, 1, PUSH_ACK])) is None
    assert ack_for(bytes([2, 0, 1, TX_ACK]) + EUI) is None
    assert ack_for(bytes([9, 0, 1, PUSH_DATA]) + EUI) is None
    assert ack_for(b"\x02\x00") is None


def test_tx_ack_with_and_without_json() -> None:
    assert parse_datagram(bytes([2, 0, 1, TX_ACK]) + EUI).type == TX_ACK
    d = parse_datagram(bytes([2, 0, 1, TX_ACK]) + EUI + b'{"txpk_ack":{"error":"NONE"}}')
    assert d.stat == {"error": "NONE"}


def test_round_trip_carries_a_lorawan_frame_end_to_end() -> None:
    # anthonykirby/lora-packet __tests__/decrypt_test.ts vector inside a PUSH_DATA.
    keys = LoRaWANKeys.from_hex(
        "49be7df1", "44024241ed4ce9a68c6a8bc055233fd3", "ec925802ae430ca77fd3dd73cb2cc588"
    )
    phy = bytes.fromhex("40F17DBE4900020001954378762B11FF0D")
    rx = Rxpk(
        data=phy, rssi=-57, lsnr=9.5, freq=868.1, datr="SF7BW125", tmst=123, time="2026-01-01T00:00:00Z"
    )
    wire = build_push_data(0x4242, EUI, [rx, Rxpk(data=b"\x00" * 5)])
    d = parse_datagram(wire)
    assert d.rxpk[0] == Rxpk(phy, -57.0, 9.5, 868.1, "SF7BW125", 123, "2026-01-01T00:00:00Z",
                             codr="4/5", modu="LORA", crc_status=1)  # fmt: skip
    assert decode_uplink(d.rxpk[0].data, keys).payload == b"test"
    assert d.rxpk[1].data == b"\x00" * 5


def test_radio_crc_failure_and_size_mismatch_are_rejects_not_losses() -> None:
    body = json.dumps(
        {
            "rxpk": [
                {"stat": -1, "size": 2, "data": "AAE="},
                {"size": 3, "data": "AAE="},
                {"data": "AAE="},
                7,
                {},
            ]
        }
    ).encode()
    d = parse_datagram(_push(body))
    assert [r.data for r in d.rxpk] == [b"\x00\x01"]
    assert [e.reason for e in d.rejects] == ["crc", "size", "rxpk", "rxpk"]
    assert isinstance(d.rejects[0], ChecksumError)


def test_unpadded_base64_is_accepted() -> None:
    d = parse_datagram(_push(b'{"rxpk":[{"data":"AAE"}]}'))
    assert d.rxpk[0].data == b"\x00\x01"


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x02\x00", "length"),
        (bytes([3, 0, 0, PUSH_DATA]) + EUI + b"{}", "version"),
        (bytes([2, 0, 0, 0x09]), "type"),
        (bytes([2, 0, 0, PUSH_DATA]) + EUI[:5], "length"),
        (bytes([2, 0, 0, PUSH_DATA]) + EUI + b"[1,2]", "json"),
        (bytes([2, 0, 0, PUSH_DATA]) + EUI + b'{"rxpk":{}}', "json"),
        (bytes([2, 0, 0, PUSH_DATA]) + EUI + b"\xff\xfe", "json"),
        (bytes([2, 0, 0, PUSH_DATA]) + EUI + b"[" * 100_000, "json"),
        (bytes([2, 0, 0, PULL_RESP]) + b"{}", "json"),
    ],
)
def test_bad_datagrams(wire: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as ei:
        parse_datagram(wire)
    assert ei.value.reason == reason


def test_truncation_at_every_offset() -> None:
    wire = _push(PROTOCOL_RXPK)
    for cut in range(len(wire)):
        with pytest.raises(DecodeError):
            parse_datagram(wire[:cut])


def test_builder_validation() -> None:
    with pytest.raises(ValueError):
        build_push_data(70000, EUI, [])
    with pytest.raises(ValueError):
        build_pull_data(1, b"\x00" * 7)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_rxpk_like = st.dictionaries(
    st.sampled_from(["data", "size", "stat", "rssi", "lsnr", "freq", "datr", "tmst", "time", "chan"]),
    _json | st.text(alphabet="ABCDEFabcdef0123456789+/=-_", max_size=24),
    max_size=6,
)


@settings(max_examples=600)
@given(st.binary(max_size=80))
def test_fuzz_random_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_datagram(data)


@settings(max_examples=150)
@given(st.one_of(_json, st.fixed_dictionaries({"rxpk": st.lists(_rxpk_like | _json, max_size=5)})))
def test_fuzz_random_json(obj: object) -> None:
    body = json.dumps(obj).encode()
    try:
        d = parse_datagram(_push(body))
    except DecodeError:
        return
    assert isinstance(d, Datagram)
    assert all(isinstance(r.data, bytes) for r in d.rxpk)
    assert all(isinstance(e, DecodeError) for e in d.rejects)
    if isinstance(obj, dict) and isinstance(obj.get("rxpk"), list):
        assert len(d.rxpk) + len(d.rejects) == len(obj["rxpk"])  # nothing silently lost


def test_docstring_examples_run() -> None:
    import doctest

    import firmware_bridge.semtech_udp as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
