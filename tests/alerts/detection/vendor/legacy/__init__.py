"""The rule set before issue 10, frozen, so a benchmark can run it beside the current one on the same frames.

``RULES`` has the registry's shape: ``DetectionEngine(rules=RULES)`` runs the old decisions.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from firmware_bridge.kernel.records import DeviceKind
from tests.alerts.detection.vendor.legacy import manhole, smoke_alarm, wristband

RULES: MappingProxyType[DeviceKind, Any] = MappingProxyType(
    {DeviceKind.MANHOLE: manhole, DeviceKind.SMOKE_ALARM: smoke_alarm, DeviceKind.WRISTBAND: wristband}
)
