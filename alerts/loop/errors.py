"""The exceptions of the closed loop, one small tree (the cloud maps them to HTTP statuses once)::

LoopError                    a policy refused something; nothing changed
├── InvalidConfig            a routing tree, roster, escalation policy or SLA table does not validate
│                            (``path`` names the rule or key, e.g. ``routes[2].receivers[0].role``)
├── InvalidAction            an action that is not allowed in the order's stage, or lacks its reason
└── AlreadyClaimed           a second responder accepted an order someone else owns (``owner``)
"""

from __future__ import annotations


class LoopError(ValueError):
    """Base class: a policy decision refused the input; the state is unchanged."""


class InvalidConfig(LoopError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class InvalidAction(LoopError):
    pass


class AlreadyClaimed(LoopError):
    def __init__(self, owner: str) -> None:
        super().__init__(f"this order is already accepted by {owner!r}")
        self.owner = owner
