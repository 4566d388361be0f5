"""PAI, PEI and the Poisson log-likelihood on cases small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import poisson

from alerts.forecast.evaluate import hotspot_mask, poisson_loglik, score_method


def test_pai_and_pei_by_hand() -> None:
    # 10 equal cells, one day; the forecast ranks cells 0 and 1 first; events: 3 in 1, 1 in 5, 4 in 9
    forecast = np.array([[9, 8, 0, 0, 0, 0, 0, 0, 0, 1]], dtype=float)
    actual = np.array([[0, 3, 0, 0, 0, 1, 0, 0, 0, 4]], dtype=float)
    s = score_method("m", forecast, actual, np.ones(10), coverages=(0.2,))
    h = s.at(0.2)
    assert h.hit_rate == pytest.approx(3 / 8)
    assert h.pai == pytest.approx((3 / 8) / 0.2)
    assert h.pei == pytest.approx(3 / 7)  # best two cells catch 4 + 3


def test_a_perfect_forecast_has_pei_one() -> None:
    rng = np.random.default_rng(0)
    actual = rng.poisson(rng.gamma(0.5, 2.0, (20, 50))).astype(float)
    s = score_method("perfect", actual, actual, np.ones(50))
    assert all(h.pei == pytest.approx(1.0) for h in s.hotspots)


def test_hotspot_mask_counts_area_not_cells() -> None:
    mask = hotspot_mask(np.array([3.0, 2.0, 1.0]), np.array([1.0, 1.0, 2.0]), 0.5)
    assert mask.tolist() == [True, True, False]
    assert hotspot_mask(np.array([1.0, 2.0]), np.array([1.0, 1.0]), 0.0).tolist() == [False, True]


def test_loglik_is_the_poisson_pmf() -> None:
    lam = np.array([[0.5, 2.0], [1e-20, 3.0]])
    y = np.array([[0.0, 3.0], [0.0, 1.0]])
    expected = poisson.logpmf(y, np.maximum(lam, 1e-12)).sum()
    assert poisson_loglik(lam, y) == pytest.approx(expected)
