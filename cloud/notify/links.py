"""Signed, expiring, single-purpose action links: the responder's and the resident's way in, no app.

A link is ``{public_base_url}/l/{token}``; the token is ``base64url(claims) + "." + base64url(mac)`` with
``mac = HMAC-SHA256(link_key, claims)``. ``link_key`` is derived from the cloud's secret key file
(``HMAC(fernet_key, "vigil/links/v1")``), so there is no second secret to manage and rotating the key
file invalidates every outstanding link. Claims are ids only (no name, phone, address or health data in a
URL: URLs end up in browser histories and proxy logs)::

    {"p": purpose, "i": incident id, "a": actor ("user:7", "group:g01", "case"), "e": expiry, "n": nonce,
     "t": issued at}

Purposes: ``accept``, ``decline``, ``on_the_way``, ``arrived``, ``resolved`` (one action each, single use)
and ``case`` (a resident's link: follow, rate once, reopen within the window). Verification answers why a
link is refused (forged, expired, wrong purpose); use is recorded by :mod:`cloud.notify.actions`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from enum import StrEnum

from cloud.errors import AuthenticationError, BadRequestError


class Purpose(StrEnum):
    ACCEPT = "accept"
    DECLINE = "decline"
    ON_THE_WAY = "on_the_way"
    ARRIVED = "arrived"
    RESOLVED = "resolved"
    CASE = "case"


RESPONDER_PURPOSES = (Purpose.ACCEPT, Purpose.DECLINE, Purpose.ON_THE_WAY, Purpose.ARRIVED, Purpose.RESOLVED)


class LinkError(AuthenticationError):
    """A link that cannot be used: ``code`` is ``forged``, ``expired``, ``used`` or ``malformed``."""

    status_code = 403

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = f"link_{code}"


@dataclass(frozen=True, slots=True)
class LinkClaims:
    purpose: Purpose
    incident_id: str
    actor: str
    expires_at: float
    nonce: str
    issued_at: float


def derive_link_key(fernet_key: bytes) -> bytes:
    return hmac.new(fernet_key, b"vigil/links/v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    def __init__(self, key: bytes, *, base_url: str, ttl_s: float) -> None:
        self._key = key
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s

    def __repr__(self) -> str:
        return f"LinkSigner(base_url={self.base_url!r}, ttl_s={self.ttl_s})"

    def token(
        self, purpose: Purpose, incident_id: str, actor: str, *, now: float, ttl_s: float | None = None
    ) -> str:
        claims = {
            "p": purpose.value,
            "i": incident_id,
            "a": actor,
            "e": round(now + (ttl_s if ttl_s is not None else self.ttl_s), 3),
            "n": secrets.token_hex(8),
            "t": round(now, 3),
        }
        body = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return f"{_b64(body)}.{_b64(mac)}"

    def url(self, token: str) -> str:
        return f"{self.base_url}/l/{token}"

    def verify(self, token: str, *, now: float) -> LinkClaims:
        """The claims of a genuine, unexpired token; :class:`LinkError` saying why not otherwise."""
        body_b64, dot, mac_b64 = token.partition(".")
        if not dot or len(token) > 1024:
            raise LinkError("malformed", "this is not a Vigil link (malformed token)")
        try:
            body, mac = _unb64(body_b64), _unb64(mac_b64)
        except (binascii.Error, ValueError) as exc:
            raise LinkError("malformed", "this is not a Vigil link (malformed token)") from exc
        if not hmac.compare_digest(mac, hmac.new(self._key, body, hashlib.sha256).digest()):
            raise LinkError("forged", "this link was not issued by this Vigil server (signature mismatch)")
        try:
            raw = json.loads(body)
            claims = LinkClaims(
                purpose=Purpose(raw["p"]),
                incident_id=str(raw["i"]),
                actor=str(raw["a"]),
                expires_at=float(raw["e"]),
                nonce=str(raw["n"]),
                issued_at=float(raw["t"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LinkError("malformed", "the link's content cannot be read") from exc
        if now >= claims.expires_at:
            raise LinkError("expired", "this link has expired; ask the dispatcher for a new one")
        return claims


def require_purpose(claims: LinkClaims, *allowed: Purpose) -> None:
    if claims.purpose not in allowed:
        raise BadRequestError(
            f"this link is for {claims.purpose.value!r}, not for this action ({[p.value for p in allowed]})"
        )
