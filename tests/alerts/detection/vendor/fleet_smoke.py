"""Vendor smoke / heat / CO alarms: three firmware behaviours the datasheet allows, in kitchens, bedrooms
and next to bathrooms, with cooking, burnt food, shower steam, test presses, hush, flaming and
smouldering fires and CO from a heater.

Firmware variants (``docs/payloads.md``, smoke_alarm, "What detection relies on"):

* ``alarm-repeat-60s`` (fw 2.1): an uplink on every change of an alarm/hush/test bit, repeated every 60 s
  while smoke, heat or CO is in alarm; during hush the smoke bit keeps reporting the chamber.
* ``alarm-state-change`` (fw 3.0): an uplink only when a bit changes; during hush the smoke bit is
  silenced (cleared) while the density channel still reports the chamber.
* ``alarm-state-change-1h`` (fw 3.2): the same with an hourly heartbeat.

The device's own decisions are modelled here, from the standards: smoke bit above 0.15 dB/m (EN 14604
sensitivity window ~0.05-0.2 dB/m), cleared below 0.13; heat bit at 57 °C or a rise of 8.3 °C/min over a
minute (EN 54-5 A1/A1R); CO bit from an EN 50291 time-to-alarm curve (50 ppm 60 min, 100 ppm 15 min,
300 ppm 2 min); test presses set every alarm bit for 5-15 s; hush lasts 10 min.

Signals (estimates where no public figure was found, marked *): cooking smoke at the ceiling 0.05-0.45
dB/m*, burnt food up to 0.4-0.9 dB/m* (UL 217 8th ed. requires no alarm below ~0.22 dB/m in its broiled-
hamburger cooking test, so cooking near the threshold is normal); cooking CO 0-8 ppm* (gas hob); shower
steam 92-99 %RH with 0.12-0.3 dB/m* of droplet scattering; flaming fires (EN 54-7 TF1/TF4/TF5-like) with
ceiling temperatures rising 30-80 °C at 4-40 °C/min; smouldering fires (TF2/TF3-like) growing over 15-40
min to 0.8-2 dB/m (EN 54-7 ends its test fires at m = 2 dB/m) with CO 100-300 ppm per dB/m* and 0.5-3 °C
of warming.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.alerts.detection.vendor import datasheet as ds
from tests.alerts.detection.vendor.harness import Fleet, Frame, Truth

K = DeviceKind.SMOKE_ALARM
VARIANTS: dict[str, dict[str, Any]] = {
    "alarm-repeat-60s": dict(fw=(2, 1), repeat=60.0, hush_clears=False, heartbeat=12 * 3600.0),
    "alarm-state-change": dict(fw=(3, 0), repeat=0.0, hush_clears=True, heartbeat=12 * 3600.0),
    "alarm-state-change-1h": dict(fw=(3, 2), repeat=0.0, hush_clears=True, heartbeat=3600.0),
}
ROOMS = ("kitchen", "kitchen", "bedroom", "bathroom")
# local-time slots (start hour, end hour) and, per room, scenario probabilities in that slot
SLOTS = ((7.0, 9.0), (11.0, 13.0), (14.0, 16.0), (17.5, 20.0), (21.0, 23.0), (1.0, 4.0))
PROBS: dict[str, dict[str, float]] = {
    "kitchen": {
        "cooking_dry": 0.25,
        "cooking_steamy": 0.15,
        "burnt_food": 0.06,
        "test": 0.004,
        "fire_flaming": 0.006,
        "fire_smouldering": 0.006,
        "co_heater": 0.004,
    },
    "bedroom": {"test": 0.004, "fire_flaming": 0.006, "fire_smouldering": 0.008, "co_heater": 0.006},
    "bathroom": {"shower": 0.3, "test": 0.004, "fire_flaming": 0.004, "fire_smouldering": 0.004},
}
SMOKE_ON, SMOKE_OFF = 0.15, 0.13
STEP = 10.0


def _co_minutes(c: float) -> float:
    """EN 50291 time-to-alarm (minutes) our modelled device uses; inf below 40 ppm."""
    if c < 40.0:
        return np.inf
    pts = np.log([40.0, 50.0, 100.0, 300.0, 1000.0])
    mins = np.log([240.0, 60.0, 15.0, 2.0, 0.5])
    return float(np.exp(np.interp(np.log(c), pts, mins)))


def build(n: int, days: float, seed: int, start: float) -> Fleet:
    rng = np.random.default_rng(seed)
    fleet = Fleet()
    names = list(VARIANTS)
    for i in range(n):
        variant, room = names[i % len(names)], ROOMS[(i // len(names)) % len(ROOMS)]
        dev = f"SA-{i:04d}"
        _alarm(fleet, rng, dev, variant, room, days, start)
        fleet.variant_of[dev] = variant
        fleet.device_days[variant] = fleet.device_days.get(variant, 0.0) + days
    return fleet


def _alarm(
    fleet: Fleet, rng: np.random.Generator, dev: str, variant: str, room: str, days: float, start: float
) -> None:
    cfg = VARIANTS[variant]
    end = start + days * 86400.0
    base = dict(T=rng.uniform(20, 26), H=rng.uniform(35, 60), S=rng.uniform(0.005, 0.03), C=rng.uniform(0, 2))
    ups: list[tuple[float, tuple[str, ...], tuple[float, float, float, float]]] = []

    def routine(t: float) -> tuple[float, float, float, float]:
        h = (t / 3600.0 + 8.0) % 24.0
        return (
            base["S"] + abs(rng.normal(0, 0.003)),
            base["T"] + 1.0 * np.sin(2 * np.pi * (h - 9.0) / 24.0) + rng.normal(0, 0.2),
            max(0.0, base["C"] + rng.normal(0, 0.5)),
            float(np.clip(base["H"] + rng.normal(0, 2.0), 5, 95)),
        )

    hb = cfg["heartbeat"]
    beats = [float(t) for t in np.arange(start + rng.uniform(0, hb), end, hb)]
    states: list[tuple[float, float, tuple[str, ...], tuple[float, float, float, float]]] = []
    day0 = start - ((start / 3600.0 + 8.0) % 24.0) * 3600.0
    probs = PROBS[room]
    names, p = list(probs), np.cumsum(list(probs.values()))
    for d in range(int(np.ceil(days)) + 1):
        for a, b in SLOTS:
            t = day0 + d * 86400.0 + rng.uniform(a, b) * 3600.0
            if t < start + 2 * 3600.0 or t > end - 3 * 3600.0:
                continue
            r = rng.random()
            if r >= p[-1]:
                continue
            name = names[int(np.searchsorted(p, r, side="right"))]
            truth, frames, steps = _episode(name, rng, cfg, base, routine, t)
            ups += frames
            states += steps
            fleet.truth.append(Truth(dev, K, variant, name, **truth))
    # a heartbeat during an episode reports the episode's state (its values and alarm bits)
    states.sort(key=lambda x: x[0])
    st_t = np.array([x[0] for x in states])
    for t in beats:
        k = int(np.searchsorted(st_t, t)) - 1
        if k >= 0 and states[k][0] <= t < states[k][1]:
            ups.append((t, ("heartbeat", *states[k][2]), states[k][3]))
        else:
            ups.append((t, ("heartbeat",), routine(t)))
    ups.sort(key=lambda x: x[0])
    for seq, (t, flags, (s, temp, co, hum)) in enumerate(ups, start=1):
        fleet.frames.append(
            Frame(
                dev,
                t,
                ds.smoke_alarm(
                    seq=seq,
                    flags=flags,
                    fw=cfg["fw"],
                    smoke_db_m=s,
                    temperature_c=temp,
                    co_ppm=co,
                    humidity_pct=hum,
                ),
            )
        )


def _signal(name: str, rng: np.random.Generator) -> tuple[float, Any]:
    """(duration, f(u) -> (dsmoke, dtemp, dco, dhum, hush_press_at or None))."""
    if name in ("cooking_dry", "cooking_steamy"):
        dur = rng.uniform(600, 2400)
        peak = rng.uniform(0.05, 0.45) if name == "cooking_dry" else rng.uniform(0.1, 0.3)
        dt, dco = rng.uniform(1, 4), rng.uniform(0, 8)
        dh = rng.uniform(0, 6) if name == "cooking_dry" else rng.uniform(20, 40)
        return dur, lambda u: np.sin(np.pi * u / dur) * np.array([peak, dt, dco, dh])
    if name == "burnt_food":
        rise, dur = rng.uniform(120, 240), rng.uniform(600, 1500)
        peak, dt, dco = rng.uniform(0.4, 0.9), rng.uniform(1, 5), rng.uniform(2, 12)

        def burnt(u: float) -> Any:
            k = u / rise if u < rise else np.exp(-(u - rise) / (0.3 * (dur - rise)))
            return k * np.array([peak, dt, dco, rng.uniform(0, 3)])

        return dur, burnt
    if name == "shower":
        dur = rng.uniform(480, 1500)
        peak, dt = rng.uniform(0.12, 0.3), rng.uniform(2, 6)

        def shower(u: float) -> Any:
            k = min(1.0, u / 120.0, (dur - u) / 120.0)
            return np.array([peak * k, dt * k, 0.0, 97.0 * k])  # humidity handled as a level, below

        return dur, shower
    if name == "fire_flaming":
        dur = rng.uniform(900, 2400)
        smax, tau = rng.uniform(1.5, 4.0), rng.uniform(60, 180)
        tmax, taut, cmax = rng.uniform(30, 80), rng.uniform(120, 400), rng.uniform(50, 300)
        return dur, lambda u: np.array(
            [
                smax * (1 - np.exp(-u / tau)),
                tmax * (1 - np.exp(-u / taut)),
                cmax * (1 - np.exp(-u / 300.0)),
                -5.0,
            ]
        )
    if name == "fire_smouldering":
        ramp = rng.uniform(900, 2400)
        smax, k_co, warm = rng.uniform(0.8, 2.0), rng.uniform(100, 300), rng.uniform(0.5, 3.0)
        return ramp + 1200.0, lambda u: (lambda s: np.array([s, warm * s / smax, k_co * s, 0.0]))(
            smax * min(u / ramp, 1.0)
        )
    if name == "co_heater":
        dur, cmax = rng.uniform(3600, 3 * 3600), rng.uniform(80, 400)
        return dur, lambda u: np.array([0.0, 0.5, cmax * min(u / 900.0, 1.0), 0.0])
    raise ValueError(name)


Up = tuple[float, tuple[str, ...], tuple[float, float, float, float]]
State = tuple[float, float, tuple[str, ...], tuple[float, float, float, float]]


def _episode(
    name: str, rng: np.random.Generator, cfg: dict[str, Any], base: dict[str, float], routine: Any, t0: float
) -> tuple[dict[str, Any], list[Up], list[State]]:
    """Simulate one episode in 10 s steps: truth, the uplinks the firmware sends, and the state per step."""
    frames: list[Up] = []
    steps: list[State] = []
    if name == "test":
        press = rng.uniform(5, 15)
        frames.append((t0, ("test", "smoke_alarm", "heat_alarm", "co_alarm"), routine(t0)))
        frames.append((t0 + press, (), routine(t0 + press)))
        return dict(start=t0, end=t0 + press), frames, steps
    dur, f = _signal(name, rng)
    hush_press = (
        rng.uniform(30, 180) if name in ("burnt_food", "cooking_dry") and rng.random() < 0.6 else None
    )
    smoke_on = heat_on = co_on = False
    hush_until = -1.0
    dose = 0.0
    last_bits: tuple[bool, ...] = (False,) * 5
    last_up = -np.inf
    reveal = None
    hist: list[tuple[float, float]] = []
    h0 = 0
    u = 0.0
    tail = 900.0 if name.startswith("fire") else 300.0
    while u <= dur + tail:
        t = t0 + u
        s, temp, co, hum = routine(t)
        if u <= dur:
            d = f(u)
            s, temp, co = s + d[0], temp + d[1], co + d[2]
            hum = max(hum, d[3]) if name == "shower" else float(np.clip(hum + d[3], 5, 99))
        smoke_on = s > SMOKE_ON or (smoke_on and s > SMOKE_OFF)
        hist.append((u, temp))
        while h0 + 1 < len(hist) and u - hist[h0 + 1][0] >= 60.0:
            h0 += 1
        ref = hist[h0]
        ror = (temp - ref[1]) * 60.0 / (u - ref[0]) if 60.0 <= u - ref[0] <= 120.0 else 0.0
        heat_on = temp >= 57.0 or ror >= 8.3 or (heat_on and temp >= 50.0)
        dose = dose + STEP / (60.0 * _co_minutes(co)) if co >= 40.0 else max(0.0, dose - STEP / 1800.0)
        co_on = dose >= 1.0 or (co_on and co >= 30.0)
        if hush_press is not None and smoke_on and hush_until < 0 and u >= hush_press:
            hush_until = u + 600.0
        hushed = 0 <= u < hush_until and smoke_on
        smoke_bit = smoke_on and not (hushed and cfg["hush_clears"])
        bits = (smoke_bit, heat_on, co_on, hushed, False)
        in_alarm = smoke_bit or heat_on or co_on
        flags = tuple(
            n
            for n, on in zip(("smoke_alarm", "heat_alarm", "co_alarm", "hush", "test"), bits, strict=True)
            if on
        )
        steps.append((t, t + STEP, flags, (s, temp, co, hum)))
        if bits != last_bits or (cfg["repeat"] and in_alarm and u - last_up >= cfg["repeat"] - 1e-6):
            frames.append((t, flags, (s, temp, co, hum)))
            last_up, last_bits = u, bits
            if reveal is None and (smoke_bit or heat_on or co_on or hushed):
                reveal = t
        u += STEP
    if name.startswith("fire"):
        return (
            dict(
                start=t0,
                end=t0 + dur,
                event_type=EventType.FIRE,
                reveal=reveal,
                allowed=frozenset({EventType.CO}),
            ),
            frames,
            steps,
        )
    if name == "co_heater":
        co_reveal = next((t for t, fl, _v in frames if "co_alarm" in fl), None)
        return dict(start=t0, end=t0 + dur, event_type=EventType.CO, reveal=co_reveal), frames, steps
    return dict(start=t0, end=t0 + dur), frames, steps
