"""The map's layers, drawn from what the registry knows, so no internet basemap is ever needed.

:func:`community_layers` turns the device registry into a GeoJSON ``FeatureCollection`` of

- **streets**: the devices that name a street, ordered along the street's main axis (principal component)
  and joined into a line (manhole covers sit along roads, so the line follows the road);
- **grid cells** (网格): the padded bounding box of each grid's devices;
- **buildings**: 25 m squares wherever homes (smoke alarms, wristbands) cluster.

A site with surveyed GeoJSON can serve its own file instead (``create_console(map_file=...)``).
:func:`device_points` is the compact array the map clusters (10,000 devices = a few hundred kB).
Pure functions over plain dicts; no I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

BUILDING_M = 25.0
GRID_PAD_M = 15.0
M_PER_DEG = 111_320.0
HOME_KINDS = ("smoke_alarm", "wristband")


def _located(devices: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [d for d in devices if d.get("lat") is not None and d.get("lon") is not None]


def _street_line(points: np.ndarray) -> list[list[float]]:
    """Order ``(n, 2)`` lon/lat points along their main axis; returns GeoJSON coordinates."""
    if len(points) < 2:
        return []
    centre = points.mean(axis=0)
    scale = np.array([math.cos(math.radians(float(centre[1]))), 1.0])
    local = (points - centre) * scale
    _, _, vt = np.linalg.svd(local, full_matrices=False)
    order = np.argsort(local @ vt[0])
    return [[round(float(x), 6), round(float(y), 6)] for x, y in points[order]]


def community_layers(devices: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    located = _located(devices)
    features: list[dict[str, Any]] = []
    by_street: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_grid: dict[str, list[tuple[float, float]]] = defaultdict(list)
    homes: list[tuple[float, float]] = []
    for d in located:
        lon, lat = float(d["lon"]), float(d["lat"])
        if d.get("street") and d.get("kind") == "manhole":
            by_street[str(d["street"])].append((lon, lat))
        if d.get("grid"):
            by_grid[str(d["grid"])].append((lon, lat))
        if d.get("kind") in HOME_KINDS:
            homes.append((lon, lat))
    for name, pts in sorted(by_street.items()):
        line = _street_line(np.array(pts))
        if line:
            features.append(_feature("LineString", line, layer="street", name=name))
    for grid, pts in sorted(by_grid.items()):
        arr = np.array(pts)
        lat0 = float(arr[:, 1].mean())
        pad_lat = GRID_PAD_M / M_PER_DEG
        pad_lon = pad_lat / max(math.cos(math.radians(lat0)), 1e-6)
        pad = np.array([pad_lon, pad_lat])
        w, s = arr.min(axis=0) - pad
        e, n = arr.max(axis=0) + pad
        ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
        coords = [[[round(float(x), 6), round(float(y), 6)] for x, y in ring]]
        features.append(_feature("Polygon", coords, layer="grid", name=grid))
    if homes:
        arr = np.array(homes)
        lat0 = float(arr[:, 1].mean())
        d_lat = BUILDING_M / M_PER_DEG
        d_lon = d_lat / max(math.cos(math.radians(lat0)), 1e-6)
        cells = np.unique(np.floor(arr / (d_lon, d_lat)).astype(np.int64), axis=0)
        for cx, cy in cells.tolist():
            w, s = cx * d_lon, cy * d_lat
            ring = [[w, s], [w + d_lon, s], [w + d_lon, s + d_lat], [w, s + d_lat], [w, s]]
            coords = [[[round(x, 6), round(y, 6)] for x, y in ring]]
            features.append(_feature("Polygon", coords, layer="building", name=""))
    return {"type": "FeatureCollection", "features": features}


def _feature(geometry: str, coords: Any, **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": geometry, "coordinates": coords}, "properties": props}


def device_points(
    devices: Iterable[Mapping[str, Any]], open_alerts: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """``{"fields": [...], "rows": [[lat, lon, id, kind, severity, name, silent], ...]}`` for the map.

    ``severity`` is the highest severity among the device's open alerts (0 = none); ``silent`` is 1
    when the device has never reported.
    """
    worst: dict[str, int] = {}
    for a in open_alerts:
        dev = str(a.get("device_id", ""))
        worst[dev] = max(worst.get(dev, 0), int(a.get("severity", 0)))
    rows = [
        [
            round(float(d["lat"]), 6),
            round(float(d["lon"]), 6),
            d["device_id"],
            d["kind"],
            worst.get(str(d["device_id"]), 0),
            d.get("name", ""),
            1 if d.get("last_seen") is None else 0,
        ]
        for d in _located(devices)
    ]
    return {"fields": ["lat", "lon", "device_id", "kind", "severity", "name", "silent"], "rows": rows}


RISK_LEVELS = 5  # colour steps of the risk layer, 0 (lowest shown) .. 4 (highest)


def risk_layer(forecast: Mapping[str, Any], family_label: Any, tooltip: Any) -> dict[str, Any]:
    """The risk API's forecast (``GET /api/v1/risk/forecast``) as GeoJSON for the map's risk overlay.

    One Polygon per grid cell (a Point for community cells, which have no polygon), with ``expected``
    events in the horizon, ``rank``, a colour ``level`` 0-4 relative to the highest cell shown, and a
    ``tooltip`` built by ``tooltip(rank=, expected=, families=)`` from the two largest families labelled by
    ``family_label``. Cells expecting nothing are left out. The API already drops health families for roles
    that may not see health data, so this never adds any.
    """
    cells = [c for c in forecast.get("cells", []) if float(c.get("expected", 0.0)) > 0.0]
    top = max((float(c["expected"]) for c in cells), default=0.0)
    features: list[dict[str, Any]] = []
    for c in cells:
        expected = float(c["expected"])
        level = min(RISK_LEVELS - 1, int(expected / top * RISK_LEVELS)) if top > 0 else 0
        fams = sorted(((float(v), str(k)) for k, v in dict(c.get("families", {})).items() if v), reverse=True)
        text = "、".join(f"{family_label(k)} {v:.2f}" for v, k in fams[:2])
        props = {
            "layer": "risk",
            "cell_id": c["cell_id"],
            "rank": int(c["rank"]),
            "expected": round(expected, 3),
            "level": level,
            "tooltip": tooltip(rank=int(c["rank"]), expected=f"{expected:.2f}", families=text),
        }
        poly = c.get("polygon")
        if poly:
            ring = [[round(float(lon), 6), round(float(lat), 6)] for lat, lon in poly]
            if ring[0] != ring[-1]:
                ring.append(ring[0])
            features.append(_feature("Polygon", [ring], **props))
        else:
            features.append(
                _feature("Point", [round(float(c["lon"]), 6), round(float(c["lat"]), 6)], **props)
            )
    return {
        "type": "FeatureCollection",
        "features": features,
        "horizon_h": round(float(forecast.get("horizon_s", 0.0)) / 3600.0, 1),
        "health_included": bool(forecast.get("health_included", False)),
    }


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine), kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0088 * 2 * math.asin(min(1.0, math.sqrt(a)))
