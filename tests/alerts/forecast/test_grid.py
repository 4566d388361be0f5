"""Grids: every point lands in the cell whose polygon holds it; stencils start with the cell itself."""

from __future__ import annotations

import numpy as np
import pytest

from alerts.forecast.errors import GridError
from alerts.forecast.grid import Projection, community_cells, hex_cells, square_cells


def _inside_convex(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    edges = np.roll(poly, -1, axis=0) - poly
    rel = pts[:, None, :] - poly[None, :, :]
    cross = edges[None, :, 0] * rel[:, :, 1] - edges[None, :, 1] * rel[:, :, 0]
    return np.asarray((cross >= -1e-9).all(axis=1) | (cross <= 1e-9).all(axis=1))


@pytest.mark.parametrize("make", [square_cells, hex_cells])
def test_points_land_in_the_polygon_of_their_cell(make) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1000, 1000, (3000, 2))
    cells = make(pts, 120.0)
    idx = cells.locate(pts)
    assert (idx >= 0).all()
    for c in np.unique(idx)[:60]:
        assert _inside_convex(cells.polygons[c], pts[idx == c]).all()
    # the same answer as a brute-force nearest centroid (Voronoi) assignment
    d = ((pts[:, None, :] - cells.xy[None, :, :]) ** 2).sum(axis=2)
    assert (d[np.arange(len(pts)), idx] <= d.min(axis=1) + 1e-6).all()


@pytest.mark.parametrize(("make", "k"), [(square_cells, 9), (hex_cells, 7)])
def test_stencil_is_self_then_lattice_neighbours(make, k: int) -> None:  # type: ignore[no-untyped-def]
    pts = np.random.default_rng(2).uniform(0, 2000, (5000, 2))
    cells = make(pts, 100.0)
    assert cells.neighbours.shape[1] == k
    assert (cells.neighbours[:, 0] == np.arange(len(cells))).all()
    assert (cells.distance_m[:, 0] == 0).all()
    interior = (cells.neighbours >= 0).all(axis=1)
    assert interior.sum() > len(cells) // 2
    assert cells.spacing_m == pytest.approx(100.0 if make is square_cells else 100.0 * np.sqrt(3), rel=1e-6)


def test_only_cells_with_points_are_kept_and_far_points_are_outside() -> None:
    cells = square_cells(np.array([[0.0, 0.0], [1000.0, 1000.0]]), 100.0)
    assert len(cells) == 2
    assert cells.locate(np.array([[500.0, 500.0]])).tolist() == [-1]


def test_community_cells_are_the_labels_at_their_devices_mean() -> None:
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [600.0, 0.0], [np.nan, 1.0]])
    cells = community_cells(["G01", "G01", "G02", "G03"], xy)
    assert cells.ids == ("G01", "G02")
    assert cells.xy[0].tolist() == [5.0, 0.0]
    assert cells.neighbours[0].tolist()[:2] == [0, 1]
    with pytest.raises(GridError):
        community_cells([], np.empty((0, 2)))


def test_projection_round_trips() -> None:
    p = Projection(22.65, 114.03)
    xy = p.to_xy([22.66, 22.64], [114.04, 114.02])
    lat, lon = p.to_latlon(xy)
    assert np.allclose(lat, [22.66, 22.64]) and np.allclose(lon, [114.04, 114.02])
    assert xy[0, 1] == pytest.approx(1113.2, rel=1e-4)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(GridError):
        square_cells(np.zeros((1, 2)), 0.0)
    with pytest.raises(GridError):
        hex_cells(np.full((1, 2), np.nan), 10.0)
