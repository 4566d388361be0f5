"""A self-exciting point process per event family, fitted by EM (Mohler et al., JASA 2011; 2015).

The rate of events in cell ``c`` at time ``t`` is a background plus what recent events trigger::

    lambda(c, t) = mu(c, day(t)) + theta * sum_j  W(c | c_j) * omega * exp(-omega * (t - t_j))

* ``mu``: the background of :mod:`alerts.forecast.background` (covariates x a per-cell multiplier);
* ``theta``: the branching ratio, the expected number of events one event triggers (< 1);
* ``omega``: the decay rate in time (``decay_days = 1 / omega``);
* ``W``: where triggered events land, a Gaussian of scale ``sigma_m`` over the cell's neighbour stencil
  (normalised per parent cell, so nothing leaks off the map).

Why time bins: the exponential kernel turns the sum over past events into a recursive filter. Counts are
binned (``bin_s``, default 3 h) into a dense ``cells x bins`` array, and ``scipy.signal.lfilter`` computes
every cell's triggered rate in one C pass. The kernel in bins is the geometric distribution
``phi(l) = (1 - a) a**(l - 1)``, ``l >= 1`` bins after the parent, ``a = exp(-omega * bin_s)``: the
discrete twin of the exponential (a parent never triggers in its own bin). The E-step only touches the
occupied cell-bins, so a year of a million events costs a few dozen array passes, not a million-squared
pair list. The M-step is closed form for ``theta`` (with the edge correction for parents near the end of
the window) and for ``a`` (geometric MLE), a 1-D search for ``sigma_m``, and Newton steps for the
background (:func:`alerts.forecast.background.fit_background`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar
from scipy.signal import lfilter
from scipy.special import gammaln

from alerts.forecast.background import DAY_S, BackgroundDesign, BackgroundFit, Covariates, fit_background
from alerts.forecast.errors import ForecastError, NotEnoughHistoryError
from alerts.forecast.grid import Cells

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SEPPConfig:
    bin_s: float = 3 * 3600.0
    max_iter: int = 60
    tol: float = 3e-5  # stop when the log-likelihood improves by less than tol * n_events
    prior_events: float = 3.0  # strength of the per-cell multiplier's prior (in events)
    ridge: float = 1.0  # L2 penalty on the standardised covariate coefficients
    init_theta: float = 0.3
    init_decay_days: float = 2.0
    max_decay_days: float = 90.0
    newton_every: int = 1  # background coefficients: one Newton step every few EM iterations
    min_events: int = 10


@dataclass(frozen=True)
class Triggering:
    theta: float  # branching ratio
    decay_days: float  # 1 / omega
    sigma_m: float  # spatial scale of where triggered events land

    def decay_per_bin(self, bin_s: float) -> float:
        return math.exp(-bin_s / (self.decay_days * DAY_S))


@dataclass
class SEPPModel:
    """A fitted model of one family; ``forecast`` turns it and the events so far into expected counts."""

    cells: Cells
    covariates: Covariates
    background: BackgroundFit
    trigger: Triggering
    start: float  # first instant of the fit window (a day boundary)
    end: float  # last instant (exclusive)
    bin_s: float
    loglik: float
    n_events: int
    n_iter: int
    converged: bool
    history: list[float] = field(default_factory=list)  # log-likelihood per iteration

    def weights(self) -> F64:
        return spatial_weights(self.cells, self.trigger.sigma_m)

    def summary(self) -> dict[str, object]:
        return {
            "branching_ratio": round(self.trigger.theta, 4),
            "decay_days": round(self.trigger.decay_days, 3),
            "sigma_m": round(self.trigger.sigma_m, 1),
            "covariate_rate_ratios": {k: round(v, 4) for k, v in self.background.effects().items()},
            "events": self.n_events,
            "iterations": self.n_iter,
            "converged": self.converged,
            "loglik": round(self.loglik, 3),
        }


def spatial_weights(cells: Cells, sigma_m: float) -> F64:
    """``W[c, o]``: share of a parent in cell ``neighbours[c, o]``'s offspring that lands in ``c``."""
    d = cells.distance_m
    w = np.where(
        np.isfinite(d), np.exp(-0.5 * (np.where(np.isfinite(d), d, 0.0) / max(sigma_m, 1e-6)) ** 2), 0.0
    )
    z = w.sum(axis=1)  # the stencil is symmetric: a cell's total outflow = its row sum
    nb = cells.neighbours
    zn = np.where(nb >= 0, z[np.maximum(nb, 0)], 1.0)
    return np.asarray(w / np.maximum(zn, 1e-300), dtype=np.float64)


def bin_counts(cells_idx: I64, time: F64, start: float, n_bins: int, n_cells: int, bin_s: float) -> F64:
    """Dense ``(n_cells, n_bins)`` counts of events (cell index, time) from ``start``."""
    b = np.floor((time - start) / bin_s).astype(np.int64)
    ok = (cells_idx >= 0) & (b >= 0) & (b < n_bins)
    flat = np.bincount(cells_idx[ok] * n_bins + b[ok], minlength=n_cells * n_bins)
    return flat.reshape(n_cells, n_bins).astype(np.float64)


def _filters(y: npt.NDArray[np.float32], a: float) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``G[b, :] = sum_l phi(l) y[:, b-l]`` and ``L[b, :] = sum_l l phi(l) y[:, b-l]`` (l >= 1).

    Both come back as ``(bins, cells)``, C-contiguous: the E-step gathers a stencil of cells in one bin,
    so neighbours in a row keep those gathers in cache.
    """
    f32 = np.float32
    g = lfilter(np.array([0.0, 1.0 - a], f32), np.array([1.0, -a], f32), y, axis=1)
    lag = lfilter(np.array([1.0], f32), np.array([1.0, -a], f32), g, axis=1)  # = G filtered once more
    return np.ascontiguousarray(np.asarray(g).T), np.ascontiguousarray(np.asarray(lag).T)


def fit_sepp(
    cells_idx: I64,
    time: F64,
    cells: Cells,
    covariates: Covariates,
    start: float,
    end: float,
    config: SEPPConfig | None = None,
) -> SEPPModel:
    """Fit one family's events (their cell index and time) over ``[start, end)`` by EM."""
    cfg = config or SEPPConfig()
    bins_per_day = DAY_S / cfg.bin_s
    if abs(bins_per_day - round(bins_per_day)) > 1e-9:
        raise ForecastError(f"bin_s must divide a day, got {cfg.bin_s}")
    bpd = round(bins_per_day)
    d0 = covariates.day_of(start)
    start = covariates.day0 + d0 * DAY_S
    n_days = max(1, math.ceil((end - start) / DAY_S))
    end = start + n_days * DAY_S
    n_bins, n_cells = n_days * bpd, len(cells)
    y = bin_counts(cells_idx, time, start, n_bins, n_cells, cfg.bin_s)
    y32 = y.astype(np.float32)  # counts are exact in float32; the filters run twice as fast
    occ_b, occ_c = np.nonzero(y.T)  # sorted by bin, then cell: the gathers below sweep memory in order
    n_i = y[occ_c, occ_b]
    n_events = int(n_i.sum())
    if n_events < cfg.min_events:
        raise NotEnoughHistoryError(f"{n_events} events in the fit window; need at least {cfg.min_events}")
    occ_d = occ_b // bpd
    days = np.arange(d0, d0 + n_days)
    nb = np.maximum(cells.neighbours, 0)
    flat_nb = occ_b[:, None] * n_cells + nb[occ_c]  # (n_occ, k): each stencil cell's bin in G.T
    flat_day = occ_c * n_days + occ_d  # the event bin's (cell, day) in the background
    lgam = float(gammaln(n_i + 1).sum())
    remaining = (n_bins - 1 - occ_b).astype(np.float64)  # bins left after each parent's bin

    trig = Triggering(cfg.init_theta, cfg.init_decay_days, cells.spacing_m)
    y_day = y.reshape(n_cells, n_days, bpd).sum(axis=2).T  # (days, cells)
    design = BackgroundDesign.build(covariates, days)
    names = covariates.names
    bg = fit_background(
        y_day * (1 - trig.theta), design, names, prior_events=cfg.prior_events, ridge=cfg.ridge
    )
    history: list[float] = []
    converged = False
    it = 0
    ll = -math.inf
    for it in range(1, cfg.max_iter + 1):
        a = trig.decay_per_bin(cfg.bin_s)
        w = spatial_weights(cells, trig.sigma_m)
        g, lag = _filters(y32, a)
        mu_cd = bg.rate_on(design).T  # (cells, days)
        mu_i = np.take(mu_cd, flat_day) / bpd
        w_i = w[occ_c]  # (n_occ, k)
        t_io = trig.theta * w_i * np.take(g, flat_nb).astype(np.float64)
        lam = mu_i + t_io.sum(axis=1)
        ll_new = float(
            (n_i * np.log(lam)).sum() - mu_cd.sum() - trig.theta * (n_i * (1 - a**remaining)).sum() - lgam
        )
        history.append(ll_new)
        r = n_i / lam
        # M-step -------------------------------------------------------------------------------------
        resp_bg = mu_i * r
        resp_tr = t_io * r[:, None]  # expected offspring per (event bin, stencil offset)
        offspring = float(resp_tr.sum())
        exposure = float((n_i * (1 - a**remaining)).sum())
        theta = min(offspring / max(exposure, 1e-12), 0.95)
        lag_sum = float((trig.theta * w_i * np.take(lag, flat_nb).astype(np.float64) * r[:, None]).sum())
        if offspring > 1e-9 and lag_sum > offspring:
            a_new = 1.0 - offspring / lag_sum
            decay = -cfg.bin_s / (DAY_S * math.log(min(max(a_new, 1e-12), 1 - 1e-12)))
        else:
            decay = trig.decay_days
        decay = float(min(max(decay, cfg.bin_s / DAY_S / 4), cfg.max_decay_days))
        sigma = _fit_sigma(cells, resp_tr, occ_c, trig.sigma_m)
        trig = Triggering(theta, decay, sigma)
        per_cd = np.bincount(flat_day, weights=resp_bg, minlength=n_cells * n_days)
        bg_counts: F64 = np.asarray(per_cd, dtype=np.float64).reshape(n_cells, n_days).T
        steps = 1 if it % cfg.newton_every == 0 or it < 3 else 0
        bg = fit_background(
            bg_counts, design, names, prior_events=cfg.prior_events, ridge=cfg.ridge, start=bg,
            newton_steps=steps,
        )  # fmt: skip
        k = cfg.newton_every
        if it > k + 2 and abs(ll_new - history[-1 - k]) < cfg.tol * n_events * k:
            converged = True
            ll = ll_new
            break
        ll = ll_new
    return SEPPModel(
        cells=cells,
        covariates=covariates,
        background=bg,
        trigger=trig,
        start=start,
        end=end,
        bin_s=cfg.bin_s,
        loglik=ll,
        n_events=n_events,
        n_iter=it,
        converged=converged,
        history=history,
    )


def _fit_sigma(cells: Cells, resp: F64, occ_c: I64, current: float) -> float:
    """Maximise ``sum R[c, o] log W[c, o](sigma)`` over sigma (a 1-D bounded search in log space)."""
    k = cells.neighbours.shape[1]
    n = len(cells)
    flat = (occ_c[:, None] * k + np.arange(k)[None, :]).reshape(-1)
    r = np.bincount(flat, weights=resp.reshape(-1), minlength=n * k).reshape(n, k)
    if r.sum() <= 1e-9 or k == 1:
        return current
    spacing = cells.spacing_m

    def neg(log_s: float) -> float:
        w = spatial_weights(cells, math.exp(log_s))
        m = r > 0
        return -float((r[m] * np.log(np.maximum(w[m], 1e-300))).sum())

    res = minimize_scalar(
        neg, bounds=(math.log(0.05 * spacing), math.log(20 * spacing)), method="bounded",
        options={"xatol": 1e-3},
    )  # fmt: skip
    return float(math.exp(res.x))


def triggered_rate(
    cells: Cells,
    trig: Triggering,
    y: F64,
    bin_s: float,
    at_bins: I64,
    horizon_bins: int,
) -> F64:
    """Expected triggered events per cell in ``[at, at + horizon)`` for each start bin, ``(len, cells)``.

    ``y`` are the binned counts from the model's start (events before each ``at`` are the parents). Only
    first-generation offspring are counted (for a day ahead the next generations add ~theta**2 of it).
    """
    a = trig.decay_per_bin(bin_s)
    g = np.asarray(lfilter([0.0, 1.0 - a], [1.0, -a], y, axis=1), dtype=np.float64)
    s = _state_at(g, y, a, at_bins)  # (len(at), cells): sum_j a**(at - 1 - b_j)
    w = spatial_weights(cells, trig.sigma_m)
    nb = np.maximum(cells.neighbours, 0)
    mass = trig.theta * (1.0 - a**horizon_bins)
    return np.asarray(mass * (s[:, nb] * w[None, :, :]).sum(axis=2), dtype=np.float64)


def _state_at(g: F64, y: F64, a: float, at_bins: I64) -> F64:
    """``S[t, c] = sum_{b_j < at} a**(at - 1 - b_j) * y`` from ``G = (1 - a) S`` (bins past the end too)."""
    n_bins = y.shape[1]
    at = np.asarray(at_bins, dtype=np.int64)
    out = np.empty((len(at), y.shape[0]))
    inside = at < n_bins
    out[inside] = g[:, at[inside]].T / (1.0 - a)
    if (~inside).any():
        last = (g[:, -1] * a + (1.0 - a) * y[:, -1]) / (1.0 - a)  # S at bin n_bins
        out[~inside] = last[None, :] * (a ** (at[~inside] - n_bins))[:, None]
    return out
