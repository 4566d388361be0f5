"""The baseline: a kernel-density hot-spot map of recent events (what a crime analyst's heat map is).

Counts per cell over the last ``window_days`` are smoothed with a Gaussian of ``bandwidth_m`` between
cell centroids and scaled to the recent daily rate; a small ``floor`` share is spread evenly so a cell
with no recent event is unlikely rather than impossible (the log-likelihood of a zero forecast is minus
infinity). :func:`tune_kde` picks the three by predictive log-likelihood on the last weeks of the
training period, so the baseline the SEPP is compared with is the best heat map, not a strawman.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree

from alerts.forecast.errors import NotEnoughHistoryError
from alerts.forecast.evaluate import poisson_loglik
from alerts.forecast.grid import Cells

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class KDEConfig:
    bandwidth_m: float = 250.0
    window_days: int = 91
    floor: float = 0.02


def kernel_matrix(cells: Cells, bandwidth_m: float) -> csr_matrix:
    """Sparse Gaussian weights between centroids within four bandwidths (rows: target cells)."""
    tree = cKDTree(cells.xy)
    pairs = tree.sparse_distance_matrix(tree, max_distance=4.0 * bandwidth_m, output_type="coo_matrix")
    vals = np.exp(-0.5 * (pairs.data / bandwidth_m) ** 2)
    n = len(cells)
    diag = np.arange(n)
    rows = np.concatenate([pairs.row, diag])
    cols = np.concatenate([pairs.col, diag])
    data = np.concatenate([vals, np.ones(n)])  # the zero distances sparse_distance_matrix leaves out
    return csr_matrix((data, (rows, cols)), shape=(n, n))


def kde_daily(daily_counts: F64, first_day: int, n_days: int, cells: Cells, config: KDEConfig) -> F64:
    """Expected events per cell for each day ``first_day ... first_day + n_days - 1``, ``(n_days, cells)``.

    ``daily_counts`` is ``(days, cells)`` from the start of the history; day ``d``'s forecast sees only
    days before ``d``.
    """
    if first_day < 1:
        raise NotEnoughHistoryError("the KDE needs at least one day of history before the first forecast")
    cum = np.concatenate([np.zeros((1, daily_counts.shape[1])), np.cumsum(daily_counts, axis=0)])
    days = np.arange(first_day, first_day + n_days)
    lo = np.maximum(days - config.window_days, 0)
    window = cum[np.minimum(days, len(cum) - 1)] - cum[lo]  # (n_days, cells)
    span = (days - lo).astype(np.float64)
    k = kernel_matrix(cells, config.bandwidth_m)
    smooth = np.asarray((k @ window.T).T, dtype=np.float64)
    share = smooth / np.maximum(smooth.sum(axis=1, keepdims=True), 1e-12)
    share = (1 - config.floor) * share + config.floor / len(cells)
    rate = window.sum(axis=1) / np.maximum(span, 1.0)
    return np.asarray(share * np.maximum(rate, 1e-6)[:, None], dtype=np.float64)


def tune_kde(
    daily_counts: F64,
    cells: Cells,
    *,
    validation_days: int = 28,
    bandwidths_m: tuple[float, ...] | None = None,
    windows_days: tuple[int, ...] = (28, 91, 182, 365),
    floors: tuple[float, ...] = (0.005, 0.02, 0.1),
) -> KDEConfig:
    """The best ``KDEConfig`` by Poisson log-likelihood of day-ahead forecasts on the last days given."""
    n = daily_counts.shape[0]
    if n <= validation_days + 7:
        raise NotEnoughHistoryError("too little history to tune the KDE")
    bws = bandwidths_m or tuple(cells.spacing_m * f for f in (0.5, 1.0, 2.0, 4.0))
    first = n - validation_days
    actual = daily_counts[first:]
    best: tuple[float, KDEConfig] | None = None
    for bw, win, fl in itertools.product(bws, windows_days, floors):
        cfg = KDEConfig(bandwidth_m=bw, window_days=win, floor=fl)
        ll = poisson_loglik(kde_daily(daily_counts, first, validation_days, cells, cfg), actual)
        if best is None or ll > best[0]:
            best = (ll, cfg)
    assert best is not None
    return best[1]
