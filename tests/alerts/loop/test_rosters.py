"""Rosters: rotations, overrides (leave, swaps), exact coverage gaps, and the dispatch choice."""

from __future__ import annotations

import pytest

from alerts.loop.errors import InvalidConfig
from alerts.loop.rosters import Responder, coverage_gaps, distance_m, pick, roster_from_dict

T0 = 1_790_000_000.0  # 2026-09-21 (Monday) 22:13:20 Asia/Shanghai
DAY = 86400.0

RAW = {
    "responders": [
        {
            "id": "w1",
            "name": "王网格",
            "roles": ["grid_worker"],
            "zones": ["G01"],
            "lat": 39.98,
            "lon": 116.31,
        },
        {
            "id": "w2",
            "name": "李网格",
            "roles": ["grid_worker"],
            "zones": ["G01"],
            "lat": 39.99,
            "lon": 116.32,
        },
        {"id": "w3", "name": "赵网格", "roles": ["grid_worker"], "zones": ["*"], "max_load": 1},
        {"id": "p1", "name": "物业张", "roles": ["property_management"]},
    ],
    "rotations": [
        {
            "id": "g01",
            "role": "grid_worker",
            "zone": "G01",
            "participants": ["w1", "w2"],
            "start": T0,
            "shift_s": DAY,
        },
        {
            "id": "prop",
            "role": "property_management",
            "zone": "*",
            "participants": ["p1"],
            "start": T0,
            "shift_s": 0,
            "hours": "08:00-18:00",
        },
    ],
    "overrides": [
        {"responder": "w2", "by": "w3", "start": T0 + DAY, "end": T0 + DAY + 3600, "reason": "swap"}
    ],
}


def test_rotation_hands_over_daily_and_overrides_apply() -> None:
    r = roster_from_dict(RAW)
    assert [x.id for x in r.on_call("grid_worker", "G01", T0 + 10)] == ["w1"]
    assert [x.id for x in r.on_call("grid_worker", "G01", T0 + DAY + 10)] == ["w3"]  # swap
    assert [x.id for x in r.on_call("grid_worker", "G01", T0 + DAY + 3600)] == ["w2"]
    assert [x.id for x in r.on_call("grid_worker", "G01", T0 + 2 * DAY)] == ["w1"]
    assert r.on_call("grid_worker", "G01", T0 - 1) == []


def test_coverage_gaps_are_exact_spans() -> None:
    raw = {**RAW, "overrides": [{"responder": "w1", "by": None, "start": T0 + 7200, "end": T0 + 10800}]}
    r = roster_from_dict(raw)
    gaps = coverage_gaps(r, [("grid_worker", "G01"), ("grid_worker", "G99")], T0, 7 * DAY)
    assert [(g.zone, g.start - T0, g.end - T0) for g in gaps] == [("G01", 7200, 10800), ("G99", 0, 7 * DAY)]
    prop = coverage_gaps(r, [("property_management", "G01")], T0, DAY)
    # office hours 08:00-18:00 Asia/Shanghai; T0 is 22:13:20: closed until 08:00, then from 18:00 to the end
    assert [(g.start - T0, g.end - T0) for g in prop] == [(0, 35200), (35200 + 10 * 3600, DAY)]


def test_pick_nearest_available_not_overloaded() -> None:
    r = roster_from_dict(RAW)
    ws = [r.responders[i] for i in ("w1", "w2", "w3")]
    assert pick(ws, lat=39.99, lon=116.32, load={}).id == "w2"  # type: ignore[union-attr]
    assert pick(ws, lat=39.99, lon=116.32, load={"w2": 5}).id == "w1"  # type: ignore[union-attr]
    assert pick(ws, lat=39.99, lon=116.32, load={}, positions={"w2": (40.5, 116.9)}).id == "w1"  # type: ignore[union-attr]
    assert pick([ws[2]], lat=None, lon=None, load={"w3": 1}) is None
    assert pick([Responder("x", "x", frozenset({"grid_worker"}))], lat=1, lon=1, load={}) is not None


def test_distance() -> None:
    assert distance_m(39.98, 116.31, 39.98, 116.31) == 0
    assert 1100 < distance_m(39.98, 116.31, 39.99, 116.31) < 1120  # 0.01 degree of latitude ~ 1.11 km


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"rotations": [{"role": "grid_worker", "participants": ["nobody"]}]}, "unknown responder 'nobody'"),
        ({"rotations": [{"role": "chef", "participants": ["w1"]}]}, "unknown role 'chef'"),
        ({"rotations": [{"role": "property_management", "participants": ["w1"]}]}, "does not have role"),
        (
            {"overrides": [{"responder": "w1", "by": "ghost", "start": 1, "end": 2}]},
            "unknown responder 'ghost'",
        ),
        ({"overrides": [{"responder": "w1", "start": 2, "end": 1}]}, "end after start"),
    ],
)
def test_bad_rosters_name_the_problem(patch: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        roster_from_dict({**RAW, **patch})


def test_shift_changes_are_the_hand_overs_of_one_role_in_a_span() -> None:
    from alerts.loop.rosters import Override, Responder, Roster, Rotation, shift_changes

    people = {p: Responder(p, p, frozenset({"call_taker"})) for p in ("a", "b")}
    desk = Rotation("desk", "call_taker", "*", ("a", "b"), start=0.0, shift_s=8 * 3600.0)
    grid = Rotation("grid", "grid_worker", "*", ("a",), start=0.0, shift_s=3600.0)
    roster = Roster(people, (desk, grid), (Override("a", "b", 9 * 3600.0, 10 * 3600.0),))
    assert shift_changes(roster, "call_taker", 0.0, 7 * 3600.0) == []  # grid workers' hours do not count
    assert shift_changes(roster, "call_taker", 7 * 3600.0, 8 * 3600.0) == [8 * 3600.0]  # upper bound in
    assert shift_changes(roster, "call_taker", 8 * 3600.0, 8.5 * 3600.0) == []  # lower bound out
    assert shift_changes(roster, "call_taker", 8.5 * 3600.0, 10 * 3600.0) == [9 * 3600.0, 10 * 3600.0]
