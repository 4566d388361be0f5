"""Time limits: calendar time for urgent cases, working hours (holidays, make-up days) for ordinary ones."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from alerts.loop.errors import InvalidConfig
from alerts.loop.sla import Urgency, WorkCalendar, default_sla, overdue, sla_from_dict, urgency_for
from alerts.loop.stages import Stage, WorkOrder
from firmware_bridge.kernel.events import Severity

SH = ZoneInfo("Asia/Shanghai")


def at(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> float:
    return datetime(y, m, d, hh, mm, tzinfo=SH).timestamp()


def test_urgency_labels_and_grades() -> None:
    assert [u.label() for u in Urgency] == ["一般", "紧急", "非常紧急"]
    assert urgency_for(Severity.HIGH) is Urgency.CRITICAL and urgency_for(Severity.LOW) is Urgency.NORMAL


@pytest.mark.parametrize(
    ("start", "hours", "expected"),
    [
        (at(2026, 9, 21, 10), 2, at(2026, 9, 21, 12)),  # Monday inside hours
        (at(2026, 9, 21, 17), 1, at(2026, 9, 22, 10)),  # runs over the evening
        (at(2026, 9, 25, 17), 1, at(2026, 9, 28, 10)),  # Friday -> Monday
        (at(2026, 9, 30, 17), 1, at(2026, 10, 9, 10)),  # National Day holidays, Oct 1-8
        (at(2026, 9, 26, 3), 1, at(2026, 9, 28, 10)),  # Saturday night -> Monday
    ],
)
def test_working_time(start: float, hours: float, expected: float) -> None:
    cal = WorkCalendar(holidays=frozenset(date(2026, 10, d) for d in range(1, 9)))
    assert cal.add(start, hours * 3600) == expected
    assert cal.between(start, expected) == hours * 3600


def test_make_up_working_day() -> None:
    cal = WorkCalendar(extra_workdays=frozenset({date(2026, 9, 26)}))  # a Saturday worked (调休)
    assert cal.add(at(2026, 9, 25, 17), 3600) == at(2026, 9, 26, 10)


def test_overdue_stage_and_case_clocks_and_parking_pauses() -> None:
    table = default_sla()
    t0 = at(2026, 9, 21, 10)
    o = WorkOrder(stage=Stage.DISPATCHED, created_at=t0, stage_entered_at=t0, registered_at=t0)
    assert overdue(table, Urgency.CRITICAL, o, t0 + 170) == []
    assert overdue(table, Urgency.CRITICAL, o, t0 + 181) == ["accept"]
    assert overdue(table, Urgency.CRITICAL, o, t0 + 7201) == ["accept", "case"]
    paused = WorkOrder(
        stage=Stage.DISPATCHED, created_at=t0, stage_entered_at=t0 + 7000, registered_at=t0, paused_s=3600
    )
    assert overdue(table, Urgency.CRITICAL, paused, t0 + 7150) == []
    assert overdue(table, Urgency.CRITICAL, WorkOrder(Stage.PARKED, t0, t0, registered_at=t0), t0 + 1e6) == []
    # 一般 counts working hours: a Monday 10:00 case is due three working days later
    assert table.case_deadline(Urgency.NORMAL, o) == at(2026, 9, 24, 10)


def test_sla_config_validation() -> None:
    good = {u.value: {"stages": {"accept": 60}, "case_s": 600} for u in Urgency}
    assert sla_from_dict(good).deadline(Urgency.URGENT, "accept", 0) == 60
    with pytest.raises(InvalidConfig, match=r"sla.urgent.stages.teleport: unknown clock"):
        sla_from_dict({**good, "urgent": {"stages": {"teleport": 1}, "case_s": 5}})
    with pytest.raises(InvalidConfig, match="missing urgencies"):
        sla_from_dict({"urgent": good["urgent"]})
