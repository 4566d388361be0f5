"""The Vigil cloud service: ingest, device registry, gateway identity, time series, alerts API.

Public API (``docs/cloud.md``)::

    from cloud import CloudSettings, create_app

    app = create_app(CloudSettings.from_env())    # a FastAPI app; `vigil cloud` serves it with uvicorn

Every exception the service raises on purpose is a :class:`CloudError` (:mod:`cloud.errors`), each with
its HTTP status. Exports are lazy (PEP 562): importing ``cloud`` (or ``vigil --help``, or a gateway-only
install) loads neither FastAPI nor SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "cloud.app",
    "CloudSettings": "cloud.settings",
    "AuthenticationError": "cloud.errors",
    "BadRequestError": "cloud.errors",
    "CloudError": "cloud.errors",
    "ConfigError": "cloud.errors",
    "ConflictError": "cloud.errors",
    "ImportRowsError": "cloud.errors",
    "NotFoundError": "cloud.errors",
    "PayloadTooLargeError": "cloud.errors",
    "PermissionDeniedError": "cloud.errors",
    "StorageError": "cloud.errors",
    "AlertSink": "cloud.ingest",
    "IngestService": "cloud.ingest",
    "NullAlertSink": "cloud.ingest",
    "Registry": "cloud.registry",
    "Credentials": "cloud.auth",
    "Database": "cloud.db",
    "upgrade_head": "cloud.db",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cloud' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
