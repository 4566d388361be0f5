"""`vigil frame decode`: every format, through ``vigil_cli.main`` exactly as an installer types it.

Vectors and their sources:
* Vigil payloads: the worked examples of ``docs/payloads.md``.
* LoRaWAN: anthonykirby/lora-packet ``__tests__/decrypt_test.ts`` / ``__tests__/mic_test.ts``
  (``40F17DBE4900020001954378762B11FF0D``, NwkSKey ``44024241...``, AppSKey ``ec925802...`` -> "test").
* Cayenne LPP: myDevicesIoT cayenne-docs ``docs/LORA.md``.
* NB-IoT: ``+NNMI:2,A101`` from the Quectel BC95/BC28 AT command manual (``+NNMI:<len>,<hex>``).
* Semtech UDP PUSH_DATA layout: Lora-net/packet_forwarder ``PROTOCOL.TXT`` section 3.
* ChirpStack v4 uplink JSON fields: chirpstack-docs ``integrations/events.md``.
* CTWing / OneNET push bodies: the field lists in ``/work/shared/REFERENCES.md`` (operators' docs).
* SLIP link frame: the worked example in ``firmware_bridge/framing.py`` (``docs/framing.md``).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest

import vigil_cli
from firmware_bridge import nbiot

MANHOLE_HEX = "01 01 04 d2 00 05 57 01 02 09 29 00 96 03 52 05 dc 00 19 00 08 08 2a 00 ba"  # docs/payloads.md
MANHOLE = bytes.fromhex(MANHOLE_HEX)
SMOKE_FAULT = bytes.fromhex("01 02 00 2b 00 40 5b 02 01 00 0c 00 d7 ff ff 78")  # docs/payloads.md
#: docs/payloads.md: SMOKE_FAULT from device 00031530be923b81 (IMEI 867724030000001) in a +NNMI URC
DOC_NBIOT_EXAMPLE = "+NNMI:26,00031530BE923B810102002B00405B0201000C00D7FFFF786EB2"
LORA_FRAME = "40F17DBE4900020001954378762B11FF0D"  # anthonykirby/lora-packet
NWK_SKEY = "44024241ed4ce9a68c6a8bc055233fd3"
APP_SKEY = "ec925802ae430ca77fd3dd73cb2cc588"
LORA_KEYS = ["--nwk-skey", NWK_SKEY, "--app-skey", APP_SKEY]


@pytest.fixture(autouse=True)
def _no_keys_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_NWK_SKEY", raising=False)
    monkeypatch.delenv("VIGIL_APP_SKEY", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = vigil_cli.main(["frame", "decode", *argv])
    cap = capsys.readouterr()
    out = json.loads(cap.out) if code == 0 else cap.out
    return code, out, cap.err


def assert_one_line_error(code: int, out: Any, err: str, *, expect_code: int = 1, contains: str = "") -> None:
    assert code == expect_code
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert contains.lower() in err.lower(), err


# -- Vigil payloads --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "frame",
    [
        MANHOLE.hex(),
        MANHOLE_HEX,
        "0x" + MANHOLE.hex().upper(),
        MANHOLE.hex(":"),
        base64.b64encode(MANHOLE).decode(),
        base64.b64encode(MANHOLE).decode().rstrip("="),
    ],
    ids=["hex", "spaced", "0x-upper", "colons", "base64", "base64-unpadded"],
)
def test_vigil_payload_in_every_spelling(capsys: pytest.CaptureFixture[str], frame: str) -> None:
    code, out, err = run(capsys, frame, "--time", "1700000000", "--device-id", "70b3d57ed0001234")
    assert code == 0, err
    assert out["format"] == "vigil" and out["kind"] == "manhole"
    assert out["device_id"] == "70b3d57ed0001234" and out["time"] == 1700000000.0
    assert out["flags"] == ["cover_open", "alarm"]
    assert out["values"]["tilt_deg"] == 23.45 and out["values"]["o2_pct_vol"] == 20.9
    assert out["units"]["temperature_c"] == "°C"
    assert out["payload_hex"] == MANHOLE.hex()


def test_hex_split_over_several_words(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *MANHOLE_HEX.split(), "--time", "0")  # vigil frame decode 01 01 04 d2 ...
    assert code == 0 and out["seq"] == 1234


def test_explicit_kind_refuses_a_payload_of_another_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(*run(capsys, "--format", "wristband", MANHOLE.hex()), contains="kind")
    code, out, _ = run(capsys, "--format", "manhole", MANHOLE.hex(), "--time", "0")
    assert code == 0 and out["kind"] == "manhole"


def test_out_of_range_value_is_null_and_explained(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, SMOKE_FAULT.hex(), "--time", "0")
    assert code == 0
    assert out["values"]["co_ppm"] is None and out["values"]["temperature_c"] == 21.5
    assert out["out_of_range"] == {"co_ppm": {"raw": 65535, "valid_range": [0.0, 5000.0]}}


def test_unknown_flag_bits_are_shown(capsys: pytest.CaptureFixture[str]) -> None:
    payload = bytearray(MANHOLE)
    payload[4] = 0x80  # bit 15: not declared for the manhole
    code, out, _ = run(capsys, payload.hex(), "--time", "0")
    assert code == 0 and out["unknown_flag_bits"] == [15] and out["flags"] == ["cover_open", "alarm"]


def test_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(MANHOLE.hex() + "\n"))
    code, out, _ = run(capsys, "-", "--time", "0")
    assert code == 0 and out["seq"] == 1234


def test_raw_binary_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(MANHOLE)))
    code, out, _ = run(capsys, "--encoding", "raw", "-", "--time", "0")
    assert code == 0 and out["seq"] == 1234 and out["values"]["tilt_deg"] == 23.45
    assert_one_line_error(*run(capsys, "--encoding", "raw", MANHOLE.hex()), expect_code=2, contains="stdin")


def test_lines_mode_decodes_a_log_and_keeps_going(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = f"# gateway reject log\n{MANHOLE.hex()}\n\nnot a frame\n{SMOKE_FAULT.hex()}\n"  # docs/payloads.md
    monkeypatch.setattr("sys.stdin", io.StringIO(log))
    code = vigil_cli.main(["frame", "decode", "--lines", "-", "--time", "0"])
    cap = capsys.readouterr()
    rows = [json.loads(line) for line in cap.out.splitlines()]
    assert code == 1  # one line failed
    assert [r["line"] for r in rows] == [2, 4, 5]
    assert rows[0]["kind"] == "manhole" and rows[2]["values"]["co_ppm"] is None
    assert rows[1]["reason"] == "input" and "error" in rows[1]
    assert cap.err == "decoded 2 of 3 frames\n"


def test_help_lists_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        vigil_cli.main(["frame", "decode", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for fmt in ("vigil", "manhole", "lorawan", "semtech", "chirpstack", "nbiot", "ctwing", "onenet", "link"):
        assert fmt in text


def test_default_time_is_now(capsys: pytest.CaptureFixture[str]) -> None:
    import time

    before = time.time()
    code, out, _ = run(capsys, MANHOLE.hex())
    assert code == 0 and before <= out["time"] <= time.time()


@pytest.mark.parametrize(
    ("frame", "contains"),
    [
        ("", "empty"),
        ("not hex!", "not hex or base64"),
        (MANHOLE.hex()[:-2], "must be 25 bytes"),
        ("02" + MANHOLE.hex()[2:], "version"),
        ("0109" + MANHOLE.hex()[4:], "unknown kind"),
        (MANHOLE.hex()[:12] + "ff" + MANHOLE.hex()[14:], "battery"),
        ("zz", "read as base64"),
    ],
    ids=["empty", "garbage", "truncated", "version", "kind", "battery", "base64-fallback"],
)
def test_bad_vigil_input_is_one_error_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], frame: str, contains: str
) -> None:
    assert_one_line_error(*run(capsys, frame), contains=contains)


def test_forced_encodings(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(*run(capsys, "--encoding", "hex", "AQEE0g=="), contains="not hex")
    # "0101" is hex by default; forced base64 reads it as three bytes d3 5d 35, whose kind byte is 0x5d
    assert_one_line_error(*run(capsys, "--encoding", "base64", "0101"), contains="unknown kind code 0x5d")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["frame", "decode", "--format", "nope", "00"],
        ["frame", "decode"],
        ["frame"],
        ["frame", "decode", "--time", "nan", "00"],
        ["frame", "decode", "--time", "-1", "00"],
    ):
        with pytest.raises(SystemExit) as info:
            vigil_cli.main(argv)
        assert info.value.code == 2
    capsys.readouterr()


# -- LoRaWAN ---------------------------------------------------------------------------------------------
def test_lorawan_public_vector_verifies_and_decrypts(capsys: pytest.CaptureFixture[str]) -> None:
    # anthonykirby/lora-packet __tests__/decrypt_test.ts + mic_test.ts
    code, out, err = run(capsys, "--format", "lorawan", *LORA_KEYS, LORA_FRAME)
    assert code == 0, err
    assert out["dev_addr"] == "49be7df1" and out["fcnt"] == 2 and out["fport"] == 1
    assert out["verified"] is True and out["mtype"] == "unconfirmed_up"
    assert out["payload_hex"] == "74657374" and out["payload_text"] == "test"
    assert out["decoded_as"] == "raw" and "not_vigil" in out


def test_lorawan_keys_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_NWK_SKEY", NWK_SKEY)  # anthonykirby/lora-packet keys, kept out of argv
    monkeypatch.setenv("VIGIL_APP_SKEY", APP_SKEY)
    code, out, err = run(capsys, "--format", "lorawan", LORA_FRAME)
    assert code == 0, err
    assert out["verified"] is True and out["payload_text"] == "test"
    assert NWK_SKEY not in json.dumps(out) and APP_SKEY not in json.dumps(out)


def test_lorawan_without_keys_parses_but_does_not_verify(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--format", "lorawan", LORA_FRAME)
    assert code == 0
    assert out["verified"] is False and out["mic_hex"] == "2b11ff0d" and out["fcnt16"] == 2
    assert out["frm_payload_encrypted_hex"] == "95437876"


def test_lorawan_carrying_a_vigil_payload(capsys: pytest.CaptureFixture[str]) -> None:
    from firmware_bridge import lorawan

    keys = lorawan.LoRaWANKeys.from_hex("49be7df1", NWK_SKEY, APP_SKEY)
    phy = lorawan.build_uplink(keys, 7, 10, MANHOLE)
    code, out, err = run(capsys, "--format", "lorawan", *LORA_KEYS, phy.hex(), "--time", "0")
    assert code == 0, err
    assert out["decoded_as"] == "vigil"
    assert out["reading"]["device_id"] == "49be7df1" and out["reading"]["values"]["tilt_deg"] == 23.45
    code, out, _ = run(capsys, "-f", "lorawan", *LORA_KEYS, phy.hex(), "--device-id", "70b3d57ed0001234")
    assert code == 0 and out["reading"]["device_id"] == "70b3d57ed0001234"  # the DevEUI wins over the DevAddr


@pytest.mark.parametrize(
    ("argv", "contains"),
    [
        ([*LORA_KEYS, LORA_FRAME[:-2] + "0E"], "mic"),  # last MIC byte flipped
        ([*LORA_KEYS, "--fcnt-last", "5", LORA_FRAME], "replay"),  # FCnt 2 after 5
        ([*LORA_KEYS, "--dev-addr", "01020304", LORA_FRAME], "devaddr"),
        ([*LORA_KEYS, "40F17DBE49"], "short"),
        ([*LORA_KEYS, "00" + LORA_FRAME[2:]], "not data frames"),  # a join-request
    ],
    ids=["bad-mic", "replay", "wrong-devaddr", "truncated", "join-request"],
)
def test_lorawan_bad_frames(capsys: pytest.CaptureFixture[str], argv: list[str], contains: str) -> None:
    assert_one_line_error(*run(capsys, "--format", "lorawan", *argv), contains=contains)


@pytest.mark.parametrize(
    "argv",
    [
        ["--nwk-skey", NWK_SKEY],
        ["--nwk-skey", "xyz", "--app-skey", APP_SKEY],
        ["--nwk-skey", "00", "--app-skey", APP_SKEY],
        [*LORA_KEYS, "--dev-addr", "nothex"],
    ],
    ids=["one-key", "not-hex", "short-key", "bad-devaddr"],
)
def test_lorawan_bad_keys_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert_one_line_error(*run(capsys, "--format", "lorawan", *argv, LORA_FRAME), expect_code=2)


# -- other transports ------------------------------------------------------------------------------------
def test_cayenne_public_vectors(capsys: pytest.CaptureFixture[str]) -> None:
    # myDevicesIoT cayenne-docs docs/LORA.md
    code, out, _ = run(capsys, "--format", "cayenne", "03670110056700FF")
    assert code == 0
    assert [(v["channel"], v["name"], v["value"]) for v in out["values"]] == [
        (3, "temperature", 27.2),
        (5, "temperature", 25.5),
    ]
    code, out, _ = run(capsys, "--format", "cayenne", "018806765FF2960A0003E8")
    assert code == 0 and out["values"][0]["value"] == [42.3519, -87.9094, 10.0]
    assert_one_line_error(*run(capsys, "--format", "cayenne", "0167FF"), contains="needs 2 bytes")


def test_nbiot_urc_lines(capsys: pytest.CaptureFixture[str]) -> None:
    # A URC's data is our link body device_id(8) | payload | CRC-16, as the gateway's nbiot source reads it
    # (one parser: firmware_bridge.nbiot.LinkUrcDecoder). The first line is the example in docs/payloads.md.
    code, out, _ = run(capsys, "--format", "nbiot", DOC_NBIOT_EXAMPLE, "--time", "0")
    assert code == 0
    assert out["payloads"][0]["path"] == "cdp" and out["payloads"][0]["device_id"] == "00031530be923b81"
    assert out["payloads"][0]["reading"]["kind"] == "smoke_alarm"
    line = nbiot.format_link_nnmi("00031530be923b81", MANHOLE).decode().strip()
    code, out, _ = run(capsys, "--format", "nbiot", line, "--time", "0", "--device-id", "ignored")
    assert code == 0
    reading = out["payloads"][0]["reading"]
    assert reading["kind"] == "manhole" and reading["device_id"] == "00031530be923b81"
    code, out, _ = run(capsys, "--format", "nbiot", "+NSONMI:1,25")
    assert code == 0 and out["read_requests"] == [{"socket": 1, "length": 25, "command": "AT+NSORF=1,25"}]
    # the Quectel manual's +NNMI:2,A101 is a valid URC but no link body: the gateway rejects it, so do we
    assert_one_line_error(*run(capsys, "--format", "nbiot", "+NNMI:2,A101"), contains="too short")
    bad_crc = line[:-1] + ("0" if line[-1] != "0" else "1")
    assert_one_line_error(*run(capsys, "--format", "nbiot", bad_crc), contains="CRC")
    assert_one_line_error(*run(capsys, "--format", "nbiot", "+NNMI:3,A101"), contains="length")
    assert_one_line_error(*run(capsys, "--format", "nbiot", "hello"), contains="no NB-IoT data URC")


def test_nbiot_doc_example_is_what_the_gateway_accepts() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "payloads.md").read_text(encoding="utf-8")
    assert DOC_NBIOT_EXAMPLE in docs
    frames = nbiot.LinkUrcDecoder().feed(DOC_NBIOT_EXAMPLE.encode() + b"\r\n")
    assert [(f.device_id, f.payload) for f in frames if isinstance(f, nbiot.NbiotLinkFrame)] == [
        ("00031530be923b81", SMOKE_FAULT)
    ]


def _push_data(rxpk: list[dict[str, Any]]) -> bytes:
    # PROTOCOL.TXT 3.2: version 2 | random token (2) | PUSH_DATA 0x00 | gateway EUI (8) | JSON
    return bytes([2, 0x12, 0x34, 0]) + bytes.fromhex("aa555a0000000101") + json.dumps({"rxpk": rxpk}).encode()


def test_semtech_push_data_with_a_lorawan_frame(capsys: pytest.CaptureFixture[str]) -> None:
    lora = base64.b64encode(bytes.fromhex(LORA_FRAME)).decode()
    dgram = _push_data(
        [
            {"tmst": 3512348611, "freq": 868.1, "datr": "SF7BW125", "rssi": -35, "lsnr": 5.1, "data": lora},
            {
                "tmst": 3512348612,
                "freq": 868.3,
                "datr": "SF7BW125",
                "rssi": -90,
                "lsnr": -3.0,
                "data": "AAAA",
            },
            {"freq": 868.5, "stat": -1, "data": lora},
        ]
    )
    code, out, err = run(capsys, "--format", "semtech", *LORA_KEYS, dgram.hex())
    assert code == 0, err
    assert out["type"] == "PUSH_DATA" and out["token"] == 0x1234 and out["gateway_eui"] == "aa555a0000000101"
    assert out["ack_hex"] == "02123401"
    first, second = out["rxpk"]
    assert first["rssi"] == -35 and first["lorawan"]["payload_text"] == "test"
    assert "error" in second and "lorawan" not in second  # a bad radio frame does not hide its neighbour
    assert len(out["rejects"]) == 1 and "crc" in out["rejects"][0].lower()


def test_semtech_to_lorawan_to_vigil_reading(capsys: pytest.CaptureFixture[str]) -> None:
    """The whole radio chain: PUSH_DATA -> rxpk -> PHYPayload (MIC, decrypt) -> Vigil payload -> reading."""
    from firmware_bridge import lorawan

    keys = lorawan.LoRaWANKeys.from_hex("49be7df1", NWK_SKEY, APP_SKEY)  # anthonykirby/lora-packet keys
    phy = lorawan.build_uplink(keys, 70000, 10, SMOKE_FAULT)  # FCnt beyond 16 bits: reconstructed
    dgram = _push_data([{"rssi": -101, "lsnr": -7.5, "data": base64.b64encode(phy).decode()}])
    code, out, err = run(
        capsys, "-f", "semtech", *LORA_KEYS, "--fcnt-last", "69999", dgram.hex(), "--time", "0"
    )
    assert code == 0, err
    lw = out["rxpk"][0]["lorawan"]
    assert lw["fcnt"] == 70000 and lw["fport"] == 10 and lw["verified"] is True
    assert lw["reading"]["kind"] == "smoke_alarm" and lw["reading"]["values"]["co_ppm"] is None


def test_semtech_bad_datagram(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(*run(capsys, "--format", "semtech", "0712340000"), contains="version")


def _chirpstack_up(data: bytes) -> str:
    return json.dumps(
        {
            "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
            "time": "2023-12-11T09:27:23.123456Z",
            "deviceInfo": {
                "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
                "tenantName": "ChirpStack",
                "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
                "applicationName": "vigil",
                "deviceName": "cover-17",
                "devEui": "70B3D57ED0001234",
                "tags": {"street": "Gulou"},
            },
            "devAddr": "00189440",
            "dr": 5,
            "fPort": 10,
            "data": base64.b64encode(data).decode(),
            "rxInfo": [{"gatewayId": "0016c001ff10a235", "rssi": -57, "snr": 10.5}],
        }
    )


def test_chirpstack_uplink(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--format", "chirpstack", _chirpstack_up(MANHOLE))
    assert code == 0, err
    assert out["dev_eui"] == "70b3d57ed0001234" and out["f_cnt"] == 0  # fCnt 0 omitted by protobuf-JSON
    assert out["best_rssi"] == -57 and out["tags"] == {"street": "Gulou"}
    assert out["reading"]["device_id"] == "70b3d57ed0001234"
    assert out["reading"]["time"] == pytest.approx(1702286843.123456)  # the uplink's own time
    assert_one_line_error(*run(capsys, "--format", "chirpstack", "{not json"), contains="json")
    assert_one_line_error(*run(capsys, "--format", "chirpstack", '{"deviceInfo": {}}'), contains="devEui")


def test_ctwing_and_onenet_pushes(capsys: pytest.CaptureFixture[str]) -> None:
    ctwing = json.dumps(
        {
            "messageType": "dataReport",
            "deviceId": "a1b2c3d4e5",
            "IMEI": "867724030000001",
            "productId": "15000001",
            "timestamp": 1700000000123,
            "payload": {"APPdata": base64.b64encode(SMOKE_FAULT).decode()},
        }
    )
    code, out, err = run(capsys, "--format", "ctwing", ctwing)
    assert code == 0, err
    assert out["message_type"] == "dataReport" and out["timestamp"] == 1700000000.123
    assert out["reading"]["kind"] == "smoke_alarm" and out["reading"]["device_id"] == "867724030000001"
    assert out["reading"]["values"]["co_ppm"] is None

    onenet = json.dumps(
        {
            "msg": [
                {
                    "type": 1,
                    "dev_id": "2016617",
                    "ds_id": "payload",
                    "at": 1700000000000,
                    "value": MANHOLE.hex(),
                },
                {"type": 1, "dev_id": "2016618", "ds_id": "temp", "at": 1700000000000, "value": 21.5},
                {"type": 1, "at": 1700000000000, "value": 1},
            ],
            "nonce": "abcdefgh",
            "msg_signature": "ignored-here",
        }
    )
    code, out, err = run(capsys, "--format", "onenet", onenet)
    assert code == 0, err
    first, second = out["messages"]
    assert first["reading"]["kind"] == "manhole" and second["value"] == 21.5
    assert len(out["rejects"]) == 1 and "dev_id" in out["rejects"][0]
    assert_one_line_error(*run(capsys, "--format", "ctwing", '{"deviceId": "x"}'), contains="messageType")


def test_link_frames(capsys: pytest.CaptureFixture[str]) -> None:
    # the worked example in firmware_bridge/framing.py: device 70b3d57ed0001234, payload 01 c0
    code, out, _ = run(capsys, "--format", "link", "c0 70 b3 d5 7e d0 00 12 34 01 db dc 31 9d c0")
    assert code == 0 and out["device_id"] == "70b3d57ed0001234" and out["payload_hex"] == "01c0"
    from firmware_bridge.framing import encode_frame

    frame = encode_frame("70b3d57ed0001234", MANHOLE)
    code, out, _ = run(capsys, "--format", "link", frame.hex(), "--time", "0")
    assert code == 0 and out["reading"]["device_id"] == "70b3d57ed0001234" and out["reading"]["seq"] == 1234
    code, out, _ = run(
        capsys,
        "--format",
        "link",
        "--framing",
        "cobs",
        encode_frame("70b3d57ed0001234", MANHOLE, framing="cobs").hex(),
    )
    assert code == 0 and out["decoded_as"] == "vigil"
    bad = bytearray(frame)
    bad[5] ^= 0x01
    assert_one_line_error(*run(capsys, "--format", "link", bad.hex()), contains="crc")


def test_payload_mode_cayenne_and_raw(capsys: pytest.CaptureFixture[str]) -> None:
    from firmware_bridge.framing import encode_frame

    lpp = encode_frame("70b3d57ed0001234", bytes.fromhex("03670110056700FF"))
    code, out, _ = run(capsys, "--format", "link", "--payload", "cayenne", lpp.hex())
    assert code == 0 and out["decoded_as"] == "cayenne" and out["cayenne"][0]["value"] == 27.2
    code, out, _ = run(
        capsys, "--format", "link", "--payload", "raw", encode_frame("70b3d57ed0001234", MANHOLE).hex()
    )
    assert code == 0 and out["decoded_as"] == "raw" and "reading" not in out
    assert_one_line_error(*run(capsys, "--format", "link", "--payload", "vigil", lpp.hex()), contains="kind")


# -- the library behind the command ------------------------------------------------------------------------
def test_describe_is_usable_without_argparse() -> None:
    from firmware_bridge.describe import DescribeOptions, OptionError, describe

    opts = DescribeOptions(nwk_skey=NWK_SKEY, app_skey=APP_SKEY, time=0.0)
    out = describe("lorawan", bytes.fromhex(LORA_FRAME), opts)  # anthonykirby/lora-packet
    assert out["payload_text"] == "test" and out["fcnt"] == 2
    assert describe("vigil", MANHOLE, opts)["values"]["tilt_deg"] == 23.45  # docs/payloads.md
    with pytest.raises(OptionError):
        DescribeOptions(payload="json")
    with pytest.raises(OptionError):
        DescribeOptions(time=float("nan"))
    with pytest.raises(OptionError):
        describe("protobuf", b"")
    with pytest.raises(TypeError):
        describe("chirpstack", b"{}")


BINARY_FORMATS = ["vigil", "manhole", "smoke_alarm", "wristband", "cayenne", "lorawan", "semtech", "link"]


@pytest.mark.parametrize("fmt", BINARY_FORMATS)
def test_fuzz_describe_raises_only_decode_error(fmt: str) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from firmware_bridge.describe import DescribeOptions, describe, jsonable
    from firmware_bridge.errors import DecodeError

    opts = DescribeOptions(nwk_skey=NWK_SKEY, app_skey=APP_SKEY, time=0.0)

    @settings(max_examples=100, deadline=None, database=None)
    @given(blob=st.binary(max_size=80))
    def check(blob: bytes) -> None:
        try:
            out = describe(fmt, blob, opts)
        except DecodeError:
            return
        json.dumps(jsonable(out), allow_nan=False)

    check()


@pytest.mark.parametrize("fmt", ["chirpstack", "nbiot", "ctwing", "onenet"])
def test_fuzz_describe_text_formats_raise_only_decode_error(fmt: str) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from firmware_bridge.describe import DescribeOptions, describe, jsonable
    from firmware_bridge.errors import DecodeError

    opts = DescribeOptions(time=0.0)
    json_ish = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12,
    ).map(json.dumps)

    @settings(max_examples=100, deadline=None, database=None)
    @given(text=st.one_of(st.text(max_size=80), json_ish))
    def check(text: str) -> None:
        try:
            out = describe(fmt, text, opts)
        except DecodeError:
            return
        json.dumps(jsonable(out), allow_nan=False)

    check()


def test_the_real_command_under_the_c_locale() -> None:
    """As on a fresh Pi: a real process, LC_ALL=C, stdout a pipe; UTF-8 units, exit codes, no traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONIO", "VIGIL_"))}
    env["LC_ALL"] = "C"

    def vigil(*argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "vigil_cli.py", "frame", "decode", *argv],
            cwd=root, env=env, capture_output=True, timeout=60, check=False,
        )  # fmt: skip

    ok = vigil(MANHOLE.hex(), "--time", "0")  # docs/payloads.md
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.decode("utf-8"))["units"]["temperature_c"] == "°C"
    bad = vigil("0102")
    assert bad.returncode == 1 and bad.stdout == b""
    assert bad.stderr.decode().startswith("error: ") and b"Traceback" not in bad.stderr
