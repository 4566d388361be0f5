"""Vendor wristbands: three firmware behaviours the datasheet allows, one person's day each, with falls,
recovered falls, hard sit-downs, SOS presses and heart-rate episodes placed by hand-written rules.

Firmware variants (``docs/payloads.md``, wristband, "What detection relies on"):

* ``band-fall-flag`` (fw 1.5): own fall detector; an event uplink with ``fall`` 1-3 s after the impact,
  a second one 30-45 s later; the flag is one-shot.
* ``band-summary-only`` (fw 1.2): no fall detector: the impact shows only in the next 5-min summary.
* ``band-summary-only-v16`` (fw 1.6): no fall detector, but the 1.6 additions: ``rest_broken`` and
  per-minute uplinks while the heart rate at rest is out of range.
* ``band-flag-repeats`` (fw 1.6): fall uplinks 1-3 s and 50-60 s after the impact, the flag repeated in
  every uplink while the wearer is down, and the 1.6 additions.

Scenario figures: impact 2.6-6 g and an orientation change of 50-120° for falls (ADI Analog Dialogue
43-07: impact above ~2-3.5 g, then near-1 g stillness with a changed orientation); a recovered faller is
up within 3-20 s (before the 30 s stillness a fall needs) and sits down after 0-8 steps; hard
sit-downs reach 2.5-3.2 g with the wrist barely turned (< 30°); heart rate at rest 125-160 bpm for
11-25 min (REFERENCES: alert after ~10 min above 120), short spikes of 2-4 min and exercise (120-150 bpm
with hundreds of steps) must not page.

``stillness_s`` follows the datasheet: seconds of rest after the window's largest peak, up to the uplink
or until motion resumed; in a window without motion the ongoing rest continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.alerts.detection.vendor import datasheet as ds
from tests.alerts.detection.vendor.harness import Fleet, Frame, Truth

VARIANTS: dict[str, dict[str, Any]] = {
    "band-fall-flag": dict(
        fw=(1, 5), flag=True, repeat=False, follow=(30.0, 45.0), hr_events=False, rest=False
    ),
    "band-summary-only": dict(
        fw=(1, 2), flag=False, repeat=False, follow=(0.0, 0.0), hr_events=False, rest=False
    ),
    "band-summary-only-v16": dict(
        fw=(1, 6), flag=False, repeat=False, follow=(0.0, 0.0), hr_events=True, rest=True
    ),
    "band-flag-repeats": dict(
        fw=(1, 6), flag=True, repeat=True, follow=(50.0, 60.0), hr_events=True, rest=True
    ),
}
# per 90-min daytime slot (8 a day): probability of each scenario. Rare events are made frequent (a fall
# every ~8 days per band) so a few hundred device-days hold enough of them; nuisances more so.
SCENARIOS = {
    "fall": 0.015,
    "recovered_fall": 0.04,
    "hard_sit": 0.06,
    "sos": 0.015,
    "hr_high": 0.015,
    "hr_spike": 0.03,
    "exercise": 0.03,
}
SUMMARY_S = 300.0
K = DeviceKind.WRISTBAND


@dataclass
class _Up:
    t: float
    v: dict[str, float]
    flags: set[str]


def _local_h(t: float) -> float:
    return ((t / 3600.0 + 8.0) % 24.0 + 24.0) % 24.0


def build(n: int, days: float, seed: int, start: float) -> Fleet:
    rng = np.random.default_rng(seed)
    fleet = Fleet()
    names = list(VARIANTS)
    for i in range(n):
        variant = names[i % len(names)]
        dev = f"WB-{i:04d}"
        _band(fleet, rng, dev, variant, days, start)
        fleet.variant_of[dev] = variant
        fleet.device_days[variant] = fleet.device_days.get(variant, 0.0) + days
    return fleet


def _routine(rng: np.random.Generator, t: float) -> dict[str, float]:
    h = _local_h(t)
    awake = 7.5 <= h < 22.0
    if awake:
        walking = rng.random() < 0.6
        steps = float(rng.poisson(70)) if walking else float(rng.integers(0, 6))
        still = float(rng.uniform(0, 50)) if walking else float(rng.uniform(40, 280))
        return dict(
            broken=1.0 if walking else 0.0,  # walked on after the window's peak
            heart_rate_bpm=float(rng.integers(70, 96) + (12 if walking else 0)),
            spo2_pct=0.0 if rng.random() < 0.3 else float(rng.integers(95, 100)),
            accel_peak_g=float(rng.uniform(1.2, 2.2)),
            stillness_s=still,
            orientation_change_deg=float(rng.uniform(0, 90)),
            steps=steps,
        )
    return dict(
        heart_rate_bpm=float(rng.integers(54, 66)),
        spo2_pct=float(rng.integers(94, 99)),
        accel_peak_g=float(rng.uniform(1.0, 1.5)),
        stillness_s=float(rng.uniform(100, 290)),
        orientation_change_deg=float(rng.uniform(0, 60)),
        steps=0.0,
    )


def _band(fleet: Fleet, rng: np.random.Generator, dev: str, variant: str, days: float, start: float) -> None:
    cfg = VARIANTS[variant]
    end = start + days * 86400.0
    times = np.arange(start + rng.uniform(0, SUMMARY_S), end, SUMMARY_S)
    ups = [_Up(float(t), _routine(rng, float(t)), {"worn", "gps_valid", "heartbeat"}) for t in times]
    events: list[_Up] = []

    def summaries(a: float, b: float) -> list[_Up]:
        i0, i1 = np.searchsorted(times, [a, b], side="right")
        return ups[int(i0) : int(i1)]

    def evt(t: float, v: dict[str, float], *flags: str) -> None:
        events.append(_Up(t, v, {"worn", "gps_valid", *flags}))

    # scenario slots: 90 min each from 08:00 local, 8 a day
    day0 = start - ((start / 3600.0 + 8.0) % 24.0) * 3600.0  # local midnight
    names, probs = list(SCENARIOS), np.array(list(SCENARIOS.values()))
    for d in range(int(np.ceil(days)) + 1):
        for s in range(8):
            t_slot = day0 + d * 86400.0 + (8.0 + 1.5 * s) * 3600.0
            if t_slot < start + 1800.0 or t_slot + 5400.0 > end - 1800.0:
                continue
            r = rng.random()
            cum = np.cumsum(probs)
            if r >= cum[-1]:
                continue
            name = names[int(np.searchsorted(cum, r, side="right"))]
            t = t_slot + rng.uniform(300.0, 1800.0)
            truth = _scenario(name, rng, cfg, t, summaries, evt)
            fleet.truth.append(Truth(dev, K, variant, name, **truth))
    for seq, u in enumerate(sorted(ups + events, key=lambda x: x.t), start=1):
        if cfg["rest"] and u.v.get("broken", 0.0):
            u.flags.add("rest_broken")
        v = u.v
        payload = ds.wristband(
            seq=seq,
            flags=sorted(u.flags),
            fw=cfg["fw"],
            heart_rate_bpm=v.get("heart_rate_bpm", 72.0),
            spo2_pct=v.get("spo2_pct", 97.0),
            accel_peak_g=v.get("accel_peak_g", 1.1),
            stillness_s=v.get("stillness_s", 0.0),
            orientation_change_deg=v.get("orientation_change_deg", 5.0),
            steps=v.get("steps", 0.0),
        )
        fleet.frames.append(Frame(dev, u.t, payload))


def _scenario(
    name: str, rng: np.random.Generator, cfg: dict[str, Any], t: float, summaries: Any, evt: Any
) -> dict[str, Any]:
    flagged, repeat = bool(cfg["flag"]), bool(cfg["repeat"])
    if name == "fall":
        g, o, lie = rng.uniform(2.6, 6.0), rng.uniform(50, 120), rng.uniform(180, 1800)
        reveal = None
        if flagged:
            t1 = t + rng.uniform(1, 3)
            evt(
                t1,
                dict(
                    accel_peak_g=g,
                    stillness_s=t1 - t,
                    orientation_change_deg=o,
                    steps=float(rng.integers(0, 30)),
                ),
                "fall",
            )
            t2 = t + rng.uniform(*cfg["follow"])
            evt(
                t2,
                dict(accel_peak_g=1.02, stillness_s=t2 - t, orientation_change_deg=2.0, steps=0.0),
                *(("fall",) if repeat else ()),
            )
            reveal = t2
        down = summaries(t, t + lie)
        for k, u in enumerate(down):
            first = k == 0 and not flagged
            u.v.update(
                accel_peak_g=g if first else 1.02,
                stillness_s=u.t - t,
                orientation_change_deg=o if first else 2.0,
                steps=u.v["steps"] if first else 0.0,
                broken=0.0,
            )
            if repeat:
                u.flags.add("fall")
            if reveal is None and u.t - t >= 30.0:
                reveal = u.t
        for u in summaries(t + lie, t + lie + SUMMARY_S):  # helped up
            if not down and not flagged:  # no uplink while down: this summary carries impact and rest
                u.v.update(accel_peak_g=g, stillness_s=lie, orientation_change_deg=o, steps=25.0, broken=1.0)
                reveal = u.t
            else:
                u.v.update(steps=25.0, stillness_s=5.0, accel_peak_g=1.6, broken=1.0)
        return dict(start=t, end=t + lie, event_type=EventType.FALL, reveal=reveal)
    if name == "recovered_fall":
        g, o = rng.uniform(2.6, 4.5), rng.uniform(40, 100)
        up, walk, sit = rng.uniform(3, 20), rng.uniform(10, 60), rng.uniform(120, 1200)
        t_sit = t + up + walk
        n_steps = float(rng.integers(0, 9))
        last = t
        if flagged:
            t1 = t + rng.uniform(1, 3)
            evt(
                t1,
                dict(
                    accel_peak_g=g,
                    stillness_s=min(t1 - t, up),
                    orientation_change_deg=o,
                    steps=float(rng.integers(0, 30)),
                ),
                "fall",
            )
            t2 = t + rng.uniform(*cfg["follow"])
            if t2 < t_sit:
                v = dict(
                    accel_peak_g=1.5,
                    stillness_s=float(rng.uniform(0, 2)),
                    orientation_change_deg=rng.uniform(20, 80),
                    steps=float(min(n_steps, 3)),
                    broken=1.0,
                )
            else:
                v = dict(
                    accel_peak_g=1.5,
                    stillness_s=t2 - t_sit,
                    orientation_change_deg=rng.uniform(20, 80),
                    steps=n_steps,
                )
            evt(t2, v)
            last = t2
        for k, u in enumerate(summaries(t, t_sit + sit)):
            if k == 0 and not flagged:  # the impact window: rest after the peak was cut short by getting up
                still = min(u.t - t, up)
                u.v.update(
                    accel_peak_g=g, stillness_s=still, orientation_change_deg=o, broken=float(u.t - t > up)
                )
                if u.t > t_sit:
                    u.v["steps"] += n_steps
            elif u.t < t_sit:
                u.v.update(accel_peak_g=1.5, stillness_s=float(rng.uniform(0, 2)), steps=n_steps, broken=1.0)
            else:
                moved_in_window = t_sit > max(last, u.t - SUMMARY_S)
                u.v.update(
                    accel_peak_g=1.5 if moved_in_window else 1.05,
                    stillness_s=u.t - t_sit,
                    steps=n_steps if moved_in_window else 0.0,
                    orientation_change_deg=float(rng.uniform(0, 60)),
                    broken=0.0,
                )
        return dict(start=t, end=t_sit + 60.0)
    if name == "hard_sit":
        for u in summaries(t, t + SUMMARY_S)[:1]:
            u.v.update(
                accel_peak_g=rng.uniform(2.5, 3.2),
                stillness_s=min(u.t - t, rng.uniform(30, 250)),
                orientation_change_deg=rng.uniform(0, 30),
                broken=0.0,
            )
        return dict(start=t, end=t + SUMMARY_S)
    if name == "sos":
        evt(t, dict(accel_peak_g=1.3, stillness_s=0.0, orientation_change_deg=10.0, steps=2.0), "sos")
        return dict(start=t, end=t + 300.0, event_type=EventType.SOS, reveal=t)
    if name in ("hr_high", "hr_spike", "exercise"):
        dur = {
            "hr_high": rng.uniform(660, 1500),
            "hr_spike": rng.uniform(120, 240),
            "exercise": rng.uniform(1200, 2400),
        }[name]
        hr = rng.uniform(125, 160) if name != "exercise" else rng.uniform(120, 150)
        rest = name != "exercise"
        for u in summaries(t + 60.0, t + dur):
            u.v.update(
                heart_rate_bpm=round(hr),
                steps=0.0 if rest else float(rng.integers(300, 600)),
                stillness_s=u.t - t if rest else 3.0,
                broken=0.0 if rest else 1.0,
            )
        if rest and cfg["hr_events"]:
            for m in np.arange(t + 60.0, t + dur, 60.0):
                evt(
                    float(m),
                    dict(
                        heart_rate_bpm=round(hr),
                        steps=0.0,
                        stillness_s=float(m - t),
                        accel_peak_g=1.02,
                        orientation_change_deg=1.0,
                    ),
                )
        if name == "hr_high":
            return dict(start=t, end=t + dur, event_type=EventType.HEART_RATE_HIGH, reveal=t + 60.0)
        return dict(start=t, end=t + dur)
    raise ValueError(name)
