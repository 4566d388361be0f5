"""Strict JSON helpers shared by the JSON wire formats (Semtech UDP, ChirpStack, CTWing, OneNET).

Why a helper: ``json.loads`` on hostile input can raise ``UnicodeDecodeError``, ``ValueError`` *or*
``RecursionError`` (deeply nested arrays), and Python's ``base64`` silently skips junk characters unless
told otherwise. Every decoder in this package must raise only :class:`DecodeError`, so the translation
lives in one place.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from firmware_bridge.errors import DecodeError

_MAX_JSON_BYTES = 1 << 20


def load_json(data: bytes | str, what: str) -> Any:
    """Parse JSON text or raise :class:`DecodeError` (reason ``"json"``); NaN/Infinity are refused."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > _MAX_JSON_BYTES:
        raise DecodeError(
            f"{what}: {len(raw)} bytes of JSON exceeds {_MAX_JSON_BYTES}", reason="length", data=raw[:64]
        )
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError(
            f"{what}: not valid JSON ({exc.__class__.__name__})", reason="json", data=raw[:256]
        ) from exc


def load_json_object(data: bytes | str, what: str) -> dict[str, Any]:
    obj = load_json(data, what)
    if not isinstance(obj, dict):
        raise DecodeError(f"{what}: expected a JSON object, got {type(obj).__name__}", reason="json")
    return obj


def _refuse_constant(name: str) -> float:
    raise ValueError(f"JSON constant {name} is not allowed")


def b64decode(text: object, what: str) -> bytes:
    """Strict standard-alphabet base64; missing ``=`` padding is tolerated (several forwarders omit it)."""
    if not isinstance(text, str):
        raise DecodeError(
            f"{what}: base64 field must be a string, got {type(text).__name__}", reason="base64"
        )
    s = text.strip()
    if len(s) % 4 == 1:
        raise DecodeError(f"{what}: base64 text of length {len(s)} is impossible", reason="base64")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"{what}: invalid base64 {text[:40]!r}", reason="base64") from exc


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def opt_number(obj: dict[str, Any], key: str) -> float | None:
    """A finite JSON number (not a bool) or None when absent/ill-typed."""
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def opt_int(obj: dict[str, Any], key: str) -> int | None:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        return None
    return v


def opt_str(obj: dict[str, Any], key: str) -> str | None:
    v = obj.get(key)
    return v if isinstance(v, str) else None
