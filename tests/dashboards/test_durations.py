"""Waits and shifts in words as people say them (dashboards/admin.py ``duration``): "1 day", not "1 days"
(the roster page said "hands over every 1 days")."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from dashboards.admin import duration
from dashboards.i18n import Translator


def test_durations_in_both_languages() -> None:
    en = Translator("en", ZoneInfo("Asia/Shanghai"))
    zh = Translator("zh", ZoneInfo("Asia/Shanghai"))
    got = [duration(s, en) for s in (30, 300, 7200, 86400, 172800)]
    assert got == ["30 s", "5 min", "2 h", "1 day", "2 days"]
    assert [duration(s, zh) for s in (86400, 172800)] == ["1 天", "2 天"]
