"""Operational database: models, sessions and migrations (``cloud/migrations``)."""

from cloud.db.migrate import upgrade_head
from cloud.db.models import (
    Alert,
    AlertStep,
    ApiToken,
    Base,
    Device,
    Gateway,
    IngestedBatch,
    RegistryGeneration,
    User,
)
from cloud.db.session import Database

__all__ = [
    "Alert",
    "AlertStep",
    "ApiToken",
    "Base",
    "Database",
    "Device",
    "Gateway",
    "IngestedBatch",
    "RegistryGeneration",
    "User",
    "upgrade_head",
]
