"""Benchmark: simulating 10,000 devices from one process.

Run:  .venv/bin/python bench/bench_simulate.py [--devices 10000] [--hours 12] [--baseline-minutes 30]

Measures, in the same run and on the same machine:
- ``vectorised``: ``Fleet.run`` (neighbourhood of 10,000 devices, per-kind numpy signal models, link faults,
  one ``SimFrame`` object per frame): frames generated per wall second and the real-time speed-up reached
  (simulated seconds per wall second);
- ``vigil simulate --fast``: the same plus ``frames.jsonl`` written (one JSON line + SLIP frame per frame);
- ``naive``: the baseline a first implementation would write: a Python loop over devices every tick, each
  device computing its reading with scalar ``random`` calls and encoding it with ``PayloadCodec.encode``.
  It runs a shorter simulated window (it is slow); rates are per wall second so they compare directly.

Writes ``bench/results/bench_simulate.json``. Performance is reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from firmware_bridge.kernel.records import DeviceKind, Reading
from firmware_bridge.registry import spec
from simulators.config import parse_config
from simulators.fleet import Fleet
from simulators.runner import run_simulation

T0 = 1_780_243_200.0
OUT = Path(__file__).parent / "results" / "bench_simulate.json"


def split(n: int) -> dict[DeviceKind, int]:
    return {
        DeviceKind.MANHOLE: int(n * 0.4),
        DeviceKind.SMOKE_ALARM: int(n * 0.3),
        DeviceKind.WRISTBAND: n - int(n * 0.4) - int(n * 0.3),
    }


def bench_vectorised(n: int, hours: float) -> dict[str, float]:
    t = time.perf_counter()
    fleet = Fleet.build(split(n), seed=1)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    c = time.process_time()
    frames = 0
    for _ in fleet.run(T0, hours * 3600):
        frames += 1
    wall = time.perf_counter() - t
    cpu = time.process_time() - c
    return {
        "devices": n,
        "simulated_s": hours * 3600,
        "frames": frames,
        "wall_s": wall,
        "cpu_s": cpu,
        "build_s": build_s,
        "frames_per_cpu_s": frames / cpu,
        "frames_per_s": frames / wall,
        "speedup": hours * 3600 / wall,
        "truth_events": len(fleet.truth),
    }


def bench_cli_fast(n: int, hours: float) -> dict[str, float]:
    counts = split(n)
    cfg = parse_config(
        {
            "seed": 1,
            "start": T0,
            "duration_s": hours * 3600,
            "speedup": 0,
            "devices": {k.value: v for k, v in counts.items()},
            "faults": {"duplicate": 0.02, "corrupt": 0.001},
        }
    )
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        c = time.process_time()
        summary = asyncio.run(run_simulation(cfg, Path(d), progress=None))
        wall = time.perf_counter() - t
        cpu = time.process_time() - c
    frames = int(summary["frames_total"])
    return {
        "devices": n,
        "simulated_s": hours * 3600,
        "frames": frames,
        "wall_s": wall,
        "cpu_s": cpu,
        "frames_per_cpu_s": frames / cpu,
        "frames_per_s": frames / wall,
        "speedup": hours * 3600 / wall,
    }


def bench_naive(n: int, minutes: float, step_s: float = 60.0) -> dict[str, float]:
    """Per-device Python loop: what the vectorised models replace."""
    rnd = random.Random(1)
    counts = split(n)
    devs: list[dict[str, Any]] = []
    for kind, k in counts.items():
        hb = spec(kind).heartbeat_s
        for _i in range(k):
            devs.append(
                {
                    "kind": kind,
                    "id": f"{len(devs):016x}",
                    "next": T0 + rnd.uniform(0, hb),
                    "hb": hb,
                    "seq": 0,
                    "base": rnd.uniform(0, 1),
                    "phase": rnd.uniform(0, 6.28),
                }
            )
    t = time.perf_counter()
    c = time.process_time()
    frames = 0
    now = T0
    end = T0 + minutes * 60
    while now < end:
        t1 = now + step_s
        for d in devs:
            # every device is visited every tick (event checks), as a scalar loop must
            hour = ((now + 8 * 3600) % 86400) / 3600
            act = max(0.0, math.sin(now / 7200 * 6.28 + d["phase"])) if 6 <= hour < 22 else 0.0
            if d["next"] >= t1:
                continue
            tau = d["next"]
            d["next"] += d["hb"]
            kind = d["kind"]
            values: tuple[float, ...]
            if kind is DeviceKind.WRISTBAND:
                values = (
                    65 + 40 * act + rnd.gauss(0, 2.5),
                    97 + rnd.gauss(0, 0.7),
                    1 + 0.9 * act,
                    rnd.uniform(0, 30),
                    rnd.uniform(0, 40),
                    act * 400,
                    39.96 + rnd.gauss(0, 1e-4),
                    116.3 + rnd.gauss(0, 1e-4),
                )
            elif kind is DeviceKind.MANHOLE:
                values = (
                    2 + rnd.gauss(0, 0.05),
                    2.0,
                    abs(rnd.gauss(0.02, 0.01)),
                    200 + rnd.gauss(0, 1),
                    d["base"] * 3,
                    0.5,
                    20.8 + rnd.gauss(0, 0.05),
                    15 + rnd.gauss(0, 0.2),
                )
            else:
                values = (0.02, 22 + rnd.gauss(0, 0.2), 1.0, 45 + rnd.gauss(0, 2))
            r = Reading(kind, d["id"], d["seq"], tau, 80.0, 0, values, 0x0102)
            d["seq"] += 1
            spec(kind).codec.encode(r)
            frames += 1
        now = t1
    wall = time.perf_counter() - t
    cpu = time.process_time() - c
    return {
        "devices": n,
        "simulated_s": minutes * 60,
        "frames": frames,
        "wall_s": wall,
        "cpu_s": cpu,
        "frames_per_cpu_s": frames / cpu,
        "frames_per_s": frames / wall,
        "speedup": minutes * 60 / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--hours", type=float, default=12.0, help="simulated hours for the vectorised fleet")
    ap.add_argument("--cli-hours", type=float, default=2.0, help="simulated hours for vigil simulate --fast")
    ap.add_argument("--baseline-minutes", type=float, default=30.0)
    args = ap.parse_args()
    vec = bench_vectorised(args.devices, args.hours)
    cli = bench_cli_fast(args.devices, args.cli_hours)
    naive = bench_naive(args.devices, args.baseline_minutes)
    rows = [("vectorised Fleet.run", vec), ("vigil simulate --fast", cli), ("naive per-device loop", naive)]
    print(
        f"{'':<24} {'devices':>8} {'sim h':>7} {'frames':>9} {'wall s':>8} {'cpu s':>7} {'frames/s':>10} "
        f"{'frames/cpu-s':>12} {'speed-up':>10}"
    )
    for name, r in rows:
        print(
            f"{name:<24} {r['devices']:>8} {r['simulated_s'] / 3600:>7.2f} {r['frames']:>9} "
            f"{r['wall_s']:>8.2f} {r['cpu_s']:>7.2f} {r['frames_per_s']:>10,.0f} "
            f"{r['frames_per_cpu_s']:>12,.0f} {r['speedup']:>9,.0f}x"
        )
    print(
        f"vectorised vs naive: {vec['frames_per_s'] / naive['frames_per_s']:.1f}x frames/s (wall), "
        f"{vec['frames_per_cpu_s'] / naive['frames_per_cpu_s']:.1f}x frames per CPU second, "
        f"{vec['speedup'] / naive['speedup']:.1f}x speed-up"
    )
    print("(the machine is shared: wall time includes waiting for a CPU; CPU time is the process's own)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "benchmark": "bench_simulate",
                "python": platform.python_version(),
                "machine": platform.machine(),
                "vectorised": vec,
                "cli_fast": cli,
                "naive_baseline": naive,
                "ratio_frames_per_s": vec["frames_per_s"] / naive["frames_per_s"],
                "ratio_speedup": vec["speedup"] / naive["speedup"],
                "ratio_frames_per_cpu_s": vec["frames_per_cpu_s"] / naive["frames_per_cpu_s"],
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
