"""Signed, expiring, single-purpose action links: the responder's and the resident's way in, no app.

A link is ``{public_base_url}/l/{token}``; the token is ``base64url(claims) + "." + base64url(mac)`` with
``mac = HMAC-SHA256(link_key, claims)``. Claims are ids only (no name, phone, address or health data in a
URL: URLs end up in browser histories and proxy logs)::

    {"p": purpose, "i": incident id, "a": actor ("user:7", "group:g01", "case"), "e": expiry, "n": nonce,
     "t": issued at, "k": key id}

The link keys follow the key file's rotation (``vigil cloud key add | rotate | retire``, docs/privacy.md):
every Fernet key ``K`` of the ring (``primary``, ``next``, ``old``) has its link key
``HMAC(K, "vigil/links/v1")`` and key id ``k`` (the first 8 hex digits of SHA-256 of that link key, which
names the key without revealing anything of it). Links are signed with the **primary**'s link key and
verified with the key their ``k`` names, so a link sent before ``rotate`` keeps working until it expires,
and ``retire`` (which drops the ``old`` keys) voids the links signed under them. A token without ``k``
(issued before key ids existed, always under the key file's first key) is tried against every link key
of the ring: valid while that first key is in the ring, void once it is retired. The ``hmac`` root
(blind indexes) no longer signs links.

Purposes: ``accept``, ``decline``, ``on_the_way``, ``arrived``, ``resolved`` (one action each, single use)
and ``case`` (a resident's link: follow, rate once, reopen within the window). A wearer's family gets a
``case`` link of actor :data:`FAMILY_ACTOR` as a **compact** token (:meth:`LinkSigner.family_token`, 28
characters, no ``.``): short enough for an SMS template parameter, signed with the same link keys (its
2-byte key id picks the candidate keys, so rotation and retirement work as for every link).
Verification answers why a link is refused (forged, expired, wrong purpose); use is recorded by
:mod:`cloud.notify.actions`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
from dataclasses import dataclass
from enum import StrEnum

from cloud.crypto import KeyRing
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


#: the derivation label of a link key (``HMAC(K, LINK_LABEL)``); unchanged since the first links
LINK_LABEL = b"vigil/links/v1"


def _link_key(fernet_key: bytes) -> bytes:
    return hmac.new(bytes(fernet_key), LINK_LABEL, hashlib.sha256).digest()


def link_key_id(link_key: bytes) -> str:
    """The ``k`` claim naming a link key: 8 hex digits of its SHA-256 (reveals nothing of the key)."""
    return hashlib.sha256(bytes(link_key)).hexdigest()[:8]


class LinkKeys(bytes):
    """The link keys of a key file: ``bytes(self)`` signs (the primary's), :attr:`verifiers` (key id ->
    link key) verify: the primary's and those of the ``next`` and ``old`` keys."""

    verifiers: dict[str, bytes]

    def __new__(cls, signing: bytes, others: tuple[bytes, ...] = ()) -> LinkKeys:
        keys = super().__new__(cls, signing)
        keys.verifiers = {link_key_id(k): bytes(k) for k in (signing, *others)}
        return keys

    def __repr__(self) -> str:  # never show a key
        return f"LinkKeys(signing={self.kid}, verifiers={sorted(self.verifiers)})"

    @property
    def kid(self) -> str:
        return link_key_id(self)


def derive_link_key(fernet_key: bytes) -> bytes:
    """The link keys of ``fernet_key``: for a :class:`~cloud.crypto.KeyRing` (the key file), a
    :class:`LinkKeys` signing with its primary and verifying with every key of the ring; for one key, its
    link key."""
    if isinstance(fernet_key, KeyRing):
        others = tuple(_link_key(k) for k in fernet_key.fernet_keys[1:])
        return LinkKeys(_link_key(fernet_key.primary), others)
    return _link_key(fernet_key)


#: the actor of a wearer's family's follow link (a ``case`` link: follow the progress, rate once closed)
FAMILY_ACTOR = "family"
# A compact token (a family's follow link, carried as an SMS template parameter, which providers cap at a
# few dozen characters): base64url of kind (1 byte) | key id (the first 2 bytes of ``k``) | expiry (4,
# UTC seconds) | incident number (5) | HMAC-SHA256(link key, label + those 12 bytes) cut to 9 bytes
# (72 bits: forging one takes ~2^71 online guesses). 21 bytes, 28 characters.
_SHORT_FAMILY = 0x01
_SHORT_KID_BYTES = 2
_SHORT_INCIDENT_BYTES = 5
_SHORT_MAC_BYTES = 9
_SHORT_BYTES = 1 + _SHORT_KID_BYTES + 4 + _SHORT_INCIDENT_BYTES + _SHORT_MAC_BYTES
SHORT_LEN = (8 * _SHORT_BYTES + 5) // 6  # 28: no padding (21 bytes is a multiple of 3)
_SHORT_LABEL = b"vigil/short-links/v1\x00"


def _short_mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, _SHORT_LABEL + body, hashlib.sha256).digest()[:_SHORT_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    """Signs links with the current key and verifies them with every key of the ring (:class:`LinkKeys`);
    ``key`` may also be one link key (it then signs and verifies alone)."""

    def __init__(self, key: bytes, *, base_url: str, ttl_s: float) -> None:
        keys = key if isinstance(key, LinkKeys) else LinkKeys(bytes(key))
        self._key, self._kid = bytes(keys), keys.kid
        self._verifiers = dict(keys.verifiers)
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s

    def __repr__(self) -> str:
        return f"LinkSigner(base_url={self.base_url!r}, ttl_s={self.ttl_s}, key={self._kid})"

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
            "k": self._kid,
        }
        body = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return f"{_b64(body)}.{_b64(mac)}"

    def url(self, token: str) -> str:
        return f"{self.base_url}/l/{token}"

    def family_token(self, incident_id: str, *, now: float, ttl_s: float | None = None) -> str:
        """A wearer's family's follow link for a loop incident: the compact token (:data:`SHORT_LEN`
        characters, ``[A-Za-z0-9_-]``) an SMS template parameter can carry. It verifies as a ``case``
        link of actor :data:`FAMILY_ACTOR` (follow and rate; never reopen, never a position)."""
        number = int(incident_id) if incident_id.isdigit() else -1
        if not 0 < number < 2 ** (8 * _SHORT_INCIDENT_BYTES):
            raise ValueError("a family link names a loop incident by its number")
        expires = math.ceil(now + (ttl_s if ttl_s is not None else self.ttl_s))
        body = (
            bytes([_SHORT_FAMILY])
            + bytes.fromhex(self._kid[: 2 * _SHORT_KID_BYTES])
            + expires.to_bytes(4, "big")
            + number.to_bytes(_SHORT_INCIDENT_BYTES, "big")
        )
        return _b64(body + _short_mac(self._key, body))

    def _verify_short(self, token: str, *, now: float) -> LinkClaims:
        """The claims of a compact token (:meth:`family_token`); :class:`LinkError` saying why not."""
        try:
            raw = _unb64(token) if len(token) == SHORT_LEN else b""
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != _SHORT_BYTES or raw[0] != _SHORT_FAMILY:
            raise LinkError("malformed", "this is not a Vigil link (malformed token)")
        body, mac = raw[:-_SHORT_MAC_BYTES], raw[-_SHORT_MAC_BYTES:]
        kid = body[1 : 1 + _SHORT_KID_BYTES].hex()
        keys = [k for key_id, k in self._verifiers.items() if key_id.startswith(kid)]
        if not keys:
            raise LinkError(
                "forged",
                "this link was signed with a key this Vigil server no longer holds (retired) or never held; "
                "ask the dispatcher for a new one",
            )
        genuine = False
        for key in keys:  # every candidate is computed: no early exit on a match
            genuine |= hmac.compare_digest(mac, _short_mac(key, body))
        if not genuine:
            raise LinkError("forged", "this link was not issued by this Vigil server (signature mismatch)")
        at = 1 + _SHORT_KID_BYTES
        expires = float(int.from_bytes(body[at : at + 4], "big"))
        number = int.from_bytes(body[at + 4 :], "big")
        if now >= expires:
            raise LinkError("expired", "this link has expired; ask the dispatcher for a new one")
        return LinkClaims(
            purpose=Purpose.CASE,
            incident_id=str(number),
            actor=FAMILY_ACTOR,
            expires_at=expires,
            nonce=mac.hex(),
            issued_at=0.0,  # not carried (a family link cannot reopen, the one use of issued_at)
        )

    def _keys_for(self, body: bytes) -> list[bytes]:
        """The link keys that may have signed ``body``: the one its ``k`` names, or every key (no ``k``)."""
        try:
            kid = json.loads(body).get("k")
        except (ValueError, AttributeError, RecursionError):  # not a JSON object: no key will match
            kid = None
        if kid is None:
            return list(self._verifiers.values())
        key = self._verifiers.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise LinkError(
                "forged",
                "this link was signed with a key this Vigil server no longer holds (retired) or never held; "
                "ask the dispatcher for a new one",
            )
        return [key]

    def verify(self, token: str, *, now: float) -> LinkClaims:
        """The claims of a genuine, unexpired token; :class:`LinkError` saying why not otherwise."""
        body_b64, dot, mac_b64 = token.partition(".")
        if not dot and len(token) == SHORT_LEN:
            return self._verify_short(token, now=now)
        if not dot or len(token) > 1024:
            raise LinkError("malformed", "this is not a Vigil link (malformed token)")
        try:
            body, mac = _unb64(body_b64), _unb64(mac_b64)
        except (binascii.Error, ValueError) as exc:
            raise LinkError("malformed", "this is not a Vigil link (malformed token)") from exc
        genuine = False
        for key in self._keys_for(body):  # every candidate is computed: no early exit on a match
            genuine |= hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest())
        if not genuine:
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
