"""The one explicit registry of per-kind detection rules (one line per kind, no folder scanning).

Adding a kind: write ``alerts/detection/<kind>.py`` with the same names as
:mod:`alerts.detection.manhole` (``KIND``, ``PROFILE``, ``STATE``, ``rules``, ``make_detectors``,
``evaluate``), add its profile to :mod:`alerts.detection.profiles`, and add one line below.
``tests/alerts/detection/test_engine.py`` checks every registered kind keeps that shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.alerts.detection.reference import manhole, smoke_alarm, wristband
from tests.alerts.detection.reference.detectors.base import Detector
from tests.alerts.detection.reference.episodes import EpisodeRule
from tests.alerts.detection.reference.rulekit import RuleContext, Verdict


class KindRules(Protocol):
    KIND: DeviceKind
    PROFILE: type[Any]
    STATE: dict[str, tuple[str, float]]
    rules: Callable[[Any], dict[EventType, EpisodeRule]]
    make_detectors: Callable[[Any, int], dict[str, Detector]]
    evaluate: Callable[[RuleContext], dict[EventType, Verdict]]


RULES: Mapping[DeviceKind, Any] = MappingProxyType(
    {
        DeviceKind.MANHOLE: manhole,
        DeviceKind.SMOKE_ALARM: smoke_alarm,
        DeviceKind.WRISTBAND: wristband,
    }
)


def kind_rules(kind: DeviceKind | str) -> Any:
    return RULES[DeviceKind(kind)]
