"""The history generator: deterministic, and its events follow the parameters it was given."""

from __future__ import annotations

import numpy as np
import pytest

from alerts.forecast.grid import Cells, square_cells
from alerts.forecast.history import FAMILIES, Family
from firmware_bridge.kernel.records import DeviceKind
from simulators.history import SimulatedHistory, generate_history


@pytest.fixture(scope="module")
def sim_history() -> SimulatedHistory:
    return generate_history(days=240, seed=13)


@pytest.fixture(scope="module")
def sim_cells(sim_history: SimulatedHistory) -> Cells:
    return square_cells(sim_history.device_points(), 150.0)


def test_same_seed_same_history() -> None:
    counts = dict.fromkeys(DeviceKind, 200)
    a = generate_history(days=30, seed=3, counts=counts)
    b = generate_history(days=30, seed=3, counts=counts)
    assert np.array_equal(a.time, b.time) and a.device_id == b.device_id and a.event_type == b.event_type
    assert (np.diff(a.time) >= 0).all()
    assert ((a.time >= a.start) & (a.time < a.end)).all()


def test_triggered_share_matches_the_branching_ratio(sim_history: SimulatedHistory) -> None:
    # in a stationary branching process a share theta of all events are offspring (minus edge losses)
    for f_i, fam in enumerate(FAMILIES):
        p = next(q for q in sim_history.params if q.family is fam)
        m = sim_history.family == f_i
        share = float((sim_history.parent[m] >= 0).mean())
        assert share == pytest.approx(p.theta, abs=0.08), fam


def test_parents_precede_children_of_the_same_family(sim_history: SimulatedHistory) -> None:
    child = np.flatnonzero(sim_history.parent >= 0)
    par = sim_history.parent[child]
    assert (sim_history.time[par] <= sim_history.time[child]).all()
    assert (sim_history.family[par] == sim_history.family[child]).all()
    health = FAMILIES.index(Family.HEALTH)
    same = child[sim_history.family[child] == health]
    assert all(sim_history.device_id[i] == sim_history.device_id[sim_history.parent[i]] for i in same)


def test_true_background_matches_the_count_of_background_events(
    sim_history: SimulatedHistory, sim_cells: Cells
) -> None:
    h = sim_history
    bg = h.parent < 0
    total = sum(float(h.true_background(sim_cells, f).sum()) for f in Family)
    assert total == pytest.approx(int(bg.sum()), rel=0.05)


def test_rising_residents_have_more_events_late_than_early(sim_history: SimulatedHistory) -> None:
    h = sim_history
    mid = h.end - h.rising_weeks / 2 * 7 * 86_400
    rising = set(h.rising)
    early = sum(
        1
        for t, d in zip(h.time.tolist(), h.device_id, strict=True)
        if d in rising and mid - 6 * 7 * 86_400 <= t < mid
    )
    late = sum(1 for t, d in zip(h.time.tolist(), h.device_id, strict=True) if d in rising and t >= mid)
    assert len(rising) >= 10 and late > 1.5 * early
