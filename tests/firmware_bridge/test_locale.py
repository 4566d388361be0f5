from __future__ import annotations

import pytest

from firmware_bridge.kernel.events import EventType, Severity
from firmware_bridge.kernel.locale import (
    EVENT_LABELS,
    event_label,
    iso,
    lang,
    parse_iso,
    severity_label,
    show,
)
from firmware_bridge.kernel.records import DeviceKind

T = 1_795_000_000.0  # 2026-11-18T11:06:40Z


def test_every_event_has_both_labels() -> None:
    assert set(EVENT_LABELS) == set(EventType)
    assert event_label(EventType.FALL, "zh") == "跌倒"
    assert event_label("fire", "en") == "fire"
    assert severity_label(Severity.HIGH, "zh") == "高"


def test_times_show_in_shanghai_and_iso_carries_the_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_DISPLAY_TZ", raising=False)
    assert show(T) == "2026-11-18 19:06:40"
    assert iso(T) == "2026-11-18T19:06:40+08:00"
    assert parse_iso("2026-11-18T11:06:40+00:00") == T
    assert parse_iso("2026-11-18 19:06:40") == T  # naive = display zone
    monkeypatch.setenv("VIGIL_DISPLAY_TZ", "UTC")
    assert show(T) == "2026-11-18 11:06:40"


@pytest.mark.parametrize(
    ("value", "expected"), [("en_US.UTF-8", "en"), ("zh_CN.UTF-8", "zh"), ("C", "en"), ("", "zh")]
)
def test_language_follows_the_locale(value: str, expected: str) -> None:
    assert lang(value) == expected


def test_kind_enum_unchanged() -> None:
    assert DeviceKind("manhole") is DeviceKind.MANHOLE
