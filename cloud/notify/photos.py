"""Photos attached to a resolution or a resident's report: sniffed, size-limited, stored in the database.

The content type is decided by the file's first bytes (JPEG, PNG, WebP), never by the client's header or
file name; anything else is refused with a reason. Photos are served only to signed-in console users.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from cloud.db import Database
from cloud.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from cloud.notify.models import Photo


def sniff(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class PhotoStore:
    def __init__(self, db: Database, *, max_bytes: int) -> None:
        self.db = db
        self.max_bytes = max_bytes

    def check(self, data: bytes) -> str:
        """The content type of an acceptable photo; raises with the reason otherwise."""
        if len(data) > self.max_bytes:
            raise PayloadTooLargeError(
                f"photo is {len(data) / 1e6:.1f} MB; the limit is {self.max_bytes / 1e6:.1f} MB"
            )
        if len(data) < 64:
            raise BadRequestError("photo is empty or truncated")
        kind = sniff(data)
        if kind is None:
            raise BadRequestError("photo is not an image (JPEG, PNG or WebP expected)")
        return kind

    def store(self, data: bytes, *, incident_id: str, now: float) -> str:
        kind = self.check(data)
        photo_id = secrets.token_hex(12)
        with self.db.write() as s:
            s.add(
                Photo(
                    id=photo_id,
                    incident_id=incident_id,
                    content_type=kind,
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    data=data,
                    created_at=now,
                )
            )
        return photo_id

    def get(self, photo_id: str) -> tuple[str, bytes]:
        with self.db.read() as s:
            p = s.get(Photo, photo_id)
            if p is None:
                raise NotFoundError(f"no photo {photo_id!r}")
            return p.content_type, p.data

    def meta(self, photo_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            p = s.get(Photo, photo_id)
            if p is None:
                raise NotFoundError(f"no photo {photo_id!r}")
            return {"id": p.id, "content_type": p.content_type, "size": p.size, "incident_id": p.incident_id}
