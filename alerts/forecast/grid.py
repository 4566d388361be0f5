"""Grid cells: where risk is counted. Square, hexagonal, or the community's own grid (网格) cells.

Every kind of grid ends as the same :class:`Cells`: centroids in local metres, an area per cell, and a
small neighbour stencil (each cell's nearest cells with their distances, itself first). A point belongs to
the cell with the nearest centroid, which is exact for square and hexagonal lattices (their Voronoi cells
*are* the squares and hexagons) and a sensible rule for the community's irregular cells.

Only cells that hold at least one device are kept: an alert can only happen where a device is, so the
*monitored area* is the study area, and PAI's area ratio is measured against it (``docs/risk.md``).

Why no H3: the hexagons here are metric and local (a few km), the API hands out centroids and polygons in
WGS-84, and a numpy lattice needs no extra compiled dependency on the cloud host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from alerts.forecast.errors import GridError

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
M_PER_DEG_LAT = 111_320.0
SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True)
class Projection:
    """Local equirectangular projection around ``(lat0, lon0)``: metres east (x) and north (y)."""

    lat0: float
    lon0: float

    @property
    def _m_per_deg_lon(self) -> float:
        return M_PER_DEG_LAT * math.cos(math.radians(self.lat0))

    def to_xy(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> F64:
        la = np.asarray(lat, dtype=np.float64)
        lo = np.asarray(lon, dtype=np.float64)
        return np.stack([(lo - self.lon0) * self._m_per_deg_lon, (la - self.lat0) * M_PER_DEG_LAT], axis=-1)

    def to_latlon(self, xy: F64) -> tuple[F64, F64]:
        xy = np.asarray(xy, dtype=np.float64)
        return self.lat0 + xy[..., 1] / M_PER_DEG_LAT, self.lon0 + xy[..., 0] / self._m_per_deg_lon

    @classmethod
    def around(cls, lat: npt.ArrayLike, lon: npt.ArrayLike) -> Projection:
        la = np.asarray(lat, dtype=np.float64)
        lo = np.asarray(lon, dtype=np.float64)
        ok = np.isfinite(la) & np.isfinite(lo)
        if not ok.any():
            raise GridError("no finite coordinates to centre a projection on")
        return cls(float(np.mean(la[ok])), float(np.mean(lo[ok])))


@dataclass(frozen=True)
class Cells:
    """A set of grid cells, as columns. Index ``i`` is the cell's position in every array."""

    ids: tuple[str, ...]
    xy: F64  # (n, 2) centroids, local metres
    area_m2: F64  # (n,)
    neighbours: I64  # (n, k) cell indices, column 0 = the cell itself, -1 = none
    distance_m: F64  # (n, k) centroid distances (inf where there is no neighbour)
    shape: str  # "square", "hex" or "community"
    size_m: float  # square side, hexagon circumradius, or the community cells' typical spacing
    polygons: tuple[F64, ...] = ()  # per cell (m, 2) vertices in local metres; empty for community cells

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def spacing_m(self) -> float:
        """Distance between neighbouring centroids (the natural unit of spatial smoothing)."""
        d = self.distance_m[:, 1:]
        d = d[np.isfinite(d)]
        return float(np.median(d)) if d.size else self.size_m

    def locate(self, xy: F64, *, max_m: float | None = None) -> I64:
        """Cell index of each point (nearest centroid); -1 beyond ``max_m`` (default: a cell's reach)."""
        pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if not len(pts):
            return np.empty(0, dtype=np.int64)
        reach = max_m if max_m is not None else self._reach()
        dist, idx = cKDTree(self.xy).query(pts, k=1, distance_upper_bound=reach)
        out = np.asarray(idx, dtype=np.int64)
        out[~np.isfinite(dist)] = -1
        return out

    def index(self, cell_id: str) -> int:
        try:
            return self.ids.index(cell_id)
        except ValueError:
            raise GridError(f"unknown cell {cell_id!r}") from None

    def _reach(self) -> float:
        if self.shape == "square":
            return self.size_m * math.sqrt(0.5) * 1.0001
        if self.shape == "hex":
            return self.size_m * 1.0001
        return 3.0 * self.spacing_m


def _stencil(xy: F64, k: int, radius: float) -> tuple[I64, F64]:
    k = min(k, len(xy))
    dist, idx = cKDTree(xy).query(xy, k=k, distance_upper_bound=radius)
    dist = np.asarray(dist, dtype=np.float64).reshape(len(xy), k)
    idx = np.asarray(idx, dtype=np.int64).reshape(len(xy), k)
    missing = ~np.isfinite(dist)
    idx[missing] = -1
    dist[missing] = np.inf
    return idx, dist


def square_cells(xy: F64, size_m: float, *, origin: tuple[float, float] = (0.0, 0.0)) -> Cells:
    """Square cells of side ``size_m`` (aligned on ``origin``) that contain at least one point of ``xy``."""
    pts = _points(xy, size_m)
    ij = np.floor((pts - np.asarray(origin)) / size_m).astype(np.int64)
    uniq = np.unique(ij, axis=0)
    centres = (uniq + 0.5) * size_m + np.asarray(origin)
    idx, dist = _stencil(centres, 9, size_m * math.sqrt(2.0) * 1.01)
    h = size_m / 2
    corners = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    return Cells(
        ids=tuple(f"S{i:+04d}{j:+04d}" for i, j in uniq.tolist()),
        xy=centres,
        area_m2=np.full(len(uniq), size_m * size_m),
        neighbours=idx,
        distance_m=dist,
        shape="square",
        size_m=float(size_m),
        polygons=tuple(c + corners for c in centres),
    )


def hex_cells(xy: F64, size_m: float) -> Cells:
    """Pointy-top hexagons of circumradius ``size_m`` holding at least one point (axial coordinates)."""
    pts = _points(xy, size_m)
    q = (SQRT3 / 3 * pts[:, 0] - pts[:, 1] / 3) / size_m
    r = (2 / 3 * pts[:, 1]) / size_m
    # cube rounding (x + y + z = 0): round each, then fix the coordinate with the largest error
    x, z = q, r
    y = -x - z
    rx, ry, rz = np.round(x), np.round(y), np.round(z)
    dx, dy, dz = np.abs(rx - x), np.abs(ry - y), np.abs(rz - z)
    fix_x = (dx > dy) & (dx > dz)
    fix_y = ~fix_x & (dy > dz)
    rx = np.where(fix_x, -ry - rz, rx)
    rz = np.where(~fix_x & ~fix_y, -rx - ry, rz)
    axial = np.stack([rx, rz], axis=1).astype(np.int64)
    uniq = np.unique(axial, axis=0)
    centres = np.stack(
        [size_m * SQRT3 * (uniq[:, 0] + uniq[:, 1] / 2), size_m * 1.5 * uniq[:, 1]], axis=1
    ).astype(np.float64)
    idx, dist = _stencil(centres, 7, size_m * SQRT3 * 1.01)
    ang = np.radians(60 * np.arange(6) + 30)
    corners = size_m * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return Cells(
        ids=tuple(f"H{a:+04d}{b:+04d}" for a, b in uniq.tolist()),
        xy=centres,
        area_m2=np.full(len(uniq), 1.5 * SQRT3 * size_m * size_m),
        neighbours=idx,
        distance_m=dist,
        shape="hex",
        size_m=float(size_m),
        polygons=tuple(c + corners for c in centres),
    )


def community_cells(labels: list[str], xy: F64, *, cell_area_m2: float = 500.0 * 500.0) -> Cells:
    """The community's own grid cells: one cell per label, centred on its devices' mean position.

    Their true outlines are not known to Vigil (only which devices belong to which grid), so every cell
    gets the same nominal area and the neighbour stencil is the eight nearest centroids within twice the
    typical spacing.
    """
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(labels) != len(pts) or not len(pts):
        raise GridError("community cells need one label per point, and at least one point")
    ok = np.isfinite(pts).all(axis=1) & np.array([bool(s) for s in labels])
    names = sorted({s for s, k in zip(labels, ok.tolist(), strict=True) if k})
    if not names:
        raise GridError("no labelled point with coordinates")
    pos = {s: i for i, s in enumerate(names)}
    lab = np.array([pos[s] if k else -1 for s, k in zip(labels, ok.tolist(), strict=True)])
    sums = np.zeros((len(names), 2))
    np.add.at(sums, lab[lab >= 0], pts[lab >= 0])
    counts = np.bincount(lab[lab >= 0], minlength=len(names)).astype(np.float64)
    centres = sums / counts[:, None]
    spacing = math.sqrt(cell_area_m2)
    idx, dist = _stencil(centres, 9, 2.0 * spacing)
    return Cells(
        ids=tuple(names),
        xy=centres,
        area_m2=np.full(len(names), float(cell_area_m2)),
        neighbours=idx,
        distance_m=dist,
        shape="community",
        size_m=spacing,
    )


def _points(xy: F64, size_m: float) -> F64:
    if not size_m > 0:
        raise GridError(f"cell size must be positive, got {size_m!r}")
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if not len(pts):
        raise GridError("no points with finite coordinates to lay a grid over")
    return pts
