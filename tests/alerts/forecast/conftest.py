"""One seeded simulated history (Longhua demo neighbourhood, 240 days), shared by name."""

from __future__ import annotations

import numpy as np
import pytest

from alerts.forecast.background import DAY_S
from alerts.forecast.backtest import BacktestReport, Truth, backtest
from alerts.forecast.grid import Cells, square_cells
from alerts.forecast.risk import Devices, RiskForecast, forecast_risk
from alerts.forecast.sepp import Triggering
from firmware_bridge.kernel.records import DeviceKind
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


@pytest.fixture(scope="session")
def sim_devices(sim_history: SimulatedHistory) -> Devices:
    ids: list[str] = []
    kinds: list[DeviceKind] = []
    xy = []
    for kind, sites in sim_history.neighbourhood.sites.items():
        ids += sites.device_id
        kinds += [kind] * len(sites)
        xy.append(sites.xy)
    return Devices(tuple(ids), tuple(kinds), np.concatenate(xy))


@pytest.fixture(scope="session")
def sim_risk(sim_history: SimulatedHistory, sim_cells: Cells, sim_devices: Devices) -> RiskForecast:
    h = sim_history
    return forecast_risk(
        h.event_history(), sim_cells, h.covariates(sim_cells), sim_devices, at=h.end - 30 * DAY_S
    )
