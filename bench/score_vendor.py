"""Detection on a *vendor* fleet: Vigil's rules vs the rule set before issue 10, same frames, one run.

Run: ``.venv/bin/python bench/score_vendor.py`` (defaults: 150 covers, 180 alarms, 60 bands, 5 days;
about 2-4 CPU-minutes on a shared 2-core box; ``--quick`` for a smaller fleet).

The fleet (``tests/alerts/detection/vendor/``) is written from ``docs/payloads.md`` alone: frames are
struct-encoded by hand, every firmware variant the datasheet allows is present (debounced and raw
covers; alarms that repeat while in alarm and alarms that uplink only on state changes, 12 h and 1 h
heartbeats; bands with their own fall detector, with none, with repeating fall flags), and the ground
truth is written per scenario from the standards' figures, not from our detectors. Frames go through
the real batch decoder and :class:`alerts.detection.engine.DetectionEngine` with ticks. The baseline is
the frozen copy of the pre-issue rules (``tests/alerts/detection/vendor/legacy``) run on the same frames.

Rare events are made frequent (a fall every ~8 band-days, a fire every ~40 alarm-days) and nuisances
more so (cooking twice a day in kitchens, a shower a day next to bathrooms, 5 trucks a day rocking busy
covers), so misses and false pages per 1,000 device-days are a stress test, not a typical year. The
tables are printed; JSON (both rule sets, the command, the fleet) goes to ``bench/results/score_vendor.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.detection.engine import DetectionEngine
from tests.alerts.detection.vendor import fleet as vendor_fleet
from tests.alerts.detection.vendor.harness import format_score
from tests.alerts.detection.vendor.legacy import RULES as LEGACY_RULES

RESULTS = Path(__file__).resolve().parent / "results" / "score_vendor.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--covers", type=int, default=150)
    ap.add_argument("--alarms", type=int, default=180)
    ap.add_argument("--bands", type=int, default=60)
    ap.add_argument("--days", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="a small fleet (about a quarter of the default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    if a.quick:
        a.covers, a.alarms, a.bands, a.days = 60, 72, 24, 3.0
    t0 = time.process_time()
    fleet = vendor_fleet.build(covers=a.covers, alarms=a.alarms, bands=a.bands, days=a.days, seed=a.seed)
    t_build = time.process_time() - t0
    print(
        f"vendor fleet: {a.covers} covers, {a.alarms} alarms, {a.bands} bands, {a.days:g} days, "
        f"seed {a.seed}: {len(fleet.frames):,} frames, {len(fleet.truth):,} scenarios "
        f"(built in {t_build:.1f} s CPU)\n"
    )
    out: dict[str, object] = {
        "command": "bench/score_vendor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "fleet": {
            "covers": a.covers,
            "alarms": a.alarms,
            "bands": a.bands,
            "days": a.days,
            "seed": a.seed,
            "frames": len(fleet.frames),
            "scenarios": len(fleet.truth),
        },
    }
    for name, engine in (
        ("vigil", DetectionEngine()),
        ("pre-issue-10 rules (frozen baseline)", DetectionEngine(rules=LEGACY_RULES)),
    ):
        t1 = time.process_time()
        s = vendor_fleet.evaluate(fleet, engine, days=a.days)
        cpu = time.process_time() - t1
        print(format_score(name, s))
        print(f"  ({cpu:.1f} s CPU)\n")
        out[name] = s.as_dict() | {"cpu_s": round(cpu, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
