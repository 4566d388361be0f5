"""ChirpStack v4 MQTT integration: docs example, protobuf-JSON defaults, topics, round trip, fuzz."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.chirpstack import (
    ChirpstackUplink,
    RxInfo,
    build_uplink,
    parse_rfc3339,
    parse_status,
    parse_topic,
    parse_uplink,
)
from firmware_bridge.errors import DecodeError

# The uplink event example of chirpstack-docs "integrations/events.md" (Event types -> up), ChirpStack v4.
DOCS_UP = b"""{
    "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
    "time": "2022-07-18T09:34:15.775023242+00:00",
    "deviceInfo": {
        "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
        "tenantName": "ChirpStack",
        "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
        "applicationName": "Test application",
        "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
        "deviceProfileName": "Test device-profile",
        "deviceName": "Test device",
        "devEui": "0101010101010101",
        "tags": {"key": "value"}
    },
    "devAddr": "00189440",
    "dr": 1,
    "fPort": 1,
    "data": "qg==",
    "rxInfo": [{
        "gatewayId": "0016c001f153a14c",
        "uplinkId": 4217106255,
        "rssi": -36,
        "snr": 10.5,
        "context": "E3OWOQ==",
        "metadata": {"region_name": "eu868", "region_common_name": "EU868"}
    }],
    "txInfo": {
        "frequency": 867100000,
        "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 11, "codeRate": "CR_4_5"}}
    }
}"""


def test_docs_example() -> None:
    up = parse_uplink(DOCS_UP)
    assert up.dev_eui == "0101010101010101"
    assert up.device_name == "Test device"
    assert up.application_id == "17c82e96-be03-4f38-aef3-f83d48582d97"
    assert up.f_cnt == 0  # absent: protobuf-JSON omits zero values
    assert (up.f_port, up.data, up.dr, up.confirmed) == (1, b"\xaa", 1, False)
    assert up.deduplication_id == "3ac7e3c4-4401-4b8d-9386-a5c902f9202d"
    assert up.rx_info == [RxInfo("0016c001f153a14c", -36, 10.5)]
    assert up.best_rssi == -36
    assert up.tags == {"key": "value"}
    assert up.object is None and up.dev_addr == "00189440"
    # 2022-07-18T09:34:15.775023 UTC (nanoseconds truncated to microseconds).
    assert up.time == pytest.approx(1658136855.775023, abs=1e-6)


def test_str_input_and_minimal_event_defaults() -> None:
    up = parse_uplink('{"deviceInfo":{"devEui":"70B3D57ED0001234"}}')
    assert up == ChirpstackUplink(
        dev_eui="70b3d57ed0001234",
        device_name="",
        application_id="",
        f_cnt=0,
        f_port=0,
        data=b"",
        time=None,
        deduplication_id="",
        rx_info=[],
        object=None,
        tags={},
    )


def test_object_from_a_codec_is_kept() -> None:
    body = json.loads(DOCS_UP)
    body["object"] = {"temperature": 21.5, "alarm": True}
    body["fCnt"] = 7
    body["confirmed"] = True
    up = parse_uplink(json.dumps(body))
    assert up.object == {"temperature": 21.5, "alarm": True}
    assert (up.f_cnt, up.confirmed) == (7, True)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.pop("deviceInfo"), "dev_eui"),
        (lambda o: o["deviceInfo"].update(devEui="0101"), "dev_eui"),
        (lambda o: o["deviceInfo"].update(devEui=12), "dev_eui"),
        (lambda o: o.update(data="q*=="), "base64"),
        (lambda o: o.update(fCnt=-1), "field"),
        (lambda o: o.update(fCnt=True), "field"),
        (lambda o: o.update(fPort="one"), "field"),
        (lambda o: o.update(rxInfo={}), "field"),
        (lambda o: o.update(rxInfo=[3]), "field"),
        (lambda o: o.update(object=[1]), "field"),
        (lambda o: o.update(time="yesterday"), "time"),
        (lambda o: o.update(confirmed="yes"), "field"),
    ],
)
def test_bad_fields_are_typed_errors(mutate: object, reason: str) -> None:
    body = json.loads(DOCS_UP)
    mutate(body)  # type: ignore[operator]
    with pytest.raises(DecodeError) as ei:
        parse_uplink(json.dumps(body))
    assert ei.value.reason == reason


@pytest.mark.parametrize("body", [b"", b"[]", b"\xff", b"{", b'"x"', b"NaN", b'{"a": NaN}'])
def test_not_json_objects(body: bytes) -> None:
    with pytest.raises(DecodeError) as ei:
        parse_uplink(body)
    assert ei.value.reason in {"json", "dev_eui"}


def test_status_event() -> None:
    # Field names: chirpstack api/proto/integration/integration.proto StatusEvent (protobuf-JSON camelCase).
    body = json.dumps(
        {
            "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
            "time": "2022-07-18T09:34:15Z",
            "deviceInfo": {"devEui": "0101010101010101"},
            "margin": 6,
            "batteryLevel": 94.88,
        }
    )
    st_ = parse_status(body)
    assert (st_.dev_eui, st_.margin, st_.battery_level, st_.external_power_source) == (
        "0101010101010101",
        6,
        94.88,
        False,
    )
    assert st_.time == 1658136855.0
    mains = parse_status('{"deviceInfo":{"devEui":"0101010101010101"},"externalPowerSource":true}')
    assert mains.battery_level is None and mains.external_power_source and mains.margin == 0
    flat = parse_status('{"deviceInfo":{"devEui":"0101010101010101"}}')  # 0 % omitted by protobuf-JSON
    assert flat.battery_level == 0.0
    with pytest.raises(DecodeError):
        parse_status('{"deviceInfo":{"devEui":"0101010101010101"},"batteryLevel":"full"}')
    with pytest.raises(DecodeError):
        parse_status('{"margin":1}')


def test_topics() -> None:
    # Topic layout: chirpstack-docs integrations/mqtt.md
    # "application/APPLICATION_ID/device/DEV_EUI/event/EVENT".
    assert parse_topic("application/17c82e96-be03/device/0101010101010101/event/up") == (
        "17c82e96-be03",
        "0101010101010101",
        "up",
    )
    assert parse_topic("application/a/device/70B3D57ED0001234/event/status")[1] == "70b3d57ed0001234"
    for bad in [
        "application/a/device/0101010101010101/event",
        "application/a/device/01010101/event/up",
        "app/a/device/0101010101010101/event/up",
        "application//device/0101010101010101/event/up",
        "application/a/device/0101010101010101/command/down",
        "",
    ]:
        with pytest.raises(DecodeError) as ei:
            parse_topic(bad)
        assert ei.value.reason in {"topic", "dev_eui"}


def test_rfc3339_forms() -> None:
    assert parse_rfc3339("1970-01-01T00:00:00Z") == 0.0
    assert parse_rfc3339("1970-01-01T08:00:00+08:00") == 0.0  # Beijing time, same instant
    assert parse_rfc3339("2022-07-18T09:34:15.775023242Z") == pytest.approx(1658136855.775023)
    assert parse_rfc3339("1970-01-01T00:00:01") == 1.0  # naive: taken as UTC


def test_build_round_trip_and_protobuf_json_omissions() -> None:
    topic, body = build_uplink(
        "70B3D57ED0001234", 0, 10, b"\x01\x02\x03", time=1700000000.5, device_name="cover-7"
    )
    assert topic == "application/vigil/device/70b3d57ed0001234/event/up"
    obj = json.loads(body)
    assert "fCnt" not in obj  # zero omitted, as ChirpStack does
    assert base64.b64decode(obj["data"]) == b"\x01\x02\x03"
    up = parse_uplink(body)
    app, eui, event = parse_topic(topic)
    assert (app, eui, event) == ("vigil", up.dev_eui, "up")
    assert (up.f_cnt, up.f_port, up.data, up.time, up.device_name) == (
        0,
        10,
        b"\x01\x02\x03",
        1700000000.5,
        "cover-7",
    )
    assert up.rx_info == [RxInfo("0000000000000000", -90, 7.5)]
    # Deterministic deduplication ids: the same uplink gives the same id, another counter another id.
    assert (
        build_uplink("70b3d57ed0001234", 0, 10, b"\x01", time=1.0)[1]
        == build_uplink("70b3d57ed0001234", 0, 10, b"\x01", time=1.0)[1]
    )
    assert (
        json.loads(build_uplink("70b3d57ed0001234", 1, 10, b"", time=1.0)[1])["deduplicationId"]
        != json.loads(build_uplink("70b3d57ed0001234", 2, 10, b"", time=1.0)[1])["deduplicationId"]
    )


def test_build_validation() -> None:
    with pytest.raises(DecodeError):
        build_uplink("xyz", 1, 1, b"", time=0.0)
    with pytest.raises(ValueError):
        build_uplink("0101010101010101", 1, 1, b"", time=0.0, application_id="a/b")


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=16,
)
_keys = st.sampled_from(
    ["deduplicationId", "time", "fCnt", "fPort", "data", "rxInfo", "object", "confirmed", "dr"]
)


@settings(max_examples=120)
@given(
    st.dictionaries(_keys, _json, max_size=6),
    st.dictionaries(st.sampled_from(["devEui", "deviceName", "applicationId", "tags"]), _json, max_size=4),
    st.sampled_from(["0101010101010101", None]),
)
def test_fuzz_random_json(top: dict[str, object], info: dict[str, object], eui: str | None) -> None:
    if eui is not None:
        info = {**info, "devEui": eui}
    body = json.dumps({**top, "deviceInfo": info}).encode()
    try:
        up = parse_uplink(body)
    except DecodeError:
        return
    assert len(up.dev_eui) == 16 and isinstance(up.data, bytes)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_uplink(data)


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_fuzz_topics(topic: str) -> None:
    with contextlib.suppress(DecodeError):
        parse_topic(topic)


def test_docstring_examples_run() -> None:
    import doctest

    import firmware_bridge.chirpstack as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
