"""The exceptions the cloud service raises, and the HTTP status each one maps to.

One small tree so that the HTTP layer, the MQTT worker and the CLI translate errors in one place
(``cloud.app`` turns them into JSON bodies ``{"error": code, "detail": ...}``)::

    CloudError                      500 (a bug or an unexpected state)
    ├── ConfigError                 bad settings or key file; raised at start, never at request time
    ├── BadRequestError             400 input that validates but cannot be used (e.g. a CSV row)
    │   └── ImportRowsError         400 a bulk import with row-level errors (carries ``rows``)
    ├── AuthenticationError         401 missing, unknown, expired or revoked credential
    ├── PermissionDeniedError       403 authenticated but not allowed (carries ``device_ids`` when a
    │                                   gateway wrote for devices that are not assigned to it)
    ├── NotFoundError               404
    ├── ConflictError               409 e.g. a gateway or user that already exists
    ├── PayloadTooLargeError        413
    └── StorageError                503 the database or time-series store failed underneath us
"""

from __future__ import annotations

from collections.abc import Sequence


class CloudError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict[str, object]:
        return {"error": self.code, "detail": self.detail}


class ConfigError(CloudError):
    code = "config"


class BadRequestError(CloudError):
    status_code = 400
    code = "bad_request"


class ImportRowsError(BadRequestError):
    """A bulk import failed; nothing was written. ``rows`` is ``[(line_number, message), ...]``."""

    code = "import_rows"

    def __init__(self, detail: str, rows: Sequence[tuple[int, str]]) -> None:
        super().__init__(detail)
        self.rows = list(rows)

    def body(self) -> dict[str, object]:
        return {**super().body(), "rows": [{"line": n, "message": m} for n, m in self.rows]}


class AuthenticationError(CloudError):
    status_code = 401
    code = "unauthenticated"


class PermissionDeniedError(CloudError):
    status_code = 403
    code = "forbidden"

    def __init__(self, detail: str, *, device_ids: Sequence[str] = ()) -> None:
        super().__init__(detail)
        self.device_ids = sorted(set(device_ids))

    def body(self) -> dict[str, object]:
        out = super().body()
        if self.device_ids:
            out["device_ids"] = self.device_ids
        return out


class NotFoundError(CloudError):
    status_code = 404
    code = "not_found"


class ConflictError(CloudError):
    status_code = 409
    code = "conflict"


class PayloadTooLargeError(CloudError):
    status_code = 413
    code = "payload_too_large"


class StorageError(CloudError):
    status_code = 503
    code = "storage_unavailable"
