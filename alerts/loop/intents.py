"""What the loop asks the notification layer to do: a :class:`NotificationIntent`.

The loop decides *who* must be told (a role, a group, or a named user) and *why*; the notification layer
(``cloud/notify/``) decides *how* (which channel, which account) and records delivery. Intents are written
to the ``notification_intents`` table in the same transaction as the decision that caused them, with a
``dedup_key`` that is unique: a retried decision, a second cloud process or a replayed timer can never
page twice (the idea of Alertmanager's ``nflog``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TargetKind(StrEnum):
    USER = "user"  # a responder id (roster) or a platform username
    ROLE = "role"  # everyone on call for this role in the incident's zone
    GROUP = "group"  # a named group (a WeCom/DingTalk group robot, a department desk)


class IntentState(StrEnum):
    PENDING = "pending"  # written by the loop, not yet taken by a notifier
    CLAIMED = "claimed"  # a notifier is sending it
    SENT = "sent"  # delivered (the channel said so)
    FAILED = "failed"  # given up after retries
    CANCELLED = "cancelled"  # the incident was acknowledged or resolved before it went out


@dataclass(frozen=True, slots=True)
class NotificationIntent:
    incident_id: int
    step: int  # escalation step index (-1: not from escalation, e.g. a reminder or a status change)
    target_kind: TargetKind
    target_id: str
    channel_hint: str  # comma-separated channel names, most preferred first; "" = the target's default
    dedup_key: str
    created_at: float
    department: str = ""
    summary: str = ""  # one line, Chinese first: what and where (never health details)


def dedup_key(
    incident_id: int, version: int, step: int, loop: int, kind: TargetKind | str, target: str
) -> str:
    """``incident:version:step:loop:kind:target``: one page per escalation step and target, ever."""
    return f"{incident_id}:{version}:{step}:{loop}:{kind}:{target}"
