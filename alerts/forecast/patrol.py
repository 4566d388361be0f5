"""A grid worker's shift: which cells and devices to check first, why, and in which walking order.

The stops are the worker's highest-risk cells (expected events in the shift, from
:class:`alerts.forecast.risk.RiskForecast`); each stop is the position of its riskiest device (that is
where the worker goes), or the cell centre when the cell has no device to check. The order is a
nearest-neighbour tour from the worker's start, improved by 2-opt (reverse any stretch of the route that
makes it shorter, until none does): within a few per cent of the shortest route for the 5-20 stops of a
shift, in microseconds. When the shift is too short for all stops (walking at ``walk_m_s`` plus
``dwell_s`` at each), the lowest-risk stops are dropped first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from alerts.forecast.risk import Reason, RiskForecast

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DeviceCheck:
    device_id: str
    kind: str
    expected: float
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Stop:
    order: int
    cell: int
    cell_id: str
    xy: tuple[float, float]
    expected: float
    background: float
    triggered: float
    reasons: tuple[Reason, ...]
    devices: tuple[DeviceCheck, ...]
    walk_m: float  # from the previous stop (or the start)


@dataclass(frozen=True)
class PatrolPlan:
    stops: tuple[Stop, ...]
    start_xy: tuple[float, float]
    total_walk_m: float
    walk_s: float
    dropped: int  # stops left out because the shift was too short


def route_length(start: F64, points: F64, order: list[int]) -> float:
    path = np.concatenate([start[None, :], points[order]]) if order else start[None, :]
    return float(np.hypot(*np.diff(path, axis=0).T).sum()) if len(path) > 1 else 0.0


def walking_order(start: F64, points: F64) -> list[int]:
    """Nearest neighbour from ``start``, then 2-opt on the open path (the start stays first)."""
    n = len(points)
    if n <= 1:
        return list(range(n))
    left = set(range(n))
    order: list[int] = []
    here = start
    while left:
        nxt = min(left, key=lambda i: float(np.hypot(*(points[i] - here))))
        order.append(nxt)
        left.remove(nxt)
        here = points[nxt]
    nodes = np.concatenate([start[None, :], points])  # node 0 = start
    route = [0, *[i + 1 for i in order]]

    def d(i: int, j: int) -> float:
        return float(np.hypot(*(nodes[i] - nodes[j])))

    improved = True
    while improved:
        improved = False
        for i in range(1, len(route) - 1):
            for j in range(i + 1, len(route)):
                a, b = route[i - 1], route[i]
                c = route[j]
                e = route[j + 1] if j + 1 < len(route) else None
                before = d(a, b) + (d(c, e) if e is not None else 0.0)
                after = d(a, c) + (d(b, e) if e is not None else 0.0)
                if after < before - 1e-9:
                    route[i : j + 1] = route[i : j + 1][::-1]
                    improved = True
    return [r - 1 for r in route[1:]]


def plan_patrol(
    risk: RiskForecast,
    *,
    start_xy: tuple[float, float] | None = None,
    cells: list[int] | None = None,
    max_stops: int = 8,
    devices_per_stop: int = 3,
    shift_s: float | None = None,
    walk_m_s: float = 1.2,
    dwell_s: float = 600.0,
    device_mask: npt.NDArray[np.bool_] | None = None,
) -> PatrolPlan:
    """The plan for one worker over ``cells`` (default: every cell) from ``start_xy``.

    ``device_mask`` keeps the devices listed at each stop to the worker's own (a cell of the forecast grid
    can straddle two community grids).
    """
    allowed = np.asarray(cells if cells is not None else range(len(risk.cells)), dtype=np.int64)
    expected = risk.expected
    ranked = allowed[np.argsort(-expected[allowed], kind="stable")]
    ranked = ranked[expected[ranked] > 0][:max_stops]
    picks = [_stop_site(risk, int(c), devices_per_stop, device_mask) for c in ranked.tolist()]
    start = np.asarray(
        start_xy if start_xy is not None else (picks[0][0] if picks else (0.0, 0.0)), dtype=float
    )
    dropped = 0
    while True:
        pts = np.array([p[0] for p in picks], dtype=float).reshape(-1, 2)
        order = walking_order(start, pts)
        walk = route_length(start, pts, order)
        if shift_s is None or not picks or walk / walk_m_s + dwell_s * len(picks) <= shift_s:
            break
        picks.pop()  # the lowest-risk stop (picks are in risk order)
        ranked = ranked[:-1]
        dropped += 1
    stops = []
    here = start
    for n, i in enumerate(order):
        c = int(ranked[i])
        xy, checks = picks[i]
        stops.append(
            Stop(
                order=n + 1,
                cell=c,
                cell_id=risk.cells.ids[c],
                xy=(float(xy[0]), float(xy[1])),
                expected=float(expected[c]),
                background=float(risk.background[c]),
                triggered=float(risk.triggered[c]),
                reasons=tuple(risk.reasons(c)),
                devices=checks,
                walk_m=float(math.hypot(xy[0] - here[0], xy[1] - here[1])),
            )
        )
        here = np.asarray(xy)
    total = sum(s.walk_m for s in stops)
    return PatrolPlan(
        stops=tuple(stops),
        start_xy=(float(start[0]), float(start[1])),
        total_walk_m=total,
        walk_s=total / walk_m_s,
        dropped=dropped,
    )


def _stop_site(
    risk: RiskForecast, cell: int, k: int, mask: npt.NDArray[np.bool_] | None
) -> tuple[tuple[float, float], tuple[DeviceCheck, ...]]:
    here = risk.device_cell == cell
    idx = np.flatnonzero(here & mask if mask is not None else here)
    idx = idx[np.argsort(-risk.device_expected[idx], kind="stable")][:k]
    checks = tuple(
        DeviceCheck(
            device_id=risk.devices.ids[i],
            kind=risk.devices.kind[i].value,
            expected=float(risk.device_expected[i]),
            reasons=tuple(risk.device_reasons(int(i))),
        )
        for i in idx.tolist()
    )
    where = risk.devices.xy[idx[0]] if len(idx) else risk.cells.xy[cell]
    return (float(where[0]), float(where[1])), checks
