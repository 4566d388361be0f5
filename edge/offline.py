"""Run a simulated fleet through the detection engine offline (scoring, benchmarks, quality tests).

Why here and not in the daemon: scoring detection must not depend on serial ports, brokers or clocks.
Frames are decoded per kind with the vectorised codec and handed to the engine tick by tick, the way the
gateway's pipeline batches them (larger batches than a live gateway's, so a 3-day fleet scores in
seconds), and :meth:`DetectionEngine.tick` runs at every tick end.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alerts.contract import AlertEvent
from alerts.detection.engine import DetectionEngine
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.registry import spec


@dataclass
class OfflineRun:
    alerts: list[AlertEvent] = field(default_factory=list)
    frames: int = 0
    rejects: int = 0


def run_fleet(
    fleet: Any,
    start: float,
    duration_s: float,
    engine: DetectionEngine | None = None,
    *,
    decide_at_frame: bool = True,
) -> OfflineRun:
    """Feed every frame of ``fleet`` (a :class:`simulators.fleet.Fleet`) through ``engine``.

    The fleet's ticks (``fleet.step_s``, 60 s by default) make the batches. With ``decide_at_frame`` an
    alert step caused by a frame is stamped with that frame's arrival time, as a live gateway (which
    runs a batch within ~100 ms of its frames, see ``bench/bench_detect.py`` for the latency) would
    stamp it; without it, with the end of the tick, which overstates delays by up to one tick.
    """
    eng = engine or DetectionEngine()
    out = OfflineRun()
    for tick_end, frames in fleet.run_ticks(start, duration_s):
        by_kind: dict[DeviceKind, list[Any]] = defaultdict(list)
        for f in frames:
            by_kind[f.kind].append(f)
        for kind, fs in by_kind.items():
            times = np.array([f.stamp or f.time for f in fs], dtype=np.float64)
            batch, rejects = spec(kind).codec.decode_many(
                [f.payload for f in fs], device_ids=[f.device_id for f in fs], times=times
            )
            out.frames += len(fs)
            out.rejects += len(rejects)
            if len(batch):
                steps = eng.process(batch, now=float(tick_end))
                if decide_at_frame:
                    steps = [s.model_copy(update={"time": s.frame_time}) for s in steps]
                out.alerts += steps
        out.alerts += eng.tick(tick_end)
    return out
