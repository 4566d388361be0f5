"""Fit on a training period, forecast each held-out day from what came before it, score every method.

The protocol of the NIJ Real-Time Crime Forecasting Challenge, at daily resolution: models are fitted on
``[start, train_end)`` once; then for each day of ``[train_end, train_end + test_days)`` each method
forecasts the expected events per cell from the history *before that day* (the SEPP's triggered part
rolls forward with the events as they happen; the KDE's window slides), and the day's counts are scored
(:mod:`alerts.forecast.evaluate`). The KDE is tuned on the last four weeks of training first.

Methods side by side: ``kde`` (the baseline), ``sepp`` (one model per family, summed), and, when the
truth is known (simulated histories), ``oracle`` (the same forecast with the true parameters and the true
background: the ceiling).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from alerts.forecast.background import DAY_S, Covariates
from alerts.forecast.errors import NotEnoughHistoryError
from alerts.forecast.evaluate import MethodScore, format_table, score_method
from alerts.forecast.grid import Cells
from alerts.forecast.history import FAMILIES, EventHistory, Family
from alerts.forecast.kde import KDEConfig, kde_daily, tune_kde
from alerts.forecast.sepp import SEPPConfig, SEPPModel, Triggering, bin_counts, fit_sepp, triggered_rate

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Truth:
    """What a simulator knows: per family, the true background ``(days, cells)`` and triggering."""

    background: dict[Family, F64]
    trigger: dict[Family, Triggering]


@dataclass
class BacktestReport:
    scores: list[MethodScore]
    models: dict[Family, SEPPModel]
    kde: KDEConfig
    train_events: int
    test_events: int
    fit_seconds: float
    forecasts: dict[str, F64] = field(repr=False, default_factory=dict)
    actual: F64 = field(repr=False, default_factory=lambda: np.empty((0, 0)))

    def score(self, method: str) -> MethodScore:
        return next(s for s in self.scores if s.method == method)

    def table(self) -> str:
        return format_table(self.scores)

    def to_dict(self) -> dict[str, object]:
        return {
            "methods": [s.to_dict() for s in self.scores],
            "sepp": {f.value: m.summary() for f, m in self.models.items()},
            "kde": {"bandwidth_m": self.kde.bandwidth_m, "window_days": self.kde.window_days,
                    "floor": self.kde.floor},
            "train_events": self.train_events,
            "test_events": self.test_events,
            "fit_seconds": round(self.fit_seconds, 3),
        }  # fmt: skip


def daily_counts(cell_idx: npt.NDArray[np.int64], t: F64, day0: float, n_days: int, n_cells: int) -> F64:
    d = np.floor((t - day0) / DAY_S).astype(np.int64)
    ok = (cell_idx >= 0) & (d >= 0) & (d < n_days)
    flat = np.bincount(d[ok] * n_cells + cell_idx[ok], minlength=n_days * n_cells)
    return flat.reshape(n_days, n_cells).astype(np.float64)


def sepp_daily(
    model: SEPPModel, cell_idx: npt.NDArray[np.int64], t: F64, first_day: int, n_days: int
) -> tuple[F64, F64]:
    """(background, triggered) expected events per day and cell for days ``first_day ...`` (since start)."""
    bpd = round(DAY_S / model.bin_s)
    total_days = first_day + n_days
    y = bin_counts(cell_idx, t, model.start, total_days * bpd, len(model.cells), model.bin_s)
    at = (np.arange(first_day, total_days) * bpd).astype(np.int64)
    trig = triggered_rate(model.cells, model.trigger, y, model.bin_s, at, bpd)
    d0 = model.covariates.day_of(model.start)
    bg = model.background.rate(model.covariates, np.arange(d0 + first_day, d0 + total_days))
    return bg, trig


def backtest(
    history: EventHistory,
    cells: Cells,
    covariates: Covariates,
    *,
    train_end: float,
    test_days: int,
    start: float | None = None,
    config: SEPPConfig | None = None,
    truth: Truth | None = None,
    coverages: tuple[float, ...] = (0.01, 0.05, 0.10),
) -> BacktestReport:
    cfg = config or SEPPConfig()
    start = covariates.day0 if start is None else start
    d_start = covariates.day_of(start)
    start = covariates.day0 + d_start * DAY_S
    train_days = round((train_end - start) / DAY_S)
    if train_days < 35:
        raise NotEnoughHistoryError("a backtest needs at least five weeks of training history")
    cell_idx = cells.locate(history.xy)
    n_total = train_days + test_days
    counts = daily_counts(cell_idx, history.time, start, n_total, len(cells))
    actual = counts[train_days:]
    t_fit = time.perf_counter()
    models: dict[Family, SEPPModel] = {}
    sepp = np.zeros((test_days, len(cells)))
    for f_i, fam in enumerate(FAMILIES):
        m = history.family == f_i
        train = m & (history.time < train_end)
        if int(train.sum()) < cfg.min_events:
            continue
        model = fit_sepp(cell_idx[train], history.time[train], cells, covariates, start, train_end, cfg)
        models[fam] = model
        bg, trig = sepp_daily(model, cell_idx[m], history.time[m], train_days, test_days)
        sepp += bg + trig
    fit_s = time.perf_counter() - t_fit
    kde_cfg = tune_kde(counts[:train_days], cells)
    kde = kde_daily(counts, train_days, test_days, cells, kde_cfg)
    forecasts = {"kde": kde, "sepp": sepp}
    if truth is not None:
        oracle = np.zeros_like(sepp)
        for f_i, fam in enumerate(FAMILIES):
            if fam not in truth.background:
                continue
            m = history.family == f_i
            bpd = round(DAY_S / cfg.bin_s)
            y = bin_counts(cell_idx[m], history.time[m], start, n_total * bpd, len(cells), cfg.bin_s)
            at = (np.arange(train_days, n_total) * bpd).astype(np.int64)
            oracle += truth.background[fam][d_start + train_days : d_start + n_total]
            oracle += triggered_rate(cells, truth.trigger[fam], y, cfg.bin_s, at, bpd)
        forecasts["oracle"] = oracle
    scores = [score_method(name, f, actual, cells.area_m2, coverages) for name, f in forecasts.items()]
    return BacktestReport(
        scores=scores,
        models=models,
        kde=kde_cfg,
        train_events=int(counts[:train_days].sum()),
        test_events=int(actual.sum()),
        fit_seconds=fit_s,
        forecasts=forecasts,
        actual=actual,
    )
