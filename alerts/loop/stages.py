"""The work order's lifecycle (GB/T 30428.8 / CJ/T 315): a state machine over a frozen :class:`WorkOrder`.

The main line is the one every street office runs::

    reported 上报 -> registered 立案 -> dispatched 派遣 -> accepted 接单 -> on_site 到场
      -> handled 处置反馈 -> verified 核查 -> closed 结案 -> rated 评价

with the side roads real centres need: ``returned`` 退回 (not my department, a reason is required, then
re-dispatched), ``parked`` 挂账 (a written explanation; the whole-case clock stops), ``dismissed``
不予立案 (a manual report the call taker does not register), a failed verification (back to
``dispatched``: rework) and ``reopen`` after closing (counts as rework, 返工, inside a window).

:func:`apply` is pure: ``(order, command, now) -> Transition``. An action that is not allowed raises
:class:`~alerts.loop.errors.InvalidAction` and changes nothing; repeating the last action with the same
actor is a no-op (``Transition.changed`` is false), so every action is idempotent. A second responder
accepting an order someone else owns gets :class:`~alerts.loop.errors.AlreadyClaimed` naming the owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from alerts.loop.errors import AlreadyClaimed, InvalidAction

#: default window in which a resident (or a supervisor) may reopen a closed case (rework counts)
REOPEN_WINDOW_S = 7 * 86400.0


class Stage(StrEnum):
    REPORTED = "reported"
    REGISTERED = "registered"
    DISPATCHED = "dispatched"
    ACCEPTED = "accepted"
    ON_SITE = "on_site"
    HANDLED = "handled"
    VERIFIED = "verified"
    CLOSED = "closed"
    RATED = "rated"
    RETURNED = "returned"
    PARKED = "parked"
    DISMISSED = "dismissed"

    @property
    def is_open(self) -> bool:
        return self not in _FINISHED

    def label(self, language: str = "zh") -> str:
        zh, en = STAGE_LABELS[self]
        return en if language == "en" else zh


_FINISHED = frozenset({Stage.CLOSED, Stage.RATED, Stage.DISMISSED})

STAGE_LABELS: dict[Stage, tuple[str, str]] = {
    Stage.REPORTED: ("上报", "reported"),
    Stage.REGISTERED: ("立案", "registered"),
    Stage.DISPATCHED: ("派遣", "dispatched"),
    Stage.ACCEPTED: ("接单", "accepted"),
    Stage.ON_SITE: ("到场", "on site"),
    Stage.HANDLED: ("处置反馈", "handled"),
    Stage.VERIFIED: ("核查通过", "verified"),
    Stage.CLOSED: ("结案", "closed"),
    Stage.RATED: ("已评价", "rated"),
    Stage.RETURNED: ("退回", "returned"),
    Stage.PARKED: ("挂账", "parked"),
    Stage.DISMISSED: ("不予立案", "dismissed"),
}


class Action(StrEnum):
    REGISTER = "register"
    DISMISS = "dismiss"
    DISPATCH = "dispatch"
    ACCEPT = "accept"
    ARRIVE = "arrive"
    HANDLE = "handle"
    VERIFY = "verify"
    REJECT = "reject"  # verification failed: back to the responder (rework)
    CLOSE = "close"
    RATE = "rate"
    RETURN = "return"
    PARK = "park"
    UNPARK = "unpark"
    REOPEN = "reopen"


_S, _A = Stage, Action
TRANSITIONS: dict[tuple[Stage, Action], Stage] = {
    (_S.REPORTED, _A.REGISTER): _S.REGISTERED,
    (_S.REPORTED, _A.DISMISS): _S.DISMISSED,
    (_S.REGISTERED, _A.DISPATCH): _S.DISPATCHED,
    (_S.RETURNED, _A.DISPATCH): _S.DISPATCHED,
    (_S.DISPATCHED, _A.DISPATCH): _S.DISPATCHED,  # re-dispatch to someone else
    (_S.DISPATCHED, _A.ACCEPT): _S.ACCEPTED,
    (_S.DISPATCHED, _A.RETURN): _S.RETURNED,
    (_S.ACCEPTED, _A.RETURN): _S.RETURNED,
    (_S.ACCEPTED, _A.ARRIVE): _S.ON_SITE,
    (_S.ACCEPTED, _A.HANDLE): _S.HANDLED,  # handled remotely (a callback settled it)
    (_S.ON_SITE, _A.HANDLE): _S.HANDLED,
    (_S.HANDLED, _A.VERIFY): _S.VERIFIED,
    (_S.HANDLED, _A.REJECT): _S.DISPATCHED,
    (_S.VERIFIED, _A.CLOSE): _S.CLOSED,
    (_S.CLOSED, _A.RATE): _S.RATED,
    (_S.CLOSED, _A.REOPEN): _S.REGISTERED,
    (_S.RATED, _A.REOPEN): _S.REGISTERED,
}
for _st in (_S.REGISTERED, _S.DISPATCHED, _S.ACCEPTED, _S.ON_SITE, _S.RETURNED):
    TRANSITIONS[(_st, _A.PARK)] = _S.PARKED
TRANSITIONS[(_S.PARKED, _A.UNPARK)] = _S.REGISTERED

#: actions that need a written reason (a return, a park, a rejection, a reopen, a dismissal)
NEEDS_REASON = frozenset({Action.RETURN, Action.PARK, Action.REJECT, Action.REOPEN, Action.DISMISS})


@dataclass(frozen=True, slots=True)
class WorkOrder:
    """The case: where it is, who owns it, and the times its KPIs are computed from."""

    stage: Stage
    created_at: float
    stage_entered_at: float
    assignee: str | None = None  # the responder it is dispatched to
    owner: str | None = None  # the responder who accepted it (exactly one)
    department: str = ""
    registered_at: float | None = None
    dispatched_at: float | None = None
    accepted_at: float | None = None
    arrived_at: float | None = None
    handled_at: float | None = None
    verified_at: float | None = None
    closed_at: float | None = None
    rated_at: float | None = None
    rating: int | None = None
    parked_at: float | None = None
    paused_s: float = 0.0  # time spent parked: the whole-case clock stops while parked
    reopen_count: int = 0
    rework: bool = False
    returned_reasons: tuple[str, ...] = field(default=())
    last_action: Action | None = None
    last_actor: str = ""


@dataclass(frozen=True, slots=True)
class Command:
    action: Action
    actor: str
    reason: str = ""
    assignee: str | None = None  # DISPATCH: the responder
    department: str | None = None  # DISPATCH: the department
    rating: int | None = None  # RATE: 1..5


@dataclass(frozen=True, slots=True)
class Transition:
    before: WorkOrder
    after: WorkOrder
    command: Command
    changed: bool


def new_order(now: float, *, registered: bool) -> WorkOrder:
    """A device alert is registered at once (立案 is automatic); a manual report waits for a call taker."""
    stage = Stage.REGISTERED if registered else Stage.REPORTED
    return WorkOrder(
        stage=stage, created_at=now, stage_entered_at=now, registered_at=now if registered else None
    )


def allowed_actions(stage: Stage) -> list[Action]:
    return [a for (s, a) in TRANSITIONS if s is stage]


def apply(
    order: WorkOrder, cmd: Command, now: float, *, reopen_window_s: float = REOPEN_WINDOW_S
) -> Transition:
    """Apply ``cmd`` at ``now``; raises :class:`InvalidAction` or :class:`AlreadyClaimed`, atomically."""
    if _is_repeat(order, cmd):
        return Transition(order, order, cmd, changed=False)
    if cmd.action is Action.ACCEPT and order.stage in (Stage.ACCEPTED, Stage.ON_SITE) and order.owner:
        raise AlreadyClaimed(order.owner)
    target = TRANSITIONS.get((order.stage, cmd.action))
    if target is None:
        allowed = ", ".join(a.value for a in allowed_actions(order.stage)) or "none"
        raise InvalidAction(
            f"cannot {cmd.action.value} an order that is {order.stage.value} ({order.stage.label()}); "
            f"allowed: {allowed}"
        )
    if cmd.action in NEEDS_REASON and not cmd.reason.strip():
        raise InvalidAction(f"{cmd.action.value} needs a reason")
    if not cmd.actor:
        raise InvalidAction("an action needs an actor")
    changes: dict[str, object] = {"stage": target, "stage_entered_at": now, "last_action": cmd.action}
    changes["last_actor"] = cmd.actor
    a = cmd.action
    if a is Action.REGISTER:
        changes["registered_at"] = now
    elif a is Action.DISPATCH:
        if not cmd.assignee:
            raise InvalidAction("dispatch needs an assignee")
        changes.update(assignee=cmd.assignee, owner=None, dispatched_at=order.dispatched_at or now)
        if cmd.department is not None:
            changes["department"] = cmd.department
    elif a is Action.ACCEPT:
        # anyone paged may take it (parallel paging); the first accept owns the order
        changes.update(owner=cmd.actor, assignee=cmd.actor, accepted_at=order.accepted_at or now)
    elif a is Action.ARRIVE:
        _owner_only(order, cmd)
        changes["arrived_at"] = order.arrived_at or now
    elif a is Action.HANDLE:
        _owner_only(order, cmd)
        changes["handled_at"] = now
    elif a is Action.VERIFY:
        changes["verified_at"] = now
    elif a is Action.REJECT:
        changes.update(rework=True, owner=None, handled_at=None)
    elif a is Action.CLOSE:
        changes["closed_at"] = now
    elif a is Action.RATE:
        if cmd.rating is None or not 1 <= cmd.rating <= 5:
            raise InvalidAction("a rating is a whole number from 1 to 5")
        changes.update(rating=cmd.rating, rated_at=now)
    elif a is Action.RETURN:
        changes.update(
            owner=None, assignee=None, returned_reasons=(*order.returned_reasons, cmd.reason.strip())
        )
    elif a is Action.PARK:
        changes["parked_at"] = now
    elif a is Action.UNPARK:
        parked = order.parked_at if order.parked_at is not None else now
        changes.update(parked_at=None, paused_s=order.paused_s + max(0.0, now - parked))
    elif a is Action.REOPEN:
        closed = order.closed_at if order.closed_at is not None else now
        if now - closed > reopen_window_s:
            raise InvalidAction(
                f"the case closed more than {reopen_window_s / 86400:g} days ago; report a new problem"
            )
        changes.update(
            rework=True,
            reopen_count=order.reopen_count + 1,
            owner=None,
            assignee=None,
            closed_at=None,
            verified_at=None,
            handled_at=None,
            rating=None,
            rated_at=None,
            registered_at=now,
        )
    after = replace(order, **changes)  # type: ignore[arg-type]
    return Transition(order, after, cmd, changed=True)


def _is_repeat(order: WorkOrder, cmd: Command) -> bool:
    """The same actor repeating the action that brought the order here (a retried request)."""
    if order.last_action is not cmd.action or order.last_actor != cmd.actor:
        return False
    target = TRANSITIONS.get((order.stage, cmd.action))
    if cmd.action is Action.DISPATCH:
        return order.assignee == cmd.assignee
    return target is None


def _owner_only(order: WorkOrder, cmd: Command) -> None:
    if order.owner and cmd.actor != order.owner:
        raise InvalidAction(f"only {order.owner!r}, who accepted this order, may report progress on it")
