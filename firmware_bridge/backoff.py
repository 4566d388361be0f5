"""Jittered exponential backoff: the one retry helper of every reconnect and retry loop.

Used by the transports (serial, MQTT), the gateway's source supervisor and uplink, and the cloud's MQTT
ingest workers, so a change of policy (cap, jitter) is made once.

Why jitter: after a broker restart or a power cut every gateway of a district reconnects at the same moment;
without jitter they retry in lock-step and hammer the broker in waves. We use "equal jitter" (half the delay
fixed, half random) so a delay never collapses to ~0 (no busy loop on a Pi when the port is gone) yet
retries spread out. The delay doubles per failed attempt up to ``maximum`` and resets after a success.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """``next()`` returns the next delay in seconds; ``reset()`` after a successful (re)connect.

    >>> b = Backoff(initial=1.0, maximum=8.0, rng=random.Random(0))
    >>> [round(b.next(), 2) for _ in range(5)]
    [0.92, 1.76, 2.84, 5.04, 6.05]
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {self.initial}, {self.maximum}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")

    def ceiling(self) -> float:
        """The un-jittered delay of the current attempt (capped at ``maximum``)."""
        return min(self.maximum, self.initial * self.factor ** min(self.attempt, 64))

    def next(self) -> float:
        cap = self.ceiling()
        self.attempt += 1
        return cap / 2 + self.rng.uniform(0, cap / 2)

    def reset(self) -> None:
        self.attempt = 0

    def __iter__(self) -> Iterator[float]:
        """Delays forever (``next(delays)`` in a retry loop); ``reset()`` still starts over."""
        while True:
            yield self.next()

    async def sleep(self) -> float:
        """Wait for the next delay; returns it (for a log line)."""
        delay = self.next()
        await asyncio.sleep(delay)
        return delay
