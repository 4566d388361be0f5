"""Forecast quality on the seeded demo history: KDE vs SEPP vs oracle, PAI / PEI / log-likelihood.

Run: ``.venv/bin/python bench/score_forecast.py`` (about 10-20 s). The history and protocol are those of
``tests/alerts/forecast/test_backtest.py``: ``simulators.history.generate_history(days=240, seed=13)``
(Longhua demo neighbourhood, 1,500 covers, 1,500 smoke alarms, 600 wristbands), 150 m square cells,
fit on the first 180 days, a day-ahead forecast for each of the last 60. ``--seeds`` repeats it over
several seeds to show the spread. JSON: ``bench/results/score_forecast.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.forecast.background import DAY_S
from alerts.forecast.backtest import Truth, backtest
from alerts.forecast.grid import square_cells
from alerts.forecast.sepp import Triggering
from simulators.history import generate_history

RESULTS = Path(__file__).resolve().parent / "results" / "score_forecast.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[13])
    ap.add_argument("--days", type=int, default=240)
    ap.add_argument("--test-days", type=int, default=60)
    ap.add_argument("--cell-m", type=float, default=150.0)
    args = ap.parse_args()
    runs = []
    for seed in args.seeds:
        h = generate_history(days=args.days, seed=seed)
        cells = square_cells(h.device_points(), args.cell_m)
        truth = Truth(
            {p.family: h.true_background(cells, p.family) for p in h.params},
            {p.family: Triggering(p.theta, p.decay_days, max(p.sigma_m, 1.0)) for p in h.params},
        )
        t0 = time.perf_counter()
        rep = backtest(
            h.event_history(), cells, h.covariates(cells), train_end=h.end - args.test_days * DAY_S,
            test_days=args.test_days, truth=truth,
        )  # fmt: skip
        print(f"seed {seed}: {len(h):,} events, {len(cells)} cells, test {rep.test_events:,} events, "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        print(rep.table())
        runs.append({"seed": seed, "events": len(h), "cells": len(cells)} | rep.to_dict())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"benchmark": "score_forecast", "params": vars(args), "runs": runs}, indent=2)
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
