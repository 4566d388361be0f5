"""Escalation: frozen snapshots, steps with waits, repeat loops, stop on ack, the fire confirmation step,
and fencing of stale timers (Grafana OnCall's escalation snapshot idea)."""

from __future__ import annotations

import pytest

from alerts.loop.errors import InvalidConfig
from alerts.loop.escalation import (
    EscalationState,
    Timer,
    confirm,
    default_policies,
    freeze,
    on_timer,
    policies_from_dict,
    start,
)
from alerts.loop.routing import Receiver

T0 = 1_790_000_000.0
POLICIES = policies_from_dict(default_policies())
MEDICAL = (
    Receiver("health", ("family_contact", "community_doctor")),
    Receiver("emergency", ("desk_120",)),
    Receiver("street_office", ("grid_worker",)),
)


def targets(outcome: object) -> list[tuple[str, str]]:
    return [(i.target_id, i.department) for i in outcome.intents]  # type: ignore[attr-defined]


def test_medical_chain_reaches_120_inside_shenzhens_ten_minutes() -> None:
    snap = freeze(POLICIES["medical"], MEDICAL, previous_version=0, now=T0)
    first = start(snap, 7, T0)
    assert targets(first) == [("family_contact", "health"), ("community_doctor", "health")]
    assert first.timer == Timer(7, 1, 1, 0, T0 + 180)
    second = on_timer(snap, first.state, first.timer, T0 + 180, acknowledged=False, resolved=False)
    assert targets(second) == [("desk_120", "emergency"), ("grid_worker", "street_office")]
    assert second.timer is not None and second.timer.due - T0 <= 600
    assert {i.channel_hint for i in second.intents} == {"voice"}


def test_acknowledgement_stops_the_chain() -> None:
    snap = freeze(POLICIES["medical"], MEDICAL, previous_version=0, now=T0)
    first = start(snap, 7, T0)
    out = on_timer(snap, first.state, first.timer, T0 + 180, acknowledged=True, resolved=False)  # type: ignore[arg-type]
    assert out.state.done and out.state.reason == "acknowledged" and out.intents == ()


def test_stale_timers_are_fenced() -> None:
    snap = freeze(POLICIES["medical"], MEDICAL, previous_version=0, now=T0)
    first = start(snap, 7, T0)
    assert first.timer is not None
    rerouted = freeze(POLICIES["medical"], MEDICAL, previous_version=snap.version, now=T0 + 10)
    out = on_timer(rerouted, first.state, first.timer, T0 + 180, acknowledged=False, resolved=False)
    assert out.stale and out.intents == ()
    second = on_timer(snap, first.state, first.timer, T0 + 180, acknowledged=False, resolved=False)
    again = on_timer(snap, second.state, first.timer, T0 + 181, acknowledged=False, resolved=False)
    assert again.stale  # the same timer delivered twice pages once


def test_dedup_keys_are_unique_per_step_loop_and_target() -> None:
    snap = freeze(
        POLICIES["default"], (Receiver("street_office", ("grid_worker",)),), previous_version=4, now=T0
    )
    out, keys = start(snap, 9, T0), []
    for _ in range(6):
        keys += [i.dedup_key for i in out.intents]
        if out.timer is None:
            break
        out = on_timer(snap, out.state, out.timer, out.timer.due, acknowledged=False, resolved=False)
    assert keys == [
        "9:5:0:0:role:grid_worker",
        "9:5:0:1:role:grid_worker",
        "9:5:0:2:role:grid_worker",
        "9:5:0:3:role:grid_worker",
    ]
    assert out.state.done and out.state.reason == "exhausted"


def test_fire_waits_for_a_human_confirmation_before_119() -> None:
    recv = (
        Receiver("property", ("resident", "property_management")),
        Receiver("street_office", ("grid_worker",)),
        Receiver("fire", ("call_taker", "desk_119")),
    )
    snap = freeze(POLICIES["fire"], recv, previous_version=0, now=T0)
    s0 = start(snap, 3, T0)
    assert targets(s0) == [("resident", "property")]
    s1 = on_timer(snap, s0.state, s0.timer, T0 + 60, acknowledged=True, resolved=False)  # type: ignore[arg-type]
    # stop_on=resolve: a fire keeps escalating after someone acknowledged, until it is handled
    assert [t for t, _ in targets(s1)] == ["property_management", "grid_worker", "call_taker"]
    s2 = confirm(snap, s1.state, 3, T0 + 90)  # the call taker reached the site: a real fire
    assert targets(s2) == [("desk_119", "fire")]
    stale = on_timer(snap, s2.state, s1.timer, T0 + 180, acknowledged=True, resolved=False)  # type: ignore[arg-type]
    assert stale.stale  # the confirm step's own timer no longer pages 119 a second time
    assert confirm(snap, EscalationState(step=1), 3, T0).intents == ()  # nothing waits for a confirmation


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"default": {"steps": [{"roles": ["ghost"], "wait_s": 5}]}},
            "escalation.default.steps[0].roles: unknown role",
        ),
        ({"default": {"steps": [{"roles": ["*"], "wait_s": 0}]}}, "wait_s: a positive number"),
        ({"default": {"steps": []}}, "a non-empty list of steps"),
        ({"default": {"steps": [{"roles": ["*"], "wait_s": 5}], "stop_on": "never"}}, "'ack' or 'resolve'"),
        ({"other": {"steps": [{"roles": ["*"], "wait_s": 5}]}}, "a 'default' policy is required"),
    ],
)
def test_bad_policies_name_the_step(patch: dict[str, object], message: str) -> None:
    with pytest.raises(
        InvalidConfig, match=message.replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")
    ):
        policies_from_dict(patch)
