"""The work order's state machine (GB/T 30428.8 / CJ/T 315 lifecycle), as tables and as properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.loop.errors import AlreadyClaimed, InvalidAction
from alerts.loop.stages import (
    NEEDS_REASON,
    STAGE_LABELS,
    TRANSITIONS,
    Action,
    Command,
    Stage,
    WorkOrder,
    apply,
    new_order,
)

T0 = 1_790_000_000.0


def run(order: WorkOrder, *steps: tuple[Action, str, dict[str, object]], t: float = T0) -> WorkOrder:
    for i, (a, actor, kw) in enumerate(steps):
        order = apply(order, Command(a, actor, **kw), t + 60 * (i + 1)).after  # type: ignore[arg-type]
    return order


def happy(order: WorkOrder) -> WorkOrder:
    return run(
        order,
        (Action.DISPATCH, "desk", {"assignee": "w1", "department": "street_office"}),
        (Action.ACCEPT, "w1", {}),
        (Action.ARRIVE, "w1", {}),
        (Action.HANDLE, "w1", {"reason": "cover reseated"}),
        (Action.VERIFY, "supervisor", {}),
        (Action.CLOSE, "supervisor", {}),
        (Action.RATE, "resident", {"rating": 5}),
    )


def test_every_stage_has_a_chinese_label() -> None:
    assert set(STAGE_LABELS) == set(Stage)
    assert Stage.REGISTERED.label() == "立案" and Stage.CLOSED.label() == "结案"
    assert Stage.PARKED.label() == "挂账" and Stage.RATED.label("en") == "rated"


def test_the_main_line_from_registration_to_rating() -> None:
    o = happy(new_order(T0, registered=True))
    assert o.stage is Stage.RATED and o.rating == 5 and o.owner == "w1"
    assert o.registered_at == T0 and o.dispatched_at == T0 + 60 and o.accepted_at == T0 + 120
    assert o.arrived_at == T0 + 180 and o.handled_at == T0 + 240 and o.closed_at == T0 + 360
    assert not o.rework


def test_a_manual_report_waits_for_the_call_taker() -> None:
    o = new_order(T0, registered=False)
    assert o.stage is Stage.REPORTED and o.registered_at is None
    with pytest.raises(InvalidAction, match="cannot dispatch an order that is reported"):
        apply(o, Command(Action.DISPATCH, "desk", assignee="w1"), T0)
    assert apply(o, Command(Action.REGISTER, "desk"), T0 + 5).after.registered_at == T0 + 5
    d = apply(o, Command(Action.DISMISS, "desk", reason="duplicate of case 12"), T0 + 5).after
    assert d.stage is Stage.DISMISSED and not d.stage.is_open


@pytest.mark.parametrize("action", sorted(NEEDS_REASON))
def test_actions_that_need_a_reason_refuse_without_one(action: Action) -> None:
    stage = next(s for (s, a) in TRANSITIONS if a is action)
    o = WorkOrder(stage=stage, created_at=T0, stage_entered_at=T0, closed_at=T0, owner=None)
    with pytest.raises(InvalidAction, match="needs a reason"):
        apply(o, Command(action, "someone", reason="  "), T0 + 1)


def test_second_accept_is_told_who_owns_the_order() -> None:
    o = run(
        new_order(T0, registered=True),
        (Action.DISPATCH, "desk", {"assignee": "w1"}),
        (Action.ACCEPT, "w2", {}),
    )
    assert o.owner == "w2"  # anyone paged may take it; the first accept wins
    with pytest.raises(AlreadyClaimed) as exc:
        apply(o, Command(Action.ACCEPT, "w1"), T0 + 500)
    assert exc.value.owner == "w2"


def test_repeating_the_same_action_is_a_no_op() -> None:
    o = run(
        new_order(T0, registered=True),
        (Action.DISPATCH, "desk", {"assignee": "w1"}),
        (Action.ACCEPT, "w1", {}),
    )
    tr = apply(o, Command(Action.ACCEPT, "w1"), T0 + 999)
    assert not tr.changed and tr.after == o


def test_only_the_owner_reports_progress() -> None:
    o = run(
        new_order(T0, registered=True),
        (Action.DISPATCH, "desk", {"assignee": "w1"}),
        (Action.ACCEPT, "w1", {}),
    )
    with pytest.raises(InvalidAction, match="only 'w1'"):
        apply(o, Command(Action.ARRIVE, "w2"), T0 + 999)


def test_return_with_reason_then_redispatch() -> None:
    o = run(
        new_order(T0, registered=True),
        (Action.DISPATCH, "desk", {"assignee": "crew1", "department": "municipal"}),
        (Action.RETURN, "crew1", {"reason": "not our well: telecom duct"}),
        (Action.DISPATCH, "desk", {"assignee": "tel1", "department": "telecom"}),
    )
    assert o.stage is Stage.DISPATCHED and o.department == "telecom"
    assert o.returned_reasons == ("not our well: telecom duct",)


def test_parking_stops_the_case_clock() -> None:
    o = run(new_order(T0, registered=True), (Action.PARK, "desk", {"reason": "waiting for a new lid"}))
    o = apply(o, Command(Action.UNPARK, "desk"), T0 + 60 + 3600).after
    assert o.stage is Stage.REGISTERED and o.paused_s == 3600


def test_failed_verification_and_reopen_count_as_rework() -> None:
    o = run(
        new_order(T0, registered=True),
        (Action.DISPATCH, "desk", {"assignee": "w1"}),
        (Action.ACCEPT, "w1", {}),
        (Action.HANDLE, "w1", {}),
        (Action.REJECT, "supervisor", {"reason": "cover still tilted"}),
    )
    assert o.stage is Stage.DISPATCHED and o.rework
    closed = happy(new_order(T0, registered=True))
    re = apply(closed, Command(Action.REOPEN, "resident", reason="still broken"), T0 + 86400).after
    assert re.stage is Stage.REGISTERED and re.rework and re.reopen_count == 1 and re.rating is None
    with pytest.raises(InvalidAction, match="more than 7 days"):
        apply(closed, Command(Action.REOPEN, "resident", reason="x"), T0 + 8 * 86400)


@pytest.mark.parametrize("stage", [Stage.CLOSED, Stage.RATED, Stage.DISMISSED])
def test_an_action_on_a_finished_order_is_refused_and_names_the_stage(stage: Stage) -> None:
    o = WorkOrder(stage=stage, created_at=T0, stage_entered_at=T0)
    with pytest.raises(InvalidAction, match=stage.value):
        apply(o, Command(Action.ACCEPT, "w1"), T0)


def test_rating_is_one_to_five() -> None:
    o = WorkOrder(stage=Stage.CLOSED, created_at=T0, stage_entered_at=T0, closed_at=T0)
    for bad in (0, 6, None):
        with pytest.raises(InvalidAction, match="1 to 5"):
            apply(o, Command(Action.RATE, "resident", rating=bad), T0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Action)), st.sampled_from(["w1", "w2", "desk"])), max_size=25))
def test_any_sequence_keeps_the_order_consistent(seq: list[tuple[Action, str]]) -> None:
    o = new_order(T0, registered=True)
    for i, (a, actor) in enumerate(seq):
        cmd = Command(a, actor, reason="because", assignee="w1", rating=4)
        try:
            tr = apply(o, cmd, T0 + i)
        except (InvalidAction, AlreadyClaimed):
            continue  # refused: nothing changed (o is immutable)
        if tr.changed:
            assert TRANSITIONS[(o.stage, a)] is tr.after.stage
        o = tr.after
        if o.stage in (Stage.ACCEPTED, Stage.ON_SITE, Stage.HANDLED):
            assert o.owner is not None
        if o.stage in (Stage.CLOSED, Stage.RATED):
            assert o.closed_at is not None and o.handled_at is not None
        assert o.paused_s >= 0
