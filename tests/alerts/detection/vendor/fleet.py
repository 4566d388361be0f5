"""The whole vendor fleet: covers, alarms and bands of every firmware variant, built from one seed.

>>> fleet = build(covers=3, alarms=3, bands=4, days=0.5, seed=1)
>>> sorted(fleet.device_days)[:2]
['alarm-repeat-60s', 'alarm-state-change']
"""

from __future__ import annotations

from alerts.detection.engine import DetectionEngine
from tests.alerts.detection.vendor import fleet_manhole, fleet_smoke, fleet_wristband
from tests.alerts.detection.vendor.harness import Fleet, Score, run, score

START = 1_780_272_000.0  # 2026-06-01T00:00:00Z (08:00 in China)


def build(*, covers: int, alarms: int, bands: int, days: float, seed: int, start: float = START) -> Fleet:
    fleet = Fleet()
    fleet.extend(fleet_manhole.build(covers, days, seed, start))
    fleet.extend(fleet_smoke.build(alarms, days, seed + 1, start))
    fleet.extend(fleet_wristband.build(bands, days, seed + 2, start))
    return fleet


def evaluate(fleet: Fleet, engine: DetectionEngine, *, days: float, start: float = START) -> Score:
    """Run the fleet's frames through ``engine`` (decode + process + ticks) and score them."""
    alerts = run(fleet.frames, engine, window_s=30.0, until=start + days * 86400.0)
    return score(fleet.truth, alerts, fleet.device_days, fleet.variant_of)
