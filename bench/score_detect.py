"""Detection quality of the engine on a scored simulated fleet: recall, precision, false alarms, delay.

Run: ``.venv/bin/python bench/score_detect.py`` (about 30-60 s on a shared 2-core box with the defaults).

A fleet (``simulators.fleet.Fleet``) of ``--per-kind`` devices of each kind runs for ``--days`` simulated
days through :class:`alerts.detection.engine.DetectionEngine` (``edge.offline.run_fleet``);
``simulators.scorer.score``
matches raised alerts with the ground truth. Rare events are made more frequent (``RATES``) so a few days
hold enough episodes to score, and nuisances (trucks, cooking, test buttons, recovered falls) too, so the
false-alarm figures are a stress test, not a typical week. The table is printed, with the clear delay
(alert cleared - truth end) of the types whose alerts clear below it, and events that start too close to
the end of the run to be detected reported as censored (``cens``), not as misses; JSON goes to
``bench/results/score_detect.json`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.detection.engine import DetectionEngine
from edge.offline import run_fleet
from firmware_bridge.kernel.records import DeviceKind
from simulators.fleet import Fleet
from simulators.scorer import score

RESULTS = Path(__file__).resolve().parent / "results" / "score_detect.json"
START = 1_780_272_000.0  # 2026-06-01T00:00:00Z
K = DeviceKind
RATES: dict[DeviceKind, dict[str, float]] = {
    K.MANHOLE: dict(
        cover_displaced=0.03,
        cover_open=0.03,
        gas_combustible=0.02,
        gas_toxic=0.02,
        oxygen_abnormal=0.02,
        tamper=0.01,
        sensor_fault=0.01,
        low_battery=0.01,
        truck=10.0,
    ),
    K.SMOKE_ALARM: dict(
        fire=0.03,
        co=0.03,
        contamination=0.01,
        tamper=0.01,
        sensor_fault=0.01,
        cooking=1.0,
        test=0.2,
        low_battery=0.01,
    ),
    K.WRISTBAND: dict(
        fall=0.03,
        fall_recovered=0.1,
        sos=0.03,
        hr_high=0.02,
        hr_low=0.02,
        spo2_low=0.02,
        inactivity=0.02,
        geofence_exit=0.02,
        low_battery=0.01,
        # "I'm OK" (firmware 1.7): half the bands on 1.7, cancelled falls, and on those bands half the
        # falls / recovered falls with a press (``ok_press`` default); docs/simulators.md "I'm OK"
        fw_1_7=0.5,
        fall_ok=0.05,
    ),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=200)
    ap.add_argument("--days", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON report (default {RESULTS})")
    args = ap.parse_args()
    counts = {k: args.per_kind for k in K}
    fleet = Fleet.build(counts, seed=args.seed, rates=RATES)
    t0 = time.perf_counter()
    run = run_fleet(fleet, START, args.days * 86400.0, DetectionEngine())
    wall = time.perf_counter() - t0
    # censoring needs the end of the data: truth events starting within their detection horizon of it
    # are reported apart (simulators.scorer.DETECTION_HORIZON_S), not counted as misses
    rep = score(fleet.truth, run.alerts, counts, args.days * 86400.0, end=START + args.days * 86400.0)
    print(
        f"{run.frames:,} frames from {sum(counts.values()):,} devices over {args.days} days, "
        f"{len(run.alerts):,} alert steps, {wall:.1f} s wall (simulation included)\n"
    )
    print(rep.format_table())
    out = {
        "benchmark": "score_detect",
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "frames": run.frames,
        "wall_s": wall,
        "rates": {k.value: v for k, v in RATES.items()},
        "score": rep.to_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
