"""CTWing and OneNET HTTP pushes: recorded bodies, signatures, partial rejects, fuzz."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import DecodeError
from firmware_bridge.operator_push import (
    CtwingMessage,
    build_ctwing_data_report,
    build_ctwing_online,
    build_onenet_push,
    onenet_signature,
    parse_ctwing,
    parse_onenet,
    verify_onenet,
    verify_onenet_body,
    vigil_device_id,
)

# A CTWing (天翼物联网 AEP) northbound dataReport push of an NB-IoT smoke alarm, as recorded in the comment
# of a public open-source integration (Huaqiang NB smoke alarm parser, HQSmokeParseStrategy.java). Note the
# empty-string upPacketSN and "IMSI":"undefined" real pushes carry.
CTWING_SMOKE = (
    b'{"IMEI":"860803031745975","IMSI":"undefined","deviceType":"","messageType":"dataReport","topic":"v1/up/ad",'
    b'"assocAssetId":"","payload":{"APPdata":"UFUAMBAKLwgBAAMAGwL75SxogDAwcVR5BQgAAAAAAS9kdwJVcVJZAvmvgAL75SwAAAAAAA=="},'
    b'"upPacketSN":"","upDataSN":"","serviceId":"","tenantId":"10461180","productId":"10045600",'
    b'"deviceId":"f15d8b0a090447539896c085e27966c4","timestamp":1586571442454,"protocol":"lwm2m"}'
)
# deviceOnlineOfflineReport as documented with "上线：1，下线：0" in a public CTWing integration README.
CTWING_ONLINE = (
    b'{"timestamp":1619523036482,"tenantId":"2000033827","protocol":"lwm2m","productId":"15045240",'
    b'"messageType":"deviceOnlineOfflineReport","iccid":"undefined","eventType":1,'
    b'"deviceId":"d01308047f864601a821e02dc328eab4"}'
)


def test_ctwing_recorded_data_report() -> None:
    m = parse_ctwing(CTWING_SMOKE)
    assert m.message_type == "dataReport"
    assert m.device_id == "f15d8b0a090447539896c085e27966c4"
    assert m.imei == "860803031745975" and m.product_id == "10045600" and m.tenant_id == "10461180"
    assert m.timestamp == 1586571442.454
    # The device frame inside: "PU" magic then a 16-bit length of the rest, consistent with the base64.
    assert m.payload is not None and m.payload[:2] == b"PU" and len(m.payload) == 52
    assert int.from_bytes(m.payload[2:4], "big") == len(m.payload) - 4
    assert m.service_data is None and m.online is None


def test_vigil_device_id_matches_the_link_framing_rendering() -> None:
    # docs/framing.md worked rendering: IMEI 860123456789012 -> 00030e47191ada14.
    assert vigil_device_id("860123456789012") == "00030e47191ada14"
    assert parse_ctwing(CTWING_SMOKE).vigil_device_id == f"{860803031745975:016x}"
    for bad in (
        None,
        "",
        "86080303174597",
        "8608030317459751",
        "86080303174597x",
        "８６０８０３０３１７４５９７５",
    ):
        assert vigil_device_id(bad) is None


def test_ctwing_online_offline() -> None:
    m = parse_ctwing(CTWING_ONLINE)
    assert m.online is True and m.payload is None and m.imei is None
    off = parse_ctwing(build_ctwing_online("dev-1", False, 1700000000.0))
    assert off.online is False and off.device_id == "dev-1"


def test_ctwing_service_data_product() -> None:
    body = json.dumps(
        {
            "messageType": "dataReport",
            "deviceId": "d1",
            "timestamp": 1,
            "payload": {"serviceData": {"smoke": 1}},
        }
    )
    m = parse_ctwing(body.encode())
    assert m.service_data == {"smoke": 1} and m.payload is None and m.timestamp == 0.001


def test_ctwing_build_round_trip() -> None:
    body = build_ctwing_data_report("861234567890123", "dev-9", b"\x01\x01\x00\x05", 1700000000.123)
    assert parse_ctwing(body) == CtwingMessage(
        message_type="dataReport",
        device_id="dev-9",
        imei="861234567890123",
        product_id="vigil",
        timestamp=1700000000.123,
        payload=b"\x01\x01\x00\x05",
        service_data=None,
        online=None,
        tenant_id="vigil",
    )


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"messageType": None}, "field"),
        ({"deviceId": ""}, "field"),
        ({"deviceId": ["x"]}, "field"),
        ({"timestamp": "soon"}, "field"),
        ({"timestamp": -5}, "field"),
        ({"timestamp": True}, "field"),
        ({"payload": "AQI="}, "field"),
        ({"payload": {"APPdata": "***"}}, "base64"),
        ({"payload": {"serviceData": [1]}}, "field"),
        ({"messageType": "deviceOnlineOfflineReport", "eventType": 2}, "field"),
    ],
)
def test_ctwing_bad_fields(patch: dict[str, object], reason: str) -> None:
    obj = json.loads(CTWING_SMOKE)
    obj.update(patch)
    with pytest.raises(DecodeError) as ei:
        parse_ctwing(json.dumps(obj).encode())
    assert ei.value.reason == reason


def test_onenet_signature_is_base64_md5_of_token_nonce_msg() -> None:
    # RFC 1321 appendix A.5 test suite: MD5("") = d41d8cd9..., MD5("abc") = 90015098...; the split of
    # "abc" into token/nonce/msg checks the concatenation order, base64 checks the encoding.
    assert (
        onenet_signature("", "", "")
        == base64.b64encode(bytes.fromhex("d41d8cd98f00b204e9800998ecf8427e")).decode()
    )
    assert (
        onenet_signature("a", "b", "c")
        == base64.b64encode(bytes.fromhex("900150983cd24fb0d6963f7d28e17f72")).decode()
    )
    assert verify_onenet("a", "c", "b", "kAFQmDzST7DWlj99KOF/cg==")
    assert not verify_onenet("a", "c", "x", "kAFQmDzST7DWlj99KOF/cg==")
    # '+' decoded to ' ' by a sloppy query-string parser is repaired.
    sig = onenet_signature("tok", "n1", "hello")
    assert "+" not in sig or verify_onenet("tok", "hello", "n1", sig.replace("+", " "))
    assert not verify_onenet("tok", "hello", "n1", "")
    assert not verify_onenet("tok", "hello", "n1", "签名")


# OneNET HTTP push body: shape per OneNET docs "数据推送" and the OneMsg/OneNETData structs of a public
# Go integration (kileroppo/das_go das/src/core/entity/entity.go): msg{at,type,value,imei,dev_id,ds_id,...}.
ONENET_MSG = {"at": 1466133706841, "type": 1, "ds_id": "3200_0_5750", "value": "0102000b", "dev_id": 2016617,
              "imei": "865820031287551"}  # fmt: skip


def test_onenet_single_message_signed_and_parsed() -> None:
    body = build_onenet_push("vigil-token", "abcdefgh", ONENET_MSG)
    assert verify_onenet_body("vigil-token", body)
    assert not verify_onenet_body("other-token", body)
    [m] = parse_onenet(body)
    assert (m.type, m.dev_id, m.ds_id, m.at, m.imei) == (
        1,
        "2016617",
        "3200_0_5750",
        1466133706.841,
        "865820031287551",
    )
    assert m.payload_bytes() == b"\x01\x02\x00\x0b"


def test_onenet_signature_over_the_exact_msg_text_with_whitespace() -> None:
    msg_text = '{ "type": 1, "dev_id": 7, "ds_id": "t", "at": 1000, "value": 21.5 }'
    sig = onenet_signature("tk", "nn", msg_text)
    body = ('{"msg": ' + msg_text + ', "nonce": "nn", "msg_signature": "' + sig + '"}').encode()
    assert verify_onenet_body("tk", body)
    tampered = body.replace(b"21.5", b"99.9")
    assert not verify_onenet_body("tk", tampered)


def test_onenet_duplicate_msg_key_cannot_smuggle_a_forged_message() -> None:
    body = build_onenet_push("tk", "nn", ONENET_MSG)
    forged = json.dumps({**ONENET_MSG, "value": "ffff"}).encode()
    smuggled = body[:-1] + b',"msg":' + forged + b"}"
    assert parse_onenet(smuggled)[0].value == "ffff"  # what a JSON parser would act on ...
    assert not verify_onenet_body("tk", smuggled)  # ... so the signature must not pass


def test_onenet_msg_as_json_string_and_signature_key() -> None:
    msg_text = json.dumps([{"type": 2, "dev_id": "d9", "status": 0, "login_type": 1, "at": 2000}])
    body = json.dumps(
        {"msg": msg_text, "nonce": "q", "signature": onenet_signature("t", "q", msg_text)}
    ).encode()
    assert verify_onenet_body("t", body)
    [m] = parse_onenet(body)
    assert m.type == 2 and m.online is False and m.at == 2.0 and m.payload_bytes() is None


def test_onenet_batch_keeps_good_messages_when_asked() -> None:
    batch: list[dict[str, Any]] = [ONENET_MSG, {"type": "x"}, {**ONENET_MSG, "value": 5}]
    body = build_onenet_push("t", "n", batch)
    rejects: list[DecodeError] = []
    msgs = parse_onenet(body, rejects)
    assert [m.value for m in msgs] == ["0102000b", 5]
    assert [e.reason for e in rejects] == ["field"]
    with pytest.raises(DecodeError):
        parse_onenet(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b"[]",
        b'{"msg": 5}',
        b'{"msg": "{"}',
        b'{"msg": {"type": 1, "dev_id": 1, "at": 1}}',
        b"\xff",
    ],
)
def test_onenet_bad_bodies(body: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_onenet(body)
    assert verify_onenet_body("t", body) is False


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=16,
)
_ct_keys = st.sampled_from(
    ["messageType", "deviceId", "timestamp", "payload", "IMEI", "productId", "eventType"]
)
_on_keys = st.sampled_from(["type", "dev_id", "ds_id", "at", "value", "imei", "status"])


@settings(max_examples=120)
@given(
    st.dictionaries(_ct_keys, _json | st.fixed_dictionaries({"APPdata": st.text(max_size=12)}), max_size=7)
)
def test_fuzz_ctwing(obj: dict[str, object]) -> None:
    with contextlib.suppress(DecodeError):
        parse_ctwing(json.dumps(obj).encode())


@settings(max_examples=120)
@given(
    st.one_of(
        st.dictionaries(_on_keys, _json, max_size=7),
        st.lists(st.dictionaries(_on_keys, _json, max_size=5), max_size=3),
    )
)
def test_fuzz_onenet(msg: object) -> None:
    body = build_onenet_push("t", "n", msg)  # type: ignore[arg-type]
    assert verify_onenet_body("t", body)
    rejects: list[DecodeError] = []
    try:
        msgs = parse_onenet(body, rejects)
    except DecodeError:
        return
    n = len(msg) if isinstance(msg, list) else 1
    assert len(msgs) + len(rejects) == n


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(data: bytes) -> None:
    for fn in (parse_ctwing, parse_onenet):
        with contextlib.suppress(DecodeError):
            fn(data)
    assert verify_onenet_body("t", data) in (True, False)


def test_docstring_examples_run() -> None:
    import doctest

    import firmware_bridge.operator_push as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
