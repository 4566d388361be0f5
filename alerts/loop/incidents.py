"""From signals to incidents: one incident per real-world problem.

Three sources feed one pipeline as :class:`Signal`: alert steps from gateways, alerts the cloud raises
(connectivity), and manual reports. :func:`decide` answers what to do with one signal, given what the
shell looked up for it (the incident its alert already belongs to, the open incident of its group, how
many alerts of its group arrived inside the window, the active alerts that could inhibit it, the silences):

- ``attach``: its alert (or its group) already has an open incident: the step joins it. A new episode of
  the same device and event while the incident is open joins it too: flapping is damped, nobody is paged
  twice;
- ``open``: a new incident;
- ``pending``: a low-severity class opens only after ``min_count`` alerts in ``window_s`` (one low-battery
  cover is maintenance, ten on a street is a pattern);
- ``inhibited``: another active alert explains it (an offline gateway inhibits its devices' silence
  alerts; an open cover inhibits the same cover's displacement alert);
- ``silenced``: a silence or maintenance window matches (roadworks on a street), with its id;
- ``ignore``: a cleared step of an alert that never opened anything.

Every decision is recorded with the alert, so "why was (or wasn't) anyone paged" always has an answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from alerts.loop.errors import InvalidConfig
from firmware_bridge.kernel.events import EventType, Severity


class Source(StrEnum):
    GATEWAY = "gateway"
    CLOUD = "cloud"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Signal:
    """One alert step or report, with the device's context (the shell joins it from the registry)."""

    alert_id: str
    source: Source
    kind: str  # a DeviceKind value, "gateway", or "report"
    event: str  # an EventType value, or a report type
    severity: Severity
    phase: str  # raised / updated / cleared (a report is "raised")
    time: float
    device_id: str = ""
    gateway_id: str = ""
    grid: str = ""
    street: str = ""
    community: str = ""
    on_road: bool = False
    lives_alone: bool = False
    lat: float | None = None
    lon: float | None = None
    episode_start: float | None = None  # when the event began (the detector's episode), for discovery time
    #: why a ``cleared`` step cleared, when the step says (``alerts.loop.reasons.OK_KEY_CLEARED``: the
    #: wearer's "I'm OK" key); "" = not said
    cause: str = ""

    def labels(self, grade: Severity | None = None) -> dict[str, str]:
        g = grade if grade is not None else self.severity
        return {
            "kind": self.kind,
            "event": self.event,
            "grade": g.name.lower(),
            "grid": self.grid,
            "street": self.street,
            "community": self.community,
            "on_road": "true" if self.on_road else "false",
            "lives_alone": "true" if self.lives_alone else "false",
            "source": self.source.value,
            "device_id": self.device_id,
            "gateway_id": self.gateway_id,
        }


_ROAD_HAZARDS = frozenset({EventType.COVER_OPEN.value, EventType.COVER_DISPLACED.value})
_HEALTH = frozenset(
    {
        EventType.FALL.value,
        EventType.SOS.value,
        EventType.HEART_RATE_HIGH.value,
        EventType.HEART_RATE_LOW.value,
        EventType.SPO2_LOW.value,
        EventType.INACTIVITY.value,
        EventType.GEOFENCE_EXIT.value,
    }
)


def grade(sig: Signal) -> Severity:
    """Risk grade (low / medium / high) from the event and its context.

    A cover on a carriageway is a hole in a road (high), one on a pavement medium at least; an elderly
    person living alone has nobody else to notice, so a health alert goes up one grade.
    """
    g = sig.severity
    if sig.event in _ROAD_HAZARDS:
        g = Severity.HIGH if sig.on_road else max(g, Severity.MEDIUM)
    if sig.lives_alone and sig.event in _HEALTH:
        g = Severity(min(int(g) + 1, int(Severity.HIGH)))
    return g


TIER = {Severity.NONE: "community", Severity.LOW: "community", Severity.MEDIUM: "street",
        Severity.HIGH: "district"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Matcher:
    """Label equality matchers: every key must equal one of its values."""

    labels: Mapping[str, frozenset[str]]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k, "") in v for k, v in self.labels.items())


@dataclass(frozen=True, slots=True)
class GroupRule:
    """Signals matching ``match`` group by ``by`` labels within ``window_s``; open after ``min_count``."""

    name: str
    match: Matcher
    by: tuple[str, ...]
    window_s: float = 3600.0
    min_count: int = 1


@dataclass(frozen=True, slots=True)
class InhibitRule:
    source: Matcher
    target: Matcher
    equal: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Silence:
    id: int
    match: Matcher
    starts_at: float
    ends_at: float
    created_by: str
    reason: str

    def active(self, t: float) -> bool:
        return self.starts_at <= t < self.ends_at


@dataclass(frozen=True, slots=True)
class GroupingConfig:
    rules: tuple[GroupRule, ...]
    inhibit: tuple[InhibitRule, ...] = ()


def _m(**kw: str | list[str]) -> Matcher:
    return Matcher({k: frozenset([v] if isinstance(v, str) else v) for k, v in kw.items()})


_DEVICE = ("device_id", "event")


def default_grouping() -> GroupingConfig:
    """Several smoke alarms in one stairwell (grid), many covers on one flooded street: one incident each."""
    return GroupingConfig(
        rules=(
            GroupRule(
                "fire_in_building", _m(kind="smoke_alarm", event=["fire", "co"]), ("grid", "event"), 1800
            ),
            GroupRule("flooded_street", _m(kind="manhole", event="overflow"), ("street", "event"), 3600),
            GroupRule("low_battery", _m(event="low_battery"), ("grid", "event"), 86400, min_count=1),
            GroupRule("silent_devices", _m(event="device_silent"), ("gateway_id", "grid", "event"), 3600),
            GroupRule("per_device", Matcher({}), _DEVICE, 3600),
        ),
        inhibit=(
            InhibitRule(_m(event="gateway_offline"), _m(event="device_silent"), ("gateway_id",)),
            InhibitRule(_m(event="cover_open"), _m(event="cover_displaced"), ("device_id",)),
        ),
    )


def rule_for(cfg: GroupingConfig, labels: Mapping[str, str]) -> GroupRule:
    for r in cfg.rules:
        if r.match.matches(labels):
            return r
    return GroupRule("per_device", Matcher({}), _DEVICE, 3600.0)


def group_key(rule: GroupRule, labels: Mapping[str, str]) -> str:
    return rule.name + "|" + "|".join(f"{k}={labels.get(k, '')}" for k in rule.by)


class Verdict(StrEnum):
    ATTACH = "attach"
    OPEN = "open"
    PENDING = "pending"
    INHIBITED = "inhibited"
    SILENCED = "silenced"
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    key: str
    rule: str
    incident_id: int | None = None
    reason: str = ""
    silence_id: int | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """What the shell looked up for one signal."""

    linked_incident: int | None = None  # the incident this alert_id already belongs to
    open_incident: int | None = None  # the open incident of this signal's group key
    recent_in_group: int = 0  # alerts of this group within the rule's window, this one excluded
    active: Sequence[Mapping[str, str]] = field(default=())  # labels of other active alerts
    silences: Sequence[Silence] = field(default=())
    now: float | None = None  # when the decision is made (silences are judged then); default: signal time


def decide(sig: Signal, cfg: GroupingConfig, ctx: Context) -> Decision:
    labels = sig.labels(grade(sig))
    rule = rule_for(cfg, labels)
    key = group_key(rule, labels)
    if ctx.linked_incident is not None:
        return Decision(Verdict.ATTACH, key, rule.name, ctx.linked_incident, "same alert episode")
    if sig.phase == "cleared":
        return Decision(Verdict.IGNORE, key, rule.name, reason="cleared before it opened an incident")
    for s in ctx.silences:
        if s.active(sig.time if ctx.now is None else ctx.now) and s.match.matches(labels):
            return Decision(Verdict.SILENCED, key, rule.name, reason=s.reason, silence_id=s.id)
    for inh in cfg.inhibit:
        if not inh.target.matches(labels):
            continue
        for other in ctx.active:
            if inh.source.matches(other) and all(other.get(k, "") == labels.get(k, "") for k in inh.equal):
                return Decision(
                    Verdict.INHIBITED, key, rule.name,
                    reason=f"inhibited by an active {other.get('event', '')} alert ({', '.join(inh.equal)})",
                )  # fmt: skip
    if ctx.open_incident is not None:
        return Decision(Verdict.ATTACH, key, rule.name, ctx.open_incident, f"grouped by {rule.name}")
    if ctx.recent_in_group + 1 < rule.min_count:
        return Decision(
            Verdict.PENDING, key, rule.name,
            reason=f"{ctx.recent_in_group + 1} of {rule.min_count} alerts within {rule.window_s:g} s",
        )  # fmt: skip
    return Decision(Verdict.OPEN, key, rule.name, reason=f"new incident ({rule.name})")


def matcher_from_dict(raw: object, path: str) -> Matcher:
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidConfig(path, "an object of label -> value or list of values")
    out: dict[str, frozenset[str]] = {}
    for k, v in raw.items():
        vals = [v] if isinstance(v, str | bool) else v
        if not isinstance(vals, list) or not vals:
            raise InvalidConfig(f"{path}.{k}", "a value or a non-empty list of values")
        out[str(k)] = frozenset(("true" if x else "false") if isinstance(x, bool) else str(x) for x in vals)
    return Matcher(out)
