"""Encryption at rest of personal data and LoRa session keys, and masking for roles that need less.

What is sealed, who sees what and how the key is managed: docs/privacy.md.

The key is a Fernet key (AES-128-CBC + HMAC-SHA256, from ``cryptography``) in a key file created at first
start with mode 0600. The key is never logged and never leaves the process; losing the file makes the
encrypted columns unreadable, so back it up with the database (``docs/cloud.md``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from cloud.errors import ConfigError, StorageError


def load_or_create_key(path: Path) -> bytes:
    """Read the Fernet key at ``path``, creating it (0600, parent dirs 0700) if it does not exist."""
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
        return key
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"secret key file {path} is readable by others (mode {mode:o}); chmod 600 it")
    key = path.read_bytes().strip()
    try:
        Fernet(key)
    except ValueError as exc:
        raise ConfigError(f"secret key file {path} does not hold a Fernet key") from exc
    return key


class SecretBox:
    """Encrypts a small JSON document (a device's private fields) into one Fernet token."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def __repr__(self) -> str:  # never show the key
        return "SecretBox(<redacted>)"

    def seal(self, data: dict[str, Any]) -> str | None:
        clean = {k: v for k, v in data.items() if v not in (None, "")}
        if not clean:
            return None
        return self._fernet.encrypt(json.dumps(clean, ensure_ascii=False).encode()).decode("ascii")

    def open(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {}
        try:
            return dict(json.loads(self._fernet.decrypt(token.encode("ascii"))))
        except InvalidToken as exc:
            raise StorageError("encrypted device data cannot be read with this key file") from exc


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
