"""Outgoing webhooks, signed so the receiver knows the call is ours and fresh.

Every POST carries::

    X-Vigil-Delivery:  the delivery's dedup key (the receiver drops a second call with the same key)
    X-Vigil-Timestamp: epoch seconds
    X-Vigil-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>

Binding the timestamp into the MAC is what makes replay protection possible: a receiver recomputes the
MAC (:func:`verify`) and refuses timestamps more than ``tolerance_s`` (5 minutes) away from its clock.
The body is JSON: ``{"delivery": key, "title", "lines", "actions": [{"label","url"}], "severity"}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping

import httpx

from cloud.notify.channel import Delivered, Notice, Outcome, request_json

SIGNATURE_HEADER = "X-Vigil-Signature"
TIMESTAMP_HEADER = "X-Vigil-Timestamp"
DELIVERY_HEADER = "X-Vigil-Delivery"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float, tolerance_s: float = 300.0
) -> str:
    """Check a received call; returns ``""`` when valid, else why not (for receivers and tests)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        ts = int(lower.get(TIMESTAMP_HEADER.lower(), ""))
    except ValueError:
        return "missing or malformed timestamp"
    if abs(now - ts) > tolerance_s:
        return "stale timestamp"
    expected = signature(secret, ts, body)
    if not hmac.compare_digest(expected, lower.get(SIGNATURE_HEADER.lower(), "")):
        return "bad signature"
    return ""


class Webhook:
    name = "webhook"

    def __init__(
        self, *, url: str, secret: str, client: httpx.AsyncClient, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._url = url
        self._secret = secret
        self._client = client
        self._wall = wall_clock

    def __repr__(self) -> str:
        return "Webhook(<url redacted>)"

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome:
        body = json.dumps(
            {"delivery": key, **notice.to_json(), "to": to}, ensure_ascii=False, separators=(",", ":")
        ).encode()
        ts = int(self._wall())
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: key,
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: signature(self._secret, ts, body),
        }
        data = await request_json(
            self._client, "POST", self._url, content=body, headers=headers, expect_json=False
        )
        return data if not isinstance(data, dict) else Delivered()
