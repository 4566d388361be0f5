"""HTTP pushes from operator IoT platforms: China Telecom CTWing (AEP) and China Mobile OneNET, sans-I/O.

Why: NB-IoT devices on an operator SIM often can reach only the operator's platform. The platform then
POSTs each uplink to a URL we register ("北向推送" / "数据推送"). These functions turn a request body into
typed messages; the HTTP endpoint (cloud or gateway) answers 200 quickly, or the platform retries.

CTWing (天翼物联网 AEP, 北向 HTTP 订阅推送, transparent "透传" products) — one JSON object per POST::

    {"messageType": "dataReport", "deviceId": "...", "IMEI": "86...", "productId": "...", "tenantId": "...",
     "timestamp": 1591066563024, "protocol": "lwm2m", "topic": "v1/up/ad",
     "payload": {"APPdata": "<base64 of the device's raw bytes>"}}        # or {"serviceData": {...}} (物模型)
    {"messageType": "deviceOnlineOfflineReport", "deviceId": "...", "eventType": 1, "timestamp": ...}

OneNET (中国移动 OneNET 数据推送, HTTP push) — URL verification is ``GET ?msg=&nonce=&signature=``, answered
with ``msg`` when ``signature == Base64(MD5(token + nonce + msg))``; data pushes are POSTs of::

    {"msg": {"type": 1, "dev_id": 2016617, "ds_id": "datastream_id", "at": 1466133706841, "value": 42},
     "msg_signature": "...", "nonce": "..."}

``msg`` may also be a JSON array of such objects (batched push) or a JSON *string* holding them (newer
OneNET Studio pushes, which also name the signature field ``signature``). ``type`` 1 is a data point,
2 a device online/offline event (``status`` 1/0). Timestamps are milliseconds; we store UTC seconds.

Only :class:`DecodeError` escapes the parsers (reasons ``"json"``, ``"field"``, ``"base64"``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any

from firmware_bridge._wirejson import b64decode, b64encode, load_json, load_json_object, opt_str
from firmware_bridge.errors import DecodeError

DATA_REPORT = "dataReport"
ONLINE_OFFLINE = "deviceOnlineOfflineReport"
ONENET_DATAPOINT = 1
ONENET_ONLINE_OFFLINE = 2


def vigil_device_id(imei: str | None) -> str | None:
    """Vigil's canonical id of an NB-IoT device: its IMEI as the 16-lowercase-hex rendering of the integer.

    The same rendering the link framing uses (``docs/framing.md``: IMEI ``860123456789012`` ->
    ``00030e47191ada14``), so a device has one id whether it arrives over a UART or through an operator
    platform. None when ``imei`` is not a 15-digit IMEI (the caller then maps the platform's device id).
    """
    from firmware_bridge.framing import device_id_from_int, device_id_to_int

    if imei is None or len(imei) != 15 or not imei.isascii() or not imei.isdigit():
        return None
    return device_id_from_int(device_id_to_int(imei))


def _ms_to_s(v: object, where: str) -> float:
    if isinstance(v, str):
        with contextlib.suppress(ValueError):
            v = float(v)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise DecodeError(f"{where} = {v!r} is not a millisecond timestamp", reason="field")
    try:
        s = float(v) / 1000.0
    except OverflowError as exc:
        raise DecodeError(f"{where} = {v!r} is out of range", reason="field") from exc
    if not math.isfinite(s) or s < 0:
        raise DecodeError(f"{where} = {v!r} is not a valid timestamp", reason="field")
    return s


def _id(v: object, where: str, *, required: bool) -> str | None:
    if v is None or v == "":
        if required:
            raise DecodeError(f"{where} is missing", reason="field")
        return None
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise DecodeError(f"{where} = {v!r} is not an id", reason="field")
    return str(v)


# -- CTWing -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CtwingMessage:
    """One CTWing push. ``payload`` is the device's raw bytes (``payload.APPdata``), when present."""

    message_type: str
    device_id: str
    imei: str | None
    product_id: str | None
    timestamp: float
    payload: bytes | None
    service_data: dict[str, Any] | None
    online: bool | None
    tenant_id: str | None = None

    @property
    def vigil_device_id(self) -> str | None:
        """The IMEI as Vigil's canonical device id (see :func:`vigil_device_id`)."""
        return vigil_device_id(self.imei)


def parse_ctwing(body: bytes) -> CtwingMessage:
    obj = load_json_object(body, "CTWing push")
    mtype = obj.get("messageType")
    if not isinstance(mtype, str) or not mtype:
        raise DecodeError("CTWing push without messageType", reason="field")
    device_id = _id(obj.get("deviceId"), "deviceId", required=True)
    assert device_id is not None
    ts = _ms_to_s(obj.get("timestamp"), "timestamp")
    payload: bytes | None = None
    service_data: dict[str, Any] | None = None
    body_obj = obj.get("payload")
    if body_obj is not None:
        if not isinstance(body_obj, dict):
            raise DecodeError("CTWing payload is not an object", reason="field")
        if "APPdata" in body_obj:
            payload = b64decode(body_obj["APPdata"], "payload.APPdata")
        sd = body_obj.get("serviceData")
        if sd is not None:
            if not isinstance(sd, dict):
                raise DecodeError("payload.serviceData is not an object", reason="field")
            service_data = sd
    online: bool | None = None
    if mtype == ONLINE_OFFLINE:
        ev = obj.get("eventType")
        if ev not in (0, 1) or isinstance(ev, bool):
            raise DecodeError(f"eventType {ev!r} is neither 0 (offline) nor 1 (online)", reason="field")
        online = ev == 1
    imei = obj.get("IMEI", obj.get("imei"))
    return CtwingMessage(
        message_type=mtype,
        device_id=device_id,
        imei=_id(imei, "IMEI", required=False),
        product_id=_id(obj.get("productId"), "productId", required=False),
        timestamp=ts,
        payload=payload,
        service_data=service_data,
        online=online,
        tenant_id=_id(obj.get("tenantId"), "tenantId", required=False),
    )


def build_ctwing_data_report(
    imei: str, device_id: str, payload: bytes, timestamp: float, product_id: str = "vigil"
) -> bytes:
    """A transparent-product ``dataReport`` push as CTWing sends it (simulators, tests)."""
    obj = {
        "upPacketSN": -1,
        "upDataSN": -1,
        "topic": "v1/up/ad",
        "timestamp": round(timestamp * 1000),
        "tenantId": "vigil",
        "serviceId": "",
        "protocol": "lwm2m",
        "productId": product_id,
        "payload": {"APPdata": b64encode(bytes(payload))},
        "messageType": DATA_REPORT,
        "deviceType": "",
        "deviceId": device_id,
        "assocAssetId": "",
        "IMSI": "",
        "IMEI": imei,
    }
    return json.dumps(obj, separators=(",", ":")).encode()


def build_ctwing_online(device_id: str, online: bool, timestamp: float, product_id: str = "vigil") -> bytes:
    obj = {
        "timestamp": round(timestamp * 1000),
        "tenantId": "vigil",
        "protocol": "lwm2m",
        "productId": product_id,
        "messageType": ONLINE_OFFLINE,
        "eventType": 1 if online else 0,
        "deviceId": device_id,
    }
    return json.dumps(obj, separators=(",", ":")).encode()


# -- OneNET -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OnenetMessage:
    """One OneNET pushed message. ``value`` is whatever JSON the data point held."""

    type: int
    dev_id: str
    ds_id: str | None
    at: float
    value: object
    imei: str | None = None
    status: int | None = None

    @property
    def online(self) -> bool | None:
        return None if self.status is None else self.status == 1

    @property
    def vigil_device_id(self) -> str | None:
        """The IMEI as Vigil's canonical device id (see :func:`vigil_device_id`)."""
        return vigil_device_id(self.imei)

    def payload_bytes(self) -> bytes | None:
        """The value as raw device bytes when it is an even-length hex string (how Vigil devices post)."""
        v = self.value
        if not isinstance(v, str) or len(v) % 2 or not v:
            return None
        try:
            return bytes.fromhex(v)
        except ValueError:
            return None


def onenet_signature(token: str, nonce: str, msg: str) -> str:
    """Base64(MD5(token + nonce + msg)), the OneNET push signature.

    >>> onenet_signature("a", "b", "c")  # MD5("abc") = 900150983cd24fb0d6963f7d28e17f72 (RFC 1321)
    'kAFQmDzST7DWlj99KOF/cg=='
    """
    digest = hashlib.md5((token + nonce + msg).encode("utf-8"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_onenet(token: str, msg: str, nonce: str, signature: str) -> bool:
    """Constant-time check of a signature (``+`` turned into space by a naive URL decoder is repaired)."""
    expected = onenet_signature(token, nonce, msg).encode()
    return hmac.compare_digest(expected, signature.replace(" ", "+").encode("utf-8", "replace"))


def _raw_member(text: str, key: str) -> str | None:
    """The exact source text of a top-level member's value (what OneNET signed), or None.

    None also when the key occurs twice: ``json.loads`` keeps the last one, so a body with a genuine
    signed ``msg`` followed by a forged one must not verify.
    """
    dec = json.JSONDecoder()
    i = 0
    n = len(text)

    def ws(j: int) -> int:
        while j < n and text[j] in " \t\r\n":
            j += 1
        return j

    i = ws(i)
    if i >= n or text[i] != "{":
        return None
    i = ws(i + 1)
    found: list[str] = []
    while i < n and text[i] != "}":
        name, i = dec.raw_decode(text, i)
        i = ws(i)
        if i >= n or text[i] != ":":
            return None
        i = ws(i + 1)
        _, end = dec.raw_decode(text, i)
        if name == key:
            found.append(text[i:end])
        i = ws(end)
        if i < n and text[i] == ",":
            i = ws(i + 1)
    return found[0] if len(found) == 1 else None


def verify_onenet_body(token: str, body: bytes) -> bool:
    """Check a POST body's ``msg_signature`` (or ``signature``) over its ``msg``; False if malformed."""
    try:
        obj = load_json_object(body, "OneNET push")
        nonce = opt_str(obj, "nonce")
        sig = opt_str(obj, "msg_signature") or opt_str(obj, "signature")
        msg = obj.get("msg")
        if nonce is None or sig is None or msg is None:
            return False
        signed = msg if isinstance(msg, str) else _raw_member(bytes(body).decode("utf-8"), "msg")
        if signed is None:
            return False
        return verify_onenet(token, signed, nonce, sig)
    except (DecodeError, ValueError, RecursionError):
        return False


def _onenet_item(i: int, item: object) -> OnenetMessage:
    where = f"msg[{i}]"
    if not isinstance(item, dict):
        raise DecodeError(f"{where} is not an object", reason="field")
    mtype = item.get("type")
    if isinstance(mtype, bool) or not isinstance(mtype, int):
        raise DecodeError(f"{where}.type = {mtype!r} is not an integer", reason="field")
    dev_id = _id(item.get("dev_id"), f"{where}.dev_id", required=True)
    assert dev_id is not None
    status = item.get("status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise DecodeError(f"{where}.status = {status!r} is not an integer", reason="field")
    if mtype == ONENET_DATAPOINT and "value" not in item:
        raise DecodeError(f"{where} is a data point without a value", reason="field")
    return OnenetMessage(
        type=mtype,
        dev_id=dev_id,
        ds_id=_id(item.get("ds_id"), f"{where}.ds_id", required=False),
        at=_ms_to_s(item.get("at"), f"{where}.at"),
        value=item.get("value"),
        imei=_id(item.get("imei"), f"{where}.imei", required=False),
        status=status,
    )


def parse_onenet(body: bytes, rejects: list[DecodeError] | None = None) -> list[OnenetMessage]:
    """Messages of a OneNET push body (signature not checked: see :func:`verify_onenet_body`).

    With ``rejects`` given, a bad message of a batch is appended there and its neighbours are kept;
    without it the first bad message raises. A bad envelope always raises :class:`DecodeError`.
    """
    obj = load_json_object(body, "OneNET push")
    if "msg" not in obj:
        raise DecodeError("OneNET push without msg", reason="field")
    msg = obj["msg"]
    if isinstance(msg, str):
        msg = load_json(msg, "OneNET msg string")
    items = msg if isinstance(msg, list) else [msg]
    out: list[OnenetMessage] = []
    for i, item in enumerate(items):
        try:
            out.append(_onenet_item(i, item))
        except DecodeError as exc:
            if rejects is None:
                raise
            rejects.append(exc)
    return out


def build_onenet_push(token: str, nonce: str, messages: list[dict[str, Any]] | dict[str, Any]) -> bytes:
    """A signed OneNET push body (simulators, tests); ``msg`` is serialised compactly and signed as sent."""
    msg_text = json.dumps(messages, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    sig = onenet_signature(token, nonce, msg_text)
    return (
        '{"msg":' + msg_text + ',"msg_signature":' + json.dumps(sig) + ',"nonce":' + json.dumps(nonce) + "}"
    ).encode()
