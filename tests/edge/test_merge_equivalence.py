"""Merging frames into one detection call per kind (the pipeline's batch window, closed early by urgent
frames) changes no alert: whatever the windows, the gateway commits the same alert steps per device, in the
same order, as when every frame is its own batch (edge/pipeline.py; docs/gateway.md "Batching").

The streams are ``test_batch_equivalence``'s: every kind, duplicates, replays and reboots, no two frames of
one device at the same time (which of those came first is the arrival order frame by frame but the seq
order inside a batch, by design of the engine)."""

from __future__ import annotations

import itertools
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.detection.engine import DetectionEngine
from edge.metrics import GatewayMetrics
from edge.outbox import Outbox, iter_alert_events
from edge.pipeline import Pipeline, UrgentFilter
from edge.sources.base import SourceFrame
from firmware_bridge.kernel.clock import SystemClock
from firmware_bridge.kernel.records import Reading
from firmware_bridge.registry import spec
from tests.alerts.detection.test_batch_equivalence import streams


class _Clock(SystemClock):
    def now(self) -> float:
        return 1_767_312_000.0


def _frames(stream: list[Reading]) -> list[SourceFrame]:
    return [(r.device_id, spec(r.kind).codec.encode(r), r.time, "radio0") for r in stream]


def _gateway(frames: list[SourceFrame], cuts: list[int]) -> dict[str, list[tuple[Any, ...]]]:
    """Run the frames through ``Pipeline.handle`` in the batches ``cuts`` makes, in arrival order (the
    receive time is stamped on arrival, so it is the arrival order: of two copies of one frame, the
    de-duplication keeps the earlier in a batch as across batches - a shuffled batch would keep either and
    report that copy's time); the committed alert steps per device, in order."""
    bounds = sorted({min(c, len(frames)) for c in cuts} | {0, len(frames)})
    with tempfile.TemporaryDirectory() as d:
        ob = Outbox(Path(d) / "o.db", synchronous="normal")
        try:
            p = Pipeline(DetectionEngine(), ob, GatewayMetrics(), _Clock())
            returned = []
            for lo, hi in itertools.pairwise(bounds):
                part = frames[lo:hi]
                if part:
                    returned += p.handle(part).alerts
            committed = list(iter_alert_events(ob.path))
        finally:
            ob.close()
    assert [a.alert_id for a in committed] == [a.alert_id for a in returned]
    out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for a in committed:
        out[a.device_id].append(
            (a.alert_id, a.phase, a.severity, a.frame_time, a.value, a.episode_ms, a.time)
        )
    return dict(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=streams(max_devices=3, max_frames=12, same_time=False),
    cuts=st.lists(st.integers(0, 110), max_size=8),
)
def test_any_merge_window_commits_the_alerts_of_frame_by_frame(
    stream: list[Reading], cuts: list[int]
) -> None:
    frames = _frames(stream)
    one_by_one = _gateway(frames, list(range(len(frames))))
    assert _gateway(frames, cuts) == one_by_one  # random windows
    assert _gateway(frames, []) == one_by_one  # everything in one window
    # windows closed by urgent frames only (a long window with urgent flush on)
    flt = UrgentFilter()
    urgent = [i + 1 for i, f in enumerate(frames) if flt(f[0], f[1], f[2])]
    assert _gateway(frames, urgent) == one_by_one
