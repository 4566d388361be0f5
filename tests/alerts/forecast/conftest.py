"""One seeded simulated history (Longhua demo neighbourhood, 240 days), shared by name."""

from __future__ import annotations

import pytest

from alerts.forecast.background import DAY_S
from alerts.forecast.backtest import BacktestReport, Truth, backtest
from alerts.forecast.grid import Cells, square_cells
from alerts.forecast.sepp import Triggering
from simulators.history import SimulatedHistory, generate_history

TEST_DAYS = 60


@pytest.fixture(scope="session")
def sim_history() -> SimulatedHistory:
    return generate_history(days=240, seed=13)


@pytest.fixture(scope="session")
def sim_cells(sim_history: SimulatedHistory) -> Cells:
    return square_cells(sim_history.device_points(), 150.0)


@pytest.fixture(scope="session")
def sim_backtest(sim_history: SimulatedHistory, sim_cells: Cells) -> BacktestReport:
    h, cells = sim_history, sim_cells
    truth = Truth(
        {p.family: h.true_background(cells, p.family) for p in h.params},
        {p.family: Triggering(p.theta, p.decay_days, max(p.sigma_m, 1.0)) for p in h.params},
    )
    return backtest(
        h.event_history(),
        cells,
        h.covariates(cells),
        train_end=h.end - TEST_DAYS * DAY_S,
        test_days=TEST_DAYS,
        truth=truth,
    )
