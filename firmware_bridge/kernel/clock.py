"""Clocks: real UTC time, or an accelerated simulated time shared by simulators and gateways.

A simulated fleet at 60x speed sends a wristband's 5-minute summary every 5 real seconds. The gateway
and the cloud must judge "for 10 minutes" and "missed heartbeat" in the same simulated time, so both
read the same :class:`AcceleratedClock` (``vigil simulate`` writes it to ``clock.json``; the gateway's
``[clock]`` section or ``--clock`` points at it). Production uses :class:`SystemClock`.

All times are UTC seconds since the epoch.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Current UTC time, seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of this clock's time."""
        ...

    def real_seconds(self, seconds: float) -> float:
        """How many real seconds ``seconds`` of this clock's time take."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def real_seconds(self, seconds: float) -> float:
        return seconds


@dataclass(frozen=True, slots=True)
class AcceleratedClock:
    """Simulated time = ``sim_epoch + (real now - real_epoch) * speedup``."""

    sim_epoch: float
    real_epoch: float
    speedup: float = 1.0

    def __post_init__(self) -> None:
        if not self.speedup > 0:
            raise ValueError(f"clock speedup must be > 0, got {self.speedup}")

    @classmethod
    def starting_now(cls, sim_epoch: float, speedup: float) -> AcceleratedClock:
        return cls(sim_epoch=sim_epoch, real_epoch=time.time(), speedup=speedup)

    def now(self) -> float:
        return self.sim_epoch + (time.time() - self.real_epoch) * self.speedup

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0) / self.speedup)

    def real_seconds(self, seconds: float) -> float:
        return seconds / self.speedup

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AcceleratedClock:
        data = json.loads(text)
        return cls(float(data["sim_epoch"]), float(data["real_epoch"]), float(data.get("speedup", 1.0)))

    def save(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> AcceleratedClock:
        return cls.from_json(path.read_text(encoding="utf-8"))
