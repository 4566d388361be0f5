"""Risk hot spots and patrol plans from the alarm history (issue 13; methods in ``docs/risk.md``).

* ``GET /api/v1/risk/forecast``: expected events per grid cell (and per device) for a horizon, with the
  past events behind each score and the KDE heat map's figure beside it;
* ``GET /api/v1/risk/patrol``: for one grid worker's shift, the cells and devices to check first, why,
  and a walking order;
* ``GET /api/v1/risk/health-trends``: residents whose falls and heart-rate episodes are becoming more
  frequent, for the community doctor's follow-up.

Health data (the ``health`` family: falls, SOS, heart rate, SpO2, and every wristband's own score) is
shown only to roles that may read personal data (:data:`cloud.auth.PERSONAL_DATA_ROLES`); for the others
forecasts and plans leave it out entirely (``"health_included": false``) and health trends answer 403.

The history is the ``alerts`` table (one row per alert episode: its raising time and device) and, when
the closed loop's tables are there, manual reports (``loop_incidents`` with ``source = 'manual'``; alert
incidents are not read again, their alerts already count). Devices give the positions. Fitting runs off
the event loop; a fitted forecast is cached per (database, grid, window, hour) for ``CACHE_S``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from alerts.forecast.background import DAY_S, Covariates, season_columns
from alerts.forecast.errors import ForecastError
from alerts.forecast.grid import Cells, Projection, community_cells, hex_cells, square_cells
from alerts.forecast.history import FAMILIES, FAMILY_OF, EventHistory, Family, family_of
from alerts.forecast.patrol import plan_patrol
from alerts.forecast.risk import Devices, Reason, RiskForecast, forecast_risk, resident_trends
from cloud.api.deps import ERROR_RESPONSES, State, User
from cloud.api.state import CloudState
from cloud.auth import PERSONAL_DATA_ROLES, Principal, require
from cloud.db import Alert, Device
from cloud.errors import BadRequestError
from firmware_bridge.kernel.records import DeviceKind

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/risk", tags=["risk"], responses=ERROR_RESPONSES)
CACHE_S = 900.0
_CACHE_MAX = 8
_cache: OrderedDict[tuple[object, ...], tuple[float, RiskForecast, Projection, list[_DeviceRow]]] = (
    OrderedDict()
)
GridShape = Literal["square", "hex", "community"]


class ReasonOut(BaseModel):
    event_type: str
    device_id: str | None
    time: float
    weight: float = Field(description="expected events this past event adds in the horizon")


class CellOut(BaseModel):
    cell_id: str
    rank: int
    lat: float
    lon: float
    polygon: list[tuple[float, float]] | None = Field(description="[lat, lon] vertices; null for community")
    expected: float = Field(description="expected events in the horizon (background + triggered)")
    background: float
    triggered: float
    kde: float = Field(description="the KDE heat map's expectation, for comparison")
    families: dict[str, float]
    reasons: list[ReasonOut]


class DeviceRiskOut(BaseModel):
    device_id: str
    kind: str
    name: str
    cell_id: str
    lat: float
    lon: float
    expected: float
    reasons: list[ReasonOut]


class ForecastOut(BaseModel):
    generated_at: float
    at: float
    horizon_s: float
    grid: dict[str, str | float | int]
    health_included: bool
    history_events: int
    expected_total: float
    kde_expected_total: float
    models: dict[str, dict[str, object]]
    fallback: list[str] = Field(description="families too sparse for the SEPP (KDE used)")
    cells: list[CellOut]
    devices: list[DeviceRiskOut]


class DeviceCheckOut(BaseModel):
    device_id: str
    kind: str
    name: str
    expected: float
    reasons: list[ReasonOut]


class StopOut(BaseModel):
    order: int
    cell_id: str
    lat: float
    lon: float
    expected: float
    background: float
    triggered: float
    walk_m: float = Field(description="from the previous stop (or the start)")
    reasons: list[ReasonOut]
    devices: list[DeviceCheckOut]


class PatrolOut(BaseModel):
    worker: str
    shift_start: float
    shift_end: float
    health_included: bool
    start_lat: float | None
    start_lon: float | None
    total_walk_m: float
    walk_min: float
    dropped: int = Field(description="stops left out because the shift is too short")
    stops: list[StopOut]


class TrendOut(BaseModel):
    device_id: str
    name: str
    weekly_counts: list[int]
    rate_ratio_4w: float
    p_value: float
    rising: bool


class TrendsOut(BaseModel):
    at: float
    weeks: int
    residents: list[TrendOut]


@dataclass(frozen=True)
class _DeviceRow:
    device_id: str
    kind: str
    name: str
    lat: float
    lon: float
    grid: str


EventRow = tuple[float, str, float, float, str | None]  # time, event type, lat, lon, device id


def _load(state: CloudState, since: float, until: float) -> tuple[list[_DeviceRow], list[EventRow]]:
    """Devices with a position, and risk events (time, type, lat, lon, device) in ``[since, until)``."""
    types = [e.value for e in FAMILY_OF]
    with state.db.read() as s:
        devs = [
            _DeviceRow(d, k, n or "", la, lo, g or "")
            for d, k, n, la, lo, g in s.execute(
                select(Device.device_id, Device.kind, Device.name, Device.lat, Device.lon, Device.grid).where(
                    Device.lat.is_not(None), Device.lon.is_not(None)
                )
            )
            if la is not None and lo is not None and math.isfinite(la) and math.isfinite(lo)
        ]
        pos = {d.device_id: (d.lat, d.lon) for d in devs}
        events: list[EventRow] = []
        for dev, et, t in s.execute(
            select(Alert.device_id, Alert.event_type, Alert.raised_time).where(
                Alert.raised_time >= since, Alert.raised_time < until, Alert.event_type.in_(types)
            )
        ):
            if dev in pos:
                events.append((t, et, *pos[dev], dev))
        events.extend(_manual_reports(s, since, until))
    return devs, events


def _manual_reports(
    s: object, since: float, until: float
) -> list[tuple[float, str, float, float, str | None]]:
    """Manual reports from the closed loop's incidents, when that table exists."""
    try:
        from cloud.loop.models import Incident
    except ImportError:  # pragma: no cover - the loop is part of the cloud; kept optional on purpose
        return []
    from sqlalchemy.orm import Session

    assert isinstance(s, Session)
    when = Incident.event_start
    out: list[EventRow] = []
    try:
        rows = s.execute(
            select(Incident.event_start, Incident.created_at, Incident.event_type, Incident.lat, Incident.lon,
                   Incident.device_id)
            .where(Incident.source == "manual", Incident.lat.is_not(None), Incident.lon.is_not(None))
            .where(((when >= since) & (when < until)) | (when.is_(None) & (Incident.created_at >= since)
                   & (Incident.created_at < until)))
        )  # fmt: skip
        for t_ev, t_created, et, la, lo, dev in rows:
            if family_of(et) is not None and la is not None and lo is not None:
                out.append((t_ev if t_ev is not None else t_created, et, la, lo, dev or None))
    except SQLAlchemyError as exc:  # the loop's tables are not migrated here: alerts only
        log.warning("manual reports not read", extra={"error": type(exc).__name__})
    return out


def _cells(shape: GridShape, cell_m: float, xy: np.ndarray, labels: list[str]) -> Cells:
    if shape == "square":
        return square_cells(xy, cell_m)
    if shape == "hex":
        return hex_cells(xy, cell_m / math.sqrt(3.0))  # cell_m = distance between hexagon centres
    return community_cells(labels, xy)


def _covariates(cells: Cells, devs: list[_DeviceRow], xy: np.ndarray, day0: float, n_days: int) -> Covariates:
    """What the cloud knows: devices per kind, carriageway share of the covers, season. No rain feed yet."""
    idx = cells.locate(xy, max_m=math.inf)
    kinds = np.array([d.kind for d in devs])
    static = np.zeros((len(cells), 3))
    for col, kind in enumerate((DeviceKind.MANHOLE, DeviceKind.SMOKE_ALARM, DeviceKind.WRISTBAND)):
        m = kinds == kind.value
        static[:, col] = np.log1p(np.bincount(idx[m], minlength=len(cells)))
    return Covariates(
        static=static,
        static_names=("log_manholes", "log_smoke_alarms", "log_wristbands"),
        daily=season_columns(day0, n_days),
        daily_names=("season_sin", "season_cos"),
        day0=day0,
    )


def _forecast(
    state: CloudState, *, at: float, horizon_s: float, shape: GridShape, cell_m: float, fit_days: int,
    health: bool,
) -> tuple[RiskForecast, Projection, list[_DeviceRow]]:  # fmt: skip
    key = (state.settings.database_url, shape, cell_m, fit_days, health, horizon_s, math.floor(at / 3600))
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and now - hit[0] < CACHE_S:
        _cache.move_to_end(key)
        return hit[1], hit[2], hit[3]
    since = at - fit_days * DAY_S
    devs, events = _load(state, since, at)
    if not health:
        devs = [d for d in devs if d.kind != DeviceKind.WRISTBAND.value]
        events = [e for e in events if family_of(e[1]) is not Family.HEALTH]
    if not devs:
        raise BadRequestError("no device with a position: nothing to lay a grid over")
    proj = Projection.around([d.lat for d in devs], [d.lon for d in devs])
    dxy = proj.to_xy([d.lat for d in devs], [d.lon for d in devs])
    try:
        cells = _cells(shape, cell_m, dxy, [d.grid for d in devs])
        day0 = math.floor(since / DAY_S) * DAY_S
        n_days = math.ceil((at + horizon_s - day0) / DAY_S) + 1
        cov = _covariates(cells, devs, dxy, day0, n_days)
        hist = EventHistory.from_columns(
            [e[0] for e in events],
            proj.to_xy([e[2] for e in events], [e[3] for e in events]).reshape(-1, 2),
            [e[1] for e in events],
            [e[4] for e in events],
        )
        table = Devices(
            tuple(d.device_id for d in devs), tuple(DeviceKind(d.kind) for d in devs), dxy.reshape(-1, 2)
        )
        families = FAMILIES if health else tuple(f for f in FAMILIES if f is not Family.HEALTH)
        rf = forecast_risk(
            hist, cells, cov, table, at=at, horizon_s=horizon_s, fit_days=fit_days, families=families
        )
    except ForecastError as exc:
        raise BadRequestError(str(exc)) from exc
    _cache[key] = (now, rf, proj, devs)
    while len(_cache) > _CACHE_MAX:
        _cache.popitem(last=False)
    return rf, proj, devs


def _reasons(rs: list[Reason] | tuple[Reason, ...]) -> list[ReasonOut]:
    return [
        ReasonOut(event_type=r.event_type, device_id=r.device_id, time=r.time, weight=round(r.weight, 6))
        for r in rs
    ]


def _latlon(proj: Projection, xy: np.ndarray) -> tuple[float, float]:
    lat, lon = proj.to_latlon(np.asarray(xy, dtype=np.float64).reshape(1, 2))
    return round(float(lat[0]), 6), round(float(lon[0]), 6)


def _build_forecast_out(
    rf: RiskForecast, proj: Projection, devs: list[_DeviceRow], *, at: float, health: bool, limit: int,
    device_limit: int, now: float,
) -> ForecastOut:  # fmt: skip
    cells = rf.cells
    order = rf.ranking()[:limit]
    out_cells = []
    for rank, c in enumerate(order.tolist(), start=1):
        lat, lon = _latlon(proj, cells.xy[c])
        poly = None
        if cells.polygons:
            plat, plon = proj.to_latlon(cells.polygons[c])
            poly = [(round(float(a), 6), round(float(b), 6)) for a, b in zip(plat, plon, strict=True)]
        out_cells.append(
            CellOut(
                cell_id=cells.ids[c], rank=rank, lat=lat, lon=lon, polygon=poly,
                expected=float(rf.expected[c]), background=float(rf.background[c]),
                triggered=float(rf.triggered[c]), kde=float(rf.kde[c]),
                families={f.value: float(v[c]) for f, v in rf.by_family.items()},
                reasons=_reasons(rf.reasons(c)),
            )
        )  # fmt: skip
    by_id = {d.device_id: d for d in devs}
    out_devs = []
    for i in np.argsort(-rf.device_expected, kind="stable")[:device_limit].tolist():
        d = by_id[rf.devices.ids[i]]
        if rf.device_expected[i] <= 0 or rf.device_cell[i] < 0:
            continue
        out_devs.append(
            DeviceRiskOut(
                device_id=d.device_id, kind=d.kind, name=d.name, cell_id=cells.ids[int(rf.device_cell[i])],
                lat=d.lat, lon=d.lon, expected=float(rf.device_expected[i]),
                reasons=_reasons(rf.device_reasons(i)),
            )
        )  # fmt: skip
    return ForecastOut(
        generated_at=now, at=at, horizon_s=rf.horizon_s,
        grid={"shape": cells.shape, "size_m": round(cells.size_m, 2), "cells": len(cells)},
        health_included=health, history_events=len(rf._history), expected_total=float(rf.expected.sum()),
        kde_expected_total=float(rf.kde.sum()),
        models={f.value: m.summary() for f, m in rf.models.items()},
        fallback=[f.value for f in rf.fallback], cells=out_cells, devices=out_devs,
    )  # fmt: skip


def _may_see_health(caller: Principal) -> bool:
    return caller.role in PERSONAL_DATA_ROLES


HorizonH = Annotated[float, Query(gt=0, le=168, description="forecast horizon in hours")]
Shape = Annotated[GridShape, Query(description="square / hex cells, or the community's own grid cells")]
CellM = Annotated[float, Query(ge=50, le=2000, description="cell side (square) or centre spacing (hex), m")]
FitDays = Annotated[int, Query(ge=7, le=730, description="days of history to fit on")]
At = Annotated[
    float | None, Query(ge=0, le=4_102_444_800, description="forecast start, UTC epoch s (default: now)")
]  # a time beyond 2100 made the daily season columns astronomically long (a 500)


@router.get("/forecast", response_model=ForecastOut, summary="Expected events per cell and device")
async def get_forecast(
    state: State,
    caller: User,
    horizon_h: HorizonH = 24.0,
    grid: Shape = "square",
    cell_m: CellM = 150.0,
    fit_days: FitDays = 365,
    at: At = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    device_limit: Annotated[int, Query(ge=0, le=1000)] = 50,
) -> ForecastOut:
    now = state.clock.now()
    t = now if at is None else at
    health = _may_see_health(caller)
    rf, proj, devs = await asyncio.to_thread(
        _forecast, state, at=t, horizon_s=horizon_h * 3600.0, shape=grid, cell_m=cell_m, fit_days=fit_days,
        health=health,
    )  # fmt: skip
    return await asyncio.to_thread(
        _build_forecast_out, rf, proj, devs, at=t, health=health, limit=limit, device_limit=device_limit,
        now=now,
    )  # fmt: skip


@router.get("/patrol", response_model=PatrolOut, summary="A grid worker's shift: stops, reasons, order")
async def get_patrol(
    state: State,
    caller: User,
    worker: Annotated[str, Query(min_length=1, max_length=64)],
    grid_id: Annotated[list[str] | None, Query(description="the worker's community grid cells")] = None,
    shift_start: At = None,
    shift_h: Annotated[float, Query(gt=0, le=24)] = 8.0,
    max_stops: Annotated[int, Query(ge=1, le=30)] = 8,
    start_lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
    start_lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
    grid: Shape = "square",
    cell_m: CellM = 150.0,
    fit_days: FitDays = 365,
) -> PatrolOut:
    if (start_lat is None) != (start_lon is None):
        raise BadRequestError("give both start_lat and start_lon, or neither")
    now = state.clock.now()
    t = now if shift_start is None else shift_start
    health = _may_see_health(caller)
    rf, proj, devs = await asyncio.to_thread(
        _forecast, state, at=t, horizon_s=shift_h * 3600.0, shape=grid, cell_m=cell_m, fit_days=fit_days,
        health=health,
    )  # fmt: skip
    return await asyncio.to_thread(
        _build_patrol, rf, proj, devs, worker=worker, grid_ids=grid_id, t=t, shift_s=shift_h * 3600.0,
        max_stops=max_stops, start=(start_lat, start_lon), health=health,
    )  # fmt: skip


def _build_patrol(
    rf: RiskForecast, proj: Projection, devs: list[_DeviceRow], *, worker: str, grid_ids: list[str] | None,
    t: float, shift_s: float, max_stops: int, start: tuple[float | None, float | None], health: bool,
) -> PatrolOut:  # fmt: skip
    cells: list[int] | None = None
    mask: npt.NDArray[np.bool_] | None = None
    if grid_ids:
        wanted = set(grid_ids)
        mine = [i for i, d in enumerate(devs) if d.grid in wanted]
        if not mine:
            raise BadRequestError(f"no device in grid cells {sorted(wanted)}")
        cells = sorted({int(rf.device_cell[i]) for i in mine if rf.device_cell[i] >= 0})
        mask = np.zeros(len(rf.devices.ids), dtype=bool)
        mask[mine] = True
    start_xy = None
    if start[0] is not None and start[1] is not None:
        xy = proj.to_xy([start[0]], [start[1]]).reshape(2)
        start_xy = (float(xy[0]), float(xy[1]))
    plan = plan_patrol(
        rf, start_xy=start_xy, cells=cells, max_stops=max_stops, shift_s=shift_s, device_mask=mask
    )
    names = {d.device_id: d.name for d in devs}
    stops = []
    for s in plan.stops:
        lat, lon = _latlon(proj, np.array(s.xy))
        stops.append(
            StopOut(
                order=s.order, cell_id=s.cell_id, lat=lat, lon=lon, expected=s.expected,
                background=s.background, triggered=s.triggered, walk_m=round(s.walk_m, 1),
                reasons=_reasons(s.reasons),
                devices=[
                    DeviceCheckOut(device_id=d.device_id, kind=d.kind, name=names.get(d.device_id, ""),
                                   expected=d.expected, reasons=_reasons(d.reasons))
                    for d in s.devices
                ],
            )
        )  # fmt: skip
    slat, slon = _latlon(proj, np.array(plan.start_xy)) if plan.stops else (None, None)
    return PatrolOut(
        worker=worker, shift_start=t, shift_end=t + shift_s, health_included=health, start_lat=slat,
        start_lon=slon, total_walk_m=round(plan.total_walk_m, 1), walk_min=round(plan.walk_s / 60.0, 1),
        dropped=plan.dropped, stops=stops,
    )  # fmt: skip


@router.get("/health-trends", response_model=TrendsOut, summary="Residents with rising health episodes")
async def get_health_trends(
    state: State,
    caller: User,
    weeks: Annotated[int, Query(ge=4, le=52)] = 12,
    at: At = None,
    include_all: Annotated[
        bool, Query(description="every resident with an episode, not only rising")
    ] = False,
) -> TrendsOut:
    require(caller, *PERSONAL_DATA_ROLES)
    t = state.clock.now() if at is None else at
    return await asyncio.to_thread(_trends, state, t, weeks, include_all)


def _trends(state: CloudState, at: float, weeks: int, include_all: bool) -> TrendsOut:
    devs, events = _load(state, at - weeks * 7 * DAY_S, at)
    bands = tuple(d.device_id for d in devs if d.kind == DeviceKind.WRISTBAND.value)
    names = {d.device_id: d.name for d in devs}
    health = [e for e in events if family_of(e[1]) is Family.HEALTH]
    hist = EventHistory.from_columns(
        [e[0] for e in health], np.zeros((len(health), 2)), [e[1] for e in health], [e[4] for e in health]
    )
    trends = resident_trends(hist, bands, at=at, weeks=weeks)
    return TrendsOut(
        at=at,
        weeks=weeks,
        residents=[
            TrendOut(
                device_id=r.device_id, name=names.get(r.device_id, ""), weekly_counts=list(r.weekly_counts),
                rate_ratio_4w=r.rate_ratio_4w, p_value=r.p_value, rising=r.rising,
            )
            for r in trends
            if include_all or r.rising
        ],
    )  # fmt: skip
