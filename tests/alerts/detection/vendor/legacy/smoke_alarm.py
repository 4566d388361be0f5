# FROZEN copy of alerts/detection/smoke_alarm.py at c6b994a (before issue 10): the benchmark's baseline.
# Do not edit, except to pin a default that has changed since (marked LEGACY).
# ruff: noqa
# mypy: ignore-errors
"""Detection rules for the smoke / heat / CO alarm (烟雾报警器).

Why these rules (thresholds in :class:`alerts.detection.profiles.SmokeAlarmProfile`; decisions measured in
``docs/detection.md``):

* **FIRE** (HIGH). *Evidence* raises at once: the device's heat bit, a fixed 57 °C or a rate of rise of
  8.3 °C/min (EN 54-5 A1), smoke denser than cooking ever gets (``fire_density_db_m``), or smoke (the
  device's bit, GB 4715 / EN 14604, or density over ``smoke_density_db_m``) together with a temperature
  rise over the room's learned baseline or smoke thickening faster than ``smoke_ror_db_m_per_min``.
* A smoke bit *without* evidence: steam (humidity above ``steam_humidity_pct`` or risen over the room's
  learned baseline; above ``steam_humidity_unlearned_pct`` while the baseline is still being learned)
  is cooking or a shower and never pages on its own. Otherwise it pages at once if
  ``smoke_bit_immediate`` (a hallway detector), else when seen in three frames no more than 5 min apart
  spanning ``nuisance_confirm_s`` (a detector in alarm repeats its uplink every minute; cooking
  hovering at the threshold and an expiring hush give fewer frames).
* The **test button** never pages. **Hush** suppresses re-raising from an unconfirmed smoke bit for at
  most ``hush_max_s`` (~10 min) from the press (the flag's rising edge, however long frames carry it);
  it never hides evidence.
* **CO** (HIGH): the device's CO bit, or our own EN 50291 fractional dose reaching 1
  (:mod:`alerts.detection.detectors.dose`), so a detector whose bit logic failed is still covered.
* **CONTAMINATION** / **TAMPER** / **SENSOR_FAULT** from flags, **LOW_BATTERY** (GB 20517 checks it
  every 24 h; reminders daily).

The room's temperature and humidity baselines are EWMAs learned only from calm readings, so a fire never
teaches the detector that 45 °C is normal; until they are learned (``grace_period`` calm readings) an
unconfirmed smoke bit is treated as possibly steam.
"""

from __future__ import annotations

import math

import numpy as np

from alerts.detection.detectors import EWMAZScore, FractionalDose, RateOfRise
from alerts.detection.detectors.base import Detector
from alerts.detection.episodes import CLEAR, HOLD, EpisodeRule
from alerts.detection.profiles import SmokeAlarmProfile
from alerts.detection.rulekit import RuleContext, Verdict, battery_verdict, flag_level
from firmware_bridge.kernel.events import EventType, Severity
from firmware_bridge.kernel.records import DeviceKind

KIND = DeviceKind.SMOKE_ALARM
PROFILE = SmokeAlarmProfile
STATE: dict[str, tuple[str, float]] = {"hush_start": ("f8", np.nan), "hush_seen": ("?", 0)}

HIGH, MEDIUM, LOW = int(Severity.HIGH), int(Severity.MEDIUM), int(Severity.LOW)


def rules(p: SmokeAlarmProfile) -> dict[EventType, EpisodeRule]:
    return {
        # need_count/for_s apply to uncorroborated (nuisance-looking) smoke only; evidence is immediate
        EventType.FIRE: EpisodeRule(
            need_count=3, for_s=p.nuisance_confirm_s, max_gap_s=300.0, remind_every_s=600.0
        ),
        EventType.CO: EpisodeRule(need_count=1, remind_every_s=600.0),
        EventType.CONTAMINATION: EpisodeRule(remind_every_s=7 * 86400.0),
        EventType.TAMPER: EpisodeRule(),
        EventType.SENSOR_FAULT: EpisodeRule(),
        EventType.LOW_BATTERY: EpisodeRule(remind_every_s=86400.0),
    }


def make_detectors(p: SmokeAlarmProfile, grace_period: int) -> dict[str, Detector]:
    return {
        "temp_base": EWMAZScore(alpha=p.baseline_alpha, min_std=1.0, side="up", grace_period=grace_period),
        "hum_base": EWMAZScore(alpha=p.baseline_alpha, min_std=2.0, side="up", grace_period=grace_period),
        "temp_ror": RateOfRise(min_dt=20.0, max_dt=900.0, min_delta=2.0),
        "smoke_ror": RateOfRise(min_dt=20.0, max_dt=900.0, min_delta=0.05),
        "co_dose": FractionalDose(max_dt=600.0),
    }


def _rise(det: Detector, rows: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rise of ``x`` over the device's learned baseline (0 while warming up) and the warm mask."""
    if not isinstance(det, EWMAZScore):
        raise TypeError("a room baseline must be an EWMAZScore")
    warm = det.warm(rows)
    base = det.baseline(rows)
    ok = warm & np.isfinite(x) & np.isfinite(base)
    return np.where(ok, x - np.where(ok, base, 0.0), 0.0), warm


def evaluate(ctx: RuleContext) -> dict[EventType, Verdict]:
    p = ctx.p
    rows, t = ctx.rows, ctx.t
    smoke, temp = ctx.col("smoke_db_m"), ctx.col("temperature_c")
    co, hum = ctx.col("co_ppm"), ctx.col("humidity_pct")
    test = ctx.flag("test")

    rise, warm = _rise(ctx.det["temp_base"], rows, temp)
    hum_rise, _ = _rise(ctx.det["hum_base"], rows, hum)
    ror_det, sror_det = ctx.det["temp_ror"], ctx.det["smoke_ror"]
    ror = ror_det.score_many(rows, temp, t)
    sror = sror_det.score_many(rows, smoke, t)

    heat_bit = ctx.flag("heat_alarm") & ~test
    heat = heat_bit | (temp >= p.heat_fixed_c) | (ror >= p.heat_ror_c_per_min)
    rising = (rise >= p.temp_rise_c) | (ror >= 0.5 * p.heat_ror_c_per_min)
    smoke_bit = ctx.flag("smoke_alarm") & ~test
    dense = smoke >= p.smoke_density_db_m
    # steam or cooking: humid, or humidity jumped over the room's usual; unknown room = assume a kitchen
    steam = (hum >= p.steam_humidity_pct) | np.where(
        warm, hum_rise >= p.humidity_rise_pct, hum >= p.steam_humidity_unlearned_pct
    )
    steamy = steam | ~warm  # for paging at once: an unknown room might be a kitchen

    # hush: lasts at most hush_max_s from the press (the flag's rising edge), however long frames say "hush"
    hs, seen = ctx.state["hush_start"], ctx.state["hush_seen"]
    hush = ctx.flag("hush")
    start = hush & ~seen[rows]
    hs[rows[start]] = t[start]
    seen[rows] = hush
    in_hush = t - hs[rows] < p.hush_max_s

    thickening = sror >= p.smoke_ror_db_m_per_min
    evidence = heat | (smoke >= 0.5) | ((smoke_bit | dense) & (rising | thickening))  # LEGACY 0.5
    smoke_only = (smoke_bit | dense) & ~evidence
    # steam in a known room with no heat, no rise and no thickening is cooking or a shower: a nuisance
    nuisance = smoke_only & steam
    fire_lvl = np.select(
        [evidence, smoke_only & (in_hush | nuisance), smoke_only, hush, temp >= p.heat_clear_c],
        [HIGH, HOLD, HIGH, CLEAR, HOLD],
        CLEAR,
    )
    fire_lvl = np.where(test & ~evidence & ~smoke_only, HOLD, fire_lvl).astype(np.int8)
    fire_now = evidence | (smoke_bit & ~steamy & ~in_hush & p.smoke_bit_immediate)

    dose = ctx.det["co_dose"].score_many(rows, co, t)
    co_bit = ctx.flag("co_alarm") & ~test
    co_on = (co_bit & p.co_bit_confirm) | (dose >= 1.0)
    co_lvl = np.where(co_on, HIGH, np.where(co >= p.co_clear_ppm, HOLD, CLEAR))
    co_lvl = np.where(test & ~co_on, HOLD, co_lvl).astype(np.int8)

    # learning: the dose integrates everything; the baseline learns only calm readings
    ctx.det["co_dose"].learn_many(rows, co, t)
    calm = ~(heat | rising | smoke_bit | dense | test | hush)
    ctx.det["temp_base"].learn_many(rows[calm], temp[calm], t[calm])
    ctx.det["hum_base"].learn_many(rows[calm], hum[calm], t[calm])
    ror_det.learn_many(rows, temp, t)
    sror_det.learn_many(rows, smoke, t)

    nan = ctx.battery * math.nan
    return {
        EventType.FIRE: Verdict(fire_lvl, np.where(np.isfinite(smoke), smoke, temp), fire_now),
        EventType.CO: Verdict(co_lvl, co, co_on),
        EventType.CONTAMINATION: Verdict(flag_level(ctx.flag("contamination"), Severity.LOW), smoke),
        EventType.TAMPER: Verdict(flag_level(ctx.flag("tamper"), Severity.MEDIUM), nan),
        EventType.SENSOR_FAULT: Verdict(flag_level(ctx.flag("fault"), Severity.LOW), nan),
        EventType.LOW_BATTERY: battery_verdict(ctx),
    }
