"""The one explicit registry of per-kind detection rules (one line per kind, no folder scanning).

Adding a kind: write ``edge/<kind>.py`` with the same names as :mod:`edge.manhole` (``KIND``, ``PROFILE``,
``STATE``, ``rules``, ``make_detectors``, ``evaluate``), add its profile to :mod:`edge.profiles`, and add
one line below. ``tests/edge/test_engine.py`` checks every registered kind keeps that shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from alerts.events import EventType
from edge import manhole, smoke_alarm, wristband
from edge.detectors.base import Detector
from edge.episodes import EpisodeRule
from edge.rulekit import RuleContext, Verdict
from firmware_bridge.records import DeviceKind


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
