"""Detection rules for the wristband of an elderly person living alone (智能手环).

Why these rules (thresholds in :class:`alerts.detection.profiles.WristbandProfile`):

* **SOS** (HIGH, at once). Repeated presses within 5 minutes stay one episode.
* **FALL** (HIGH): an impact above ~2.5 g (or the rising edge of the band's own fall flag) followed by
  >= 30 s of stillness, with the wrist's orientation changed (ADI Analog Dialogue 43-07). The datasheet
  defines ``stillness_s`` *from the impact peak* (counted until motion resumes), so the peak happened
  ``stillness_s`` before the frame that carried it: ``peak_t = t - stillness_s``. A frame with the
  impact and >= 30 s of stillness is a fall on its own (a band that reports falls only in its 5-min
  summary); otherwise a later frame confirms it while its stillness still reaches back to the peak.
  Evidence of having moved - steps after the impact frame, or a stillness that does not date from the
  peak (shorter: it restarted after motion; longer: the impact frame's stillness had been cut short by
  motion), or the band's ``rest_broken`` bit (firmware >= 1.6) - is judged *first* and cancels the
  impact, so a person who got up and sat down is not paged. Only when the band is worn.
* **HEART_RATE_HIGH/LOW**, **SPO2_LOW** (MEDIUM, HIGH past the critical bound; MEDIUM escalates if it
  persists): at rest, worn, in two readings in a row spanning >= 4 min (two 5-min summaries, or four
  minutes of the per-minute uplinks firmware >= 1.6 sends while out of range), with hysteresis. A
  value of 0 means "not measured" and changes nothing.
* **INACTIVITY**: worn, still for ``inactivity_s`` during local daytime (night stillness is sleep).
* **GEOFENCE_EXIT**: farther than ``geofence_radius_m`` from home, twice in a row; home is the profile's
  ``home_lat``/``home_lon`` or, when not given, learned per band as a slow EWMA of positions inside
  the fence (excursions are kept out of the baseline).
* **BAND_REMOVED** (off the wrist and not charging for ``band_removed_s``), **LOW_BATTERY**.
"""

from __future__ import annotations

import math

import numpy as np

from firmware_bridge.kernel.events import EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.wristband import ok_pressed
from tests.alerts.detection.reference.detectors import EWMAZScore
from tests.alerts.detection.reference.detectors.base import Detector
from tests.alerts.detection.reference.episodes import CLEAR, HOLD, UNKNOWN, EpisodeRule
from tests.alerts.detection.reference.profiles import WristbandProfile
from tests.alerts.detection.reference.rulekit import (
    RuleContext,
    Verdict,
    band,
    band_low,
    battery_verdict,
    select,
)

KIND = DeviceKind.WRISTBAND
PROFILE = WristbandProfile
STATE: dict[str, tuple[str, float]] = {
    "impact_t": ("f8", np.nan),
    "impact_orient": ("f8", 0.0),
    "impact_flag": ("?", 0),
    "peak_t": ("f8", np.nan),  # estimated time of the impact peak (frame time - stillness_s)
    "fall_seen": ("?", 0),  # the previous frame carried the band's fall flag (flag edges, not levels)
    "gf_anchor_t": ("f8", np.nan),  # time of the last in-fence fix or fix approaching home (geofence)
    "gf_last_d": ("f8", np.nan),  # distance from home of the last valid fix (m)
    "gf_learned": ("f8", 0.0),  # fixes the learned home has taken
    # mirrors the recovery-evidence change of alerts/detection/wristband.py (clears need walking)
    "gf_steps": ("f8", 0.0),
    "gf_seed": ("f8", np.nan),  # mirrors the learned home's seed rank (-1 charger / still night, steps)
    "down_fall": ("?", 0),
    "down_sos": ("?", 0),
    "down_idle": ("?", 0),
    "down_t": ("f8", np.nan),
    # mirrors the walking evidence of alerts/detection/wristband.py (_walk): the run's first window
    # (start, end), the latest window's start, its steps, the first and the latest window's steps
    "walk_ts": ("f8", np.nan),
    "walk_ls": ("f8", np.nan),
    "walk_t0": ("f8", np.nan),
    "walk_n": ("f8", 0.0),
    "walk_first": ("f8", 0.0),
    "walk_last": ("f8", 0.0),
    "walk_step_t": ("f8", np.nan),  # the end of the last window with steps
    "walk_shaken": ("?", 0),  # the bout of steps going on was a shaken band's
    "fall_ok": ("?", 0),  # mirrors the "I'm OK" bit (fw >= 1.7): OK pressed since the last impact
}
DOWN = ("down_fall", "down_sos", "down_idle")
WALK_STEPS = 10.0
WALK_MIN_SPS = 0.5
WALK_MAX_SPS = 4.0
WALK_RATE_MIN_S = 5.0
WALK_PAUSE_S = 4.0
WALK_NOISE_SPS = 1.0 / 60.0
_EMPTY_RUN = (0.0, 0.0, 0.0, math.nan, math.nan, math.nan)  # n, first, last, t0, ts, ls
DOWN_MAX_S = 7200.0

HIGH, MEDIUM, LOW = int(Severity.HIGH), int(Severity.MEDIUM), int(Severity.LOW)
EARTH_RADIUS_M = 6_371_000.0


def rules(p: WristbandProfile) -> dict[EventType, EpisodeRule]:
    return {
        EventType.SOS: EpisodeRule(min_open_s=300.0, remind_every_s=600.0),
        EventType.FALL: EpisodeRule(min_open_s=60.0, remind_every_s=600.0),
        EventType.HEART_RATE_HIGH: EpisodeRule(need_count=2, for_s=240.0, escalate_after_s=1800.0),
        EventType.HEART_RATE_LOW: EpisodeRule(need_count=2, for_s=240.0, escalate_after_s=1800.0),
        EventType.SPO2_LOW: EpisodeRule(need_count=2, for_s=240.0, escalate_after_s=1800.0),
        EventType.INACTIVITY: EpisodeRule(remind_every_s=3600.0),
        EventType.GEOFENCE_EXIT: EpisodeRule(need_count=2, escalate_after_s=1800.0),
        EventType.BAND_REMOVED: EpisodeRule(need_count=2, for_s=p.band_removed_s),
        EventType.LOW_BATTERY: EpisodeRule(remind_every_s=86400.0),
    }


def make_detectors(p: WristbandProfile, grace_period: int) -> dict[str, Detector]:
    return {
        # learned home (when the profile gives none): slow EWMA of the position, kept free of excursions
        "home_lat": EWMAZScore(alpha=0.02, min_std=1e-3, grace_period=grace_period),
        "home_lon": EWMAZScore(alpha=0.02, min_std=1e-3, grace_period=grace_period),
    }


def _fall(ctx: RuleContext, worn: np.ndarray) -> Verdict:
    p, rows, t = ctx.p, ctx.rows, ctx.t
    st = ctx.state
    acc, still = ctx.col("accel_peak_g"), ctx.col("stillness_s")
    orient, steps = ctx.col("orientation_change_deg"), ctx.col("steps")
    still0 = np.where(np.isfinite(still), still, 0.0)
    band_fall = ctx.flag("fall")
    broken = ctx.flag("rest_broken")  # fw >= 1.6: the wearer moved again after the window's peak
    ok = _ok(ctx, worn)
    was_fall = st["fall_seen"][rows].copy()
    flag_edge = band_fall & ~was_fall
    st["fall_seen"][rows] = band_fall
    since = t - st["impact_t"][rows]
    had = np.isfinite(since) & (since <= p.fall_window_s)
    # a new impact: a peak in this frame's window, or the band's fall flag newly set; one whose rest the
    # band says ended before the stillness reached a fall's is someone who got up at once
    impact = worn & ((acc >= p.fall_impact_g) | (flag_edge & ~had))
    impact &= ~(broken & (still0 < p.fall_stillness_s))
    ri = rows[impact]
    st["impact_t"][ri] = t[impact]
    st["peak_t"][ri] = t[impact] - still0[impact]  # stillness_s counts from the peak
    st["impact_orient"][ri] = np.where(np.isfinite(orient[impact]), orient[impact], 0.0)
    st["impact_flag"][ri] = band_fall[impact]
    later = had & ~impact
    st["impact_orient"][rows[later]] = np.fmax(st["impact_orient"][rows[later]], orient[later])
    st["impact_flag"][rows[later & band_fall]] = True
    since = t - st["impact_t"][rows]
    recent = np.isfinite(since) & (since <= p.fall_window_s)
    since_peak = t - st["peak_t"][rows]
    turned = (st["impact_orient"][rows] >= p.fall_orientation_deg) | st["impact_flag"][rows]
    # moved after the impact, judged first: steps after the impact frame (its own steps may predate the
    # fall), or a stillness that does not date from the peak: shorter (it restarted after motion) or
    # longer (the rest began before the impact frame was sent, so the impact frame's stillness had been
    # cut short by motion: the wearer got up, then sat down)
    off = still0 - since_peak
    moved = ~impact & (
        (steps >= p.fall_recovered_steps)
        | broken
        | (off < -p.fall_motion_slack_s)
        | (off > p.fall_motion_slack_s)
    )
    moved |= ok  # "I'm OK" cancels a pending impact or the paged fall
    lying = recent & worn & turned & ~moved & (still0 >= p.fall_stillness_s)
    got_up = recent & (~impact | ok) & moved
    st["impact_t"][rows[got_up]] = np.nan  # cancelled: never page a person who got up
    expired = np.isfinite(since) & (since > p.fall_window_s)
    st["impact_t"][rows[expired]] = np.nan
    st["fall_ok"][rows[impact & ~ok]] = False
    st["fall_ok"][rows[ok]] = True
    stood = was_fall & ~band_fall & np.isfinite(still) & (still < ctx.dt)
    moving = (steps >= p.fall_recovered_steps) | (still0 < np.minimum(5.0, p.fall_stillness_s)) | stood
    moving |= st["fall_ok"][rows]
    lvl = select([lying, recent & ~got_up, moving | got_up], [HIGH, HOLD, CLEAR], HOLD).astype(np.int8)
    value = np.where(recent, st["impact_orient"][rows], acc)
    # mirrors the "I'm OK" cause of alerts/detection/wristband.py: this frame's OK or one since the impact
    pressed = ok | st["fall_ok"][rows]
    return Verdict(lvl, value, lying, st["impact_t"][rows].copy(), cause=pressed)


def _geofence(ctx: RuleContext) -> Verdict:
    # mirrors the geofence rule change of alerts/detection/wristband.py (indoor / charging evidence of
    # being home, learned home as a clipped running median after a warm-up); the reference profiles
    # predate the new thresholds, so their defaults are read with getattr
    p, rows, t = ctx.p, ctx.rows, ctx.t
    st = ctx.state
    lat, lon = ctx.col("lat"), ctx.col("lon")
    fix = ctx.flag("gps_valid") & np.isfinite(lat) & np.isfinite(lon)
    worn, charging = ctx.flag("worn"), ctx.flag("charging")
    dlat_det, dlon_det = ctx.det["home_lat"], ctx.det["home_lon"]
    rad = np.asarray(p.geofence_radius_m, dtype=np.float64)
    indoor_s = getattr(p, "geofence_indoor_s", 900.0)
    approach_r = getattr(p, "geofence_approach_factor", 2.0) * rad
    approach_m = getattr(p, "geofence_approach_m", 25.0)
    step_m = getattr(p, "home_learn_step_m", 30.0)
    warm_n = getattr(p, "home_learn_warmup_fixes", 96.0)
    hour = ((t / 3600.0 + p.utc_offset_h) % 24.0 + 24.0) % 24.0
    night = (hour < p.day_start_h) | (hour >= p.day_end_h)
    given = np.isfinite(p.home_lat) & np.isfinite(p.home_lon)
    hlat = np.where(given, p.home_lat, dlat_det.baseline(rows))  # type: ignore[attr-defined]
    hlon = np.where(given, p.home_lon, dlon_det.baseline(rows))  # type: ignore[attr-defined]
    known = given | dlat_det.warm(rows)
    coslat = np.cos(np.radians(np.where(np.isfinite(hlat), hlat, 0.0)))
    dy = np.radians(lat - hlat)
    dx = np.radians(lon - hlon) * coslat
    dist = EARTH_RADIUS_M * np.hypot(dx, dy)
    ok = fix & known & np.isfinite(dist)
    out = ok & (dist > rad)
    last_d = st["gf_last_d"][rows]
    approach = ok & (dist < last_d - approach_m) & (dist <= approach_r)
    anchored = ok & ((dist <= rad) | approach)
    anchor = np.where(anchored, t, np.where(ok, np.nan, st["gf_anchor_t"][rows]))
    st["gf_anchor_t"][rows] = anchor
    st["gf_last_d"][rows] = np.where(ok, dist, last_d)
    steps = ctx.col("steps")
    gf_steps = np.where(anchored, 0.0, st["gf_steps"][rows] + np.where(np.isfinite(steps), steps, 0.0))
    st["gf_steps"][rows] = gf_steps
    indoors = worn & ~fix & (t - anchor >= indoor_s) & (gf_steps > p.rest_steps)
    home = (charging | indoors) & ~out
    lvl = select([out, home, ~ok, dist > 0.8 * rad], [MEDIUM, CLEAR, UNKNOWN, HOLD], CLEAR).astype(np.int8)
    rank = np.where(
        charging | (night & ~(steps > p.rest_steps)), -1.0, np.where(np.isfinite(steps), steps, np.inf)
    )
    seed = st["gf_seed"][rows]
    near = ~(ok & (dist > 0.8 * rad))
    reseed = fix & ~given & near & ~(rank >= seed) & ((st["gf_learned"][rows] < warm_n) | (rank < 0.0))
    st["gf_seed"][rows] = np.where(reseed, rank, seed)
    inside = (fix & ~(ok & (dist > 0.8 * rad))) | reseed
    dlat_det.arrays["mean"][rows[reseed]] = np.nan
    dlon_det.arrays["mean"][rows[reseed]] = np.nan
    learned = st["gf_learned"][rows]
    full = inside & ((learned < warm_n) | reseed | given | charging | night | ~np.isfinite(hlat))
    st["gf_learned"][rows] = learned + inside
    cy = step_m / (EARTH_RADIUS_M * np.pi / 180.0)
    cx = cy / np.maximum(coslat, 1e-6)
    la_l = np.where(full, lat, hlat + np.clip(lat - hlat, -cy, cy))
    lo_l = np.where(full, lon, hlon + np.clip(lon - hlon, -cx, cx))
    dlat_det.learn_many(rows[inside], la_l[inside], t[inside])
    dlon_det.learn_many(rows[inside], lo_l[inside], t[inside])
    return Verdict(lvl, dist)


def _ok(ctx: RuleContext, worn: np.ndarray) -> np.ndarray:
    # mirrors _ok of alerts/detection/wristband.py: the ok bit from fw >= 1.7 on a worn band
    fw = getattr(ctx, "fw_version", None)
    if fw is None:
        return np.zeros(len(ctx.rows), dtype=bool)
    on: np.ndarray = ok_pressed(ctx.flags, fw) & worn
    return on


def _recovery(ctx: RuleContext, starts: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, np.ndarray]:
    # mirrors _recovery_rank of alerts/detection/wristband.py: walking after the event ends every down
    st, rows, t = ctx.state, ctx.rows, ctx.t
    steps = ctx.col("steps")
    # a down state older than DOWN_MAX_S (since its last event) without walking has expired
    start_any = np.zeros(len(rows), dtype=bool)
    for name in DOWN:
        start_any |= starts[name]
    # (a new event at this reading keeps the others: the wearer is still down; NaN: never down)
    expired = rows[~(t - st["down_t"][rows] <= DOWN_MAX_S) & ~start_any]
    was_down = np.zeros(len(rows), dtype=bool)
    for name in DOWN:
        st[name][expired] = False
        was_down |= st[name][rows]
        st[name][rows[starts[name]]] = True
    names = ("walk_n", "walk_first", "walk_last", "walk_t0", "walk_ts", "walk_ls")
    for name, v in zip(names, _EMPTY_RUN, strict=True):
        st[name][rows[start_any]] = v
    st["walk_step_t"][rows[start_any]] = np.nan
    st["walk_shaken"][rows[start_any]] = False
    st["down_t"][rows[start_any]] = t[start_any]
    # mirrors _walk of alerts/detection/wristband.py, one reading at a time
    dt, acc = ctx.dt, ctx.col("accel_peak_g")
    impact_g = np.broadcast_to(np.asarray(ctx.p.fall_impact_g, dtype=np.float64), (len(rows),))
    for i in np.flatnonzero(was_down & ~start_any).tolist():
        r = int(rows[i])
        if _walked(st, r, float(t[i]), float(dt[i]), float(steps[i]), bool(acc[i] >= impact_g[i])):
            for name in DOWN:
                st[name][r] = False
    st["down_fall"][rows[ok]] = False  # "I'm OK" ends the fall only
    return {name: st[name][rows].copy() for name in DOWN}


def _walked(st: dict[str, np.ndarray], r: int, t: float, dt: float, steps: float, knock: bool) -> bool:
    """One reading of a band that is down: does its bout of steps show walking (see _walk of the live
    rules: no pause, the windows between the bout's first and latest walked through, a walking rate,
    WALK_STEPS beyond WALK_NOISE_SPS x the bout's time)."""
    s = steps if math.isfinite(steps) else 0.0
    n, first, last = float(st["walk_n"][r]), float(st["walk_first"][r]), float(st["walk_last"][r])
    t0, ts, ls = float(st["walk_t0"][r]), float(st["walk_ts"][r]), float(st["walk_ls"][r])
    step_t, shaken = float(st["walk_step_t"][r]), bool(st["walk_shaken"][r])
    prev_t = t - dt
    if s > 0 and (n > 0 or shaken) and prev_t - step_t > WALK_PAUSE_S:  # a pause: a new bout
        n, first, last, t0, ts, ls = _EMPTY_RUN
        shaken = False
    elif n > 0 and prev_t - t0 > 0 and n - first < WALK_MIN_SPS * (prev_t - t0):
        if last > 0:  # the windows between were not walked through: restart at the previous one
            n, first, t0, ts = last, last, prev_t, ls
        else:
            n, first, last, t0, ts, ls = _EMPTY_RUN
    if knock and s > 0:  # an impact-level peak: the bout ends, these steps not counted
        n, first, last, t0, ts, ls = _EMPTY_RUN
    elif shaken:
        n, last = 0.0, 0.0
    else:
        if n <= 0 and s > 0:
            first, t0, ts = s, t, prev_t
        n, last = n + s, s
    ls = prev_t
    if s > 0:
        step_t = t
    walked = False
    if s > 0 and n > 0:
        run_s = t - (ts if math.isfinite(ts) else t0)
        if run_s >= WALK_RATE_MIN_S and n > WALK_MAX_SPS * run_s:  # a shaken band, not a walk
            shaken = True
            n, first, last, t0, ts, ls = _EMPTY_RUN
        elif n <= WALK_MAX_SPS * run_s and n >= WALK_STEPS + WALK_NOISE_SPS * run_s:
            walked = True
            n, first, last, t0, ts, ls = _EMPTY_RUN
    st["walk_n"][r], st["walk_first"][r], st["walk_last"][r] = n, first, last
    st["walk_t0"][r], st["walk_ts"][r], st["walk_ls"][r] = t0, ts, ls
    st["walk_step_t"][r], st["walk_shaken"][r] = step_t, shaken
    return walked


def evaluate(ctx: RuleContext) -> dict[EventType, Verdict]:
    p, t = ctx.p, ctx.t
    worn = ctx.flag("worn")
    charging = ctx.flag("charging")
    hr, spo2 = ctx.col("heart_rate_bpm"), ctx.col("spo2_pct")
    steps, still = ctx.col("steps"), ctx.col("stillness_s")

    sos = ctx.flag("sos")
    hr_ok = worn & ~charging & (hr > 0)
    rest = steps <= p.rest_steps
    hr_m = np.where(hr_ok, hr, np.nan)
    hi = band(hr_m, p.hr_high_bpm, p.hr_critical_high_bpm, p.hr_high_bpm - p.hr_hysteresis_bpm)
    hi = np.where(hr_ok & ~rest & (hi > 0), HOLD, hi).astype(np.int8)  # exercising: not at rest
    lo = band_low(hr_m, p.hr_low_bpm, p.hr_critical_low_bpm, p.hr_low_bpm + p.hr_hysteresis_bpm)
    sp = band_low(
        np.where(worn & ~charging & (spo2 > 0), spo2, np.nan),
        p.spo2_low_pct,
        p.spo2_critical_pct,
        p.spo2_clear_pct,
    )

    # daytime inactivity: still for hours while awake hours (night stillness is sleep)
    hour = ((t / 3600.0 + p.utc_offset_h) % 24.0 + 24.0) % 24.0
    day = (hour >= p.day_start_h) & (hour < p.day_end_h)
    idle = np.where(steps > p.rest_steps, 0.0, still)
    inact = select(
        [~worn, day & (idle >= p.inactivity_s), idle < 600.0], [UNKNOWN, MEDIUM, CLEAR], HOLD
    ).astype(np.int8)

    fall = _fall(ctx, worn)
    assert fall.immediate is not None
    down = _recovery(
        ctx, {"down_fall": fall.immediate, "down_sos": sos, "down_idle": inact == MEDIUM}, _ok(ctx, worn)
    )
    fall.level[(fall.level == CLEAR) & down["down_fall"]] = HOLD
    inact[(inact == CLEAR) & down["down_idle"]] = HOLD
    sos_lvl = np.where(sos, HIGH, np.where(down["down_sos"], HOLD, CLEAR)).astype(np.int8)

    off = ~worn & ~charging
    return {
        EventType.SOS: Verdict(sos_lvl, hr, sos),
        EventType.FALL: fall,
        EventType.HEART_RATE_HIGH: Verdict(hi, hr),
        EventType.HEART_RATE_LOW: Verdict(lo, hr),
        EventType.SPO2_LOW: Verdict(sp, spo2),
        EventType.INACTIVITY: Verdict(inact, idle / 3600.0),
        EventType.GEOFENCE_EXIT: _geofence(ctx),
        EventType.BAND_REMOVED: Verdict(np.where(off, MEDIUM, CLEAR).astype(np.int8), ctx.battery),
        EventType.LOW_BATTERY: battery_verdict(ctx),
    }
