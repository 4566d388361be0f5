"""Detection: readings in, alert steps out; pure, vectorised, no I/O.

The gateway daemon (:mod:`edge`) runs it on every batch it decodes; cloud workers can run the same engine
on readings that reach the cloud without a Vigil gateway (operator pushes). ``docs/detection.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DetectionEngine": "alerts.detection.engine",
    "ProfileSet": "alerts.detection.profiles",
    "RULES": "alerts.detection.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alerts.detection' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
