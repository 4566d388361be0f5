"""Detection rules for the smoke / heat / CO alarm (烟雾报警器).

Why these rules (thresholds in :class:`alerts.detection.profiles.SmokeAlarmProfile`; ``docs/detection.md``
has the evidence and the measurements):

A smoke bit says "particles in the chamber". Cooking, burnt food and shower steam put them there as
surely as a fire does, and residents near a kitchen see the bit several times a week, so **a smoke bit
alone never pages at once** (unless a hallway/bedroom detector's profile sets ``smoke_bit_immediate``).
FIRE (HIGH) needs something cooking lacks:

* **heat**: the device's heat bit, a fixed 57 °C, or a rate of rise >= 8.3 °C/min over >= 20 s and
  >= 2 °C (EN 54-5 A1) - a fire on its own, smoke or not;
* smoke with **the room heating**: >= 8 °C over the room's learned baseline, or rising >= 4.15 °C/min
  (flaming fires heat the ceiling within minutes; a hob under a ceiling detector adds a few degrees);
* smoke with **CO** >= ``co_fire_ppm`` or the device's CO bit: smouldering fires (EN 54-7 TF2/TF3) make
  CO long before heat, cooking barely any;
* smoke **denser** than burnt food reaches at the ceiling (``fire_density_db_m``);
* smoke **lasting beyond a meal** (``fire_persist_s``) without steam. On a detector that repeats its
  uplink while in alarm the repeats show it; on one that uplinks only on state changes, silence does
  (it must uplink when the bit clears, ``docs/payloads.md``), via the lifecycle's ``confirm_after``;
* smoke at **a neighbouring dwelling's** alarm too (``neighbour_group``, when known).

Thickening smoke and a smoke bit seen in several frames are *not* evidence (burnt toast does both).
Steam (humidity >= 85 %, or risen over the room's baseline) holds an uncorroborated smoke bit at HOLD
so a long shower never pages by persistence. The **test button** never pages (alarm bits in a test frame
are the self-test's). **Hush** (at most ``hush_max_s`` from the press) never hides evidence and does not
restart the persistence clock.

**CO** (HIGH): the device's CO bit, or our own EN 50291 fractional dose reaching 1
(:mod:`alerts.detection.detectors.dose`), so a detector whose bit logic failed is still covered. It
clears after ``co_clear_hold_s`` of fresh air (below ``co_clear_ppm`` with the CO bit clear), seen by a
later reading or by the device's silence (it uplinks when the bit sets again); a shorter dip keeps it.
**CONTAMINATION** / **TAMPER** / **SENSOR_FAULT** from flags, **LOW_BATTERY** (GB 20517 checks it every
24 h; reminders daily).

The room's temperature and humidity baselines are EWMAs learned only from calm readings, so a fire never
teaches the detector that 45 °C is normal.
"""

from __future__ import annotations

import math

import numpy as np

from alerts.detection.detectors import EWMAZScore, FractionalDose, RateOfRise
from alerts.detection.detectors.base import Detector
from alerts.detection.episodes import CLEAR, HOLD, EpisodeRule
from alerts.detection.profiles import SmokeAlarmProfile
from alerts.detection.rulekit import RuleContext, Verdict, battery_verdict, flag_level, select
from firmware_bridge.kernel.events import EventType, Severity
from firmware_bridge.kernel.records import DeviceKind

KIND = DeviceKind.SMOKE_ALARM
PROFILE = SmokeAlarmProfile
# evaluate takes a whole batch sorted by device (segments), not only readings of unique devices
BATCH = True
STATE: dict[str, tuple[str, float]] = {
    "hush_start": ("f8", np.nan),
    "hush_seen": ("?", 0),
    "group": ("f8", np.nan),  # neighbour_group of the device (NaN: none)
    "smoke_last": ("f8", np.nan),  # time of its latest frame showing smoke
    "co_fresh_since": ("f8", np.nan),  # start of its current run of fresh-air CO readings
    "co_fresh_seen": ("?", 0),  # its latest reading was fresh air
}

HIGH, MEDIUM, LOW = int(Severity.HIGH), int(Severity.MEDIUM), int(Severity.LOW)


def rules(p: SmokeAlarmProfile) -> dict[EventType, EpisodeRule]:
    return {
        # for_s applies to uncorroborated smoke only (persistence beyond a meal); evidence is immediate
        EventType.FIRE: EpisodeRule(for_s=p.fire_persist_s, remind_every_s=600.0),
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


def _neighbours(ctx: RuleContext, smoky: np.ndarray) -> np.ndarray:
    """Smoke at another alarm of the same ``neighbour_group`` within ``neighbour_window_s``.

    Cross-device state: with groups in the batch it runs by ``batch_rank`` (the k-th frame of every
    device at once, as frame-by-frame ranks always have); without, it only records the devices' state.
    """
    group = np.broadcast_to(np.asarray(ctx.p.neighbour_group, dtype=np.float64), ctx.rows.shape)
    if not np.isfinite(group).any():
        st, seg = ctx.state, ctx.seg
        seg.store_last(st["group"], group)
        seg.store_last(st["smoke_last"], ctx.t, smoky)
        return np.zeros(len(ctx.rows), dtype=bool)
    out = np.zeros(len(ctx.rows), dtype=bool)
    rank = ctx.batch_rank
    for k in np.unique(rank).tolist():
        ix = np.flatnonzero(rank == k)
        out[ix] = _neighbours_rank(ctx.sub(ix), smoky[ix])
    return out


def _neighbours_rank(ctx: RuleContext, smoky: np.ndarray) -> np.ndarray:
    """:func:`_neighbours` for readings of unique devices."""
    p, rows, t, st = ctx.p, ctx.rows, ctx.t, ctx.state
    group = np.broadcast_to(np.asarray(p.neighbour_group, dtype=np.float64), rows.shape)
    st["group"][rows] = group
    st["smoke_last"][rows[smoky]] = t[smoky]
    out = np.zeros(len(rows), dtype=bool)
    mine = np.flatnonzero(smoky & np.isfinite(group))
    if len(mine) == 0:
        return out
    window = np.broadcast_to(np.asarray(p.neighbour_window_s, dtype=np.float64), rows.shape)[mine]
    others = np.flatnonzero(np.isin(st["group"], group[mine]) & np.isfinite(st["smoke_last"]))
    # (mine x others): same group, another device, smoke within the window of this frame
    same = st["group"][others][None, :] == group[mine][:, None]
    recent = np.abs(t[mine][:, None] - st["smoke_last"][others][None, :]) <= window[:, None]
    other = others[None, :] != rows[mine][:, None]
    out[mine] = (same & recent & other).any(axis=1)
    return out


def _baselines(
    ctx: RuleContext, temp: np.ndarray, hum: np.ndarray, busy: np.ndarray, ror_rising: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rise of temperature and humidity over the room's baselines, and the warm mask, per reading.

    The baselines learn only calm readings, and calm depends on the rise: not a scan, so rank by rank
    (one pass when every device has one reading in the batch).
    """
    rows, t, n = ctx.rows, ctx.t, len(ctx.rows)
    tb, hb = ctx.det["temp_base"], ctx.det["hum_base"]
    thr = np.broadcast_to(np.asarray(ctx.p.temp_rise_c, dtype=np.float64), (n,))
    rise, hum_rise = np.empty(n), np.empty(n)
    warm = np.empty(n, dtype=bool)
    for ix in ctx.seg.ranks():
        r, tk, hk, tt = rows[ix], temp[ix], hum[ix], t[ix]
        rise_k, warm_k = _rise(tb, r, tk)
        hum_k, _ = _rise(hb, r, hk)
        rise[ix], warm[ix], hum_rise[ix] = rise_k, warm_k, hum_k
        calm = ~(busy[ix] | (rise_k >= thr[ix]) | ror_rising[ix])
        tb.learn_many(r[calm], tk[calm], tt[calm])
        hb.learn_many(r[calm], hk[calm], tt[calm])
    return rise, warm, hum_rise


def _hush(ctx: RuleContext, hush: np.ndarray) -> np.ndarray:
    """Within ``hush_max_s`` of the press (the flag's rising edge), however long frames say "hush"."""
    seg, st, t = ctx.seg, ctx.state, ctx.t
    start = hush & ~seg.prev(hush, st["hush_seen"])
    hs = seg.prev_where(start, t, st["hush_start"], inclusive=True)
    seg.store_last(st["hush_start"], t, start)
    seg.store_last(st["hush_seen"], hush)
    in_hush: np.ndarray = t - hs < ctx.p.hush_max_s
    return in_hush


def evaluate(ctx: RuleContext) -> dict[EventType, Verdict]:
    p, t = ctx.p, ctx.t
    smoke, temp = ctx.col("smoke_db_m"), ctx.col("temperature_c")
    co, hum = ctx.col("co_ppm"), ctx.col("humidity_pct")
    test = ctx.flag("test")

    ror = ctx.det["temp_ror"].score_learn(ctx.seg, temp, t)

    heat_bit = ctx.flag("heat_alarm") & ~test
    heat = heat_bit | (temp >= p.heat_fixed_c) | (ror >= p.heat_ror_c_per_min)
    smoke_bit = ctx.flag("smoke_alarm") & ~test
    dense = (smoke >= p.smoke_density_db_m) & ~test
    smoky = smoke_bit | dense
    co_bit = ctx.flag("co_alarm") & ~test
    hush = ctx.flag("hush")
    # the baselines learn only calm readings: not heat, rising, smoky, a test or a hush
    ror_rising = ror >= 0.5 * p.heat_ror_c_per_min
    rise, warm, hum_rise = _baselines(ctx, temp, hum, heat | smoky | test | hush, ror_rising)
    rising = (rise >= p.temp_rise_c) | ror_rising
    # steam or cooking: humid, or humidity jumped over the room's usual; unknown room = assume a kitchen
    steam = (hum >= p.steam_humidity_pct) | np.where(
        warm, hum_rise >= p.humidity_rise_pct, hum >= p.steam_humidity_unlearned_pct
    )
    in_hush = _hush(ctx, hush)

    neighbour = _neighbours(ctx, smoky)
    evidence = (
        heat
        | (smoke >= p.fire_density_db_m)
        | (smoky & (rising | co_bit | (co >= p.co_fire_ppm) | neighbour))
        | (smoke_bit & ~steam & ~in_hush & warm & p.smoke_bit_immediate)
    )
    smoke_only = smoky & ~evidence
    # smoke without evidence pends (HIGH, not immediate): the lifecycle raises it when it has lasted
    # fire_persist_s - by repeats, or by the absence of the "smoke cleared" uplink. Steam resets it.
    fire_lvl = select(
        [evidence, smoke_only & steam, smoke_only, temp >= p.heat_clear_c, test],
        [HIGH, HOLD, HIGH, HOLD, HOLD],
        CLEAR,
    ).astype(np.int8)
    persist = np.where(smoke_only & ~steam, p.fire_persist_s, np.nan)

    dose = ctx.det["co_dose"].score_learn(ctx.seg, co, t)
    # fresh air: below the clear level and the device's own CO bit clear (UL 2034 / EN 50291 alarms reset
    # when the concentration falls); the dose raises, it never holds an alarm open in clean air
    fresh = (co < p.co_clear_ppm) & ~co_bit
    co_on = (co_bit & p.co_bit_confirm) | ((dose >= 1.0) & ~fresh)
    seg, st = ctx.seg, ctx.state
    fresh_start = fresh & ~seg.prev(fresh, st["co_fresh_seen"])
    fresh_since = seg.prev_where(fresh_start, t, st["co_fresh_since"], inclusive=True)
    seg.store_last(st["co_fresh_since"], t, fresh_start)
    seg.store_last(st["co_fresh_seen"], fresh)
    left = p.co_clear_hold_s - (t - fresh_since)  # fresh air still needed before it clears
    co_lvl = np.where(co_on, HIGH, np.where(fresh & (left > 0), HOLD, np.where(fresh, CLEAR, HOLD)))
    co_lvl = np.where(~fresh & ~co_on & ~(co >= p.co_clear_ppm), CLEAR, co_lvl)  # CO not measured
    co_lvl = np.where(test & ~co_on, HOLD, co_lvl).astype(np.int8)
    co_clear_after = np.where((co_lvl == HOLD) & fresh, left, np.nan)

    nan = ctx.battery * math.nan
    return {
        EventType.FIRE: Verdict(
            fire_lvl, np.where(np.isfinite(smoke), smoke, temp), evidence, confirm_after=persist
        ),
        EventType.CO: Verdict(co_lvl, co, co_on, clear_after=co_clear_after),
        EventType.CONTAMINATION: Verdict(flag_level(ctx.flag("contamination"), Severity.LOW), smoke),
        EventType.TAMPER: Verdict(flag_level(ctx.flag("tamper"), Severity.MEDIUM), nan),
        EventType.SENSOR_FAULT: Verdict(flag_level(ctx.flag("fault"), Severity.LOW), nan),
        EventType.LOW_BATTERY: battery_verdict(ctx),
    }
