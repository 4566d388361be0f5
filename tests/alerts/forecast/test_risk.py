"""Risk per cell and device with its reasons, and per-resident trends (on the seeded history)."""

from __future__ import annotations

import numpy as np
import pytest

from alerts.forecast.background import DAY_S
from alerts.forecast.grid import Cells
from alerts.forecast.history import EventHistory, Family
from alerts.forecast.risk import Devices, RiskForecast, resident_trends
from firmware_bridge.kernel.records import DeviceKind
from simulators.history import SimulatedHistory


def test_cell_scores_add_up(sim_risk: RiskForecast) -> None:
    rf = sim_risk
    assert np.allclose(rf.expected, rf.background + rf.triggered)
    assert np.allclose(sum(rf.by_family.values()), rf.expected)
    assert set(rf.models) == set(Family) and rf.fallback == ()
    assert (rf.expected >= 0).all() and np.isfinite(rf.expected).all()
    # the day's total is in the range of the history's daily rate
    assert 5.0 < rf.expected.sum() < 60.0


def test_top_cells_catch_more_of_the_next_day_than_the_heat_map(
    sim_risk: RiskForecast, sim_history: SimulatedHistory, sim_cells: Cells
) -> None:
    nxt = sim_history.event_history().window(sim_risk.at, sim_risk.at + 7 * DAY_S)
    counts = np.bincount(sim_cells.locate(nxt.xy), minlength=len(sim_cells))
    k = max(1, len(sim_cells) // 10)
    sepp_hits = counts[np.argsort(-sim_risk.expected)[:k]].sum()
    kde_hits = counts[np.argsort(-sim_risk.kde)[:k]].sum()
    assert sepp_hits >= kde_hits


def test_reasons_are_past_events_nearby_heaviest_first(sim_risk: RiskForecast) -> None:
    top = int(sim_risk.ranking()[0])
    reasons = sim_risk.reasons(top)
    assert reasons
    assert all(r.time < sim_risk.at for r in reasons)
    w = [r.weight for r in reasons]
    assert w == sorted(w, reverse=True)
    assert sum(w) <= sim_risk.triggered[top] + 1e-9


def test_device_scores_share_the_cells_and_follow_own_events(sim_risk: RiskForecast) -> None:
    rf = sim_risk
    assert rf.device_expected.sum() == pytest.approx(rf.expected.sum(), rel=0.35)
    best = int(np.argmax(rf.device_expected))
    assert rf.device_reasons(best), "the riskiest device has its own recent events as reasons"
    assert all(r.device_id == rf.devices.ids[best] for r in rf.device_reasons(best))


def test_rising_residents_are_found(sim_history: SimulatedHistory, sim_devices: Devices) -> None:
    bands = tuple(
        d for d, k in zip(sim_devices.ids, sim_devices.kind, strict=True) if k is DeviceKind.WRISTBAND
    )
    trends = resident_trends(sim_history.event_history(), bands, at=sim_history.end)
    flagged = {t.device_id for t in trends if t.rising}
    truth = set(sim_history.rising)
    # measured on seed 13: 7 of the 12 rising residents flagged, 7 of 10 flags right (the others are
    # residents in a burst of self-excited episodes, which is worth the doctor's call too)
    assert len(flagged & truth) >= 0.5 * len(truth)
    assert len(flagged & truth) >= 0.6 * len(flagged)


def test_trend_by_hand() -> None:
    at = 100 * DAY_S
    weeks = np.arange(12)
    rows = []
    for dev, per_week in (("up", [0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5]), ("flat", [2] * 12)):
        for w, n in zip(weeks.tolist(), per_week, strict=True):
            rows += [(at - (12 - w) * 7 * DAY_S + i * 3600.0 + 60.0, dev) for i in range(n)]
    t = [r[0] for r in rows]
    hist = EventHistory.from_columns(t, np.zeros((len(t), 2)), ["fall"] * len(t), [r[1] for r in rows])
    out = {tr.device_id: tr for tr in resident_trends(hist, ("up", "flat", "quiet"), at=at)}
    assert out["up"].rising and out["up"].rate_ratio_4w > 1.5 and out["up"].p_value < 0.01
    assert not out["flat"].rising and out["flat"].rate_ratio_4w == pytest.approx(1.0, abs=1e-6)
    assert "quiet" not in out
    assert out["up"].weekly_counts == (0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5)
