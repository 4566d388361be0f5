"""What the uplinks share: the error tree, and parsing the cloud's acknowledgement.

    UplinkError                 the batch was not acknowledged; it stays in the outbox and is retried
    ├── UplinkUnavailable       cloud unreachable: connection refused, timeout, 5xx, broker down
    ├── UplinkAuthError         401/403: the credential is wrong (retried: an operator may fix it)
    ├── UplinkRejected          another 4xx: the cloud refused the batch (retried at the maximum backoff)
    │   ├── UplinkTooLarge      413: refused unread; the batch is split into smaller ones
    │   └── UplinkInvalid       400/422: the cloud read the batch and refused its content; the sender
    │                           splits it to isolate the bad record, which ends in the dead letter
    └── UplinkProtocolError     2xx but the body is not an UplinkAck for this batch

Every uplink translates its library's exceptions into these in one place (``raise ... from exc``). The
classes are defined in :mod:`edge.errors` (one tree for the gateway, under ``VigilGatewayError``).
"""

from __future__ import annotations

from typing import Protocol

from pydantic import ValidationError

from alerts.contract import UplinkAck
from edge.errors import UplinkAuthError as UplinkAuthError  # the tree lives in edge/errors.py
from edge.errors import UplinkError as UplinkError
from edge.errors import UplinkInvalid as UplinkInvalid
from edge.errors import UplinkProtocolError as UplinkProtocolError
from edge.errors import UplinkRejected as UplinkRejected
from edge.errors import UplinkTooLarge as UplinkTooLarge
from edge.errors import UplinkUnavailable as UplinkUnavailable
from edge.outbox import PendingBatch


class UplinkThrottled(UplinkUnavailable):
    """429 / ``rate_limited``: the gateway is over its cloud quota; retry the same batch after
    ``retry_after_s``. Never a reason to give a batch up."""

    reason = "throttled"

    def __init__(self, message: str, *, reason: str | None = None, retry_after_s: float = 0.0) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class Uplink(Protocol):
    async def run(self) -> None:
        """Background session upkeep (MQTT connection); returns at once if none is needed."""
        ...

    async def send(self, batch: PendingBatch) -> UplinkAck:
        """Send one batch and return the cloud's acknowledgement, or raise :class:`UplinkError`."""
        ...

    async def aclose(self) -> None: ...


def parse_ack(body: bytes, batch_id: str) -> UplinkAck:
    try:
        ack = UplinkAck.model_validate_json(body)
    except ValidationError as exc:
        raise UplinkProtocolError(
            f"the cloud's answer is not an UplinkAck: {body[:200]!r}", reason="bad_ack"
        ) from exc
    if ack.batch_id != batch_id:
        raise UplinkProtocolError(f"ack for batch {ack.batch_id!r}, expected {batch_id!r}", reason="bad_ack")
    return ack
