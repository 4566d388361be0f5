"""Encryption at rest of personal data and LoRa session keys, and masking for roles that need less.

What is sealed, who sees what and how the key is managed: docs/privacy.md.

The keys are Fernet keys (AES-128-CBC + HMAC-SHA256, from ``cryptography``) in one key file created at
first start with mode 0600. The keys are never logged and never leave the process; losing the file makes
the encrypted columns unreadable, so back it up with the database (``docs/cloud.md``).

Key rotation (``vigil cloud key ...``, :mod:`cloud.privacy`) keeps several keys in the file, one per line:

==============  ===========================================================================================
``primary K``   seals new values (exactly one); also opens; its blind-index key computes new blind indexes
``next K``      added ahead of a rotation: opens only, so every host can read what the new key will seal
``old K``       a former primary: opens only, until every value is re-sealed and it is retired
``hmac K``      written by versions before the blind index rotated: the key the blind indexes were computed
                under (the file's first key). Only looked up with, until ``reseal`` recomputed every index
                under the primary and ``retire`` drops it; never written any more
==============  ===========================================================================================

A file holding one bare key (what the first start writes, and every file before rotation existed) is that
key as primary. :func:`load_or_create_key` returns a :class:`KeyRing` (``bytes(ring)`` is its primary):
:class:`SecretBox` opens with every key of the ring and seals with the primary (``MultiFernet``);
:class:`BlindIndex` hashes with the primary's blind-index key ``HMAC(K, "vigil/notify/blind-index/v1")`` and
looks up with those of every key of the ring (:attr:`KeyRing.blind_keys`; the first key's is the one every
index was computed under before the index rotated). Message links rotate with the Fernet keys:
:func:`cloud.notify.links.derive_link_key` of a ring signs with the primary's link key and verifies with
those of every key in :attr:`KeyRing.fernet_keys`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from cloud.errors import ConfigError, StorageError

ROLES = ("primary", "next", "old", "hmac")


def key_id(key: bytes) -> str:
    """A short fingerprint naming a key in messages and the audit log (never the key itself)."""
    return hashlib.sha256(bytes(key)).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class KeyEntry:
    role: str
    key: bytes

    def __repr__(self) -> str:  # never show the key
        return f"KeyEntry({self.role}, {key_id(self.key)})"


#: the derivation label of a blind-index key (``HMAC(K, BLIND_LABEL)``); unchanged since the first index
BLIND_LABEL = b"vigil/notify/blind-index/v1"


def blind_key(key: bytes) -> bytes:
    """The blind-index key of the Fernet key ``key`` (as written in the key file)."""
    return hmac.new(bytes(key), BLIND_LABEL, hashlib.sha256).digest()


class KeyRing(bytes):
    """The key file: ``bytes(self)`` is the primary key; ``entries`` every key line in file order."""

    entries: tuple[KeyEntry, ...]

    def __new__(cls, entries: tuple[KeyEntry, ...]) -> KeyRing:
        roots = [e.key for e in entries if e.role == "hmac"]
        primaries = [e.key for e in entries if e.role == "primary"]
        if len(primaries) != 1 or len(roots) > 1:
            raise ConfigError(
                f"a key file needs exactly one primary key and at most one hmac key, "
                f"got {len(primaries)} and {len(roots)}"
            )
        ring = super().__new__(cls, primaries[0])
        ring.entries = entries
        return ring

    def __repr__(self) -> str:
        return f"KeyRing({', '.join(repr(e) for e in self.entries)})"

    @property
    def primary(self) -> bytes:
        return next(e.key for e in self.entries if e.role == "primary")

    @property
    def fernet_keys(self) -> tuple[bytes, ...]:
        """The keys that open, primary first (the order ``MultiFernet`` seals and tries them in)."""
        rest = tuple(e.key for e in self.entries if e.role in ("next", "old"))
        return (self.primary, *rest)

    @property
    def hmac_root(self) -> bytes | None:
        """The ``hmac`` line's key (blind indexes of versions before they rotated), if the file has one."""
        return next((e.key for e in self.entries if e.role == "hmac"), None)

    @property
    def index_keys(self) -> tuple[bytes, ...]:
        """The keys a blind index may have been computed under, primary first: the Fernet keys, then the
        ``hmac`` root if it is none of them."""
        root = self.hmac_root
        keys = self.fernet_keys
        return keys if root is None or root in keys else (*keys, root)

    def role_of(self, key: bytes) -> str:
        return next(e.role for e in self.entries if e.key == key)


def _parse(path: Path, text: str) -> KeyRing:
    entries: list[KeyEntry] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        role, _, key = line.partition(" ") if " " in line else ("primary", "", line)
        key = key.strip()
        if role not in ROLES:
            raise ConfigError(f"secret key file {path} line {n}: unknown role {role!r} (one of {ROLES})")
        try:
            Fernet(key.encode())
        except ValueError as exc:
            raise ConfigError(f"secret key file {path} line {n} does not hold a Fernet key") from exc
        entries.append(KeyEntry(role, key.encode()))
    if not entries:
        raise ConfigError(f"secret key file {path} does not hold a Fernet key")
    try:
        return KeyRing(tuple(entries))
    except ConfigError as exc:
        raise ConfigError(f"secret key file {path}: {exc}") from exc


def load_or_create_key(path: Path) -> KeyRing:
    """Read the key file at ``path``; create it (one new key, 0600, parent dirs 0700) if it is missing."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Fernet.generate_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return load_or_create_key(path)
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
        return KeyRing((KeyEntry("primary", key),))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"secret key file {path} is readable by others (mode {mode:o}); chmod 600 it")
    try:
        text = path.read_text("ascii")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"secret key file {path} does not hold a Fernet key") from exc
    return _parse(path, text)


def write_key_file(path: Path, entries: tuple[KeyEntry, ...]) -> KeyRing:
    """Replace the key file atomically (0600; a crash leaves the old file or the new one, never half)."""
    ring = KeyRing(entries)
    path = Path(path)
    lines = [
        "# Vigil secret keys (docs/privacy.md, Key management): the primary seals, primary/next/old open,",
        "# hmac: blind indexes of before they rotated. Copy this file to every cloud host; never edit it.",
        *(f"{e.role} {e.key.decode('ascii')}" for e in entries),
    ]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".vigil-key-")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:  # mkstemp creates 0600
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return ring


class BlindIndex:
    """Keyed hashes (blind indexes) that find a row by a value not stored in clear (a phone number).

    ``hash`` computes under the primary's blind-index key (what is written); ``candidates`` under every key
    of the ring (what a lookup must try while a rotation is under way: rows written by a host that has
    not restarted yet, or not yet recomputed by ``vigil cloud key reseal``). ``key`` is a :class:`KeyRing`
    or one Fernet key.
    """

    def __init__(self, key: bytes) -> None:
        keys = key.index_keys if isinstance(key, KeyRing) else (bytes(key),)
        self._keys = tuple(blind_key(k) for k in keys)
        self._ids = tuple(key_id(k) for k in keys)

    def __repr__(self) -> str:  # never show a key
        return f"BlindIndex({', '.join(self._ids)})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids (:func:`key_id`) of the ring's keys, in the order of :meth:`candidates`."""
        return self._ids

    def hash(self, value: str) -> str:
        return hmac.new(self._keys[0], value.encode(), hashlib.sha256).hexdigest()

    def candidates(self, value: str) -> list[str]:
        """``value``'s hash under every key of the ring, primary first (one per key)."""
        return [hmac.new(k, value.encode(), hashlib.sha256).hexdigest() for k in self._keys]


class SecretBox:
    """Encrypts a small JSON document (a device's private fields) into one Fernet token.

    ``key`` is a :class:`KeyRing` (seal with its primary, open with any of its keys) or one Fernet key.
    """

    def __init__(self, key: bytes) -> None:
        keys = key.fernet_keys if isinstance(key, KeyRing) else (bytes(key),)
        self._fernets = tuple(Fernet(k) for k in keys)
        self._multi = MultiFernet(list(self._fernets))

    def __repr__(self) -> str:  # never show the key
        return "SecretBox(<redacted>)"

    def seal(self, data: dict[str, Any]) -> str | None:
        clean = {k: v for k, v in data.items() if v not in (None, "")}
        if not clean:
            return None
        return self._multi.encrypt(json.dumps(clean, ensure_ascii=False).encode()).decode("ascii")

    def open(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {}
        try:
            return dict(json.loads(self._multi.decrypt(token.encode("ascii"))))
        except InvalidToken as exc:
            raise StorageError("encrypted device data cannot be read with this key file") from exc

    def sealed_with(self, token: str) -> int | None:
        """Index (in the ring's ``fernet_keys`` order; 0 = primary) of the key that opens ``token``."""
        raw = token.encode("ascii")
        for i, f in enumerate(self._fernets):
            try:
                f.decrypt(raw)
            except InvalidToken:
                continue
            return i
        return None

    def reseal(self, token: str) -> str:
        """``token`` sealed again under the primary key (same plaintext; raises if no key opens it)."""
        try:
            return self._multi.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken as exc:
            raise StorageError("a sealed value cannot be read with this key file") from exc


def mask_name(name: str) -> str:
    """``张三丰`` -> ``张**``; ``Li Lei`` -> ``L*****``."""
    if not name:
        return ""
    return name[0] + "*" * max(len(name) - 1, 1)


def mask_phone(phone: str) -> str:
    """``13812341234`` -> ``138****1234``; short numbers keep at most their last 2 digits."""
    digits = phone.strip()
    if len(digits) >= 11:
        return digits[:3] + "****" + digits[-4:]
    if len(digits) <= 2:
        return "*" * len(digits)
    return "*" * (len(digits) - 2) + digits[-2:]


def mask_address(address: str) -> str:
    """Keep the first third (at most 6 characters: city / district), hide the rest.

    ``北京市海淀区中关村南大街5号楼101`` -> ``北京市海淀***``; ``5号楼101`` -> ``5号***``.
    """
    s = address.strip()
    if not s:
        return ""
    return s[: min(6, len(s) // 3)] + "***"


#: decimal places kept by :func:`coarse_position`: 0.001 deg = 111 m north-south, 85 m east-west at 40 deg N
COARSE_DECIMALS = 3


def coarse_position(deg: float | None) -> float | None:
    """A latitude or longitude snapped to a ~100 m grid (roles that do not dispatch see no more)."""
    return None if deg is None else round(deg, COARSE_DECIMALS)
