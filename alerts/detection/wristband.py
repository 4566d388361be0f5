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

import numpy as np

from alerts.detection.detectors import EWMAZScore
from alerts.detection.detectors.base import Detector
from alerts.detection.episodes import CLEAR, HOLD, UNKNOWN, EpisodeRule
from alerts.detection.profiles import WristbandProfile
from alerts.detection.rulekit import RuleContext, Verdict, band, band_low, battery_verdict, select
from alerts.detection.segments import Segments
from firmware_bridge.kernel.events import EventType, Severity
from firmware_bridge.kernel.records import DeviceKind

KIND = DeviceKind.WRISTBAND
PROFILE = WristbandProfile
# evaluate takes a whole batch sorted by device (segments), not only readings of unique devices
BATCH = True
STATE: dict[str, tuple[str, float]] = {
    "impact_t": ("f8", np.nan),
    "impact_orient": ("f8", 0.0),
    "impact_flag": ("?", 0),
    "peak_t": ("f8", np.nan),  # estimated time of the impact peak (frame time - stillness_s)
    "fall_seen": ("?", 0),  # the previous frame carried the band's fall flag (flag edges, not levels)
    "gf_anchor_t": ("f8", np.nan),  # time of the last in-fence fix or fix approaching home (geofence)
    "gf_last_d": ("f8", np.nan),  # distance from home of the last valid fix (m)
    "gf_learned": ("f8", 0.0),  # fixes the learned home has taken (warm-up: a plain mean until enough)
}

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
    """FALL over a batch: a device with no impact pending and none in the batch is stateless (only its
    flag edge is remembered); the rest, rarely more than a few, run rank by rank (:func:`_fall_rank`)."""
    seg, st = ctx.seg, ctx.state
    if seg.single:
        # one rank: the state machine over every reading is exactly the split below (a cold device
        # steps to no impact, CLEAR or HOLD by motion, and stores its flag), without the sub-contexts
        return _fall_rank(ctx, worn)
    band_fall = ctx.flag("fall")
    hot_reading = worn & ((ctx.col("accel_peak_g") >= ctx.p.fall_impact_g) | band_fall)
    hot = seg.any(hot_reading) | np.isfinite(st["impact_t"][seg.seg_rows])
    if not hot.any():
        return _fall_quiet(ctx, band_fall, None)
    # every reading as a cold one (the cold devices' flags stored), then the hot devices' overwritten
    v = _fall_quiet(ctx, band_fall, np.repeat(~hot, seg.lengths))
    assert v.immediate is not None and v.since is not None
    level, value, lying, since = v.level, v.value, v.immediate, v.since
    hot_i = seg.in_segments(hot)
    for k in Segments(ctx.rows[hot_i]).ranks():
        ix = hot_i[k]
        h = _fall_rank(ctx.sub(ix), worn[ix])
        assert h.immediate is not None and h.since is not None
        level[ix], value[ix], lying[ix], since[ix] = h.level, h.value, h.immediate, h.since
    return v


def _fall_quiet(ctx: RuleContext, band_fall: np.ndarray, cold: np.ndarray | None) -> Verdict:
    """:func:`_fall_rank` for devices with no impact pending and none in these readings; stores the flag
    of the devices of the ``cold`` readings (None: all)."""
    p = ctx.p
    was_fall = ctx.seg.prev(band_fall, ctx.state["fall_seen"])
    ctx.seg.store_last(ctx.state["fall_seen"], band_fall, cold)
    still, steps = ctx.col("stillness_s"), ctx.col("steps")
    still0 = np.where(np.isfinite(still), still, 0.0)
    # the band's own fall state ended (its flag cleared) and the wearer moved since the previous uplink
    # (stillness_s restarted: shorter than the gap): up, even if sitting still without steps since
    stood = was_fall & ~band_fall & np.isfinite(still) & (still < ctx.dt)
    moving = (steps >= p.fall_recovered_steps) | (still0 < np.minimum(5.0, p.fall_stillness_s)) | stood
    lvl = np.where(moving, np.int8(CLEAR), np.int8(HOLD)).astype(np.int8)
    n = len(ctx.rows)
    return Verdict(lvl, ctx.col("accel_peak_g").copy(), np.zeros(n, dtype=bool), np.full(n, np.nan))


def _fall_rank(ctx: RuleContext, worn: np.ndarray) -> Verdict:
    """FALL for readings of unique devices (one rank), with the impact state machine."""
    p, rows, t = ctx.p, ctx.rows, ctx.t
    st = ctx.state
    acc, still = ctx.col("accel_peak_g"), ctx.col("stillness_s")
    orient, steps = ctx.col("orientation_change_deg"), ctx.col("steps")
    still0 = np.where(np.isfinite(still), still, 0.0)
    band_fall = ctx.flag("fall")
    broken = ctx.flag("rest_broken")  # fw >= 1.6: the wearer moved again after the window's peak
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
    lying = recent & worn & turned & ~moved & (still0 >= p.fall_stillness_s)
    got_up = recent & ~impact & moved
    st["impact_t"][rows[got_up]] = np.nan  # cancelled: never page a person who got up
    expired = np.isfinite(since) & (since > p.fall_window_s)
    st["impact_t"][rows[expired]] = np.nan
    # the band's own fall state ended (its flag cleared) and the wearer moved since the previous uplink
    # (stillness_s restarted: shorter than the gap): up, even if sitting still without steps since
    stood = was_fall & ~band_fall & np.isfinite(still) & (still < ctx.dt)
    moving = (steps >= p.fall_recovered_steps) | (still0 < np.minimum(5.0, p.fall_stillness_s)) | stood
    lvl = select([lying, recent & ~got_up, moving | got_up], [HIGH, HOLD, CLEAR], HOLD).astype(np.int8)
    return Verdict(lvl, np.where(recent, st["impact_orient"][rows], acc), lying, st["impact_t"][rows].copy())


def _at(x: object, ix: np.ndarray | slice, sub: np.ndarray) -> np.ndarray | float:
    """A profile threshold for the readings ``ix`` then ``sub``: the scalar itself when the profile is one
    for all (the usual case), else the per-reading values."""
    a = np.asarray(x, dtype=np.float64)
    return float(a) if a.ndim == 0 else a[ix][sub]


def _geofence(ctx: RuleContext, worn: np.ndarray, charging: np.ndarray) -> Verdict:
    """GEOFENCE_EXIT. The learned home learns only fixes inside the fence, and inside depends on the
    home: not a scan, so rank by rank (one pass when every band has one reading in the batch).

    Clears on a valid fix inside the fence, or on evidence of being home without one (bands rarely get a
    fix indoors): the ``charging`` flag (the charger is at home), or worn with no valid fix for
    ``geofence_indoor_s`` after the last in-fence fix or fix approaching home (``gf_anchor_t``). A valid
    fix outside the fence always wins; an unworn band without a fix is no evidence at all."""
    p, rows, t = ctx.p, ctx.rows, ctx.t
    n = len(rows)
    st = ctx.state
    lat, lon = ctx.col("lat"), ctx.col("lon")
    fix = ctx.flag("gps_valid") & np.isfinite(lat) & np.isfinite(lon)
    dlat_det, dlon_det = ctx.det["home_lat"], ctx.det["home_lon"]

    def per_row(x: object) -> np.ndarray:
        return np.broadcast_to(np.asarray(x, dtype=np.float64), (n,))

    home_lat, home_lon, radius = per_row(p.home_lat), per_row(p.home_lon), per_row(p.geofence_radius_m)
    given = np.isfinite(home_lat) & np.isfinite(home_lon)
    any_given = bool(given.any())  # usually no band has a configured home: the learned one for all
    level, dist = np.empty(n, dtype=np.int8), np.empty(n)
    anchor_st, last_d_st, gf_learned = st["gf_anchor_t"], st["gf_last_d"], st["gf_learned"]
    for ix in ctx.seg.ranks():
        r, g, la, lo, f, rad = rows[ix], given[ix], lat[ix], lon[ix], fix[ix], radius[ix]
        ti = t[ix]
        if any_given:
            hlat = np.where(g, home_lat[ix], dlat_det.baseline(r))  # type: ignore[attr-defined]
            hlon = np.where(g, home_lon[ix], dlon_det.baseline(r))  # type: ignore[attr-defined]
            known = g | dlat_det.warm(r)
        else:
            hlat = dlat_det.baseline(r)  # type: ignore[attr-defined]
            hlon = dlon_det.baseline(r)  # type: ignore[attr-defined]
            known = dlat_det.warm(r)
        coslat = np.cos(np.radians(np.where(np.isfinite(hlat), hlat, 0.0)))
        dy = np.radians(la - hlat)
        dx = np.radians(lo - hlon) * coslat
        d = EARTH_RADIUS_M * np.hypot(dx, dy)
        ok = f & known & np.isfinite(d)
        out = ok & (d > rad)
        # evidence of being home without a fix: an anchor at the last in-fence fix or fix approaching
        # home (nearer than the previous fix by more than GNSS scatter, within approach_r); any other
        # fix outside the fence drops it
        oi = np.flatnonzero(ok)
        ro, do = r[oi], d[oi]
        approach = (do < last_d_st[ro] - _at(p.geofence_approach_m, ix, oi)) & (
            do <= _at(p.geofence_approach_factor, ix, oi) * rad[oi]
        )
        anchor_st[ro] = np.where((do <= rad[oi]) | approach, ti[oi], np.nan)
        last_d_st[ro] = do
        indoors = worn[ix] & ~f  # worn without a fix: indoors once the anchor is old enough
        ci = np.flatnonzero(indoors)
        indoors[ci] = ti[ci] - anchor_st[r[ci]] >= _at(p.geofence_indoor_s, ix, ci)  # NaN anchor: False
        home = (charging[ix] | indoors) & ~out  # a valid fix outside the fence always wins
        level[ix] = select([out, home, ~ok, d > 0.8 * rad], [MEDIUM, CLEAR, UNKNOWN, HOLD], CLEAR)
        dist[ix] = d
        inside = np.flatnonzero(f & ~(ok & (d > 0.8 * rad)))
        ri, ti, la_i, lo_i = r[inside], ti[inside], la[inside], lo[inside]
        # a running median, not a mean: once warm a daytime fix moves the learned home by at most alpha x
        # step_m per axis, so walks that all leave in one direction cannot drag it out; a fix on the
        # charger or at night (at home) is learned in full, and so are the first warm_n fixes. A fix has a
        # finite position and the engine takes only finite times: nothing to filter
        learned = gf_learned[ri]
        gf_learned[ri] = learned + 1.0
        hour = ((ti / 3600.0 + _at(p.utc_offset_h, ix, inside)) % 24.0 + 24.0) % 24.0
        full = (
            (learned < _at(p.home_learn_warmup_fixes, ix, inside))
            | ~np.isfinite(hlat[inside])  # no home yet (home_learn_warmup_fixes < 1): this fix is the home
            | (hour < _at(p.day_start_h, ix, inside))
            | (hour >= _at(p.day_end_h, ix, inside))
            | charging[ix][inside]
        )
        if any_given:
            full |= g[inside]
        if not full.all():
            hl, ho = hlat[inside], hlon[inside]
            cy = _at(p.home_learn_step_m, ix, inside) / (EARTH_RADIUS_M * np.pi / 180.0)
            cx = cy / np.maximum(coslat[inside], 1e-6)
            la_i = np.where(full, la_i, hl + np.clip(la_i - hl, -cy, cy))
            lo_i = np.where(full, lo_i, ho + np.clip(lo_i - ho, -cx, cx))
        dlat_det.learn_known(ri, la_i, ti)
        dlon_det.learn_known(ri, lo_i, ti)
    return Verdict(level, dist)


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

    off = ~worn & ~charging
    return {
        EventType.SOS: Verdict(np.where(sos, HIGH, CLEAR).astype(np.int8), hr, sos),
        EventType.FALL: _fall(ctx, worn),
        EventType.HEART_RATE_HIGH: Verdict(hi, hr),
        EventType.HEART_RATE_LOW: Verdict(lo, hr),
        EventType.SPO2_LOW: Verdict(sp, spo2),
        EventType.INACTIVITY: Verdict(inact, idle / 3600.0),
        EventType.GEOFENCE_EXIT: _geofence(ctx, worn, charging),
        EventType.BAND_REMOVED: Verdict(np.where(off, MEDIUM, CLEAR).astype(np.int8), ctx.battery),
        EventType.LOW_BATTERY: battery_verdict(ctx),
    }
