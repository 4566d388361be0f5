"""Routing as a tree of data (the idea of Alertmanager's ``dispatch/route.go``).

A :class:`Route` matches labels of an incident (``kind``, ``event``, ``grade``, ``grid``, ``street``,
``community``, ``on_road``, ``lives_alone``, ``source`` and a local time-of-day window) and names
receivers: a department and the roles to page there, in parallel. Children are tried in order; the first
child that matches wins and is descended into, unless a matching child says ``continue``, in which case
its later siblings are tried too (several departments at once). A node none of whose children match is
itself the match. Every decision returns the path of rule names it took, so anyone can see why a person
was paged.

The tree is written as JSON (see ``docs/loop.md``); :func:`route_from_dict` validates it and names the
offending rule (``routes[0].routes[1].receivers[0].role: unknown role 'grid_wroker'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from alerts.loop.errors import InvalidConfig

#: the roles the loop knows (MISSION.md): who can be paged
ROLES: dict[str, tuple[str, str]] = {
    "grid_worker": ("网格员", "grid worker"),
    "property_management": ("物业", "property management"),
    "municipal_crew": ("市政抢修", "municipal crew"),
    "traffic_police": ("交警", "traffic police"),
    "community_doctor": ("社区医生", "community doctor"),
    "family_contact": ("家属", "family contact"),
    "volunteer": ("志愿者", "volunteer"),
    "resident": ("住户", "resident"),
    "call_taker": ("值班接警员", "call taker"),
    "maintenance": ("设备运维", "device maintenance"),
    "desk_119": ("119 指挥中心", "119 fire desk"),
    "desk_120": ("120 急救中心", "120 ambulance desk"),
}
DEPARTMENTS: dict[str, tuple[str, str]] = {
    "community": ("社区居委会", "community committee"),
    "street_office": ("街道办", "street office"),
    "municipal": ("市政", "municipal department"),
    "traffic": ("交警大队", "traffic police"),
    "health": ("社区卫生服务中心", "community health centre"),
    "property": ("物业公司", "property company"),
    "fire": ("消防", "fire service"),
    "emergency": ("急救中心", "emergency medical service"),
    "operations": ("设备运维", "device operations"),
}
#: the role paged per wearer, not per place: ``family_contact`` for an incident on a worn device becomes one
#: ``role`` target per device, :func:`family_target`, resolved by the notifier to THAT device's registered
#: emergency contact (docs/notifications.md); a roster's ``family_contact`` cells are never used for it
FAMILY_ROLE = "family_contact"
MATCH_KEYS = ("kind", "event", "grade", "grid", "street", "community", "on_road", "lives_alone", "source")


@dataclass(frozen=True, slots=True)
class Receiver:
    department: str
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: Mapping[str, frozenset[str]] = field(default_factory=dict)
    hours: tuple[int, int] | None = None  # local minutes [from, to); wraps past midnight when from > to
    receivers: tuple[Receiver, ...] = ()
    escalation: str | None = None  # escalation policy name; inherited from the parent when None
    continue_: bool = False
    routes: tuple[Route, ...] = ()

    def matches(self, labels: Mapping[str, str], local_minute: int) -> bool:
        for key, allowed in self.match.items():
            if labels.get(key, "") not in allowed:
                return False
        if self.hours is not None:
            lo, hi = self.hours
            inside = lo <= local_minute < hi if lo <= hi else local_minute >= lo or local_minute < hi
            if not inside:
                return False
        return True


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: tuple[str, ...]  # rule names from the root
    receivers: tuple[Receiver, ...]
    escalation: str | None

    @property
    def rule(self) -> str:
        return "/".join(self.path)


def route(root: Route, labels: Mapping[str, str], local_minute: int = 0) -> list[RouteMatch]:
    """Every leaf the labels reach (one, or several where ``continue`` says so). Pure."""
    if not root.matches(labels, local_minute):
        return []
    return _walk(root, labels, local_minute, (), root.escalation, root.receivers)


def _walk(
    node: Route,
    labels: Mapping[str, str],
    minute: int,
    path: tuple[str, ...],
    escalation: str | None,
    receivers: tuple[Receiver, ...],
) -> list[RouteMatch]:
    path = (*path, node.name)
    escalation = node.escalation or escalation
    receivers = node.receivers or receivers
    out: list[RouteMatch] = []
    for child in node.routes:
        if child.matches(labels, minute):
            out.extend(_walk(child, labels, minute, path, escalation, receivers))
            if not child.continue_:
                break
    return out or [RouteMatch(path, receivers, escalation)]


def family_target(device_id: str) -> str:
    """The ``role`` target id that pages the emergency contact registered for ``device_id``."""
    return f"{FAMILY_ROLE}/{device_id}"


def family_device(target_id: str) -> str | None:
    """The device of a :func:`family_target` id, or ``None`` for any other target."""
    prefix = f"{FAMILY_ROLE}/"
    return target_id[len(prefix) :] or None if target_id.startswith(prefix) else None


# -- parsing and validation -------------------------------------------------------------------------------
def route_from_dict(
    raw: Mapping[str, object],
    *,
    roles: Mapping[str, object] = ROLES,
    departments: Mapping[str, object] = DEPARTMENTS,
    policies: frozenset[str] | None = None,
    path: str = "route",
) -> Route:
    """Build and validate a tree; raises :class:`InvalidConfig` naming the rule and key."""
    if not isinstance(raw, Mapping):
        raise InvalidConfig(path, "a route is an object")
    known = {"name", "match", "hours", "receivers", "escalation", "continue", "routes"}
    for key in raw:
        if key not in known:
            raise InvalidConfig(f"{path}.{key}", f"unknown key; use {sorted(known)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidConfig(f"{path}.name", "every rule needs a name (it is recorded with each decision)")
    where = f"{path}({name})"
    match: dict[str, frozenset[str]] = {}
    raw_match = raw.get("match", {})
    if not isinstance(raw_match, Mapping):
        raise InvalidConfig(f"{where}.match", "must be an object")
    for key, val in raw_match.items():
        if key not in MATCH_KEYS:
            raise InvalidConfig(f"{where}.match.{key}", f"unknown label; use {list(MATCH_KEYS)}")
        vals = [val] if isinstance(val, str | bool) else val
        if not isinstance(vals, list) or not vals:
            raise InvalidConfig(f"{where}.match.{key}", "a value or a non-empty list of values")
        match[key] = frozenset(_label(v) for v in vals)
    hours = parse_hours(raw.get("hours"), f"{where}.hours")
    receivers = []
    raw_recv = raw.get("receivers", [])
    if not isinstance(raw_recv, list):
        raise InvalidConfig(f"{where}.receivers", "must be a list")
    for i, r in enumerate(raw_recv):
        rp = f"{where}.receivers[{i}]"
        if not isinstance(r, Mapping):
            raise InvalidConfig(rp, "a receiver is {department, roles}")
        dep = r.get("department")
        if dep not in departments:
            raise InvalidConfig(f"{rp}.department", f"unknown department {dep!r}")
        rl = r.get("roles")
        if not isinstance(rl, list) or not rl:
            raise InvalidConfig(f"{rp}.roles", "a non-empty list of roles")
        for role in rl:
            if role not in roles:
                raise InvalidConfig(f"{rp}.roles", f"unknown role {role!r}")
        receivers.append(Receiver(str(dep), tuple(str(x) for x in rl)))
    esc = raw.get("escalation")
    if esc is not None and (not isinstance(esc, str) or (policies is not None and esc not in policies)):
        raise InvalidConfig(f"{where}.escalation", f"unknown escalation policy {esc!r}")
    children = raw.get("routes", [])
    if not isinstance(children, list):
        raise InvalidConfig(f"{where}.routes", "must be a list")
    kids = tuple(
        route_from_dict(
            c, roles=roles, departments=departments, policies=policies, path=f"{where}.routes[{i}]"
        )
        for i, c in enumerate(children)
    )
    names = [k.name for k in kids]
    if len(set(names)) != len(names):
        raise InvalidConfig(f"{where}.routes", "sibling rules need distinct names")
    if path == "route" and not receivers:
        raise InvalidConfig(f"{where}.receivers", "the root needs receivers (the fallback for everything)")
    return Route(str(name), match, hours, tuple(receivers), esc, bool(raw.get("continue", False)), kids)


def _label(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def parse_hours(raw: object, path: str) -> tuple[int, int] | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or "-" not in raw:
        raise InvalidConfig(path, "a local time window 'HH:MM-HH:MM'")
    try:
        a, b = (int(x[:2]) * 60 + int(x[3:5]) for x in raw.split("-"))
    except ValueError:
        raise InvalidConfig(path, "a local time window 'HH:MM-HH:MM'") from None
    return a, b


def default_routes() -> dict[str, object]:
    """The defaults for the three kinds (MISSION.md): who must act on what.

    Infrastructure: an offline gateway has no grid cell (it serves many), so the root's grid workers
    would all be paged for what only device maintenance can fix; it goes to ``operations`` /
    ``maintenance`` (a silent device, grade low, goes there by the ``maintenance`` rule). It is the last rule
    so the indexes of the others stay as they were (configurations and tests name rules by position).
    """
    street = {"department": "street_office", "roles": ["grid_worker"]}
    return {
        "name": "root",
        "receivers": [street],
        "escalation": "default",
        "routes": [
            {
                "name": "maintenance",
                "match": {"grade": ["low"]},
                "receivers": [{"department": "operations", "roles": ["maintenance"]}],
                "escalation": "maintenance",
            },
            {
                "name": "manhole",
                "match": {"kind": "manhole"},
                "escalation": "manhole",
                "routes": [
                    {
                        "name": "cover_on_road",
                        "match": {"event": ["cover_open", "cover_displaced"], "on_road": True},
                        "receivers": [
                            street,
                            {"department": "municipal", "roles": ["municipal_crew"]},
                            {"department": "traffic", "roles": ["traffic_police"]},
                        ],
                    },
                    {
                        "name": "cover",
                        "match": {"event": ["cover_open", "cover_displaced", "tamper"]},
                        "receivers": [street, {"department": "municipal", "roles": ["municipal_crew"]}],
                    },
                    {
                        "name": "well",
                        "receivers": [{"department": "municipal", "roles": ["municipal_crew"]}, street],
                    },
                ],
            },
            {
                "name": "smoke",
                "match": {"kind": "smoke_alarm"},
                "routes": [
                    {
                        "name": "fire",
                        "match": {"event": ["fire", "co"]},
                        "escalation": "fire",
                        "receivers": [
                            {"department": "property", "roles": ["resident", "property_management"]},
                            street,
                            {"department": "fire", "roles": ["call_taker", "desk_119"]},
                        ],
                    },
                    {
                        "name": "device",
                        "receivers": [{"department": "property", "roles": ["property_management"]}],
                    },
                ],
            },
            {
                "name": "wristband",
                "match": {"kind": "wristband"},
                "routes": [
                    {
                        "name": "medical",
                        "match": {"event": ["fall", "sos", "heart_rate_high", "heart_rate_low", "spo2_low"]},
                        "escalation": "medical",
                        "receivers": [
                            {"department": "health", "roles": ["family_contact", "community_doctor"]},
                            {"department": "emergency", "roles": ["desk_120"]},
                            street,
                        ],
                    },
                    {
                        "name": "wellbeing",
                        "escalation": "wellbeing",
                        "receivers": [
                            {"department": "community", "roles": ["family_contact", "volunteer"]},
                            street,
                        ],
                    },
                ],
            },
            {
                "name": "infrastructure",
                "match": {"event": ["gateway_offline"]},
                "receivers": [{"department": "operations", "roles": ["maintenance"]}],
                "escalation": "maintenance",
            },
        ],
    }
