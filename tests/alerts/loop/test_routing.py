"""The routing tree, tested as data (the way Alertmanager tests dispatch/route.go)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.loop.errors import InvalidConfig
from alerts.loop.escalation import default_policies
from alerts.loop.routing import Receiver, default_routes, route, route_from_dict

TREE = route_from_dict(default_routes(), policies=frozenset(default_policies()))


def labels(**kw: str) -> dict[str, str]:
    base = {"kind": "manhole", "event": "cover_open", "grade": "high", "on_road": "false", "grid": "G01"}
    return {**base, **kw}


@pytest.mark.parametrize(
    ("lab", "rule", "departments", "policy"),
    [
        (
            labels(on_road="true"),
            "root/manhole/cover_on_road",
            ["street_office", "municipal", "traffic"],
            "manhole",
        ),
        (labels(), "root/manhole/cover", ["street_office", "municipal"], "manhole"),
        (
            labels(event="overflow", grade="medium"),
            "root/manhole/well",
            ["municipal", "street_office"],
            "manhole",
        ),
        (
            labels(kind="smoke_alarm", event="fire"),
            "root/smoke/fire",
            ["property", "street_office", "fire"],
            "fire",
        ),
        (
            labels(kind="wristband", event="fall"),
            "root/wristband/medical",
            ["health", "emergency", "street_office"],
            "medical",
        ),
        (
            labels(kind="wristband", event="geofence_exit", grade="medium"),
            "root/wristband/wellbeing",
            ["community", "street_office"],
            "wellbeing",
        ),
        (labels(event="low_battery", grade="low"), "root/maintenance", ["operations"], "maintenance"),
        # an offline gateway has no grid cell: device maintenance, not every grid worker of the root
        (
            {"kind": "gateway", "event": "gateway_offline", "grade": "medium", "grid": ""},
            "root/infrastructure",
            ["operations"],
            "maintenance",
        ),
        (
            labels(kind="gateway", event="device_silent", grade="low"),
            "root/maintenance",
            ["operations"],
            "maintenance",
        ),
        (
            labels(kind="report", event="broken_streetlight", grade="medium"),
            "root",
            ["street_office"],
            "default",
        ),
    ],
)
def test_default_tree(lab: dict[str, str], rule: str, departments: list[str], policy: str) -> None:
    (m,) = route(TREE, lab)
    assert m.rule == rule
    assert [r.department for r in m.receivers] == departments
    assert m.escalation == policy


def test_continue_routes_to_several_departments_and_time_of_day() -> None:
    tree = route_from_dict(
        {
            "name": "root",
            "receivers": [{"department": "street_office", "roles": ["grid_worker"]}],
            "routes": [
                {
                    "name": "night",
                    "hours": "22:00-06:00",
                    "continue": True,
                    "receivers": [{"department": "community", "roles": ["volunteer"]}],
                },
                {
                    "name": "fire",
                    "match": {"event": "fire"},
                    "receivers": [{"department": "fire", "roles": ["desk_119"]}],
                },
            ],
        }
    )
    assert [m.rule for m in route(tree, {"event": "fire"}, local_minute=23 * 60)] == [
        "root/night",
        "root/fire",
    ]
    assert [m.rule for m in route(tree, {"event": "fire"}, local_minute=12 * 60)] == ["root/fire"]
    (m,) = route(tree, {"event": "sos"}, local_minute=12 * 60)
    assert m.receivers == (Receiver("street_office", ("grid_worker",)),)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda t: t["routes"][1]["routes"][0]["receivers"].__setitem__(
                0, {"department": "street_office", "roles": ["grid_wroker"]}
            ),
            "route(root).routes[1](manhole).routes[0](cover_on_road).receivers[0].roles: "
            "unknown role 'grid_wroker'",
        ),
        (lambda t: t["routes"][0].update(escalation="nope"), "unknown escalation policy 'nope'"),
        (lambda t: t["routes"][0].update(match={"colour": "red"}), "match.colour: unknown label"),
        (lambda t: t["routes"][0].pop("name"), "routes[0].name: every rule needs a name"),
        (lambda t: t["routes"][0].update(hours="late"), "HH:MM-HH:MM"),
        (lambda t: t["routes"][0]["receivers"][0].update(department="mars"), "unknown department 'mars'"),
        (lambda t: t.update(recievers=[]), "route.recievers: unknown key"),
    ],
)
def test_validation_names_the_rule(mutate: object, message: str) -> None:
    tree = default_routes()
    mutate(tree)  # type: ignore[operator]
    with pytest.raises(InvalidConfig) as exc:
        route_from_dict(tree, policies=frozenset(default_policies()))
    assert message in str(exc.value)


LABEL_VALUES = {
    "kind": ["manhole", "smoke_alarm", "wristband", "report", "gateway"],
    "event": ["cover_open", "cover_displaced", "overflow", "fire", "co", "fall", "sos", "geofence_exit",
              "low_battery", "device_silent", "broken_streetlight"],
    "grade": ["low", "medium", "high"],
    "on_road": ["true", "false"],
    "grid": ["G01", "G02", ""],
}  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({k: st.sampled_from(v) for k, v in LABEL_VALUES.items()}), st.integers(0, 1439))
def test_every_label_set_reaches_someone_with_a_policy(lab: dict[str, str], minute: int) -> None:
    matches = route(TREE, lab, minute)
    assert matches
    for m in matches:
        assert m.receivers and m.escalation in default_policies()
        assert m.path[0] == "root"
