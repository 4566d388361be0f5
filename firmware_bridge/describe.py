"""What is in this frame? Decode any wire format Vigil meets into a JSON-ready description.

The engine behind ``vigil frame decode`` (:mod:`firmware_bridge.cli`), kept apart from argparse so a
dashboard or a support tool can show the same description. It runs the same sans-I/O decoders the gateway
runs, so "it describes" means "the gateway decodes it".

Transport formats (lorawan, semtech, chirpstack, nbiot, ctwing, onenet, link) carry a device payload; with
``payload="auto"`` it is decoded as a Vigil payload when its header says so and shown as hex (and text,
when printable) otherwise. A frame that does not decode raises :class:`DecodeError`; options that cannot
work (a malformed key) raise :class:`OptionError`. Inside a multi-frame container (a Semtech datagram, a
OneNET batch) one bad frame is reported next to its neighbours instead of failing them all.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from firmware_bridge.registry import KINDS

__all__ = [
    "FORMATS",
    "PAYLOAD_KINDS",
    "TEXT_FORMATS",
    "DescribeOptions",
    "OptionError",
    "describe",
    "jsonable",
    "reading_json",
]

PAYLOAD_KINDS = tuple(k.value for k in KINDS)
"""Every registered kind is a format of its own (and ``vigil`` picks one by the kind byte)."""
FORMATS = (
    "vigil",
    *PAYLOAD_KINDS,
    "cayenne",
    "lorawan",
    "semtech",
    "chirpstack",
    "nbiot",
    "ctwing",
    "onenet",
    "link",
)
TEXT_FORMATS = frozenset({"chirpstack", "nbiot", "ctwing", "onenet"})
"""Formats whose FRAME is text (JSON or an AT line) rather than hex / base64 bytes."""


class OptionError(ValueError):
    """An option cannot work (e.g. a malformed key): the caller's mistake, not the frame's."""


@dataclass(frozen=True)
class DescribeOptions:
    """How to describe a frame; the field names are ``vigil frame decode``'s options."""

    payload: str = "auto"  # auto | vigil | cayenne | raw: how to read a payload inside a transport
    device_id: str | None = None  # bare payloads and LoRaWAN (DevEUI); other transports carry their own
    time: float | None = None  # UTC epoch seconds to stamp; default: the transport's time, else now
    nwk_skey: str | None = None  # LoRaWAN keys, hex
    app_skey: str | None = None
    dev_addr: str | None = None
    fcnt_last: int | None = None
    framing: Literal["slip", "cobs"] = "slip"  # link framing

    def __post_init__(self) -> None:
        if self.payload not in ("auto", "vigil", "cayenne", "raw"):
            raise OptionError(f"payload mode {self.payload!r} is not auto, vigil, cayenne or raw")
        if self.framing not in ("slip", "cobs"):
            raise OptionError(f"framing {self.framing!r} is not slip or cobs")
        if self.time is not None and not (math.isfinite(self.time) and self.time >= 0):
            raise OptionError(f"time {self.time!r} is not a UTC epoch time")


def describe(fmt: str, data: bytes | str, opts: DescribeOptions | None = None) -> dict[str, Any]:
    """Describe one frame of format ``fmt``: bytes for the binary formats, text for :data:`TEXT_FORMATS`.

    The result may hold NaN and bytes; pass it through :func:`jsonable` before ``json.dumps``.
    """
    if fmt not in _DECODERS:
        raise OptionError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if (fmt in TEXT_FORMATS) != isinstance(data, str):
        raise TypeError(f"format {fmt} takes {'text' if fmt in TEXT_FORMATS else 'bytes'}")
    return _DECODERS[fmt](data, opts or DescribeOptions())


def _hex_key(value: str | None, name: str) -> bytes | None:
    if value is None:
        return None
    try:
        key = bytes.fromhex(value.strip().removeprefix("0x"))
    except ValueError:
        raise OptionError(f"--{name} is not hex") from None
    if len(key) != 16:
        raise OptionError(f"--{name} must be 16 bytes (32 hex digits), got {len(key)}")
    return key


# -- output helpers ---------------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """NaN/inf -> null (JSON has no NaN), bytes -> hex, tuples -> lists, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, bytes | bytearray):
        return obj.hex()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def reading_json(reading: Any, payload: bytes) -> dict[str, Any]:
    """A decoded Vigil reading as the CLI prints it (see ``docs/payloads.md``)."""
    import numpy as np

    from firmware_bridge.registry import spec

    s = spec(reading.kind)
    rec = np.frombuffer(payload, dtype=s.codec.dtype, count=1)[0]
    known = sum(f.mask for f in s.flags)
    out: dict[str, Any] = {
        "kind": reading.kind.value,
        "device_id": reading.device_id,
        "time": reading.time,
        "seq": reading.seq,
        "battery_pct": reading.battery_pct,
        "fw_version": f"{reading.fw_version >> 8}.{reading.fw_version & 0xFF}",
        "flags": [f.name for f in s.flags if reading.flags & f.mask],
        "flags_raw": f"0x{reading.flags:04x}",
        "values": dict(zip(s.channel_names, reading.values, strict=True)),
        "units": {c.name: c.unit for c in s.channels},
    }
    if reading.flags & ~known:
        out["unknown_flag_bits"] = [b for b in range(16) if reading.flags & ~known & (1 << b)]
    bad = {
        c.name: {"raw": int(rec[c.name]), "valid_range": [c.low, c.high]}
        for c, v in zip(s.channels, reading.values, strict=True)
        if math.isnan(v)
    }
    if bad:
        out["out_of_range"] = bad
    return out


def _now(opts: DescribeOptions, fallback: float | None = None) -> float:
    if opts.time is not None:
        return float(opts.time)
    return fallback if fallback is not None else _time.time()


def _payload(
    payload: bytes, opts: DescribeOptions, device_id: str | None, t: float | None = None
) -> dict[str, Any]:
    """The device payload inside a transport frame, decoded as ``--payload`` says.

    The transport's own device id wins over ``--device-id``, which only fills in where there is none.
    """
    from firmware_bridge import cayenne
    from firmware_bridge.errors import DecodeError
    from firmware_bridge.registry import decode_payload

    out: dict[str, Any] = {"payload_hex": payload.hex()}
    if payload and all(0x20 <= b < 0x7F for b in payload):
        out["payload_text"] = payload.decode("ascii")
    mode = opts.payload
    if mode in ("auto", "vigil"):
        try:
            r = decode_payload(
                payload, device_id=device_id or opts.device_id or "unknown", time=_now(opts, t)
            )
            return {**out, "decoded_as": "vigil", "reading": reading_json(r, payload)}
        except DecodeError as exc:
            if mode == "vigil":
                raise
            out["not_vigil"] = str(exc)
    if mode == "cayenne":
        lpp = cayenne.decode(payload)
        return {**out, "decoded_as": "cayenne", "cayenne": [_lpp_json(v) for v in lpp]}
    return {**out, "decoded_as": "raw"}


def _lpp_json(v: Any) -> dict[str, Any]:
    return {"channel": v.channel, "type": f"0x{v.type:02x}", "name": v.name, "value": v.value}


# -- one function per format ------------------------------------------------------------------------------
def _vigil(kind: str | None) -> Callable[[bytes, DescribeOptions], dict[str, Any]]:
    def decode(data: bytes, opts: DescribeOptions) -> dict[str, Any]:
        from firmware_bridge.registry import kind_of_payload, spec

        codec = spec(kind if kind is not None else kind_of_payload(data)).codec
        r = codec.decode(data, device_id=opts.device_id or "unknown", time=_now(opts))
        return {"format": "vigil", "payload_hex": data.hex(), **reading_json(r, data)}

    return decode


def _cayenne(data: bytes, opts: DescribeOptions) -> dict[str, Any]:
    from firmware_bridge import cayenne

    return {"format": "cayenne", "values": [_lpp_json(v) for v in cayenne.decode(data)]}


def _lorawan_fields(data: bytes, opts: DescribeOptions) -> dict[str, Any]:
    """Verify + decrypt with keys; without keys, show the parsed (still encrypted) frame."""
    from firmware_bridge import lorawan

    nwk, app = _hex_key(opts.nwk_skey, "nwk-skey"), _hex_key(opts.app_skey, "app-skey")
    frame = lorawan.parse_phy_payload(data)
    head = {
        "mtype": lorawan.MType(frame.mtype).name.lower(),
        "dev_addr": frame.dev_addr_hex,
        "adr": frame.adr,
        "ack": frame.ack,
        "fopts_hex": frame.fopts.hex(),
        "fport": frame.fport,
    }
    if nwk is None and app is None:
        return {
            **head,
            "fcnt16": frame.fcnt16,
            "mic_hex": frame.mic.hex(),
            "verified": False,
            "frm_payload_encrypted_hex": frame.frm_payload.hex(),
        }
    if nwk is None or app is None:
        raise OptionError("give both --nwk-skey and --app-skey (or neither, to parse without verifying)")
    try:
        dev_addr = int(opts.dev_addr, 16) if opts.dev_addr else frame.dev_addr
        keys = lorawan.LoRaWANKeys(dev_addr, nwk, app)
    except ValueError as exc:
        raise OptionError(f"--dev-addr: {exc}") from None
    up = lorawan.decode_uplink(data, keys, opts.fcnt_last)
    return {
        **head,
        "fcnt": up.fcnt,
        "confirmed": up.confirmed,
        "verified": True,
        # a DevAddr is a session address, not an identity: the caller's DevEUI wins when given
        **_payload(up.payload, opts, device_id=opts.device_id or f"{up.dev_addr:08x}"),
    }


def _lorawan(data: bytes, opts: DescribeOptions) -> dict[str, Any]:
    return {"format": "lorawan", **_lorawan_fields(data, opts)}


def _semtech(data: bytes, opts: DescribeOptions) -> dict[str, Any]:
    from firmware_bridge import semtech_udp
    from firmware_bridge.errors import DecodeError

    d = semtech_udp.parse_datagram(data)
    rxpk = []
    for r in d.rxpk:
        item: dict[str, Any] = {k: getattr(r, k) for k in ("rssi", "lsnr", "freq", "datr", "tmst", "time")}
        item["phy_payload_hex"] = r.data.hex()
        try:
            item["lorawan"] = _lorawan_fields(r.data, opts)
        except DecodeError as exc:  # one bad radio frame never hides its neighbours
            item["error"] = f"{exc} [{exc.reason}]"
        rxpk.append(item)
    ack = semtech_udp.build_ack(d)
    return {
        "format": "semtech",
        "version": d.version,
        "token": d.token,
        "type": d.type_name,
        "gateway_eui": d.gateway_eui_hex,
        "rxpk": rxpk,
        "rejects": [str(e) for e in d.rejects],
        "stat": d.stat,
        "txpk": d.txpk,
        "ack_hex": ack.hex() if ack else None,
    }


def _chirpstack(text: str, opts: DescribeOptions) -> dict[str, Any]:
    from firmware_bridge import chirpstack

    up = chirpstack.parse_uplink(text)
    return {
        "format": "chirpstack",
        "dev_eui": up.dev_eui,
        "device_name": up.device_name,
        "application_id": up.application_id,
        "f_cnt": up.f_cnt,
        "f_port": up.f_port,
        "time": up.time,
        "deduplication_id": up.deduplication_id,
        "best_rssi": up.best_rssi,
        "rx_info": [{"gateway_id": r.gateway_id, "rssi": r.rssi, "snr": r.snr} for r in up.rx_info],
        "object": up.object,
        "tags": up.tags,
        **_payload(up.data, opts, device_id=up.dev_eui, t=up.time),
    }


def _nbiot(text: str, opts: DescribeOptions) -> dict[str, Any]:
    """What a gateway's ``framing = "nbiot"`` source reads: the same :class:`LinkUrcDecoder`."""
    from firmware_bridge import nbiot
    from firmware_bridge.errors import DecodeError

    reasons: list[str] = []
    dec = nbiot.LinkUrcDecoder(on_reject=lambda reason, raw: reasons.append(reason))
    events = dec.feed(text.strip().encode("utf-8", "replace") + b"\r\n")
    payloads, reads = [], []
    for ev in events:
        if isinstance(ev, nbiot.ReadRequest):
            reads.append(
                {"socket": ev.socket, "length": ev.length, "command": nbiot.read_command(ev).decode().strip()}
            )
        else:
            payloads.append(
                {
                    "path": ev.path,
                    "socket": ev.socket,
                    "remote_ip": ev.remote_ip,
                    "remote_port": ev.remote_port,
                    "device_id": ev.device_id,
                    **_payload(ev.payload, opts, ev.device_id),
                }
            )
    if not events:
        if reasons:
            why = {
                "short": "its data is too short for a link body device_id(8) | payload | CRC-16(2)",
                "crc": "the link body's CRC-16 does not match",
            }.get(reasons[0], reasons[0])
            raise DecodeError(
                f"not a URC a gateway accepts ({why}): {text.strip()[:60]!r}", reason=reasons[0]
            )
        raise DecodeError(f"no NB-IoT data URC in {text.strip()[:60]!r}", reason="urc")
    return {"format": "nbiot", "payloads": payloads, "read_requests": reads}


def _ctwing(text: str, opts: DescribeOptions) -> dict[str, Any]:
    from firmware_bridge import operator_push

    m = operator_push.parse_ctwing(text.encode("utf-8", "surrogatepass"))
    out = {
        "format": "ctwing",
        "message_type": m.message_type,
        "device_id": m.device_id,
        "imei": m.imei,
        "vigil_device_id": m.vigil_device_id,  # the link framing's rendering of the IMEI
        "product_id": m.product_id,
        "timestamp": m.timestamp,
        "online": m.online,
        "service_data": m.service_data,
    }
    if m.payload is not None:
        out.update(_payload(m.payload, opts, device_id=m.imei or m.device_id, t=m.timestamp))
    return out


def _onenet(text: str, opts: DescribeOptions) -> dict[str, Any]:
    from firmware_bridge import operator_push
    from firmware_bridge.errors import DecodeError

    rejects: list[DecodeError] = []
    messages = []
    for m in operator_push.parse_onenet(text.encode("utf-8", "surrogatepass"), rejects):
        item: dict[str, Any] = {
            "type": m.type,
            "dev_id": m.dev_id,
            "ds_id": m.ds_id,
            "at": m.at,
            "imei": m.imei,
            "vigil_device_id": m.vigil_device_id,  # the link framing's rendering of the IMEI
            "online": m.online,
        }
        raw = m.payload_bytes()
        item.update(
            _payload(raw, opts, m.imei or m.dev_id, t=m.at) if raw is not None else {"value": m.value}
        )
        messages.append(item)
    return {"format": "onenet", "messages": messages, "rejects": [f"{e} [{e.reason}]" for e in rejects]}


def _link(data: bytes, opts: DescribeOptions) -> dict[str, Any]:
    from firmware_bridge import framing

    f = framing.decode_frame(data, framing=opts.framing)
    return {
        "format": "link",
        "framing": opts.framing,
        "device_id": f.device_id,
        **_payload(f.payload, opts, device_id=f.device_id),
    }


_DECODERS: dict[str, Callable[[Any, DescribeOptions], dict[str, Any]]] = {
    "vigil": _vigil(None),
    **{k: _vigil(k) for k in PAYLOAD_KINDS},
    "cayenne": _cayenne,
    "lorawan": _lorawan,
    "semtech": _semtech,
    "chirpstack": _chirpstack,
    "nbiot": _nbiot,
    "ctwing": _ctwing,
    "onenet": _onenet,
    "link": _link,
}
