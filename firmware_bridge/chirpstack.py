"""ChirpStack v4 MQTT integration events (JSON marshaler), sans-I/O.

Why: a district that already runs a ChirpStack network server publishes every decrypted uplink to MQTT.
Vigil's gateway (or a cloud worker) subscribes to ``application/+/device/+/event/up`` and needs only
the device EUI, counter, port and ``data`` bytes, which carry a Vigil payload
(:mod:`firmware_bridge.payload`); ChirpStack already checked MIC, counters and decrypted.

Topic: ``application/{application_id}/device/{dev_eui}/event/{up|status|join|ack|txack|log|location}``.
Uplink JSON (chirpstack ``api/proto/integration/integration.proto`` ``UplinkEvent``, protobuf-JSON
camelCase): ``deduplicationId``, ``time`` (RFC 3339), ``deviceInfo{tenantId, applicationId, deviceName,
devEui, tags, ...}``, ``devAddr``, ``adr``, ``dr``, ``fCnt``, ``fPort``, ``confirmed``, ``data`` (base64),
``object`` (only when a device-profile codec ran), ``rxInfo[]{gatewayId, rssi, snr, ...}``, ``txInfo``.

Protobuf-JSON omits fields equal to their default (``fCnt`` 0, ``fPort`` 0, ``confirmed`` false, empty
``data``), so every missing key means its default, never an error. Only a missing/invalid DevEUI, a
wrongly typed field or bad base64 raise :class:`DecodeError` (reasons ``"topic"``, ``"json"``,
``"dev_eui"``, ``"field"``, ``"base64"``, ``"time"``).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from firmware_bridge._wirejson import b64decode, b64encode, load_json_object, opt_number
from firmware_bridge.errors import DecodeError

EVENTS = ("up", "status", "join", "ack", "txack", "log", "location", "integration")
_EUI = re.compile(r"^[0-9a-fA-F]{16}$")
UPLINK_SUBSCRIPTION = "application/+/device/+/event/up"


@dataclass(frozen=True, slots=True)
class RxInfo:
    """One receiving gateway's view of the uplink."""

    gateway_id: str
    rssi: int
    snr: float


@dataclass(frozen=True, slots=True)
class ChirpstackUplink:
    """An ``up`` event. ``dev_eui`` is 16 lowercase hex (Vigil's device id); ``time`` is UTC epoch seconds."""

    dev_eui: str
    device_name: str
    application_id: str
    f_cnt: int
    f_port: int
    data: bytes
    time: float | None
    deduplication_id: str
    rx_info: list[RxInfo]
    object: dict[str, Any] | None
    tags: dict[str, str]
    confirmed: bool = False
    dev_addr: str | None = None
    dr: int = 0

    @property
    def best_rssi(self) -> int | None:
        return max((r.rssi for r in self.rx_info), default=None)


def _eui(value: object, where: str) -> str:
    if not isinstance(value, str) or not _EUI.match(value):
        raise DecodeError(f"{where}: {value!r} is not a 16-hex-digit DevEUI", reason="dev_eui")
    return value.lower()


def parse_topic(topic: str) -> tuple[str, str, str]:
    """``application/{app}/device/{dev_eui}/event/{event}`` -> (application_id, dev_eui lowercase, event)."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != "application" or parts[2] != "device" or parts[4] != "event":
        raise DecodeError(f"not a ChirpStack v4 device event topic: {topic[:120]!r}", reason="topic")
    if not parts[1] or not parts[5]:
        raise DecodeError(f"empty application id or event in topic {topic[:120]!r}", reason="topic")
    return parts[1], _eui(parts[3], "topic"), parts[5]


def parse_rfc3339(text: object) -> float:
    """RFC 3339 (any fractional precision, ``Z`` or offset) -> UTC epoch seconds; a naive time is UTC."""
    if not isinstance(text, str) or not 10 <= len(text) <= 64:
        raise DecodeError(f"time {text!r} is not an RFC 3339 string", reason="time")
    s = text.strip()
    # datetime.fromisoformat takes at most microseconds: trim nanoseconds (protobuf Timestamp has them).
    s = re.sub(r"(\.\d{6})\d+", r"\1", s)
    try:
        dt = datetime.fromisoformat(s)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    except (ValueError, OverflowError) as exc:
        raise DecodeError(f"time {text!r} is not RFC 3339", reason="time") from exc


def format_rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _uint(obj: dict[str, Any], key: str, where: str) -> int:
    v = obj.get(key, 0)
    if isinstance(v, str) and v.isdigit():  # protobuf-JSON may quote 64-bit integers
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > 0xFFFFFFFF:
        raise DecodeError(f"{where}.{key} = {v!r} is not a uint32", reason="field")
    return v


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    v = obj.get(key, "")
    if not isinstance(v, str):
        raise DecodeError(f"{where}.{key} = {v!r} is not a string", reason="field")
    return v


def parse_uplink(payload: bytes | str) -> ChirpstackUplink:
    """Parse an ``event/up`` message body.

    >>> up = parse_uplink('{"deviceInfo":{"devEui":"0101010101010101"},"fPort":1,"data":"qg=="}')
    >>> up.dev_eui, up.f_cnt, up.f_port, up.data
    ('0101010101010101', 0, 1, b'\\xaa')
    """
    obj = load_json_object(payload, "ChirpStack uplink")
    info = obj.get("deviceInfo", {})
    if not isinstance(info, dict):
        raise DecodeError("deviceInfo is not an object", reason="field")
    if "devEui" not in info:
        raise DecodeError("uplink has no deviceInfo.devEui", reason="dev_eui")
    dev_eui = _eui(info["devEui"], "deviceInfo.devEui")
    tags_raw = info.get("tags", {})
    if not isinstance(tags_raw, dict):
        raise DecodeError("deviceInfo.tags is not an object", reason="field")
    tags = {str(k): str(v) for k, v in tags_raw.items()}
    data = b64decode(obj["data"], "data") if "data" in obj else b""
    time = parse_rfc3339(obj["time"]) if obj.get("time") is not None else None
    rx_raw = obj.get("rxInfo", [])
    if not isinstance(rx_raw, list):
        raise DecodeError("rxInfo is not an array", reason="field")
    rx: list[RxInfo] = []
    for i, r in enumerate(rx_raw):
        if not isinstance(r, dict):
            raise DecodeError(f"rxInfo[{i}] is not an object", reason="field")
        rssi = opt_number(r, "rssi")
        snr = opt_number(r, "snr")
        rx.append(
            RxInfo(
                gateway_id=_str(r, "gatewayId", f"rxInfo[{i}]"), rssi=int(rssi or 0), snr=float(snr or 0.0)
            )
        )
    decoded = obj.get("object")
    if decoded is not None and not isinstance(decoded, dict):
        raise DecodeError("object is not a JSON object", reason="field")
    confirmed = _bool(obj, "confirmed")
    dev_addr = obj.get("devAddr")
    return ChirpstackUplink(
        dev_eui=dev_eui,
        device_name=_str(info, "deviceName", "deviceInfo"),
        application_id=_str(info, "applicationId", "deviceInfo"),
        f_cnt=_uint(obj, "fCnt", "uplink"),
        f_port=_uint(obj, "fPort", "uplink"),
        data=data,
        time=time,
        deduplication_id=_str(obj, "deduplicationId", "uplink"),
        rx_info=rx,
        object=decoded,
        tags=tags,
        confirmed=confirmed,
        dev_addr=dev_addr.lower() if isinstance(dev_addr, str) else None,
        dr=_uint(obj, "dr", "uplink"),
    )


@dataclass(frozen=True, slots=True)
class ChirpstackStatus:
    """A ``status`` event (DevStatusAns MAC answer): the device's battery, which Vigil tracks per device.

    ``battery_level`` is percent (0..100), None when the device reported it unavailable or runs on
    external power.
    """

    dev_eui: str
    time: float | None
    margin: int
    external_power_source: bool
    battery_level: float | None


def _bool(obj: dict[str, Any], key: str) -> bool:
    v = obj.get(key, False)
    if not isinstance(v, bool):
        raise DecodeError(f"{key} = {v!r} is not a bool", reason="field")
    return v


def parse_status(payload: bytes | str) -> ChirpstackStatus:
    """Parse an ``event/status`` message body (integration.proto ``StatusEvent``)."""
    obj = load_json_object(payload, "ChirpStack status")
    info = obj.get("deviceInfo", {})
    if not isinstance(info, dict) or "devEui" not in info:
        raise DecodeError("status event has no deviceInfo.devEui", reason="dev_eui")
    external = _bool(obj, "externalPowerSource")
    unavailable = _bool(obj, "batteryLevelUnavailable")
    margin = obj.get("margin", 0)
    if isinstance(margin, bool) or not isinstance(margin, int):
        raise DecodeError(f"margin = {margin!r} is not an integer", reason="field")
    level = opt_number(obj, "batteryLevel")
    if "batteryLevel" in obj and level is None:
        raise DecodeError(f"batteryLevel = {obj['batteryLevel']!r} is not a number", reason="field")
    battery = None if external or unavailable else min(100.0, max(0.0, level or 0.0))
    return ChirpstackStatus(
        dev_eui=_eui(info["devEui"], "deviceInfo.devEui"),
        time=parse_rfc3339(obj["time"]) if obj.get("time") is not None else None,
        margin=margin,
        external_power_source=external,
        battery_level=battery,
    )


def build_uplink(
    dev_eui: str,
    f_cnt: int,
    f_port: int,
    data: bytes,
    *,
    time: float,
    application_id: str = "vigil",
    device_name: str = "",
    gateway_id: str = "0000000000000000",
    rssi: int = -90,
    snr: float = 7.5,
    deduplication_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[str, bytes]:
    """(topic, JSON) as ChirpStack would publish them, zero/false/empty fields omitted like protobuf-JSON."""
    eui = _eui(dev_eui, "dev_eui")
    if not application_id or "/" in application_id or "+" in application_id or "#" in application_id:
        raise ValueError(f"application_id {application_id!r} is not usable in an MQTT topic")
    info: dict[str, Any] = {"applicationId": application_id, "devEui": eui}
    if device_name:
        info["deviceName"] = device_name
    if tags:
        info["tags"] = dict(tags)
    if deduplication_id is None:
        # Deterministic, so simulated runs are reproducible: a name-based UUID of (DevEUI, FCnt, time).
        deduplication_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"vigil:{eui}/{f_cnt}/{time!r}"))
    obj: dict[str, Any] = {
        "deduplicationId": deduplication_id,
        "time": format_rfc3339(time),
        "deviceInfo": info,
    }
    if f_cnt:
        obj["fCnt"] = f_cnt
    if f_port:
        obj["fPort"] = f_port
    if data:
        obj["data"] = b64encode(bytes(data))
    rx: dict[str, Any] = {"gatewayId": gateway_id, "rssi": rssi}
    if snr:
        rx["snr"] = snr
    obj["rxInfo"] = [rx]
    topic = f"application/{application_id}/device/{eui}/event/up"
    return topic, json.dumps(obj, separators=(",", ":")).encode()
