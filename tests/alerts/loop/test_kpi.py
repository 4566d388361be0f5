"""KPIs: the published city report's arithmetic is the test vector (REFERENCES.md, GB/T 30428.4)."""

from __future__ import annotations

import pytest

from alerts.loop.kpi import CaseRecord, kpis, percentile, ratio, to_csv

T0 = 1_790_000_000.0


def test_city_report_closure_and_on_time_rates() -> None:
    # 972 cases due, 911 closed, 737 of them inside their time limit: 93.72 % and 75.82 %.
    on_time = [CaseRecord(registered=T0, closed=T0 + 10, deadline=T0 + 100) for _ in range(737)]
    late = [CaseRecord(registered=T0, closed=T0 + 200, deadline=T0 + 100) for _ in range(911 - 737)]
    open_ = [CaseRecord(registered=T0, deadline=T0 + 100) for _ in range(972 - 911)]
    (row,) = kpis(on_time + late + open_)
    assert (row.due, row.closed, row.closed_on_time) == (972, 911, 737)
    assert round(row.closure_rate * 100, 2) == 93.72  # type: ignore[operator]
    assert round(row.on_time_rate * 100, 2) == 75.82  # type: ignore[operator]


def test_nothing_due_is_undefined_not_zero_or_nan() -> None:
    (row,) = kpis([])
    assert row.due == 0 and row.closure_rate is None and row.dispatch_p50_s is None
    assert ratio(1, 0) is None


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([5.0], 95, 5.0),
        ([1, 2, 3, 4], 50, 2),
        ([1, 2, 3, 4], 95, 4),
        (list(range(1, 101)), 95, 95),
    ],
)
def test_nearest_rank_percentile(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_grouped_by_department_with_rework_satisfaction_and_times() -> None:
    cases = [
        CaseRecord(
            department="municipal",
            alert_time=T0,
            first_notified=T0 + 2,
            accepted=T0 + 60,
            arrived=T0 + 600,
            handled=T0 + 1200,
            registered=T0,
            closed=T0 + 1300,
            rating=5,
        ),
        CaseRecord(
            department="municipal",
            alert_time=T0,
            first_notified=T0 + 4,
            accepted=T0 + 120,
            registered=T0,
            closed=T0 + 5000,
            reworked=True,
            rating=2,
        ),
        CaseRecord(department="health", event_start=T0 - 30, alert_time=T0, first_notified=T0 + 1),
    ]
    rows = {r.group: r for r in kpis(cases, by="department")}
    m = rows["municipal"]
    assert (
        m.closure_rate == 1.0 and m.rework_rate == 0.5 and m.satisfaction == 3.5 and m.satisfied_share == 0.5
    )
    assert m.dispatch_p50_s == 2 and m.dispatch_p95_s == 4 and m.ack_p50_s == 60 and m.arrive_p50_s == 600
    assert rows["health"].discovery_p50_s == 30 and rows["health"].closure_rate == 0.0
    text = to_csv(list(rows.values()))
    assert text.splitlines()[0].startswith("group,due,closed,closed_on_time")
    assert len(text.splitlines()) == 3


def test_unknown_grouping_is_refused() -> None:
    with pytest.raises(ValueError, match="group by one of"):
        kpis([], by="colour")
