"""Vendor manhole covers: three firmware behaviours the datasheet allows, on quiet and busy roads, with
truck spikes, displaced and open covers and frozen sensors.

Firmware variants (``docs/payloads.md``, manhole, "What detection relies on"):

* ``cover-debounced`` (fw 1.3): raises a tilt alarm only after the tilt held >= 5 s at rest and says
  so with ``tilt_settled``; a passing truck never makes it uplink. Heartbeat 12 h.
* ``cover-raw`` (fw 1.2): uplinks the moment the tilt crosses the threshold (a truck rocking the cover
  too) and again 2-20 s after it returns below it. Heartbeat 12 h.
* ``cover-raw-24h-repeat`` (fw 1.1): like ``cover-raw``, a 24 h heartbeat, and the alarm repeated every
  10 min while it lasts.

Figures (REFERENCES, GB/T 41401-2022): alarm above 10° off the installed tilt; passing vehicles rock a
cover for ~2 s (here 10.5-16° off for 2 s, 2-8 times a day on a busy road, where every heartbeat window
also holds a 0.3-2.5 g vibration peak; quiet roads see < 0.08 g); displaced covers sit 12-40° off until
repaired 2-24 h later; open covers lift the reed switch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.alerts.detection.vendor import datasheet as ds
from tests.alerts.detection.vendor.harness import Fleet, Frame, Truth

K = DeviceKind.MANHOLE
VARIANTS: dict[str, dict[str, Any]] = {
    "cover-debounced": dict(fw=(1, 3), debounce=True, heartbeat=12 * 3600.0, repeat=0.0),
    "cover-raw": dict(fw=(1, 2), debounce=False, heartbeat=12 * 3600.0, repeat=0.0),
    "cover-raw-24h-repeat": dict(fw=(1, 1), debounce=False, heartbeat=24 * 3600.0, repeat=600.0),
}
RATES = {"displaced": 0.04, "open": 0.03, "frozen": 0.01}  # per cover-day (made frequent)
H = 3600.0


def build(n: int, days: float, seed: int, start: float) -> Fleet:
    rng = np.random.default_rng(seed)
    fleet = Fleet()
    names = list(VARIANTS)
    for i in range(n):
        variant = names[i % len(names)]
        dev = f"MH-{i:04d}"
        _cover(fleet, rng, dev, variant, busy=(i // len(names)) % 5 != 0, days=days, start=start)
        fleet.variant_of[dev] = variant
        fleet.device_days[variant] = fleet.device_days.get(variant, 0.0) + days
    return fleet


def _cover(
    fleet: Fleet, rng: np.random.Generator, dev: str, variant: str, *, busy: bool, days: float, start: float
) -> None:
    cfg = VARIANTS[variant]
    end = start + days * 86400.0
    ref = rng.uniform(0.5, 4.0)
    temp0, water0 = rng.uniform(10, 22), rng.uniform(150, 250)
    frozen_at = (
        start + rng.uniform(0.3, 0.7) * days * 86400.0 if rng.random() < RATES["frozen"] * days else np.inf
    )
    ups: list[tuple[float, tuple[str, ...], dict[str, float]]] = []
    frozen: dict[str, float] = {}

    def values(t: float, tilt: float | None = None) -> dict[str, float]:
        """Readings at ``t``; from ``frozen_at`` on, the stuck firmware repeats one cached set."""
        if t >= frozen_at and frozen:
            return dict(frozen)
        h = (t / 3600.0 + 8.0) % 24.0
        v = dict(
            tilt_deg=(ref + rng.normal(0, 0.05)) if tilt is None else tilt,
            tilt_ref_deg=ref,
            water_distance_cm=water0 + rng.normal(0, 0.5),
            ch4_pct_lel=abs(rng.normal(0.5, 0.3)),
            h2s_ppm=abs(rng.normal(0.2, 0.1)),
            o2_pct_vol=20.9 + rng.normal(0, 0.03),
            temperature_c=temp0 + 2.0 * np.sin(2 * np.pi * (h - 14.0) / 24.0) + rng.normal(0, 0.2),
        )
        if t >= frozen_at:
            frozen.update(v)
        return v

    # episodes: (start, end, kind, tilt)
    eps: list[tuple[float, float, str, float]] = []
    t = start + rng.exponential(86400.0 / (RATES["displaced"] + RATES["open"]))
    while t < end - 6 * H:
        kind = (
            "displaced"
            if rng.random() < RATES["displaced"] / (RATES["displaced"] + RATES["open"])
            else "open"
        )
        dur = rng.uniform(2 * H, 24 * H)
        tilt = ref + rng.uniform(12, 40) if kind == "displaced" else rng.uniform(0, 60)
        eps.append((t, min(t + dur, end), kind, tilt))
        t += dur + rng.exponential(86400.0 / (RATES["displaced"] + RATES["open"]))

    def episode_at(t: float) -> tuple[float, float, str, float] | None:
        return next((e for e in eps if e[0] <= t < e[1]), None)

    def vib(t: float) -> float:
        """Peak vibration since the previous uplink."""
        return float(rng.uniform(0.3, 2.5)) if busy else float(rng.uniform(0.01, 0.08))

    for tb in np.arange(start + rng.uniform(0, cfg["heartbeat"]), end, cfg["heartbeat"]):
        e = episode_at(float(tb))
        flags: tuple[str, ...] = ("heartbeat",)
        v = values(float(tb), None if e is None else e[3])
        if e is not None:
            flags += ("alarm",) + (("cover_open",) if e[2] == "open" else ())
        ups.append((float(tb), flags, v | {"vibration_g": vib(float(tb))}))
    for a, b, kind, tilt in eps:
        t_up = a + (rng.uniform(5, 8) if cfg["debounce"] and kind == "displaced" else rng.uniform(0.5, 2))
        flags = ("alarm", "cover_open") if kind == "open" else ("alarm",)
        if cfg["debounce"] and kind == "displaced":
            flags += ("tilt_settled",)
        ups.append((t_up, flags, values(t_up, tilt) | {"vibration_g": vib(t_up)}))
        if cfg["repeat"]:
            for tr in np.arange(t_up + cfg["repeat"], b, cfg["repeat"]):
                ups.append(
                    (
                        float(tr),
                        ("alarm",) + (("cover_open",) if kind == "open" else ()),
                        values(float(tr), tilt) | {"vibration_g": vib(float(tr))},
                    )
                )
        if b < end:
            ups.append((b + rng.uniform(1, 10), (), values(b + 5.0) | {"vibration_g": vib(b)}))
        et = EventType.COVER_DISPLACED if kind == "displaced" else EventType.COVER_OPEN
        fleet.truth.append(
            Truth(
                dev,
                K,
                variant,
                kind,
                a,
                b,
                et,
                reveal=t_up,
                allowed=frozenset({EventType.COVER_DISPLACED}) if kind == "open" else frozenset(),
            )
        )
    if busy and not cfg["debounce"]:  # trucks rocking the cover past the threshold for ~2 s
        n_trucks = rng.poisson(5.0 * days)
        prev = -np.inf
        for tt in np.sort(rng.uniform(start + H, end - H, n_trucks)):
            if episode_at(float(tt)) is not None or episode_at(float(tt) + 30) is not None or tt - prev < 60:
                continue  # a cover still rocking from the previous truck sends no second alarm
            prev = tt
            spike = ref + rng.uniform(10.5, 16.0)
            ups.append((float(tt), ("alarm",), values(float(tt), spike) | {"vibration_g": vib(float(tt))}))
            back = float(tt) + rng.uniform(2, 20)
            ups.append((back, (), values(back) | {"vibration_g": vib(back)}))
            fleet.truth.append(Truth(dev, K, variant, "truck", float(tt), back))
    if np.isfinite(frozen_at):
        fleet.truth.append(
            Truth(dev, K, variant, "frozen", frozen_at, end, EventType.SENSOR_FAULT, reveal=frozen_at)
        )
    ups.sort(key=lambda x: x[0])
    for seq, (t, flags, v) in enumerate(ups, start=1):
        payload = ds.manhole(
            seq=seq,
            flags=flags,
            fw=cfg["fw"],
            tilt_deg=v["tilt_deg"],
            tilt_ref_deg=v["tilt_ref_deg"],
            vibration_g=v["vibration_g"],
            water_distance_cm=v["water_distance_cm"],
            ch4_pct_lel=v["ch4_pct_lel"],
            h2s_ppm=v["h2s_ppm"],
            o2_pct_vol=v["o2_pct_vol"],
            temperature_c=v["temperature_c"],
        )
        fleet.frames.append(Frame(dev, t, payload))
