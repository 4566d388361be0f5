"""The console's words, Chinese first: JSON catalogs per language plus the kernel's event/kind labels.

Catalogs live in ``dashboards/locales/<lang>.json`` (``zh-CN`` and ``en``), one flat key space; the event,
severity and kind names come from :mod:`firmware_bridge.kernel.locale` so the console, the CLI and the
notifications say the same thing. A missing key shows as the key itself (visible, never a crash); a
test keeps the catalogs' key sets equal.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from zoneinfo import ZoneInfo

from alerts.loop.routing import DEPARTMENTS, ROLES
from alerts.loop.stages import Stage
from firmware_bridge.kernel import locale
from firmware_bridge.kernel.locale import Lang

CATALOG_FILES: dict[Lang, str] = {"zh": "zh-CN.json", "en": "en.json"}
HTML_LANG: dict[Lang, str] = {"zh": "zh-CN", "en": "en"}


@functools.cache
def catalog(language: Lang) -> dict[str, str]:
    text = resources.files("dashboards").joinpath("locales", CATALOG_FILES[language]).read_text("utf-8")
    data: dict[str, str] = json.loads(text)
    return data


def parse_lang(value: str | None) -> Lang:
    """The console's language from a cookie or ``Accept-Language``: Chinese unless English is asked for."""
    if not value:
        return "zh"
    return "en" if value.strip().lower().startswith("en") else "zh"


@dataclass(frozen=True, slots=True)
class Translator:
    """Everything a template needs to speak one language in one display zone."""

    lang: Lang
    zone: ZoneInfo

    @property
    def html_lang(self) -> str:
        return HTML_LANG[self.lang]

    @property
    def sep(self) -> str:
        """Between the items of a list: 「、」 in Chinese, ", " in English."""
        return ", " if self.lang == "en" else "、"

    def __call__(self, key: str, **kw: object) -> str:
        text = catalog(self.lang).get(key, key)
        return text.format(**kw) if kw else text

    def event(self, event_type: str) -> str:
        try:
            return locale.event_label(event_type, self.lang)
        except ValueError:
            return event_type

    def severity(self, severity: int | str) -> str:
        try:
            return locale.severity_label(severity, self.lang)
        except (ValueError, KeyError):
            return str(severity)

    def kind(self, kind: str) -> str:
        if kind == "gateway":
            return self("col.gateway")
        try:
            return locale.kind_label(kind, self.lang)
        except ValueError:
            return kind

    def stage(self, stage: str) -> str:
        """A work-order stage (``registered`` ...) in this language (alerts.loop.stages' labels)."""
        try:
            return Stage(stage).label(self.lang)
        except ValueError:
            return stage

    def channel(self, name: str) -> str:
        """A reading channel (``tilt_deg`` ...) in this language: the catalog's ``reading.<name>``, else the
        machine name (a channel added to a kind before its words)."""
        label = catalog(self.lang).get("reading." + name)
        return label if label is not None else name

    def unit(self, unit: str) -> str:
        """A channel's unit: symbols (°, cm, ppm) as they are, words in this language (``s`` -> 秒)."""
        return catalog(self.lang).get("unit." + unit, unit)

    def role(self, role: str) -> str:
        """A routing role (``grid_worker`` ...) in this language (alerts.loop.routing's labels)."""
        return ROLES[role][self.lang == "en"] if role in ROLES else role

    def group(self, by: str, value: str) -> str:
        """A KPI group's name: a department's or device kind's label; "unassigned" for an empty one."""
        if not value or value == "-":
            return self("kpi.unassigned")
        if by == "department" and value in DEPARTMENTS:
            return DEPARTMENTS[value][self.lang == "en"]
        if by == "kind":
            return self.kind(value)
        return value

    def time(self, ts: float | None) -> str:
        """``2026-11-26 19:09:00`` in the display zone; an em dash for "never"."""
        return "—" if ts is None else locale.show(ts, self.zone)

    def when(self, value: float | str | None) -> str:
        """A time from the API (epoch seconds or ISO-8601 with an offset) as people read it."""
        if value is None or value == "":
            return "—"
        if isinstance(value, str):
            try:
                return locale.show(locale.parse_iso(value), self.zone)
            except ValueError:
                return value
        return locale.show(float(value), self.zone)

    def clock(self, ts: float | str | None, now: float | None = None) -> str:
        """``06:57`` for a time today in the display zone, ``11-26 06:57`` for an earlier day: the queue's
        short time (the full one is in the ``<time datetime>`` beside it). ISO-8601 strings are read too."""
        if isinstance(ts, str):
            try:
                ts = locale.parse_iso(ts) if ts else None
            except ValueError:
                return str(ts)
        if ts is None or ts <= 0:
            return "—"
        when = datetime.fromtimestamp(ts, self.zone)
        today = datetime.fromtimestamp(time.time() if now is None else now, self.zone).date()
        return when.strftime("%H:%M") if when.date() == today else when.strftime("%m-%d %H:%M")

    def age(self, seconds: float | None) -> str:
        """How long ago, in words: 刚刚 / 12 分钟前 / 3 小时 5 分前 / 2 天前 (just now / 12 min ago ...)."""
        if seconds is None:
            return ""
        s = max(int(seconds), 0)
        if s < 60:
            return self("age.now")
        if s < 3600:
            return self("age.minutes", m=s // 60)
        if s < 86400:
            return self("age.hours", h=s // 3600, m=(s % 3600) // 60)
        return self("age.days", d=s // 86400)

    def overdue(self, clocks: object) -> str:
        """接单超时 / 派遣、全案超时 for an incident's ``overdue`` clocks; 超时 when it names none."""
        names = [str(c) for c in clocks] if isinstance(clocks, (list, tuple)) else []
        if not names:
            return self("incident.overdue")
        sep = "、" if self.lang == "zh" else ", "
        return self("incident.overdue_of", what=sep.join(self("clock." + c) for c in names))

    def iso(self, ts: float | None) -> str:
        return "" if ts is None else locale.iso(ts, self.zone)
