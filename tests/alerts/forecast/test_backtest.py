"""The headline: on a seeded history with known self-excitation, the SEPP beats the tuned KDE heat map.

Measured on ``simulators.history.generate_history(days=240, seed=13)``, 150 m cells, fit on the first
180 days, day-ahead forecasts for the last 60 (figures in docs/risk.md). The margins asserted here are
well inside the measured ones, so the test guards the claim without being brittle.
"""

from __future__ import annotations

import json

from alerts.forecast.backtest import BacktestReport
from alerts.forecast.history import Family


def test_sepp_beats_kde_on_pai_pei_and_loglik(sim_backtest: BacktestReport) -> None:
    kde, sepp = sim_backtest.score("kde"), sim_backtest.score("sepp")
    assert sepp.loglik_per_event > kde.loglik_per_event + 0.2
    for cov in (0.01, 0.05, 0.10):
        assert sepp.at(cov).pai > 1.2 * kde.at(cov).pai, cov
        assert sepp.at(cov).pei > kde.at(cov).pei + 0.04, cov


def test_sepp_is_close_to_the_oracle(sim_backtest: BacktestReport) -> None:
    sepp, oracle = sim_backtest.score("sepp"), sim_backtest.score("oracle")
    assert oracle.loglik_per_event >= sepp.loglik_per_event - 0.02
    assert sepp.loglik_per_event > oracle.loglik_per_event - 0.2


def test_fitted_parameters_are_in_the_truths_range(sim_backtest: BacktestReport) -> None:
    cover = sim_backtest.models[Family.COVER]
    assert 0.25 < cover.trigger.theta < 0.6  # truth 0.5
    assert 1.0 < cover.trigger.decay_days < 5.0  # truth 3 days
    assert 20.0 < cover.trigger.sigma_m < 200.0  # truth 60 m
    health = sim_backtest.models[Family.HEALTH]
    assert health.trigger.decay_days > 2.0  # truth 7 days: the slowest family stays the slowest
    effects = sim_backtest.models[Family.FLOOD].background.effects()
    assert effects["rain_10mm"] > 1.3  # floods follow the rain


def test_report_is_json(sim_backtest: BacktestReport) -> None:
    data = json.loads(json.dumps(sim_backtest.to_dict()))
    assert {m["method"] for m in data["methods"]} == {"kde", "sepp", "oracle"}
    assert data["test_events"] > 500
    assert "PAI@5%" in sim_backtest.table()
