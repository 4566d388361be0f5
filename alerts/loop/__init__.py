"""The closed loop: incidents, routing, rosters, escalation, the civic work order and its KPIs.

Pure policy: functions and state machines over frozen dataclasses, time passed in, no I/O. The cloud
(``cloud/loop/``) persists, schedules and serves it. See ``docs/loop.md``.

One module per concept:

- :mod:`~alerts.loop.incidents`: signals -> incidents (dedup, grouping, inhibition, silences, grading)
- :mod:`~alerts.loop.routing`: the routing tree (who is responsible)
- :mod:`~alerts.loop.rosters`: who is on call, coverage gaps, dispatch choice
- :mod:`~alerts.loop.escalation`: policies, frozen snapshots, fenced timers
- :mod:`~alerts.loop.stages`: the work order's state machine (上报 ... 评价)
- :mod:`~alerts.loop.sla`: time limits by urgency, calendar or working time
- :mod:`~alerts.loop.kpi`: 结案率, 按期结案率, 返工率, response times
- :mod:`~alerts.loop.intents`: :class:`NotificationIntent`, what the notifier is asked to send
"""

from alerts.loop.errors import AlreadyClaimed, InvalidAction, InvalidConfig, LoopError
from alerts.loop.intents import IntentState, NotificationIntent, TargetKind
from alerts.loop.stages import Action, Command, Stage, WorkOrder

__all__ = [
    "Action",
    "AlreadyClaimed",
    "Command",
    "IntentState",
    "InvalidAction",
    "InvalidConfig",
    "LoopError",
    "NotificationIntent",
    "Stage",
    "TargetKind",
    "WorkOrder",
]
