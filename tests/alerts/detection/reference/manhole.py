"""Detection rules for the smart manhole cover (智能井盖).

Why these rules (thresholds in :class:`alerts.detection.profiles.ManholeProfile`, sources there):

* **COVER_OPEN** (HIGH, at once): the cover's reed switch says it is off its frame, or it tilts past 90°
  - a hole in a road. GB/T 41401-2022 asks for alarm-to-system <= 30 s, so one frame is enough.
* **COVER_DISPLACED** (MEDIUM -> HIGH if it persists): ``|tilt - tilt_ref| > 10°``. A passing truck
  rocks a cover for ~2 s, and ``vibration_g`` is the peak since the *previous uplink* (up to 24 h back),
  so on a busy road every frame "vibrates": vibration cannot say whether the cover shakes now. What the
  datasheet makes certain instead: a device reports the return to normal within 30 s. So a tilted frame
  raises at once when the device says the tilt settled (``tilt_settled``, firmware that debounces) or
  when the uplinks prove that no vehicle touched the cover for at least ``quiet_window_s`` (5 s): the
  frame and the uplinks before it, back to the latest that showed a vehicle, all below a truck's
  ``vibration_g`` (their windows tile the time). A heartbeat due 0.1 s after a truck's alarm uplink is
  still tilted and quiet, but it has seen 0.1 s of road, so it proves nothing. Any other tilted frame
  raises after ``displaced_confirm_s`` unless a return-to-normal frame arrives first (the lifecycle's
  ``confirm_after``); tilted frames in a row raise only once they span ``displaced_confirm_s`` too (two
  frames 0.1 s apart are one truck's rock seen twice).
* **OVERFLOW**: water surface close to the cover; **GAS_COMBUSTIBLE** / **GAS_TOXIC** / **OXYGEN_ABNORMAL**:
  the GB/T 50493-2019 two-stage gas alarms, H2S 10/20 ppm, O2 outside 19.5-23.5 %vol, with hysteresis so
  a reading hovering at the threshold does not flap. An O2 reading of exactly 0 means "no O2 cell", and
  the water distance of a cover flagging ``sensor_fault`` is not trusted (a blind ultrasonic sensor reads 0).
* **SENSOR_FAULT**: the device's flag, or tilt, temperature, water distance and O2 *all* repeating the
  exact same value for ``frozen_readings`` (2) uplinks: four noisy analogue channels at their wire
  resolution (0.01°, 0.1 °C, 0.1 cm, 0.01 %vol) never repeat together, so two repeats suffice (24 h at a
  12 h heartbeat instead of 3 days).
* **TAMPER** (device flag), **LOW_BATTERY** (flag or percentage).
"""

from __future__ import annotations

import math

import numpy as np

from firmware_bridge.kernel.events import EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from tests.alerts.detection.reference.detectors import Flatline
from tests.alerts.detection.reference.detectors.base import Detector
from tests.alerts.detection.reference.episodes import CLEAR, HOLD, UNKNOWN, EpisodeRule
from tests.alerts.detection.reference.profiles import ManholeProfile
from tests.alerts.detection.reference.rulekit import (
    RuleContext,
    Verdict,
    band,
    band_low,
    battery_verdict,
    flag_level,
    select,
)

KIND = DeviceKind.MANHOLE
PROFILE = ManholeProfile
STATE: dict[str, tuple[str, float]] = {
    # start of the device's quiet run: its latest uplink that showed a vehicle (or an unknown vibration);
    # NaN: none seen
    "quiet_since": ("f8", np.nan),
}

HIGH, MEDIUM, LOW = int(Severity.HIGH), int(Severity.MEDIUM), int(Severity.LOW)


def rules(p: ManholeProfile) -> dict[EventType, EpisodeRule]:
    return {
        EventType.COVER_OPEN: EpisodeRule(remind_every_s=3600.0),
        # tilted frames in a row confirm each other only once they span as long as the return to normal
        # may take (a heartbeat 0.1 s after a truck's alarm uplink is the same rock seen twice)
        EventType.COVER_DISPLACED: EpisodeRule(
            need_count=2, for_s=p.displaced_confirm_s, escalate_after_s=1800.0, remind_every_s=3600.0
        ),
        EventType.OVERFLOW: EpisodeRule(escalate_after_s=3600.0),
        EventType.GAS_COMBUSTIBLE: EpisodeRule(escalate_after_s=1800.0),
        EventType.GAS_TOXIC: EpisodeRule(escalate_after_s=1800.0),
        EventType.OXYGEN_ABNORMAL: EpisodeRule(),
        EventType.TAMPER: EpisodeRule(),
        EventType.SENSOR_FAULT: EpisodeRule(),
        EventType.LOW_BATTERY: EpisodeRule(remind_every_s=7 * 86400.0),
    }


FROZEN_CHANNELS = ("tilt_deg", "temperature_c", "water_distance_cm", "o2_pct_vol")


def make_detectors(p: ManholeProfile, grace_period: int) -> dict[str, Detector]:
    return {f"flat_{c}": Flatline(tolerance=0.0) for c in FROZEN_CHANNELS}


def _frozen(ctx: RuleContext) -> np.ndarray:
    """How many readings in a row *every* noisy analogue channel repeated itself (stuck firmware/ADC)."""
    runs = []
    for c in FROZEN_CHANNELS:
        det, x = ctx.det[f"flat_{c}"], ctx.col(c)
        runs.append(det.score_many(ctx.rows, x, ctx.t))
        det.learn_many(ctx.rows, x, ctx.t)
    frozen: np.ndarray = np.min(np.stack(runs), axis=0)
    return frozen


def _no_vehicle(ctx: RuleContext, vib: np.ndarray) -> np.ndarray:
    """Per frame (one per device here): did the uplinks before it prove that no vehicle tilted the cover?

    Each uplink's ``vibration_g`` covers the time since the device's previous one; a run of quiet uplinks
    covers the time since the uplink before the run. The frame is evidence of "no vehicle" when it is
    the device's alarm, quiet itself, and that quiet run began at least ``quiet_window_s`` before it: a
    heartbeat 0.1 s after a truck's uplink has seen 0.1 s of road only. A device that showed no vehicle
    in any uplink seen here has a run that began before we saw it, hours back at any heartbeat cadence.
    """
    n = len(ctx.rows)
    alarm = ctx.flag("alarm")
    min_quiet = np.broadcast_to(np.asarray(ctx.p.quiet_window_s, dtype=np.float64), (n,))
    truck = np.broadcast_to(np.asarray(ctx.p.truck_vibration_g, dtype=np.float64), (n,))
    run_start = ctx.state["quiet_since"]
    out = np.zeros(n, dtype=bool)
    for i, row in enumerate(ctx.rows.tolist()):
        t, v = float(ctx.t[i]), float(vib[i])
        began = float(run_start[row])  # NaN: no uplink of this device showed a vehicle
        shook = not (v < float(truck[i]))  # a vehicle in this uplink's window, or its vibration unknown
        quiet_long = math.isnan(began) or t - began >= float(min_quiet[i])
        out[i] = bool(alarm[i]) and not shook and quiet_long
        if shook:
            run_start[row] = t  # the quiet run (re)starts after this uplink
    return out


def evaluate(ctx: RuleContext) -> dict[EventType, Verdict]:
    p = ctx.p
    tilt, ref = ctx.col("tilt_deg"), ctx.col("tilt_ref_deg")
    vib = ctx.col("vibration_g")
    dev = np.abs(tilt - ref)
    flag_open = ctx.flag("cover_open")

    open_on = flag_open | (tilt >= p.tilt_open_deg)
    open_lvl = np.where(open_on, HIGH, np.where(tilt >= p.tilt_open_deg - 5.0, HOLD, CLEAR))
    open_lvl = np.where(~np.isfinite(tilt) & ~flag_open, UNKNOWN, open_lvl).astype(np.int8)

    disp = dev > p.tilt_threshold_deg
    disp_lvl = select([open_on, disp, dev > p.tilt_clear_deg], [HOLD, MEDIUM, HOLD], CLEAR)
    disp_lvl = np.where(np.isfinite(dev), disp_lvl, UNKNOWN).astype(np.int8)
    no_vehicle = _no_vehicle(ctx, vib)
    confirmed = disp & (ctx.flag("tilt_settled") | no_vehicle)
    confirm_after = np.where(disp, p.displaced_confirm_s, np.nan)

    o2 = ctx.col("o2_pct_vol")
    o2 = np.where(o2 > 0.0, o2, np.nan)
    h = p.o2_hysteresis_pct
    o2_lvl = select(
        [
            o2 < p.o2_danger_low_pct,
            (o2 < p.o2_low_pct) | (o2 > p.o2_high_pct),
            (o2 < p.o2_low_pct + h) | (o2 > p.o2_high_pct - h),
        ],
        [HIGH, MEDIUM, HOLD],
        CLEAR,
    )
    o2_lvl = np.where(np.isfinite(o2), o2_lvl, UNKNOWN).astype(np.int8)

    frozen = _frozen(ctx)
    water = ctx.col("water_distance_cm")
    water = np.where(ctx.flag("sensor_fault"), np.nan, water)  # a blind ultrasonic sensor reads 0
    ch4, h2s = ctx.col("ch4_pct_lel"), ctx.col("h2s_ppm")
    return {
        EventType.COVER_OPEN: Verdict(open_lvl, tilt, open_on),
        EventType.COVER_DISPLACED: Verdict(disp_lvl, dev, confirmed, confirm_after=confirm_after),
        EventType.OVERFLOW: Verdict(
            band_low(water, p.overflow_medium_cm, p.overflow_high_cm, p.overflow_clear_cm), water
        ),
        EventType.GAS_COMBUSTIBLE: Verdict(
            band(ch4, p.ch4_medium_pct_lel, p.ch4_high_pct_lel, p.ch4_clear_pct_lel), ch4
        ),
        EventType.GAS_TOXIC: Verdict(band(h2s, p.h2s_medium_ppm, p.h2s_high_ppm, p.h2s_clear_ppm), h2s),
        EventType.OXYGEN_ABNORMAL: Verdict(o2_lvl, o2),
        EventType.TAMPER: Verdict(flag_level(ctx.flag("tamper"), Severity.MEDIUM), ctx.battery * math.nan),
        EventType.SENSOR_FAULT: Verdict(
            flag_level(ctx.flag("sensor_fault") | (frozen >= p.frozen_readings), Severity.LOW), frozen
        ),
        EventType.LOW_BATTERY: battery_verdict(ctx),
    }
