"""Escalation policies as data, frozen into a snapshot when an incident starts (Grafana OnCall's idea).

A policy is a list of :class:`EscalationStep` (page these roles through these channels, wait this long
for an acknowledgement, go on), an optional number of repeat loops, and whether it stops on acknowledgement
(someone accepted) or only on resolution. When an incident starts (or is re-routed, or reopened) the
policy and the route's receivers are frozen into an :class:`EscalationSnapshot` with a new ``version``.
Editing a policy later never changes a running escalation.

Timers (:class:`Timer`) carry the snapshot version and the step they are for. :func:`on_timer` ignores a
stale timer (an older version, or a step already passed): that is the fence that lets several cloud
processes and restarts share one timer table without paging twice.

A step may be a ``confirm`` step (the fire monitoring centre's call to the site before 119): an operator's
``confirm`` jumps straight to the step after it, a ``false alarm`` stops the escalation, silence until its
wait runs out goes on anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from alerts.loop.errors import InvalidConfig
from alerts.loop.intents import NotificationIntent, TargetKind, dedup_key
from alerts.loop.routing import ROLES, Receiver

ALL_ROLES = "*"  # a step that pages every role the route named


@dataclass(frozen=True, slots=True)
class EscalationStep:
    roles: tuple[str, ...]
    wait_s: float
    channels: tuple[str, ...] = ()
    confirm: bool = False  # a human confirmation step (call the site before 119)


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    name: str
    steps: tuple[EscalationStep, ...]
    repeat: int = 0  # extra passes through all steps after the last one
    stop_on: str = "ack"  # "ack": stop when someone accepts; "resolve": keep paging until handled


@dataclass(frozen=True, slots=True)
class EscalationSnapshot:
    policy: EscalationPolicy
    receivers: tuple[Receiver, ...]
    version: int
    started_at: float


@dataclass(frozen=True, slots=True)
class EscalationState:
    step: int = 0  # index of the next step to run
    loop: int = 0
    done: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Timer:
    incident_id: int
    version: int
    step: int
    loop: int
    due: float


@dataclass(frozen=True, slots=True)
class Outcome:
    state: EscalationState
    intents: tuple[NotificationIntent, ...] = ()
    timer: Timer | None = None
    stale: bool = False


def freeze(
    policy: EscalationPolicy, receivers: tuple[Receiver, ...], *, previous_version: int, now: float
) -> EscalationSnapshot:
    return EscalationSnapshot(policy, receivers, previous_version + 1, now)


def start(snap: EscalationSnapshot, incident_id: int, now: float, summary: str = "") -> Outcome:
    """Run step 0 at once; returns its intents and the timer for what follows."""
    return _run(snap, incident_id, EscalationState(), now, summary)


def on_timer(
    snap: EscalationSnapshot,
    state: EscalationState,
    timer: Timer,
    now: float,
    *,
    acknowledged: bool,
    resolved: bool,
    summary: str = "",
) -> Outcome:
    """A timer fired. Stale (fenced) timers change nothing; otherwise run the next step or stop."""
    if timer.version != snap.version or state.done or (timer.step, timer.loop) != (state.step, state.loop):
        return Outcome(state, stale=True)
    if resolved or (acknowledged and snap.policy.stop_on == "ack"):
        why = "resolved" if resolved else "acknowledged"
        return Outcome(replace(state, done=True, reason=why))
    out = _run(snap, timer.incident_id, state, now, summary)
    if acknowledged and out.state.done and out.state.reason == "exhausted":
        # a policy that runs until resolved (fire) ran out of steps after someone accepted: not "nobody
        # acknowledged", which the timeline used to say of a case a responder was working on
        return Outcome(replace(out.state, reason="steps_done"))
    return out


def confirm(
    snap: EscalationSnapshot, state: EscalationState, incident_id: int, now: float, summary: str = ""
) -> Outcome:
    """An operator confirmed the event (a real fire): run the step after the confirm step now."""
    if state.done:
        return Outcome(state)
    previous = state.step - 1
    if previous < 0 or not snap.policy.steps[previous].confirm:
        return Outcome(state)  # nothing waits for a confirmation
    return _run(snap, incident_id, state, now, summary)


def stop(state: EscalationState, reason: str) -> EscalationState:
    return replace(state, done=True, reason=reason)


def _run(
    snap: EscalationSnapshot, incident_id: int, state: EscalationState, now: float, summary: str
) -> Outcome:
    steps = snap.policy.steps
    idx, loop = state.step, state.loop
    if idx >= len(steps):
        if loop >= snap.policy.repeat:
            return Outcome(replace(state, done=True, reason="exhausted"))
        idx, loop = 0, loop + 1
    step = steps[idx]
    intents = tuple(
        NotificationIntent(
            incident_id=incident_id,
            step=idx,
            target_kind=TargetKind.ROLE,
            target_id=role,
            channel_hint=",".join(step.channels),
            dedup_key=dedup_key(incident_id, snap.version, idx, loop, TargetKind.ROLE, role),
            created_at=now,
            department=dep,
            summary=summary,
        )
        for role, dep in step_targets(snap, step)
    )
    nxt = EscalationState(step=idx + 1, loop=loop)
    timer = Timer(incident_id, snap.version, idx + 1, loop, now + step.wait_s)
    return Outcome(nxt, intents, timer)


def step_targets(snap: EscalationSnapshot, step: EscalationStep) -> list[tuple[str, str]]:
    """(role, department) pairs a step pages; a role the route did not name goes to its first department."""
    out: list[tuple[str, str]] = []
    named = [(r, rc.department) for rc in snap.receivers for r in rc.roles]
    fallback = snap.receivers[0].department if snap.receivers else ""
    wanted = [r for r, _ in named] if ALL_ROLES in step.roles else list(step.roles)
    for role in dict.fromkeys(wanted):
        dep = next((d for r, d in named if r == role), fallback)
        out.append((role, dep))
    return out


# -- parsing ---------------------------------------------------------------------------------------------
def policies_from_dict(
    raw: Mapping[str, object], *, roles: Mapping[str, object] = ROLES
) -> dict[str, EscalationPolicy]:
    out: dict[str, EscalationPolicy] = {}
    for name, body in raw.items():
        p = f"escalation.{name}"
        if not isinstance(body, Mapping):
            raise InvalidConfig(p, "a policy is {steps, repeat, stop_on}")
        steps_raw = body.get("steps")
        if not isinstance(steps_raw, list) or not steps_raw:
            raise InvalidConfig(f"{p}.steps", "a non-empty list of steps")
        steps = []
        for i, s in enumerate(steps_raw):
            sp = f"{p}.steps[{i}]"
            if not isinstance(s, Mapping):
                raise InvalidConfig(sp, "a step is {roles, wait_s, channels, confirm}")
            rl = s.get("roles")
            if not isinstance(rl, list) or not rl:
                raise InvalidConfig(f"{sp}.roles", "a non-empty list of roles ('*' = every role routed)")
            for r in rl:
                if r != ALL_ROLES and r not in roles:
                    raise InvalidConfig(f"{sp}.roles", f"unknown role {r!r}")
            wait = s.get("wait_s")
            if not isinstance(wait, int | float) or wait <= 0:
                raise InvalidConfig(f"{sp}.wait_s", "a positive number of seconds")
            ch = s.get("channels", [])
            if not isinstance(ch, list):
                raise InvalidConfig(f"{sp}.channels", "a list of channel names")
            steps.append(
                EscalationStep(
                    tuple(map(str, rl)), float(wait), tuple(map(str, ch)), bool(s.get("confirm", False))
                )
            )
        repeat = body.get("repeat", 0)
        if not isinstance(repeat, int) or not 0 <= repeat <= 100:
            raise InvalidConfig(f"{p}.repeat", "a whole number 0..100")
        stop_on = body.get("stop_on", "ack")
        if stop_on not in ("ack", "resolve"):
            raise InvalidConfig(f"{p}.stop_on", "'ack' or 'resolve'")
        out[str(name)] = EscalationPolicy(str(name), tuple(steps), repeat, str(stop_on))
    if "default" not in out:
        raise InvalidConfig(
            "escalation", "a 'default' policy is required (the routing root falls back to it)"
        )
    return out


def default_policies() -> dict[str, object]:
    """Defaults. Medical: family + doctor, then 120 + grid worker, all inside Shenzhen's 10 minutes.

    Fire: resident callback, then property + grid worker + the call taker's confirmation, then 119.
    """
    return {
        "default": {"steps": [{"roles": ["*"], "wait_s": 600}], "repeat": 3},
        "maintenance": {"steps": [{"roles": ["maintenance"], "wait_s": 86400}], "repeat": 2},
        "manhole": {"steps": [{"roles": ["*"], "wait_s": 300, "channels": ["sms", "wecom"]},
                              {"roles": ["grid_worker", "municipal_crew"], "wait_s": 600,
                               "channels": ["voice"]}], "repeat": 2},
        "medical": {"steps": [{"roles": ["family_contact", "community_doctor"], "wait_s": 180,
                               "channels": ["voice", "sms"]},
                              {"roles": ["desk_120", "grid_worker"], "wait_s": 300, "channels": ["voice"]}],
                    "repeat": 1},
        "wellbeing": {"steps": [{"roles": ["family_contact"], "wait_s": 600},
                                {"roles": ["volunteer", "grid_worker"], "wait_s": 1800}], "repeat": 1},
        "fire": {"steps": [{"roles": ["resident"], "wait_s": 60, "channels": ["voice"]},
                           {"roles": ["property_management", "grid_worker", "call_taker"], "wait_s": 120,
                            "channels": ["voice", "sms"], "confirm": True},
                           {"roles": ["desk_119"], "wait_s": 300, "channels": ["voice"]}],
                 "stop_on": "resolve"},
    }  # fmt: skip
