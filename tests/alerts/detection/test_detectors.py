"""Conformance of every detector (river style: the same checks for all), then each one's own maths."""

from __future__ import annotations

import numpy as np
import pytest

from alerts.detection.detectors import EWMAZScore, Flatline, FractionalDose, RateOfRise, Threshold
from alerts.detection.detectors.base import Detector

FACTORIES = {
    "ewma": lambda g: EWMAZScore(alpha=0.1, min_std=0.5, grace_period=g),
    "ewma_up": lambda g: EWMAZScore(alpha=0.1, min_std=0.5, side="up", grace_period=g),
    "rate": lambda g: RateOfRise(min_dt=1.0, max_dt=1000.0, grace_period=g),
    "flatline": lambda g: Flatline(tolerance=0.01, grace_period=g),
    "dose": lambda g: FractionalDose(grace_period=g),
}


def _stream(seed: int, n_dev: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = 50.0 + rng.normal(0, 5, (steps, n_dev))
    x[steps // 2, : n_dev // 3] += 200.0  # a few anomalies
    t = np.arange(steps, dtype=float)[:, None] * 60.0 + np.zeros((1, n_dev))
    return x, t


def _run(det: Detector, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    rows = np.arange(x.shape[1])
    out = []
    for k in range(x.shape[0]):
        out.append(det.score_many(rows, x[k], t[k]))
        det.learn_many(rows, x[k], t[k])
    return np.array(out)


@pytest.fixture(params=sorted(FACTORIES))
def make(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return FACTORIES[request.param]


def test_nan_in_no_nan_out_and_state_not_poisoned(make) -> None:  # type: ignore[no-untyped-def]
    det = make(2)
    x, t = _stream(1, 8, 20)
    x[5, 3] = np.nan
    x[6, :] = np.nan
    s = _run(det, x, t)
    assert np.isfinite(s).all()
    assert (s >= 0).all()
    assert s[5, 3] == 0.0 and (s[6] == 0.0).all()
    for name, arr in det.arrays.items():
        if arr.dtype.kind == "f" and name not in ("mean", "last_x", "last_t"):
            assert np.isfinite(arr[:8]).all(), name
    assert np.isfinite(det.arrays.get("mean", np.zeros(8))[:8]).all()


def test_empty_batch(make) -> None:  # type: ignore[no-untyped-def]
    det = make(0)
    det.learn_many(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    assert det.score_many(np.zeros(0, np.int64), np.zeros(0), np.zeros(0)).shape == (0,)


def test_one_device_equals_many_devices(make) -> None:  # type: ignore[no-untyped-def]
    """Devices are independent: a device scores the same alone as among 50 others."""
    x, t = _stream(2, 50, 30)
    many = _run(make(3), x, t)
    alone = _run(make(3), x[:, 7:8], t[:, 7:8])
    np.testing.assert_allclose(many[:, 7], alone[:, 0])


def test_deterministic(make) -> None:  # type: ignore[no-untyped-def]
    x, t = _stream(3, 20, 25)
    np.testing.assert_array_equal(_run(make(2), x, t), _run(make(2), x, t))


def test_grace_period_respected(make) -> None:  # type: ignore[no-untyped-def]
    g = 5
    det = make(g)
    rows = np.array([0])
    for k in range(g):
        assert det.score_many(rows, [1e6 * (k % 2)], [60.0 * k])[0] == 0.0  # still warming up
        det.learn_many(rows, [1e6 * (k % 2)], [60.0 * k])
    assert det.warm(rows).all()


def test_rows_grow_on_demand(make) -> None:  # type: ignore[no-untyped-def]
    det = make(0)
    det.learn_many([0, 1000], [1.0, 2.0], [0.0, 0.0])
    assert det.capacity >= 1001
    assert det.score_many([1000, 5000], [2.0, 3.0], [60.0, 60.0]).shape == (2,)


def test_shape_mismatch_is_a_value_error(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        make(0).learn_many([0, 1], [1.0], [0.0])


# -- each detector's own maths -------------------------------------------------------------------------


def test_ewma_scores_an_outlier_and_keeps_it_out_when_filtered() -> None:
    det = EWMAZScore(alpha=0.1, min_std=0.5, grace_period=3)
    rows = np.array([0, 1])
    for k in range(20):
        det.learn_many(rows, [20.0 + 0.1 * (k % 3)] * 2, [k] * 2)
    s = det.score_many(rows, [20.1, 30.0], [21, 21])
    assert s[0] < 1.0 < 10.0 < s[1]
    alarm = Threshold(5.0).above(s)
    assert alarm.tolist() == [False, True]
    det.learn_many(rows[~alarm], np.array([20.1, 30.0])[~alarm], [21])
    assert det.baseline(np.array([1]))[0] == pytest.approx(20.1, abs=0.2)  # the anomaly did not teach it


def test_ewma_side_up_ignores_drops() -> None:
    det = EWMAZScore(alpha=0.1, min_std=1.0, side="up", grace_period=0)
    det.learn_many([0], [20.0], [0])
    assert det.score_many([0], [10.0], [1])[0] == 0.0
    assert det.score_many([0], [25.0], [1])[0] == pytest.approx(5.0)


def test_rate_of_rise_per_minute_with_dt_guards() -> None:
    det = RateOfRise(min_dt=5.0, max_dt=600.0)
    det.learn_many([0, 1, 2], [20.0, 20.0, 20.0], [0.0, 0.0, 0.0])
    s = det.score_many([0, 1, 2], [30.0, 30.0, 10.0], [60.0, 2.0, 60.0])
    assert s.tolist() == [10.0, 0.0, 0.0]  # 10 °C/min; too close in time; a fall is never a rise
    assert det.score_many([0], [90.0], [3600.0])[0] == 0.0  # an hour apart: says nothing about now


def test_flatline_counts_repeats_and_resets() -> None:
    det = Flatline(tolerance=0.0)
    for v in (72, 72, 72, 73):
        det.learn_many([0], [v], [0])
    assert det.score_many([0], [73.0], [0])[0] == 1.0  # 73 repeated once
    assert det.score_many([0], [74.0], [0])[0] == 0.0


@pytest.mark.parametrize(
    ("ppm", "earliest_min", "latest_min"),
    [
        # EN 50291 alarm windows (via /work/shared/REFERENCES.md "Smoke alarms"):
        (50.0, 60.0, 90.0),  # 50 ppm: alarm within 60-90 min
        (100.0, 10.0, 40.0),  # 100 ppm: within 10-40 min
        (300.0, 0.0, 3.0),  # 300 ppm: within 3 min
    ],
)
def test_fractional_dose_meets_en50291_windows(ppm: float, earliest_min: float, latest_min: float) -> None:
    det = FractionalDose(max_dt=600.0)
    det.learn_many([0], [0.0], [0.0])
    minute = 0
    while det.score_many([0], [ppm], [60.0 * (minute + 1)])[0] < 1.0:
        minute += 1
        det.learn_many([0], [ppm], [60.0 * minute])
        assert minute <= latest_min, f"{ppm} ppm did not alarm within {latest_min} min"
    assert earliest_min <= minute + 1 <= latest_min


def test_fractional_dose_never_alarms_at_30_ppm_within_120_min() -> None:
    """EN 50291: no alarm at 30 ppm before 120 min (REFERENCES.md)."""
    det = FractionalDose(max_dt=600.0)
    for minute in range(0, 121):
        assert det.score_many([0], [30.0], [60.0 * minute])[0] < 1.0
        det.learn_many([0], [30.0], [60.0 * minute])


def test_fractional_dose_clears_after_fresh_air_however_long_the_exposure() -> None:
    det = FractionalDose(max_dt=600.0, decay_s=1800.0, max_dose=2.0)
    for minute in range(0, 240, 5):  # four hours at 400 ppm
        det.learn_many([0], [400.0], [60.0 * minute])
    assert det.score_many([0], [400.0], [60.0 * 245])[0] == 2.0  # capped
    assert det.score_many([0], [2.0], [60.0 * 240 + 3600.0])[0] == 0.0  # an hour of fresh air later


@pytest.mark.parametrize("module", ["ewma", "rate", "flatline", "dose"])
def test_docstring_examples_run(module: str) -> None:
    """The seeded examples in each detector's docstring are executable documentation."""
    import doctest
    import importlib

    mod = importlib.import_module(f"alerts.detection.detectors.{module}")
    result = doctest.testmod(mod, verbose=False)
    assert result.attempted > 0 and result.failed == 0
