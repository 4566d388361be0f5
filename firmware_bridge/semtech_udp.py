"""Semtech UDP packet-forwarder protocol (what a LoRa concentrator on a Pi sends to UDP 1700), sans-I/O.

Why: the cheapest LoRa gateway is a Pi with an SX1301/SX1302 HAT running Semtech's ``lora_pkt_fwd``; it
forwards every received radio frame as JSON over UDP. Vigil's gateway listens there directly (no network
server), acknowledges, and hands each ``rxpk`` PHYPayload to :mod:`firmware_bridge.lorawan`.

Datagram layout (Lora-net/packet_forwarder ``PROTOCOL.TXT``)::

    0     version   (1 in protocol v1.x documents, 2 in current forwarders; both accepted)
    1-2   token     random, echoed in the ACK
    3     type      PUSH_DATA 0x00, PUSH_ACK 0x01, PULL_DATA 0x02, PULL_RESP 0x03, PULL_ACK 0x04, TX_ACK 0x05
    4-11  gateway EUI (PUSH_DATA, PULL_DATA, TX_ACK)
    12-   JSON      (PUSH_DATA: {"rxpk": [...], "stat": {...}}; TX_ACK: optional {"txpk_ack": {...}})
    4-    JSON      (PULL_RESP: {"txpk": {...}})

One bad ``rxpk`` (bad base64, size mismatch, radio CRC failed) must not lose its neighbours: it goes to
:attr:`Datagram.rejects` and the good ones are returned. A bad *datagram* header or JSON raises
:class:`DecodeError` (reasons ``"length"``, ``"version"``, ``"type"``, ``"json"``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from firmware_bridge._wirejson import b64decode, b64encode, load_json_object, opt_int, opt_number, opt_str
from firmware_bridge.errors import ChecksumError, DecodeError

PUSH_DATA = 0x00
PUSH_ACK = 0x01
PULL_DATA = 0x02
PULL_RESP = 0x03
PULL_ACK = 0x04
TX_ACK = 0x05
TYPE_NAMES = {PUSH_DATA: "PUSH_DATA", PUSH_ACK: "PUSH_ACK", PULL_DATA: "PULL_DATA", PULL_RESP: "PULL_RESP",
              PULL_ACK: "PULL_ACK", TX_ACK: "TX_ACK"}  # fmt: skip
PROTOCOL_VERSIONS = (1, 2)
DEFAULT_VERSION = 2
_WITH_EUI = (PUSH_DATA, PULL_DATA, TX_ACK)


@dataclass(frozen=True, slots=True)
class Rxpk:
    """One received radio frame: ``data`` is the raw LoRaWAN PHYPayload."""

    data: bytes
    rssi: float | None = None
    lsnr: float | None = None
    freq: float | None = None
    datr: str | None = None
    tmst: int | None = None
    time: str | None = None
    chan: int | None = None
    rfch: int | None = None
    codr: str | None = None
    modu: str | None = None
    crc_status: int | None = None


@dataclass(frozen=True, slots=True)
class Datagram:
    """One parsed UDP datagram. ``rejects`` holds the rxpk entries that could not be used, in order."""

    version: int
    token: int
    type: int
    gateway_eui: bytes | None
    rxpk: list[Rxpk] = field(default_factory=list)
    stat: dict[str, Any] | None = None
    rejects: list[DecodeError] = field(default_factory=list)
    txpk: dict[str, Any] | None = None

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, f"0x{self.type:02x}")

    @property
    def gateway_eui_hex(self) -> str | None:
        return None if self.gateway_eui is None else self.gateway_eui.hex()


def _parse_rxpk(i: int, obj: object) -> Rxpk:
    where = f"rxpk[{i}]"
    if not isinstance(obj, dict):
        raise DecodeError(f"{where} is not a JSON object", reason="rxpk")
    if "data" not in obj:
        raise DecodeError(f"{where} has no data field", reason="rxpk")
    data = b64decode(obj["data"], where)
    size = opt_int(obj, "size")
    if size is not None and size != len(data):
        raise DecodeError(f"{where}: size {size} but data holds {len(data)} bytes", reason="size", data=data)
    crc = opt_int(obj, "stat")
    if crc == -1:
        raise ChecksumError(
            f"{where}: the concentrator reported a radio CRC failure", reason="crc", data=data
        )
    datr = obj.get("datr")
    return Rxpk(
        data=data,
        rssi=opt_number(obj, "rssi"),
        lsnr=opt_number(obj, "lsnr"),
        freq=opt_number(obj, "freq"),
        datr=datr if isinstance(datr, str) else (str(datr) if opt_int(obj, "datr") is not None else None),
        tmst=opt_int(obj, "tmst"),
        time=opt_str(obj, "time"),
        chan=opt_int(obj, "chan"),
        rfch=opt_int(obj, "rfch"),
        codr=opt_str(obj, "codr"),
        modu=opt_str(obj, "modu"),
        crc_status=crc,
    )


def parse_datagram(data: bytes) -> Datagram:
    """Parse one UDP datagram from a packet forwarder (or, for tests, from a server).

    >>> wire = bytes([2, 0x12, 0x34, PUSH_DATA]) + bytes(8) + b'{"rxpk":[{"data":"AAE="},{"data":"%%"}]}'
    >>> d = parse_datagram(wire)
    >>> [r.data for r in d.rxpk], [e.reason for e in d.rejects], build_ack(d).hex()
    ([b'\\x00\\x01'], ['base64'], '02123401')
    """
    data = bytes(data)
    if len(data) < 4:
        raise DecodeError(
            f"datagram of {len(data)} bytes is shorter than its 4-byte header", reason="length", data=data
        )
    version, token, ptype = data[0], int.from_bytes(data[1:3], "big"), data[3]
    if version not in PROTOCOL_VERSIONS:
        raise DecodeError(f"unsupported protocol version {version}", reason="version", data=data[:16])
    if ptype not in TYPE_NAMES:
        raise DecodeError(f"unknown datagram type 0x{ptype:02x}", reason="type", data=data[:16])
    eui: bytes | None = None
    body = data[4:]
    if ptype in _WITH_EUI:
        if len(data) < 12:
            raise DecodeError(
                f"{TYPE_NAMES[ptype]} of {len(data)} bytes has no gateway EUI", reason="length", data=data
            )
        eui, body = data[4:12], data[12:]
    if ptype in (PUSH_ACK, PULL_ACK, PULL_DATA):
        return Datagram(version=version, token=token, type=ptype, gateway_eui=eui)
    if ptype == TX_ACK and not body.strip(b"\x00 \r\n\t"):
        return Datagram(version=version, token=token, type=ptype, gateway_eui=eui)
    obj = load_json_object(body, TYPE_NAMES[ptype])
    if ptype == PULL_RESP:
        txpk = obj.get("txpk")
        if not isinstance(txpk, dict):
            raise DecodeError("PULL_RESP without a txpk object", reason="json")
        return Datagram(version=version, token=token, type=ptype, gateway_eui=eui, txpk=txpk)
    if ptype == TX_ACK:
        ack = obj.get("txpk_ack")
        return Datagram(version=version, token=token, type=ptype, gateway_eui=eui,
                        stat=ack if isinstance(ack, dict) else None)  # fmt: skip
    raw_rxpk = obj.get("rxpk", [])
    if not isinstance(raw_rxpk, list):
        raise DecodeError("PUSH_DATA rxpk is not an array", reason="json")
    stat = obj.get("stat")
    good: list[Rxpk] = []
    rejects: list[DecodeError] = []
    for i, item in enumerate(raw_rxpk):
        try:
            good.append(_parse_rxpk(i, item))
        except DecodeError as exc:
            if exc.data is None:  # keep the offending entry's text so the reject can be logged with it
                exc.data = json.dumps(item)[:256].encode()
            rejects.append(exc)
    return Datagram(
        version=version,
        token=token,
        type=ptype,
        gateway_eui=eui,
        rxpk=good,
        stat=stat if isinstance(stat, dict) else None,
        rejects=rejects,
    )


def _header(version: int, token: int, ptype: int) -> bytes:
    if not 0 <= token <= 0xFFFF:
        raise ValueError(f"token {token} is not 16 bits")
    return bytes([version]) + token.to_bytes(2, "big") + bytes([ptype])


def build_ack(d: Datagram) -> bytes | None:
    """PUSH_ACK for PUSH_DATA, PULL_ACK for PULL_DATA (same version and token); None otherwise."""
    if d.type == PUSH_DATA:
        return _header(d.version, d.token, PUSH_ACK)
    if d.type == PULL_DATA:
        return _header(d.version, d.token, PULL_ACK)
    return None


def ack_for(data: bytes) -> bytes | None:
    """The ACK owed for a raw datagram, from its header only (None when none is owed or it is malformed)."""
    if len(data) < 12 or data[0] not in PROTOCOL_VERSIONS or data[3] not in (PUSH_DATA, PULL_DATA):
        return None
    return bytes([data[0], data[1], data[2], PUSH_ACK if data[3] == PUSH_DATA else PULL_ACK])


def _eui(gateway_eui: bytes) -> bytes:
    if len(gateway_eui) != 8:
        raise ValueError(f"gateway EUI must be 8 bytes, got {len(gateway_eui)}")
    return bytes(gateway_eui)


def rxpk_to_json(r: Rxpk) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("time", "tmst", "chan", "rfch", "freq"):
        v = getattr(r, key)
        if v is not None:
            out[key] = v
    out["stat"] = 1 if r.crc_status is None else r.crc_status
    out["modu"] = r.modu or "LORA"
    out["datr"] = r.datr or "SF7BW125"
    out["codr"] = r.codr or "4/5"
    for key in ("rssi", "lsnr"):
        v = getattr(r, key)
        if v is not None:
            out[key] = v
    out["size"] = len(r.data)
    out["data"] = b64encode(r.data)
    return out


def build_push_data(
    token: int,
    gateway_eui: bytes,
    rxpks: Sequence[Rxpk],
    *,
    stat: dict[str, Any] | None = None,
    version: int = DEFAULT_VERSION,
) -> bytes:
    """A PUSH_DATA datagram as ``lora_pkt_fwd`` would send it (simulated gateways, tests)."""
    obj: dict[str, Any] = {}
    if rxpks:
        obj["rxpk"] = [rxpk_to_json(r) for r in rxpks]
    if stat is not None:
        obj["stat"] = stat
    body = json.dumps(obj, separators=(",", ":")).encode()
    return _header(version, token, PUSH_DATA) + _eui(gateway_eui) + body


def build_pull_data(token: int, gateway_eui: bytes, *, version: int = DEFAULT_VERSION) -> bytes:
    """The keep-alive a forwarder sends every few seconds to keep the downlink route open."""
    return _header(version, token, PULL_DATA) + _eui(gateway_eui)
