"""``simulators.scoring_trace``: the score's false alarms traced to the simulated effects that made them.

The demo's fleet offline through the engine with the demo's gateway profile (seed 21, 10 h from 08:00
local): the traced false alarms are exactly the scorer's, and each one is one of the nuisances the demo
injects on purpose (a pot boiled dry, a cover rocked askew, a band on the table) - not ordinary cooking,
not a passing truck, not nothing (docs/demo.md "Every false alarm, traced")."""

from __future__ import annotations

import tomllib
from pathlib import Path

from alerts.detection.engine import DetectionEngine
from alerts.detection.profiles import ProfileSet
from edge.offline import run_fleet
from simulators.config import parse_config
from simulators.demo import DEMO_FLEET, wearer_homes_toml
from simulators.fleet import Fleet
from simulators.scorer import score
from simulators.scoring_trace import INJECTED_NUISANCES, count_by_effect, false_alarm_effects

START = 1_795_737_600.0  # 2026-11-27 08:00 local
DURATION = 36_000.0


def test_every_false_alarm_of_the_demo_fleet_is_an_injected_nuisance(tmp_path: Path) -> None:
    cfg = parse_config(
        tomllib.loads(DEMO_FLEET),
        source="vigil demo",
        start=START,
        duration_s=DURATION,
        speedup=60.0,
        seed=21,
    )
    fleet = Fleet.from_config(cfg)
    fleet.write_manifest(tmp_path)
    homes = wearer_homes_toml((tmp_path / "devices.csv").read_text(encoding="utf-8"))
    run = run_fleet(fleet, START, DURATION, DetectionEngine(ProfileSet.from_mapping(tomllib.loads(homes))))
    rep = score(fleet.truth, run.alerts, fleet.device_count(), DURATION, end=START + DURATION)
    traced = false_alarm_effects(fleet, fleet.truth, run.alerts)
    assert len(traced) == rep.overall.false_alarms > 10, rep.format_table()
    by_type: dict[str, int] = {}
    for a, _ in traced:
        by_type[a.event_type.value] = by_type.get(a.event_type.value, 0) + 1
    assert by_type == {r.event_type: r.false_alarms for r in rep.rows if r.false_alarms}
    counts = count_by_effect(traced)
    assert all(names and set(names) & INJECTED_NUISANCES for _, names in traced), counts
    # the three nuisances, each paged as what it looks like
    assert {k.split(" <- ")[0] for k in counts} == {"fire", "cover_displaced", "band_removed"}, counts
