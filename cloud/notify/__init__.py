"""Reaching people: channel adapters, the delivery engine, signed action links (issue 14).

See ``docs/notifications.md``. Public names::

    Notice, LinkButton, Delivered, Retry, GiveUp, Outcome, Channel   (cloud.notify.channel)
    NotifyConfig                                                    (cloud.notify.config)
    LinkSigner, Purpose                                             (cloud.notify.links)
"""

from cloud.notify.channel import Channel, Delivered, GiveUp, LinkButton, Notice, Outcome, Retry
from cloud.notify.config import NotifyConfig
from cloud.notify.links import LinkSigner, Purpose

__all__ = [
    "Channel",
    "Delivered",
    "GiveUp",
    "LinkButton",
    "LinkSigner",
    "Notice",
    "NotifyConfig",
    "Outcome",
    "Purpose",
    "Retry",
]
