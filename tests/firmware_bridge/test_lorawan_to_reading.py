"""Every deployment wrapper carries a Vigil payload to the same Reading (the mapping of docs/formats.md)."""

from __future__ import annotations

import pytest

from firmware_bridge import chirpstack, framing, lorawan, nbiot, operator_push, semtech_udp
from firmware_bridge.kernel.records import DeviceKind, Reading
from firmware_bridge.registry import KINDS, decode_payload, spec

DEV_EUI = "70b3d57ed0001234"
IMEI = "861234567890123"
IMEI_ID = f"{int(IMEI):016x}"  # docs/framing.md: an IMEI travels and is rendered as its integer value
T = 1_700_000_000.0
# ABP keys of anthonykirby/lora-packet __tests__/decrypt_test.ts, reused for a Vigil device.
KEYS = lorawan.LoRaWANKeys.from_hex(
    "49be7df1", "44024241ed4ce9a68c6a8bc055233fd3", "ec925802ae430ca77fd3dd73cb2cc588", dev_eui=DEV_EUI
)


def _reading(kind: DeviceKind, device_id: str) -> Reading:
    s = spec(kind)
    values = tuple(round((c.low + c.high) / 2) if c.high - c.low > 4 else c.low for c in s.channels)
    return Reading(kind=kind, device_id=device_id, seq=321, time=T, battery_pct=87.0, flags=0, values=values)


def _same(a: Reading, b: Reading) -> None:
    assert (a.kind, a.device_id, a.seq, a.battery_pct, a.flags) == (
        b.kind,
        b.device_id,
        b.seq,
        b.battery_pct,
        b.flags,
    )
    assert a.values == pytest.approx(b.values, abs=0.05)


@pytest.mark.parametrize("kind", list(KINDS))
def test_semtech_udp_then_lorawan(kind: DeviceKind) -> None:
    want = _reading(kind, DEV_EUI)
    payload = spec(kind).codec.encode(want)
    phy = lorawan.build_uplink(KEYS, 70000, 10, payload)
    wire = semtech_udp.build_push_data(1, bytes(8), [semtech_udp.Rxpk(phy, rssi=-80)])
    [rx] = semtech_udp.parse_datagram(wire).rxpk
    tracker = lorawan.FrameCounterTracker.restore({"49be7df1": 69999})
    up = lorawan.decode_uplink(rx.data, KEYS, tracker.last(KEYS.dev_addr))
    tracker.commit(up.dev_addr, up.fcnt)
    assert up.dev_eui == DEV_EUI and up.fcnt == 70000
    _same(decode_payload(up.payload, device_id=up.dev_eui or "", time=T), want)


@pytest.mark.parametrize("kind", list(KINDS))
def test_chirpstack(kind: DeviceKind) -> None:
    want = _reading(kind, DEV_EUI)
    topic, body = chirpstack.build_uplink(DEV_EUI.upper(), 5, 10, spec(kind).codec.encode(want), time=T)
    _, eui, event = chirpstack.parse_topic(topic)
    up = chirpstack.parse_uplink(body)
    assert event == "up" and eui == up.dev_eui == DEV_EUI
    got = decode_payload(up.data, device_id=up.dev_eui, time=up.time or 0.0)
    _same(got, want)
    assert got.time == T


@pytest.mark.parametrize("kind", list(KINDS))
def test_ctwing_and_onenet(kind: DeviceKind) -> None:
    want = _reading(kind, IMEI_ID)
    payload = spec(kind).codec.encode(want)
    m = operator_push.parse_ctwing(operator_push.build_ctwing_data_report(IMEI, "aep-1", payload, T))
    assert m.payload is not None
    _same(decode_payload(m.payload, device_id=m.vigil_device_id or m.device_id, time=m.timestamp), want)
    body = operator_push.build_onenet_push(
        "tok",
        "n",
        {"type": 1, "dev_id": 9, "ds_id": "vigil", "at": int(T * 1000), "value": payload.hex(), "imei": IMEI},
    )
    assert operator_push.verify_onenet_body("tok", body)
    [om] = operator_push.parse_onenet(body)
    raw = om.payload_bytes()
    assert raw is not None
    _same(decode_payload(raw, device_id=om.vigil_device_id or om.dev_id, time=om.at), want)


@pytest.mark.parametrize("kind", list(KINDS))
def test_nbiot_udp_path_with_link_frame(kind: DeviceKind) -> None:
    want = _reading(kind, IMEI_ID)
    body = framing.encode_link_body(IMEI, spec(kind).codec.encode(want))
    dec = nbiot.UrcDecoder()
    [req] = dec.feed(nbiot.format_nsonmi(0, len(body)))
    assert isinstance(req, nbiot.ReadRequest)
    [p] = dec.feed(nbiot.format_nsorf_response(0, "10.0.0.1", 5683, body))
    assert isinstance(p, nbiot.NbiotPayload)
    frame = framing.decode_link_body(p.data)
    _same(decode_payload(frame.payload, device_id=frame.device_id, time=T), want)
