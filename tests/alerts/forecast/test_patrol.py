"""Patrol plans: the walking order is near-optimal, the shift limit drops the least risky stops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alerts.forecast.patrol import plan_patrol, route_length, walking_order
from alerts.forecast.risk import RiskForecast


@pytest.mark.parametrize("seed", range(8))
def test_walking_order_is_close_to_the_best_route(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1000, (7, 2))
    start = np.array([500.0, 500.0])
    order = walking_order(start, pts)
    assert sorted(order) == list(range(7))
    best = min(route_length(start, pts, list(p)) for p in itertools.permutations(range(7)))
    assert route_length(start, pts, order) <= 1.2 * best


def test_two_opt_untangles_a_crossing() -> None:
    start = np.array([0.0, 0.0])
    pts = np.array([[10.0, 0.0], [10.0, 10.0], [0.0, 10.0], [20.0, 0.0]])
    order = walking_order(start, pts)
    assert route_length(start, pts, order) <= route_length(start, pts, [0, 3, 1, 2]) + 1e-9


def test_plan_over_a_workers_cells(sim_risk: RiskForecast) -> None:
    cells = [int(c) for c in sim_risk.ranking()[5:40]]
    plan = plan_patrol(sim_risk, cells=cells, start_xy=(0.0, 0.0), max_stops=6)
    assert len(plan.stops) == 6
    assert {s.cell for s in plan.stops} == set(int(c) for c in sim_risk.ranking()[5:11])
    assert [s.order for s in plan.stops] == [1, 2, 3, 4, 5, 6]
    assert plan.total_walk_m == pytest.approx(sum(s.walk_m for s in plan.stops))
    for s in plan.stops:
        assert s.devices and s.devices[0].expected >= s.devices[-1].expected
        assert s.expected == pytest.approx(s.background + s.triggered)


def test_a_short_shift_drops_the_least_risky_stops(sim_risk: RiskForecast) -> None:
    full = plan_patrol(sim_risk, start_xy=(0.0, 0.0), max_stops=8)
    short = plan_patrol(sim_risk, start_xy=(0.0, 0.0), max_stops=8, shift_s=3 * 600.0 + 600.0)
    assert short.dropped >= 5 and len(short.stops) == 8 - short.dropped
    kept = {s.cell for s in short.stops}
    ranked = [s.cell for s in sorted(full.stops, key=lambda s: -s.expected)]
    assert kept == set(ranked[: len(kept)])
