"""Reading history as small inline SVG charts, drawn on the server: no chart library to ship or update."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT, PAD = 320.0, 80.0, 4.0


@dataclass(frozen=True, slots=True)
class Chart:
    channel: str
    points: str  # SVG polyline "x,y x,y ..."
    lo: float
    hi: float
    last: float
    n: int
    last_t: float = 0.0  # when the last value was read (epoch seconds)
    label: str = ""  # the channel in the reader's words (倾角); the template falls back to ``channel``
    unit: str = ""  # °, cm, ppm ... (the kind registry's)
    digits: int = 2  # decimals shown (the channel's wire resolution)


def sparkline(channel: str, time: Sequence[float], values: Sequence[float | None]) -> Chart | None:
    """One channel's polyline scaled into the chart box; ``None`` when it has no finite value."""
    pts = [
        (t, v)
        for t, v in zip(time, values, strict=False)
        if v is not None and math.isfinite(v) and math.isfinite(t)
    ]
    if not pts:
        return None
    t0, t1 = pts[0][0], pts[-1][0]
    lo = min(v for _, v in pts)
    hi = max(v for _, v in pts)
    span_t = (t1 - t0) or 1.0
    span_v = (hi - lo) or 1.0
    xy = " ".join(
        f"{PAD + (t - t0) / span_t * (WIDTH - 2 * PAD):.1f},"
        f"{HEIGHT - PAD - (v - lo) / span_v * (HEIGHT - 2 * PAD):.1f}"
        for t, v in pts
    )
    return Chart(channel=channel, points=xy, lo=lo, hi=hi, last=pts[-1][1], n=len(pts), last_t=pts[-1][0])
