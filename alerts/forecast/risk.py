"""Risk for a horizon: expected events per cell and per device, the events behind each score, trends.

:func:`forecast_risk` fits one SEPP per family on the history before ``at`` (a family with too few
events falls back to its KDE heat map) and answers, for ``[at, at + horizon)``:

* per cell: expected events, split into background and triggered, and per family;
* per device: its share of its cell's background (its own record, shrunk towards an even split) plus
  what its own recent events trigger in its cell (a cover displaced last night is the one to check,
  not its neighbours);
* the reasons: the past events that add most to a cell's score, with their weight in expected events.

:func:`resident_trends` is separate because it is health data: is a resident's weekly count of falls
and heart-rate episodes rising? A Poisson regression on the week number per resident, all residents in
one vectorised Newton solve, with a likelihood-ratio test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.stats import chi2

from alerts.forecast.background import DAY_S, Covariates
from alerts.forecast.errors import NotEnoughHistoryError
from alerts.forecast.grid import Cells
from alerts.forecast.history import EVENT_TYPES, FAMILIES, FAMILY_KIND, EventHistory, Family
from alerts.forecast.kde import KDEConfig, kde_daily
from alerts.forecast.sepp import SEPPConfig, SEPPModel, bin_counts, fit_sepp, spatial_weights, triggered_rate
from firmware_bridge.kernel.records import DeviceKind

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Devices:
    """The devices risk is shared among: id, kind and position (local metres), as columns."""

    ids: tuple[str, ...]
    kind: tuple[DeviceKind, ...]
    xy: F64


@dataclass(frozen=True)
class Reason:
    """A past event and how many expected events it adds to a cell (or device) in the horizon."""

    event_type: str
    device_id: str | None
    time: float
    weight: float


@dataclass
class RiskForecast:
    at: float
    horizon_s: float
    cells: Cells
    background: F64  # (n_cells,) expected background events in the horizon
    triggered: F64  # (n_cells,)
    by_family: dict[Family, F64]  # (n_cells,) each
    kde: F64  # (n_cells,) the baseline's expectation, for comparison
    models: dict[Family, SEPPModel]
    fallback: tuple[Family, ...]  # families too sparse for a SEPP (KDE used)
    device_expected: F64  # (n_devices,)
    device_cell: I64  # (n_devices,)
    devices: Devices
    _history: EventHistory = field(repr=False)
    _cell_of_event: I64 = field(repr=False)

    @property
    def expected(self) -> F64:
        return np.asarray(self.background + self.triggered, dtype=np.float64)

    def ranking(self) -> I64:
        return np.asarray(np.argsort(-self.expected, kind="stable"), dtype=np.int64)

    def reasons(self, cell: int, *, limit: int = 5) -> list[Reason]:
        """The past events that add most to ``cell``'s expected events (SEPP families only)."""
        out: list[Reason] = []
        for fam, m in self.models.items():
            out.extend(_event_reasons(self, m, fam, cell))
        out.sort(key=lambda r: -r.weight)
        return out[:limit]

    def device_reasons(self, device: int, *, limit: int = 3) -> list[Reason]:
        """The device's own recent events, by what they add to its score."""
        did = self.devices.ids[device]
        return [r for r in self.reasons(int(self.device_cell[device]), limit=50) if r.device_id == did][
            :limit
        ]


def _event_reasons(rf: RiskForecast, m: SEPPModel, fam: Family, cell: int) -> list[Reason]:
    h = rf._history
    f_i = FAMILIES.index(fam)
    trig = m.trigger
    a = trig.decay_per_bin(m.bin_s)
    hb = max(1, math.ceil(rf.horizon_s / m.bin_s))
    at_bin = math.floor((rf.at - m.start) / m.bin_s)
    lookback = rf.at - 12 * trig.decay_days * DAY_S
    nbrs = rf.cells.neighbours[cell]
    w = spatial_weights(rf.cells, trig.sigma_m)[cell]
    sel = (
        (h.family == f_i)
        & (h.time < rf.at)
        & (h.time >= lookback)
        & np.isin(rf._cell_of_event, nbrs[nbrs >= 0])
    )
    idx = np.flatnonzero(sel)
    if not len(idx):
        return []
    b = np.floor((h.time[idx] - m.start) / m.bin_s).astype(np.int64)
    where = np.array([int(np.flatnonzero(nbrs == c)[0]) for c in rf._cell_of_event[idx].tolist()])
    weight = trig.theta * w[where] * a ** np.maximum(at_bin - 1 - b, 0) * (1 - a**hb)
    return [
        Reason(
            event_type=EVENT_TYPES[int(h.event_type[i])].value,
            device_id=h.device_ids[int(h.device[i])] if h.device[i] >= 0 else None,
            time=float(h.time[i]),
            weight=float(wt),
        )
        for i, wt in zip(idx.tolist(), weight.tolist(), strict=True)
    ]


def forecast_risk(
    history: EventHistory,
    cells: Cells,
    covariates: Covariates,
    devices: Devices,
    *,
    at: float,
    horizon_s: float = DAY_S,
    fit_days: int = 365,
    config: SEPPConfig | None = None,
    families: tuple[Family, ...] = FAMILIES,
) -> RiskForecast:
    """Fit on ``[at - fit_days, at)`` and forecast ``[at, at + horizon_s)``."""
    cfg = config or SEPPConfig()
    if horizon_s <= 0:
        raise NotEnoughHistoryError("the horizon must be positive")
    past = history.window(-math.inf, at)
    cell_of = cells.locate(past.xy)
    d_at = covariates.day_of(at)
    start = (
        covariates.day0
        + max(d_at - fit_days, covariates.day_of(float(past.time[0])) if len(past) else 0) * DAY_S
    )
    n_cells = len(cells)
    background = np.zeros(n_cells)
    triggered = np.zeros(n_cells)
    by_family: dict[Family, F64] = {}
    models: dict[Family, SEPPModel] = {}
    fallback: list[Family] = []
    # horizon days and the share of each that falls inside the horizon
    d_first = covariates.day_of(at)
    d_last = covariates.day_of(at + horizon_s - 1e-6)
    h_days = np.arange(d_first, d_last + 1)
    day_start = covariates.day0 + h_days * DAY_S
    frac = (np.minimum(day_start + DAY_S, at + horizon_s) - np.maximum(day_start, at)) / DAY_S
    dev_cell = cells.locate(devices.xy, max_m=math.inf) if len(devices.ids) else np.empty(0, np.int64)
    dev_exp = np.zeros(len(devices.ids))
    for fam in families:
        f_i = FAMILIES.index(fam)
        m = (past.family == f_i) & (past.time >= start) & (cell_of >= 0)
        fam_bg = np.zeros(n_cells)
        fam_tr = np.zeros(n_cells)
        try:
            model = fit_sepp(cell_of[m], past.time[m], cells, covariates, start, at, cfg)
        except NotEnoughHistoryError:
            model = None
        if model is not None:
            models[fam] = model
            fam_bg = (model.background.rate(covariates, h_days) * frac[:, None]).sum(axis=0)
            n_bins = math.ceil((at - model.start) / model.bin_s)
            y = bin_counts(cell_of[m], past.time[m], model.start, max(n_bins, 1), n_cells, model.bin_s)
            hb = max(1, math.ceil(horizon_s / model.bin_s))
            fam_tr = triggered_rate(cells, model.trigger, y, model.bin_s, np.array([n_bins]), hb)[0]
        elif m.any():
            fallback.append(fam)
            fam_bg = _heat_map(cells, cell_of[m], (at - start) / DAY_S, horizon_s)
        background += fam_bg
        triggered += fam_tr
        by_family[fam] = fam_bg + fam_tr
        _share_with_devices(dev_exp, dev_cell, devices, fam, past, m, cell_of, fam_bg, model, at, horizon_s)
    ok = (cell_of >= 0) & (past.time >= start)
    kde = _heat_map(cells, cell_of[ok], (at - start) / DAY_S, horizon_s)
    return RiskForecast(
        at=at, horizon_s=horizon_s, cells=cells, background=background, triggered=triggered,
        by_family=by_family, kde=kde, models=models, fallback=tuple(fallback), device_expected=dev_exp,
        device_cell=dev_cell, devices=devices, _history=past, _cell_of_event=cell_of,
    )  # fmt: skip


def _heat_map(cells: Cells, cell_idx: I64, span_days: float, horizon_s: float) -> F64:
    """The KDE baseline over the whole fit window: expected events per cell in the horizon."""
    counts = np.bincount(cell_idx, minlength=len(cells)).astype(np.float64)[None, :]
    share = kde_daily(counts, 1, 1, cells, KDEConfig(cells.spacing_m, 1, 0.02))[0]
    share = share / max(float(share.sum()), 1e-12)
    return np.asarray(share * counts.sum() / max(span_days, 1.0) * horizon_s / DAY_S, dtype=np.float64)


def _share_with_devices(
    out: F64,
    dev_cell: I64,
    devices: Devices,
    fam: Family,
    past: EventHistory,
    m: npt.NDArray[np.bool_],
    cell_of: I64,
    fam_bg: F64,
    model: SEPPModel | None,
    at: float,
    horizon_s: float,
) -> None:
    """Split a family's cell background among its devices; add each device's own triggered events."""
    kind = FAMILY_KIND[fam]
    mine = np.array([k is kind for k in devices.kind], dtype=bool)
    if not mine.any():
        return
    pos = {d: i for i, d in enumerate(devices.ids)}
    ev_dev = np.array([pos.get(past.device_ids[i], -1) if i >= 0 else -1 for i in past.device[m].tolist()])
    ev_dev = ev_dev.astype(np.int64)
    n_dev = np.bincount(ev_dev[ev_dev >= 0], minlength=len(devices.ids)).astype(np.float64)
    idx = np.flatnonzero(mine & (dev_cell >= 0))
    c = dev_cell[idx]
    per_cell_dev = np.bincount(c, minlength=len(fam_bg)).astype(np.float64)
    per_cell_ev = np.bincount(c, weights=n_dev[idx], minlength=len(fam_bg))
    alpha = 1.0
    share = (n_dev[idx] + alpha / per_cell_dev[c]) / (per_cell_ev[c] + alpha)
    out[idx] += fam_bg[c] * share
    if model is None:
        return
    a = model.trigger.decay_per_bin(model.bin_s)
    hb = max(1, math.ceil(horizon_s / model.bin_s))
    at_bin = math.floor((at - model.start) / model.bin_s)
    self_w = spatial_weights(model.cells, model.trigger.sigma_m)[:, 0]
    ok = ev_dev >= 0
    b = np.floor((past.time[m][ok] - model.start) / model.bin_s).astype(np.int64)
    contrib = model.trigger.theta * self_w[cell_of[m][ok]] * a ** np.maximum(at_bin - 1 - b, 0) * (1 - a**hb)
    np.add.at(out, ev_dev[ok], contrib)


@dataclass(frozen=True)
class ResidentTrend:
    device_id: str
    weekly_counts: tuple[int, ...]  # oldest week first
    rate_ratio_4w: float  # how much the weekly rate multiplies every four weeks
    p_value: float  # likelihood-ratio test of "rate constant"
    rising: bool


def resident_trends(
    history: EventHistory,
    device_ids: tuple[str, ...],
    *,
    at: float,
    weeks: int = 12,
    alpha: float = 0.01,
    min_recent: int = 3,
) -> list[ResidentTrend]:
    """Is each resident's weekly count of health events rising? Most significant first.

    ``rising`` needs a significant positive slope (``p < alpha``), a rate ratio above 1.5 per four weeks
    and at least ``min_recent`` events in the last four weeks, so one bad week of a quiet resident does
    not page the doctor.
    """
    health = FAMILIES.index(Family.HEALTH)
    start = at - weeks * 7 * DAY_S
    pos = {d: i for i, d in enumerate(device_ids)}
    sel = (history.family == health) & (history.time >= start) & (history.time < at) & (history.device >= 0)
    dev = np.array([pos.get(history.device_ids[i], -1) for i in history.device[sel].tolist()], dtype=np.int64)
    wk = ((history.time[sel] - start) // (7 * DAY_S)).astype(np.int64)
    ok = dev >= 0
    y = np.zeros((len(device_ids), weeks))
    np.add.at(y, (dev[ok], np.clip(wk[ok], 0, weeks - 1)), 1.0)
    x = (np.arange(weeks) - (weeks - 1) / 2.0) / weeks  # centred, per week / weeks
    total = y.sum(axis=1)
    a = np.log(np.maximum(total, 0.5) / weeks)
    b = np.zeros(len(device_ids))
    for _ in range(25):  # Newton on (a, b) for every resident at once
        mu = np.exp(a[:, None] + b[:, None] * x[None, :])
        ga, gb = (y - mu).sum(axis=1), ((y - mu) * x).sum(axis=1)
        haa, hab, hbb = mu.sum(axis=1), (mu * x).sum(axis=1), (mu * x * x).sum(axis=1)
        det = np.maximum(haa * hbb - hab * hab, 1e-12)
        a = a + (hbb * ga - hab * gb) / det
        b = np.clip(b + (haa * gb - hab * ga) / det, -50, 50)
    mu1 = np.exp(a[:, None] + b[:, None] * x[None, :])
    mu0 = np.maximum(total / weeks, 1e-12)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ll1 = np.where(y > 0, y * np.log(np.maximum(mu1, 1e-300)), 0.0).sum(axis=1) - mu1.sum(axis=1)
        ll0 = np.where(y > 0, y * np.log(mu0), 0.0).sum(axis=1) - total
    lr = np.maximum(2.0 * (ll1 - ll0), 0.0)
    p = np.where(total > 0, chi2.sf(lr, 1), 1.0)
    ratio4 = np.exp(b * 4.0 / weeks)
    recent = y[:, -4:].sum(axis=1)
    rising = (b > 0) & (p < alpha) & (ratio4 > 1.5) & (recent >= min_recent)
    order = np.lexsort((-ratio4, p))
    return [
        ResidentTrend(
            device_id=device_ids[i],
            weekly_counts=tuple(int(v) for v in y[i]),
            rate_ratio_4w=float(ratio4[i]),
            p_value=float(p[i]),
            rising=bool(rising[i]),
        )
        for i in order.tolist()
        if total[i] > 0
    ]
