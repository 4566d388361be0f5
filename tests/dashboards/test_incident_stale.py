"""An open incident page goes stale when a person changes what the operator decides on, not when the
escalation moves (dashboards/incidents.py ``stale``; the whole flow in Chromium: test_loop_browser.py)."""

from __future__ import annotations

from typing import Any

from dashboards.incidents import decision_sig, stale

CASE: dict[str, Any] = {
    "stage": "dispatched",
    "owner": None,
    "assignee": "r-near",
    "outcome": None,
    "reopen_count": 0,
    "is_open": True,
    "row_version": 3,
}


TIMELINE = [
    {"id": 1, "actor": "system", "action": "opened"},
    {"id": 2, "actor": "system", "action": "dispatch"},
    {"id": 3, "actor": "disp", "action": "assign"},
]


def detail(inc: dict[str, Any] = CASE, *extra: dict[str, Any]) -> dict[str, Any]:
    return {"incident": inc, "timeline": [*TIMELINE, *extra]}


def form_of(d: dict[str, Any]) -> dict[str, str]:
    return {"row_version": str(d["incident"]["row_version"]), "decision_sig": decision_sig(d)}


def test_an_escalation_step_or_a_delivery_report_does_not_make_the_page_stale() -> None:
    form = form_of(detail())
    later = detail(
        {**CASE, "row_version": 7, "overdue": ["accept"]},
        {"id": 4, "actor": "system", "action": "escalate"},
        {"id": 5, "actor": "notify", "action": "notify_failed"},
        {"id": 6, "actor": "system", "action": "escalate_now"},
        {"id": 7, "actor": "telemetry", "action": "alert_cleared"},
    )
    assert not stale(later, form)


def test_a_persons_change_makes_it_stale() -> None:
    form = form_of(detail())
    for change in (
        {"stage": "accepted", "owner": "r-near"},
        {"assignee": "r-far"},
        {"outcome": "nuisance"},
        {"reopen_count": 1},
        {"is_open": False},
    ):
        assert stale(detail({**CASE, **change, "row_version": 4}), form), change
    # a colleague dispatched again to the same responder: no field moved, a person acted
    again = detail({**CASE, "row_version": 4}, {"id": 8, "actor": "disp2", "action": "dispatch"})
    assert stale(again, form)


def test_a_form_from_before_the_signature_compares_the_version() -> None:
    old = {"row_version": "3"}
    assert not stale(detail(), old)
    assert stale(detail({**CASE, "row_version": 4}), old)
