"""A months-long alarm history with known background rates and known self-excitation.

Why: a hot-spot forecast can only be *measured* against the truth. This generator draws a history over the
demo neighbourhood (:mod:`simulators.neighbourhood`, centred on Longhua, Shenzhen by default) from an
explicit model, so the true rate of every cell and day is known and the forecasts of
:mod:`alerts.forecast` can be scored against it (and against an oracle that knows the true parameters).

The model, per event family (:class:`alerts.forecast.history.Family`):

* **background**: each device of the family's kind has a rate per day
  ``base * exp(traffic + building age + season + rain) * hot``, where ``hot`` is a persistent lognormal
  multiplier (a badly seated cover frame, an old kitchen, a frail resident): the true hot spots;
* **self-excitation**: every event triggers ``Poisson(theta)`` more events of its family, each after an
  exponential delay of mean ``decay_days``, at the device nearest to a Gaussian displacement of
  ``sigma_m`` from its parent (``sigma_m = 0``: the same device, e.g. a resident's repeated falls);
* a few residents (``rising``) whose falls and heart-rate episodes grow over the last ``rising_weeks``
  (linearly from nothing to ``rising_peak_per_week`` extra events a week): the truth for the
  per-resident trend.

Parameter ranges (``docs/risk.md``): branching ratios 0.2-0.5 and decays of one day to a week, spatial
spreads of tens to ~150 m, are in the range reported for near-repeat burglary and other urban events by
Mohler et al. (JASA 2011, 2015), who found a minority of events triggered (branching ratio well under 1),
triggering that fades over days to weeks and reaches over tens to a few hundred metres; 150 m cells as in
their field trials. Daily rain follows Shenzhen's wet season (April-September).

Deterministic from the seed. ``generate_history(...)`` is the entry point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from alerts.forecast.background import DAY_S, Covariates, season_columns
from alerts.forecast.grid import Cells
from alerts.forecast.history import FAMILIES, EventHistory, Family
from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind
from simulators.neighbourhood import Neighbourhood, build_neighbourhood

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
LONGHUA = (22.6566, 114.0297)  # Longhua District, Shenzhen
E = EventType


@dataclass(frozen=True)
class FamilyParams:
    family: Family
    kind: DeviceKind
    event_types: tuple[tuple[EventType, float], ...]
    base_per_device_day: float
    traffic: float = 0.0  # log rate ratio of a cover on the carriageway of a through road
    age_per_decade: float = 0.0  # log rate ratio per decade of building age
    season_amp: float = 0.0  # log amplitude of the annual cycle
    season_peak_doy: int = 15  # day of the year of the peak
    rain_per_10mm: float = 0.0  # log rate ratio per 10 mm of the day's rain
    hot_sd: float = 0.8  # sd of the log of a persistent per-device multiplier
    theta: float = 0.3  # branching ratio
    decay_days: float = 2.0  # mean delay of a triggered event
    sigma_m: float = 50.0  # spatial spread of triggered events (0 = the same device)


DEFAULT_FAMILIES: tuple[FamilyParams, ...] = (
    FamilyParams(
        Family.COVER, DeviceKind.MANHOLE, ((E.COVER_DISPLACED, 0.7), (E.COVER_OPEN, 0.2), (E.TAMPER, 0.1)),
        base_per_device_day=0.0015, traffic=1.0, rain_per_10mm=0.15, hot_sd=1.0,
        theta=0.5, decay_days=3.0, sigma_m=60.0,
    ),
    FamilyParams(
        Family.FLOOD, DeviceKind.MANHOLE, ((E.OVERFLOW, 1.0),),
        base_per_device_day=0.0003, rain_per_10mm=1.0, hot_sd=1.2, theta=0.3, decay_days=1.0, sigma_m=150.0,
    ),
    FamilyParams(
        Family.GAS, DeviceKind.MANHOLE,
        ((E.GAS_COMBUSTIBLE, 0.5), (E.GAS_TOXIC, 0.4), (E.OXYGEN_ABNORMAL, 0.1)),
        base_per_device_day=0.0003, season_amp=0.5, season_peak_doy=200, hot_sd=1.0,
        theta=0.2, decay_days=2.0, sigma_m=40.0,
    ),
    FamilyParams(
        Family.FIRE, DeviceKind.SMOKE_ALARM, ((E.FIRE, 0.6), (E.CO, 0.4)),
        base_per_device_day=0.0004, age_per_decade=0.3, season_amp=0.4, season_peak_doy=15, hot_sd=0.8,
        theta=0.3, decay_days=5.0, sigma_m=30.0,
    ),
    FamilyParams(
        Family.HEALTH, DeviceKind.WRISTBAND,
        ((E.FALL, 0.4), (E.HEART_RATE_HIGH, 0.3), (E.HEART_RATE_LOW, 0.15), (E.SOS, 0.1), (E.SPO2_LOW, 0.05)),
        base_per_device_day=0.004, season_amp=0.2, season_peak_doy=15, hot_sd=0.7,
        theta=0.4, decay_days=7.0, sigma_m=0.0,
    ),
)  # fmt: skip
DEFAULT_COUNTS = {DeviceKind.MANHOLE: 1500, DeviceKind.SMOKE_ALARM: 1500, DeviceKind.WRISTBAND: 600}


@dataclass
class SimulatedHistory:
    """The events (as columns, time-sorted) and everything needed to know the truth behind them."""

    neighbourhood: Neighbourhood
    start: float
    days: int
    time: F64
    kind: list[DeviceKind]
    device_id: list[str]
    device_index: I64  # index within its kind's sites
    event_type: list[str]
    family: I64  # index into FAMILIES
    parent: I64  # index of the triggering event, -1 for a background event
    rain_mm: F64  # (days,)
    params: tuple[FamilyParams, ...]
    device_log_rate: dict[Family, F64]  # static log rate per device of the family's kind (incl. hot)
    day_log_rate: dict[Family, F64]  # (days,) season + rain
    rising: tuple[str, ...]  # wristbands whose health-event rate grows
    rising_peak_per_week: float
    rising_weeks: int
    building_age: dict[DeviceKind, F64] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.time)

    @property
    def end(self) -> float:
        return self.start + self.days * DAY_S

    def xy(self) -> F64:
        out = np.empty((len(self), 2))
        kinds = np.array([k.value for k in self.kind])
        for k, sites in self.neighbourhood.sites.items():
            m = kinds == k.value
            out[m] = sites.xy[self.device_index[m]]
        return out

    def event_history(self) -> EventHistory:
        return EventHistory.from_columns(self.time, self.xy(), self.event_type, self.device_id)

    def device_points(self) -> F64:
        """Every device's position (local metres): lay grids over these."""
        return np.concatenate([s.xy for s in self.neighbourhood.sites.values() if len(s)])

    def covariates(self, cells: Cells) -> Covariates:
        """What a city knows about each cell and day: device counts, traffic, building age, season, rain."""
        nb = self.neighbourhood
        n = len(cells)
        static = np.zeros((n, 5))
        for col, kind in enumerate((DeviceKind.MANHOLE, DeviceKind.SMOKE_ALARM, DeviceKind.WRISTBAND)):
            c = cells.locate(nb.sites[kind].xy, max_m=math.inf)
            static[:, col] = np.log1p(np.bincount(c, minlength=n))
        mh = nb.sites[DeviceKind.MANHOLE]
        c = cells.locate(mh.xy, max_m=math.inf)
        traffic = self._traffic()
        static[:, 3] = np.bincount(c, weights=traffic, minlength=n) / np.maximum(
            np.bincount(c, minlength=n), 1
        )
        sm = nb.sites[DeviceKind.SMOKE_ALARM]
        c = cells.locate(sm.xy, max_m=math.inf)
        age = self.building_age[DeviceKind.SMOKE_ALARM] / 10.0
        cnt = np.bincount(c, minlength=n)
        mean_age = np.bincount(c, weights=age, minlength=n) / np.maximum(cnt, 1)
        static[:, 4] = np.where(cnt > 0, mean_age, float(age.mean()) if len(age) else 0.0)
        daily = np.concatenate(
            [season_columns(self.start, self.days), (self.rain_mm / 10.0)[:, None]], axis=1
        )
        return Covariates(
            static=static,
            static_names=(
                "log_manholes",
                "log_smoke_alarms",
                "log_wristbands",
                "traffic_share",
                "building_age_dec",
            ),
            daily=daily,
            daily_names=("season_sin", "season_cos", "rain_10mm"),
            day0=self.start,
            interactions=((0, 2), (3, 2)),  # rain x manholes (floods), rain x traffic
        )

    def true_background(self, cells: Cells, family: Family) -> F64:
        """Expected background events per cell and day, ``(days, cells)`` (the rising trend included)."""
        p = self._params(family)
        sites = self.neighbourhood.sites[p.kind]
        c = cells.locate(sites.xy, max_m=math.inf)
        base = np.exp(self.device_log_rate[family])
        per_cell = np.bincount(c, weights=base, minlength=len(cells))
        out = np.asarray(np.exp(self.day_log_rate[family])[:, None] * per_cell[None, :], dtype=np.float64)
        if family is Family.HEALTH and self.rising:
            idx = np.array([sites.device_id.index(d) for d in self.rising])
            ramp = _ramp(self.days, self.rising_weeks, self.rising_peak_per_week)
            extra = np.broadcast_to(ramp[:, None], (self.days, len(idx)))
            np.add.at(out.T, c[idx], extra.T)
        return out

    def _params(self, family: Family) -> FamilyParams:
        return next(p for p in self.params if p.family is family)

    def _traffic(self) -> F64:
        mh = self.neighbourhood.sites[DeviceKind.MANHOLE]
        through = np.array([self.neighbourhood.streets[s].traffic for s in mh.street.tolist()], dtype=bool)
        return (through & mh.on_road).astype(np.float64)


def _rain(rng: np.random.Generator, start: float, days: int) -> F64:
    doy = ((start / DAY_S + np.arange(days)) % 365.2425).astype(np.float64)
    wet_season = np.clip(np.cos(2 * np.pi * (doy - 190) / 365.2425), 0, None)  # Apr-Sep, peak in July
    p_wet = 0.1 + 0.4 * wet_season
    amount = rng.exponential(8.0 + 12.0 * wet_season)
    return np.asarray(np.where(rng.random(days) < p_wet, amount, 0.0), dtype=np.float64)


def _age_field(xy: F64, rng: np.random.Generator, side: float) -> F64:
    """Building age in years: an old urban-village core plus newer estates, constant-ish per building."""
    centre = rng.uniform(-0.3, 0.3, 2) * side
    d = np.hypot(xy[:, 0] - centre[0], xy[:, 1] - centre[1])
    age = 8.0 + 30.0 * np.exp(-((d / (0.3 * side)) ** 2)) + rng.normal(0, 3, len(xy))
    return np.asarray(np.clip(age, 1, 60), dtype=np.float64)


def generate_history(
    *,
    days: int = 240,
    start: float = 1_767_225_600.0,  # 2026-01-01T00:00:00Z
    seed: int = 13,
    counts: dict[DeviceKind, int] | None = None,
    families: tuple[FamilyParams, ...] = DEFAULT_FAMILIES,
    rate_scale: float = 1.0,
    rising_share: float = 0.02,
    rising_peak_per_week: float = 1.5,
    rising_weeks: int = 12,
    centre: tuple[float, float] = LONGHUA,
) -> SimulatedHistory:
    """Draw ``days`` of history; ``rate_scale`` multiplies every background rate (for big benches)."""
    ss = np.random.SeedSequence(seed)
    nb_seq, rain_seq, *fam_seqs = ss.spawn(2 + len(families))
    counts = dict(counts or DEFAULT_COUNTS)
    nb = build_neighbourhood(counts, np.random.default_rng(nb_seq), lat0=centre[0], lon0=centre[1])
    rain = _rain(np.random.default_rng(rain_seq), start, days)
    pts = np.concatenate([s.xy for s in nb.sites.values() if len(s)])
    side = float(np.ptp(pts[:, 0])) if len(pts) else 1.0
    age_rng = np.random.default_rng(ss.spawn(1)[0])
    ages = {k: _age_field(s.xy, age_rng, side) for k, s in nb.sites.items()}
    wb = nb.sites[DeviceKind.WRISTBAND]
    rising_rng = np.random.default_rng(ss.spawn(1)[0])
    n_rising = round(rising_share * len(wb)) if len(wb) else 0
    rising_idx = (
        np.sort(rising_rng.choice(len(wb), n_rising, replace=False)) if n_rising else np.empty(0, int)
    )
    hist = SimulatedHistory(
        neighbourhood=nb, start=start, days=days, time=np.empty(0), kind=[], device_id=[],
        device_index=np.empty(0, np.int64), event_type=[], family=np.empty(0, np.int64),
        parent=np.empty(0, np.int64), rain_mm=rain, params=families, device_log_rate={}, day_log_rate={},
        rising=tuple(wb.device_id[i] for i in rising_idx.tolist()), rising_peak_per_week=rising_peak_per_week,
        rising_weeks=rising_weeks,
        building_age=ages,
    )  # fmt: skip
    traffic = hist._traffic()
    doy = (start / DAY_S + np.arange(days) + 0.5) % 365.2425
    cols: list[tuple[F64, I64, I64, I64, DeviceKind, FamilyParams]] = []
    for p, seq in zip(families, fam_seqs, strict=True):
        rng = np.random.default_rng(seq)
        sites = nb.sites[p.kind]
        n_dev = len(sites)
        if n_dev == 0:
            continue
        log_rate = (
            math.log(p.base_per_device_day * rate_scale)
            + (p.traffic * traffic if p.kind is DeviceKind.MANHOLE else 0.0)
            + p.age_per_decade * (ages[p.kind] / 10.0 - 2.0)
            + rng.normal(-0.5 * p.hot_sd**2, p.hot_sd, n_dev)  # mean-one multiplier
        )
        day_rate = p.season_amp * np.cos(2 * np.pi * (doy - p.season_peak_doy) / 365.2425)
        day_rate = day_rate + p.rain_per_10mm * np.minimum(rain, 60.0) / 10.0
        hist.device_log_rate[p.family] = log_rate
        hist.day_log_rate[p.family] = day_rate
        t, dev = _background(rng, start, log_rate, day_rate)
        if p.family is Family.HEALTH and n_rising:
            t2, dev2 = _rising(rng, start, n_rising, _ramp(days, rising_weeks, rising_peak_per_week))
            t, dev = np.concatenate([t, t2]), np.concatenate([dev, rising_idx[dev2]])
        t, dev, parent = _cascade(rng, p, t, dev, sites.xy, start + days * DAY_S)
        etype = rng.choice(len(p.event_types), len(t), p=[w for _, w in p.event_types])
        cols.append((t, dev, parent, etype, p.kind, p))
    _assemble(hist, cols)
    return hist


def _background(rng: np.random.Generator, start: float, log_rate: F64, day_rate: F64) -> tuple[F64, I64]:
    """Poisson counts per day, spread over devices by their rates: O(events), not O(devices x days)."""
    w = np.exp(log_rate)
    per_day = rng.poisson(np.exp(day_rate) * w.sum())
    day = np.repeat(np.arange(len(day_rate)), per_day)
    dev = rng.choice(len(w), size=len(day), p=w / w.sum())
    t = start + (day + rng.random(len(day))) * DAY_S
    return t, dev.astype(np.int64)


def _ramp(days: int, weeks: int, peak_per_week: float) -> F64:
    """Extra expected events per day: 0 until ``weeks`` before the end, then linear up to the peak."""
    first = max(days - 7 * weeks, 0)
    d = np.arange(days) + 0.5
    return np.asarray(
        np.clip((d - first) / max(days - first, 1), 0, 1) * peak_per_week / 7.0, dtype=np.float64
    )


def _rising(rng: np.random.Generator, start: float, n: int, ramp: F64) -> tuple[F64, I64]:
    k = rng.poisson(np.broadcast_to(ramp[None, :], (n, len(ramp))))
    dev, day = np.nonzero(k)
    reps = k[dev, day]
    dev, day = np.repeat(dev, reps), np.repeat(day, reps)
    return start + (day + rng.random(len(day))) * DAY_S, dev.astype(np.int64)


def _cascade(
    rng: np.random.Generator, p: FamilyParams, t: F64, dev: I64, xy: F64, end: float
) -> tuple[F64, I64, I64]:
    """Add every generation of triggered events; returns time, device and parent index, time-sorted."""
    times, devs, parents = [t], [dev], [np.full(len(t), -1, dtype=np.int64)]
    tree = cKDTree(xy) if p.sigma_m > 0 else None
    gen_t, gen_dev, offset = t, dev, 0
    while len(gen_t):
        k = rng.poisson(p.theta, len(gen_t))
        src = np.repeat(np.arange(len(gen_t)), k)
        child_t = gen_t[src] + rng.exponential(p.decay_days * DAY_S, len(src))
        if tree is not None:
            target = xy[gen_dev[src]] + rng.normal(0.0, p.sigma_m, (len(src), 2))
            child_dev = np.asarray(tree.query(target, k=1)[1], dtype=np.int64).reshape(-1)
        else:
            child_dev = gen_dev[src]
        keep = child_t < end
        parent_idx = offset + src
        offset += len(gen_t)
        gen_t, gen_dev = child_t[keep], child_dev[keep]
        times.append(gen_t)
        devs.append(gen_dev)
        parents.append(parent_idx[keep])
    t_all = np.concatenate(times)
    order = np.argsort(t_all, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    par = np.concatenate(parents)
    par = np.where(par >= 0, rank[np.maximum(par, 0)], -1)
    return t_all[order], np.concatenate(devs)[order], par[order]


def _assemble(
    hist: SimulatedHistory, cols: list[tuple[F64, I64, I64, I64, DeviceKind, FamilyParams]]
) -> None:
    times: list[F64] = []
    dev_idx: list[I64] = []
    parents: list[I64] = []
    fam: list[I64] = []
    kinds: list[DeviceKind] = []
    ids: list[str] = []
    etypes: list[str] = []
    offset = 0
    for t, dev, parent, etype, kind, p in cols:
        sites = hist.neighbourhood.sites[kind]
        times.append(t)
        dev_idx.append(dev)
        parents.append(np.where(parent >= 0, parent + offset, -1))
        fam.append(np.full(len(t), FAMILIES.index(p.family), dtype=np.int64))
        kinds.extend([kind] * len(t))
        ids.extend(sites.device_id[i] for i in dev.tolist())
        etypes.extend(p.event_types[i][0].value for i in etype.tolist())
        offset += len(t)
    t_all = np.concatenate(times) if times else np.empty(0)
    order = np.argsort(t_all, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    par = np.concatenate(parents) if parents else np.empty(0, np.int64)
    hist.time = t_all[order]
    hist.device_index = (np.concatenate(dev_idx) if dev_idx else np.empty(0, np.int64))[order]
    hist.parent = np.where(par >= 0, rank[np.maximum(par, 0)], -1)[order]
    hist.family = (np.concatenate(fam) if fam else np.empty(0, np.int64))[order]
    o = order.tolist()
    hist.kind = [kinds[i] for i in o]
    hist.device_id = [ids[i] for i in o]
    hist.event_type = [etypes[i] for i in o]
