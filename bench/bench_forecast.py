"""Risk forecasting at district scale: fit a year of ~1,000,000 events and score every cell, vs the KDE.

Run: ``.venv/bin/python bench/bench_forecast.py`` (about 2-3 minutes on a shared 2-core box, most of it
generating the history and the held-out backtest; the timed fit + scoring is the figure that matters).

The history: ``simulators.history.generate_history`` over a district-sized demo neighbourhood
(``--devices`` devices: 40 % manhole covers, 40 % smoke alarms, 20 % wristbands; about 9 km across),
one year, background rates scaled (``--rate-scale``) so the year holds about a million risk events.

Timed, in one process, one after the other:

* ``sepp``: fit one SEPP per family by EM on the whole year (:func:`alerts.forecast.sepp.fit_sepp`) and
  score every cell for the next day (background + triggered);
* ``kde``: tune the heat map (bandwidth, window, floor: 36 candidates on the last four weeks) and score
  every cell for the next day: the baseline's cost measured in the same run.

Quality on the same history: fit on the first ``365 - --test-days`` days, forecast each held-out day,
PAI / PEI at 1 / 5 / 10 % of the area and the Poisson log-likelihood per event
(:func:`alerts.forecast.backtest.backtest`), the oracle (true parameters) alongside.

Wall-clock seconds (``time.perf_counter``) and CPU seconds (``time.process_time``; numpy/scipy may use
both cores, so CPU can exceed wall). JSON: ``bench/results/bench_forecast.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.forecast.background import DAY_S
from alerts.forecast.backtest import Truth, backtest, daily_counts
from alerts.forecast.grid import square_cells
from alerts.forecast.history import FAMILIES
from alerts.forecast.kde import kde_daily, tune_kde
from alerts.forecast.sepp import SEPPConfig, Triggering, bin_counts, fit_sepp, triggered_rate
from firmware_bridge.kernel.records import DeviceKind
from simulators.history import FamilyParams, generate_history

RESULTS = Path(__file__).resolve().parent / "results" / "bench_forecast.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--rate-scale", type=float, default=5.0)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--cell-m", type=float, default=250.0)
    ap.add_argument("--bin-h", type=float, default=3.0)
    ap.add_argument("--test-days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--max-iter", type=int, default=SEPPConfig().max_iter, help="EM iteration cap")
    ap.add_argument("--no-backtest", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = ap.parse_args()

    n = args.devices
    counts = {
        DeviceKind.MANHOLE: n * 2 // 5,
        DeviceKind.SMOKE_ALARM: n * 2 // 5,
        DeviceKind.WRISTBAND: n // 5,
    }
    t0 = time.perf_counter()
    sim = generate_history(days=args.days, seed=args.seed, counts=counts, rate_scale=args.rate_scale)
    hist = sim.event_history()
    cells = square_cells(sim.device_points(), args.cell_m)
    cov = sim.covariates(cells)
    gen_s = time.perf_counter() - t0
    print(f"history: {len(hist):,} events, {n:,} devices, {len(cells):,} cells of {args.cell_m:.0f} m, "
          f"{args.days} days (generated in {gen_s:.1f} s)")  # fmt: skip
    cfg = SEPPConfig(bin_s=args.bin_h * 3600.0, max_iter=args.max_iter)
    cell_idx = cells.locate(hist.xy)
    start, end = sim.start, sim.end

    # -- SEPP: fit the year, score every cell for the next day -------------------------------------------
    w0, c0 = time.perf_counter(), time.process_time()
    fits = {}
    score = np.zeros(len(cells))
    for f_i, fam in enumerate(FAMILIES):
        m = hist.family == f_i
        model = fit_sepp(cell_idx[m], hist.time[m], cells, cov, start, end, cfg)
        fits[fam.value] = model
        bpd = round(DAY_S / cfg.bin_s)
        n_bins = args.days * bpd
        y = bin_counts(cell_idx[m], hist.time[m], start, n_bins, len(cells), cfg.bin_s)
        d_next = cov.day_of(end)
        score += model.background.rate(cov, np.array([d_next]))[0]
        score += triggered_rate(cells, model.trigger, y, cfg.bin_s, np.array([n_bins]), bpd)[0]
    sepp_wall, sepp_cpu = time.perf_counter() - w0, time.process_time() - c0
    print(f"sepp: fit {len(hist):,} events + score {len(cells):,} cells in {sepp_wall:.1f} s wall "
          f"({sepp_cpu:.1f} s CPU); iterations per family: "
          + ", ".join(f"{k} {m.n_iter}" for k, m in fits.items()))  # fmt: skip

    # -- KDE: tune and score, same run ---------------------------------------------------------------------
    w0, c0 = time.perf_counter(), time.process_time()
    daily = daily_counts(cell_idx, hist.time, start, args.days, len(cells))
    kde_cfg = tune_kde(daily, cells)
    kde_score = kde_daily(np.concatenate([daily, np.zeros((1, len(cells)))]), args.days, 1, cells, kde_cfg)[0]
    kde_wall, kde_cpu = time.perf_counter() - w0, time.process_time() - c0
    print(
        f"kde : tune (36 candidates) + score {len(cells):,} cells in {kde_wall:.1f} s wall "
        f"({kde_cpu:.1f} s CPU)"
    )
    assert np.isfinite(score).all() and np.isfinite(kde_score).all()

    quality: dict[str, object] = {}
    if not args.no_backtest:
        truth = Truth(
            {p.family: sim.true_background(cells, p.family) for p in sim.params},
            {p.family: _trigger(p) for p in sim.params},
        )
        rep = backtest(hist, cells, cov, train_end=end - args.test_days * DAY_S, test_days=args.test_days,
                       config=cfg, truth=truth)  # fmt: skip
        print(f"\nheld-out {args.test_days} days ({rep.test_events:,} events), day-ahead forecasts:")
        print(rep.table())
        quality = rep.to_dict()

    out = {
        "benchmark": "bench_forecast",
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_end": os.getloadavg(),
        },
        "params": vars(args)
        | {"out": str(args.out), "events": len(hist), "cells": len(cells), "generate_s": round(gen_s, 2)},
        "fit_and_score_all_cells": {
            "sepp": {
                "wall_s": round(sepp_wall, 2),
                "cpu_s": round(sepp_cpu, 2),
                "iterations": {k: m.n_iter for k, m in fits.items()},
                "converged": {k: m.converged for k, m in fits.items()},
                "parameters": {k: m.summary() for k, m in fits.items()},
            },
            "kde": {
                "wall_s": round(kde_wall, 2),
                "cpu_s": round(kde_cpu, 2),
                "config": {
                    "bandwidth_m": kde_cfg.bandwidth_m,
                    "window_days": kde_cfg.window_days,
                    "floor": kde_cfg.floor,
                },
            },
        },
        "quality_backtest": quality,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float))
    print(f"load average at the end: {os.getloadavg()}")
    print(f"\nwrote {args.out}")
    return 0 if sepp_wall < 60.0 or math.isnan(sepp_wall) else 1


def _trigger(p: FamilyParams) -> Triggering:
    return Triggering(p.theta, p.decay_days, max(p.sigma_m, 1.0))


if __name__ == "__main__":
    raise SystemExit(main())
