"""The background rate of each cell and day: covariates, a Poisson regression, and a per-cell multiplier.

``log mu[c, d] = log r[c] + b0 + x[c, d] . b``: the covariates ``x`` (per cell: road traffic, building
age, how many devices watch the cell; per day: season, rain; and chosen products such as rain x traffic)
explain what they can, and ``r[c]``, a gamma-Poisson (empirical Bayes) multiplier with prior mean 1,
lets a cell with a long record depart from what its covariates predict. A cell with few events stays
close to the regression (Clayton & Kaldor 1987); this is what keeps a quiet cell next to a new housing
estate from reading as zero risk.

In the EM of :mod:`alerts.forecast.sepp` the "counts" are the expected numbers of *background* events
per cell-day (the E-step's background probabilities), so the same fit serves both models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from alerts.forecast.errors import ForecastError

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
DAY_S = 86_400.0


@dataclass(frozen=True)
class Covariates:
    """Per-cell and per-day context. Day ``d`` covers ``[day0 + d * 86400, day0 + (d + 1) * 86400)``."""

    static: F64  # (n_cells, p_s)
    static_names: tuple[str, ...]
    daily: F64  # (n_days, p_d)
    daily_names: tuple[str, ...]
    day0: float
    interactions: tuple[tuple[int, int], ...] = ()  # (static column, daily column) products

    def __post_init__(self) -> None:
        if self.static.ndim != 2 or self.daily.ndim != 2:
            raise ForecastError("covariates: static is (cells, features), daily is (days, features)")
        if self.static.shape[1] != len(self.static_names) or self.daily.shape[1] != len(self.daily_names):
            raise ForecastError("covariates: one name per column")
        if not (np.isfinite(self.static).all() and np.isfinite(self.daily).all()):
            raise ForecastError("covariates must be finite")

    @property
    def names(self) -> tuple[str, ...]:
        inter = tuple(f"{self.static_names[i]}*{self.daily_names[j]}" for i, j in self.interactions)
        return self.static_names + self.daily_names + inter

    @property
    def n_days(self) -> int:
        return int(self.daily.shape[0])

    def day_of(self, t: float) -> int:
        return math.floor((t - self.day0) / DAY_S)

    def design(self, days: I64) -> F64:
        """``(n_cells, len(days), p)``; days past the last known day repeat the last day's values."""
        d = np.clip(np.asarray(days, dtype=np.int64), 0, self.n_days - 1)
        n_c, n_d = self.static.shape[0], len(d)
        daily = self.daily[d]
        parts = [
            np.broadcast_to(self.static[:, None, :], (n_c, n_d, self.static.shape[1])),
            np.broadcast_to(daily[None, :, :], (n_c, n_d, daily.shape[1])),
        ]
        if self.interactions:
            si = np.array([i for i, _ in self.interactions])
            dj = np.array([j for _, j in self.interactions])
            parts.append(self.static[:, None, si] * daily[None, :, dj])
        return np.concatenate(parts, axis=2)


def season_columns(day0: float, n_days: int) -> F64:
    """``sin`` and ``cos`` of the day of the year (the annual cycle), one row per day."""
    days = day0 / DAY_S + np.arange(n_days) + 0.5
    phase = 2 * np.pi * ((days - 0.0) % 365.2425) / 365.2425  # 0 at 1970-01-01, a fixed reference
    return np.stack([np.sin(phase), np.cos(phase)], axis=1)


@dataclass
class BackgroundFit:
    """Fitted background: coefficients on standardised covariates and the per-cell multiplier."""

    coef: F64  # (p + 1,) intercept first, on standardised features
    mean: F64  # (p,)
    scale: F64  # (p,)
    multiplier: F64  # (n_cells,)
    names: tuple[str, ...] = field(default=())
    base: F64 | None = field(default=None, repr=False)  # exp(z @ coef) on the fit design, (cells, days)

    def rate(self, cov: Covariates, days: I64) -> F64:
        """Expected background events per cell and day, ``(len(days), n_cells)``."""
        x = (cov.design(days) - self.mean) / self.scale
        eta = self.coef[0] + x @ self.coef[1:]
        return np.asarray((np.exp(np.clip(eta, -50, 30)) * self.multiplier[:, None]).T, dtype=np.float64)

    def rate_on(self, design: BackgroundDesign) -> F64:
        """As :meth:`rate`, on the fit window's prebuilt design (no rebuilding)."""
        base = self.base if self.base is not None else _base(design, self.coef)
        return np.asarray((base * self.multiplier[:, None]).T, dtype=np.float64)

    def effects(self) -> dict[str, float]:
        """Rate ratio per one unit of each covariate (on its original scale)."""
        return {
            n: float(np.exp(b / s)) for n, b, s in zip(self.names, self.coef[1:], self.scale, strict=True)
        }


@dataclass(frozen=True)
class BackgroundDesign:
    """The fit window's design in factored form, built once and reused by every EM iteration.

    Every covariate column is a per-cell factor times a per-day factor (a static column x 1, 1 x a daily
    column, or static x daily for an interaction; the intercept is 1 x 1), so the linear predictor of all
    cell-days is one ``(cells x p) @ (p x days)`` product and the Newton Hessian is ``p**2`` weighted sums
    ``A_k A_l . M . B_k B_l``: no ``cells * days x p`` matrix is ever formed.
    """

    a: F64  # (n_cells, p + 1) cell factors, intercept first
    b: F64  # (n_days, p + 1) day factors
    mean: F64  # (p,) of each raw column over all cell-days
    scale: F64  # (p,)
    n_cells: int
    n_days: int
    _pairs: dict[str, tuple[F64, F64]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, cov: Covariates, days: I64) -> BackgroundDesign:
        d = np.clip(np.asarray(days, dtype=np.int64), 0, cov.n_days - 1)
        st, dy = cov.static, cov.daily[d]
        n_c, n_d = st.shape[0], len(d)
        ps, pd = st.shape[1], dy.shape[1]
        si = [i for i, _ in cov.interactions]
        dj = [j for _, j in cov.interactions]
        a = np.concatenate([np.ones((n_c, 1)), st, np.ones((n_c, pd)), st[:, si]], axis=1)
        b = np.concatenate([np.ones((n_d, 1)), np.ones((n_d, ps)), dy, dy[:, dj]], axis=1)
        mean = a.mean(axis=0)[1:] * b.mean(axis=0)[1:]
        var = (a**2).mean(axis=0)[1:] * (b**2).mean(axis=0)[1:] - mean**2
        scale = np.sqrt(np.maximum(var, 0.0))
        scale = np.where(scale > 1e-9, scale, 1.0)
        return cls(a, b, mean, scale, n_c, n_d)

    def pair_factors(self) -> tuple[F64, F64]:
        """``A_k A_l`` per cell and ``B_k B_l`` per day, ``(n, p1 * p1)``: the Hessian's factors (cached)."""
        cached = self._pairs.get("ab")
        if cached is None:
            p1 = self.a.shape[1]
            aa = (self.a[:, :, None] * self.a[:, None, :]).reshape(self.n_cells, p1 * p1)
            bb = (self.b[:, :, None] * self.b[:, None, :]).reshape(self.n_days, p1 * p1)
            cached = self._pairs["ab"] = (aa, bb)
        return cached

    def to_raw(self) -> F64:
        """``T`` with ``z = T x`` (standardised from raw, both with the intercept first)."""
        p1 = self.a.shape[1]
        t = np.eye(p1)
        t[1:, 1:] = np.diag(1.0 / self.scale)
        t[1:, 0] = -self.mean / self.scale
        return t

    def eta(self, coef: F64) -> F64:
        """Linear predictor ``(n_cells, n_days)`` for standardised coefficients."""
        w = self.to_raw().T @ coef
        return np.asarray((self.a * w) @ self.b.T, dtype=np.float64)


def fit_background(
    y: F64,
    design: BackgroundDesign,
    names: tuple[str, ...],
    *,
    prior_events: float = 3.0,
    ridge: float = 1.0,
    start: BackgroundFit | None = None,
    newton_steps: int = 3,
) -> BackgroundFit:
    """Fit to ``y`` (expected background counts, ``(n_days, n_cells)``) by penalised Newton steps.

    ``newton_steps=0`` with a ``start`` keeps the coefficients and only moves the per-cell multiplier.
    """
    n_c, n_d = design.n_cells, design.n_days
    a, b = design.a, design.b
    p1 = a.shape[1]
    if start is None:
        coef = np.zeros(p1)
        coef[0] = math.log(max(float(y.sum()), 1e-3) / max(n_c * n_d, 1))
        mult = np.ones(n_c)
    else:
        coef, mult = start.coef.copy(), start.multiplier
    if newton_steps > 0 or start is None or start.base is None:
        yy = y.T  # (cells, days)
        t = design.to_raw()
        pen = np.full(p1, ridge)
        pen[0] = 0.0
        aa, bb = design.pair_factors()
        for _ in range(newton_steps):
            mu = np.exp(np.clip(design.eta(coef), -50, 30)) * mult[:, None]
            g_raw = ((a.T @ (yy - mu)) * b.T).sum(axis=1)
            h_raw = ((aa.T @ mu) * bb.T).sum(axis=1).reshape(p1, p1)
            grad = t @ g_raw - pen * coef
            hess = t @ h_raw @ t.T + np.diag(pen) + 1e-9 * np.eye(p1)
            step = np.linalg.solve(hess, grad)
            coef = coef + np.clip(step, -3.0, 3.0)
        base = np.asarray(np.exp(np.clip(design.eta(coef), -50, 30)), dtype=np.float64)
    else:
        base = start.base
    observed = y.sum(axis=0)
    mult = (observed + prior_events) / (base.sum(axis=1) + prior_events)
    return BackgroundFit(
        coef=coef, mean=design.mean, scale=design.scale, multiplier=mult, names=names, base=base
    )


def _base(design: BackgroundDesign, coef: F64) -> F64:
    return np.asarray(np.exp(np.clip(design.eta(coef), -50, 30)), dtype=np.float64)
