"""Time limits (时限) per stage and for the whole case, by urgency, in calendar or working time.

CJ/T 315 sets time limits per case type and urgency (一般 / 紧急 / 非常紧急); centres count them in working
hours (public holidays excluded) for ordinary cases and in calendar time for urgent ones. A life-safety
alarm cannot wait for Monday, a cracked kerb can. :class:`SlaTable` maps an urgency to a
:class:`SlaLimits` (one limit per stage clock, one for the whole case) and a calendar kind.

Stage clocks: ``dispatch`` runs while the case is registered, ``accept`` while it is dispatched,
``arrive`` while accepted, ``handle`` while on site, ``verify`` while handled. The whole-case clock runs
from registration to closing and stops while the case is parked (挂账).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from alerts.loop.errors import InvalidConfig
from alerts.loop.stages import Stage, WorkOrder
from firmware_bridge.kernel.events import Severity


class Urgency(StrEnum):
    NORMAL = "normal"
    URGENT = "urgent"
    CRITICAL = "critical"

    def label(self, language: str = "zh") -> str:
        zh, en = URGENCY_LABELS[self]
        return en if language == "en" else zh


URGENCY_LABELS = {
    Urgency.NORMAL: ("一般", "normal"),
    Urgency.URGENT: ("紧急", "urgent"),
    Urgency.CRITICAL: ("非常紧急", "critical"),
}


def urgency_for(grade: Severity) -> Urgency:
    """Risk grade -> urgency: high is 非常紧急, medium 紧急, low (and none) 一般."""
    return {Severity.HIGH: Urgency.CRITICAL, Severity.MEDIUM: Urgency.URGENT}.get(grade, Urgency.NORMAL)


#: the stage whose clock runs while the order sits in a stage
STAGE_CLOCK: dict[Stage, str] = {
    Stage.REPORTED: "register",
    Stage.REGISTERED: "dispatch",
    Stage.RETURNED: "dispatch",
    Stage.DISPATCHED: "accept",
    Stage.ACCEPTED: "arrive",
    Stage.ON_SITE: "handle",
    Stage.HANDLED: "verify",
}
CLOCKS = ("register", "dispatch", "accept", "arrive", "handle", "verify")


@dataclass(frozen=True, slots=True)
class WorkCalendar:
    """Working hours in a local zone, Monday-Friday by default, with public holidays and make-up days."""

    zone: str = "Asia/Shanghai"
    start: time = time(9, 0)
    end: time = time(17, 0)  # eight working hours: one working day
    workdays: frozenset[int] = frozenset({0, 1, 2, 3, 4})
    holidays: frozenset[date] = frozenset()
    extra_workdays: frozenset[date] = frozenset()  # 调休: a weekend day worked to make up a holiday

    def is_workday(self, d: date) -> bool:
        if d in self.extra_workdays:
            return True
        return d.weekday() in self.workdays and d not in self.holidays

    def add(self, start: float, seconds: float) -> float:
        """The instant ``seconds`` of working time after ``start`` (epoch seconds)."""
        tz = ZoneInfo(self.zone)
        cur = datetime.fromtimestamp(start, tz)
        left = seconds
        for _ in range(3660):  # ten years of days: a bound, never reached with sane limits
            day = cur.date()
            if self.is_workday(day):
                open_ = datetime.combine(day, self.start, tz)
                close = datetime.combine(day, self.end, tz)
                begin = max(cur, open_)
                if begin < close:
                    span = (close - begin).total_seconds()
                    if left <= span:
                        return (begin + timedelta(seconds=left)).timestamp()
                    left -= span
            cur = datetime.combine(day + timedelta(days=1), time(0, 0), tz)
        raise InvalidConfig("calendar", "no working time found within ten years")

    def between(self, a: float, b: float) -> float:
        """Working seconds between two instants (0 when ``b <= a``)."""
        if b <= a:
            return 0.0
        tz = ZoneInfo(self.zone)
        cur, stop = datetime.fromtimestamp(a, tz), datetime.fromtimestamp(b, tz)
        total = 0.0
        while cur < stop:
            day = cur.date()
            if self.is_workday(day):
                lo = max(cur, datetime.combine(day, self.start, tz))
                hi = min(stop, datetime.combine(day, self.end, tz))
                total += max(0.0, (hi - lo).total_seconds())
            cur = datetime.combine(day + timedelta(days=1), time(0, 0), tz)
        return total


@dataclass(frozen=True, slots=True)
class SlaLimits:
    stages: dict[str, float]  # clock name -> seconds
    case_s: float
    working_time: bool = False  # count in working hours (WorkCalendar) instead of calendar seconds


_MIN, _H = 60.0, 3600.0


@dataclass(frozen=True, slots=True)
class SlaTable:
    limits: dict[Urgency, SlaLimits]
    calendar: WorkCalendar = field(default_factory=WorkCalendar)

    def deadline(self, urgency: Urgency, clock: str, started: float) -> float | None:
        lim = self.limits[urgency]
        s = lim.stages.get(clock) if clock != "case" else lim.case_s
        if s is None:
            return None
        return self.calendar.add(started, s) if lim.working_time else started + s

    def stage_deadline(self, urgency: Urgency, order: WorkOrder) -> float | None:
        clock = STAGE_CLOCK.get(order.stage)
        return None if clock is None else self.deadline(urgency, clock, order.stage_entered_at)

    def case_deadline(self, urgency: Urgency, order: WorkOrder) -> float | None:
        if order.registered_at is None:
            return None
        due = self.deadline(urgency, "case", order.registered_at)
        return None if due is None else due + order.paused_s


def default_sla() -> SlaTable:
    """Defaults: life safety in minutes, calendar time; ordinary cases in working hours (CJ/T 315 style)."""
    return SlaTable(
        limits={
            Urgency.CRITICAL: SlaLimits(
                stages={"register": 2 * _MIN, "dispatch": 1 * _MIN, "accept": 3 * _MIN,
                        "arrive": 15 * _MIN, "handle": 1 * _H, "verify": 30 * _MIN},
                case_s=2 * _H,
            ),
            Urgency.URGENT: SlaLimits(
                stages={"register": 10 * _MIN, "dispatch": 10 * _MIN, "accept": 15 * _MIN,
                        "arrive": 1 * _H, "handle": 4 * _H, "verify": 2 * _H},
                case_s=8 * _H,
            ),
            Urgency.NORMAL: SlaLimits(
                stages={"register": 1 * _H, "dispatch": 1 * _H, "accept": 2 * _H,
                        "arrive": 8 * _H, "handle": 16 * _H, "verify": 8 * _H},
                case_s=3 * 8 * _H,  # three working days
                working_time=True,
            ),
        }
    )  # fmt: skip


def overdue(table: SlaTable, urgency: Urgency, order: WorkOrder, now: float) -> list[str]:
    """Which clocks are past their limit at ``now`` (``[]`` = on time): a stage clock and/or ``case``."""
    if not order.stage.is_open or order.stage is Stage.PARKED:
        return []
    late = []
    stage_due = table.stage_deadline(urgency, order)
    if stage_due is not None and now > stage_due:
        late.append(STAGE_CLOCK[order.stage])
    case_due = table.case_deadline(urgency, order)
    if case_due is not None and now > case_due:
        late.append("case")
    return late


def sla_from_dict(raw: Mapping[str, object]) -> SlaTable:
    """Parse ``{"critical": {"stages": {...}, "case_s": 7200, "working_time": false}, ...}``."""
    limits: dict[Urgency, SlaLimits] = {}
    for key, val in raw.items():
        try:
            urg = Urgency(key)
        except ValueError:
            raise InvalidConfig(
                f"sla.{key}", f"unknown urgency; use one of {[u.value for u in Urgency]}"
            ) from None
        if not isinstance(val, dict):
            raise InvalidConfig(f"sla.{key}", "must be an object")
        stages = val.get("stages", {})
        if not isinstance(stages, dict):
            raise InvalidConfig(f"sla.{key}.stages", "must be an object")
        for clock, secs in stages.items():
            if clock not in CLOCKS:
                raise InvalidConfig(f"sla.{key}.stages.{clock}", f"unknown clock; use one of {list(CLOCKS)}")
            if not isinstance(secs, int | float) or secs <= 0:
                raise InvalidConfig(f"sla.{key}.stages.{clock}", "must be a positive number of seconds")
        case_s = val.get("case_s")
        if not isinstance(case_s, int | float) or case_s <= 0:
            raise InvalidConfig(f"sla.{key}.case_s", "must be a positive number of seconds")
        limits[urg] = SlaLimits({k: float(v) for k, v in stages.items()}, float(case_s),
                                bool(val.get("working_time", False)))  # fmt: skip
    missing = [u.value for u in Urgency if u not in limits]
    if missing:
        raise InvalidConfig("sla", f"missing urgencies {missing}")
    return SlaTable(limits)
