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
  the fence (excursions are kept out of the baseline), seeded from the best evidence of home so far
  (a charger or still night fix, else the fix with the fewest steps in the warm-up; ``gf_seed``).
* **BAND_REMOVED** (off the wrist and not charging for ``band_removed_s``), **LOW_BATTERY**.

**Clearing needs evidence of recovery** (:func:`_recovery`; docs/detection-wristband.md). Once FALL, SOS
or INACTIVITY has paged the wearer as down, the only thing the payload reports that a person still on
the floor cannot produce is walking (:func:`_walk`): a run of uplinks after the event whose steps are a
sustained walk of ``WALK_STEPS`` beyond what an arm moving on the floor or a shaken band adds. Until
then what used to clear reads HOLD: a restarted stillness (rolling over), the band's fall flag ending
(one-shot, or timed out), an uplink without the SOS bit (it is only in the press's uplink).
GEOFENCE_EXIT's "indoors at home" evidence needs more than ``rest_steps`` steps since its anchor fix, so
a wearer standing just outside whose fix scattered inside is not cleared.
The one other evidence is the wearer's "I'm OK" key (``ok``, firmware >= 1.7, :func:`_ok`): it cancels
a fall (paged or not yet) and nothing else.
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
from firmware_bridge.wristband import ok_pressed

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
    "gf_steps": ("f8", 0.0),  # steps since the anchor (geofence): walked home, not standing outside
    # the learned home's seed (geofence): the rank of the fix it was last re-seeded from, lower is better
    # evidence of home: -1 a fix on the charger or a still night's, else the steps of the fix's uplink
    # (a daytime fix taken while walking is where the wearer walks, not where they live); NaN: none yet
    "gf_seed": ("f8", np.nan),
    # recovery evidence (:func:`_recovery`): the wearer was paged as down (a fall, an SOS press, daytime
    # inactivity) and has not walked since; the run of steps that counts as walking
    "down_fall": ("?", 0),
    "down_sos": ("?", 0),
    "down_idle": ("?", 0),
    "down_t": ("f8", np.nan),  # time of the last uplink that paged the wearer as down (any of the three)
    # the current run of steps (:func:`_walk`): its first uplink's window (start, end), the latest one's
    # start, its steps, the first uplink's steps and the latest uplink's (an empty run: walk_n 0); the
    # end of the last window with steps, and whether the bout of steps going on was a shaken band's
    "walk_ts": ("f8", np.nan),
    "walk_ls": ("f8", np.nan),
    "walk_step_t": ("f8", np.nan),
    "walk_shaken": ("?", 0),
    "walk_t0": ("f8", np.nan),
    "walk_n": ("f8", 0.0),
    "walk_first": ("f8", 0.0),
    "walk_last": ("f8", 0.0),
    # the wearer pressed "I'm OK" (ok bit, fw >= 1.7) since the last impact: the fall reads CLEAR, not
    # HOLD, until a new impact (the OK press is the evidence; sitting still after it is not a relapse)
    "fall_ok": ("?", 0),
}
DOWN = ("down_fall", "down_sos", "down_idle")
# walking (:func:`_walk`, docs/detection.md "Walking, not a pedometer's false steps"): a bout of steps
# without a pause, its windows between the first and the latest walked through, at a walking rate, with
# WALK_STEPS beyond WALK_NOISE_SPS x its time
WALK_STEPS = 10.0  # ~6 s / 4-5 m at an older adult's 1.6 steps/s: to a chair or the door, not a stagger
WALK_MIN_SPS = 0.5  # half the slowest gait (frail, with a frame ~0.9-1 step/s): a window walked through
WALK_MAX_SPS = 4.0  # 240 steps/min, above any walking or running of the old: a band shaken, not walked
WALK_RATE_MIN_S = 5.0  # a bout's rate is judged once it spans this (a pedometer's first steps come at once)
WALK_PAUSE_S = 4.0  # no step for longer than this ends a bout (a slow gait steps every ~1.1 s)
WALK_NOISE_SPS = 1.0 / 60.0  # false steps an arm moving on the floor may add: 1 a minute, not counted
# a down state lasts this long after its last event without walking, then the signal's own end clears
# again: a wearer who cannot walk with the band (wheelchair, bedridden, a rollator the pedometer does not
# count) must not have a second fall or SOS press days later swallowed by a stale open episode (an open
# episode raises nothing new). 2 h: far beyond dispatch and arrival (10-15 min), and a still wearer is
# by then under daytime INACTIVITY, whose own down state restarts the 2 h
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
    """FALL over a batch: a device with no impact pending and none in the batch is stateless (only its
    flag edge is remembered); the rest, rarely more than a few, run rank by rank (:func:`_fall_rank`)."""
    seg, st = ctx.seg, ctx.state
    if seg.single:
        # one rank: the state machine over every reading is exactly the split below (a cold device
        # steps to no impact, CLEAR or HOLD by motion, and stores its flag), without the sub-contexts
        return _fall_rank(ctx, worn)
    band_fall = ctx.flag("fall")
    hot_reading = worn & ((ctx.col("accel_peak_g") >= ctx.p.fall_impact_g) | band_fall | _ok(ctx, worn))
    hot = seg.any(hot_reading) | np.isfinite(st["impact_t"][seg.seg_rows])
    if not hot.any():
        return _fall_quiet(ctx, band_fall, None)
    # every reading as a cold one (the cold devices' flags stored), then the hot devices' overwritten
    v = _fall_quiet(ctx, band_fall, np.repeat(~hot, seg.lengths))
    assert v.immediate is not None and v.since is not None and v.cause is not None
    level, value, lying, since, cause = v.level, v.value, v.immediate, v.since, v.cause
    hot_i = seg.in_segments(hot)
    for k in Segments(ctx.rows[hot_i]).ranks():
        ix = hot_i[k]
        h = _fall_rank(ctx.sub(ix), worn[ix])
        assert h.immediate is not None and h.since is not None and h.cause is not None
        level[ix], value[ix], lying[ix], since[ix], cause[ix] = (
            h.level,
            h.value,
            h.immediate,
            h.since,
            h.cause,
        )
    return v


def _fall_quiet(ctx: RuleContext, band_fall: np.ndarray, cold: np.ndarray | None) -> Verdict:
    """:func:`_fall_rank` for devices with no impact pending, none and no "I'm OK" in these readings;
    stores the flag of the devices of the ``cold`` readings (None: all)."""
    p = ctx.p
    was_fall = ctx.seg.prev(band_fall, ctx.state["fall_seen"])
    ctx.seg.store_last(ctx.state["fall_seen"], band_fall, cold)
    still, steps = ctx.col("stillness_s"), ctx.col("steps")
    still0 = np.where(np.isfinite(still), still, 0.0)
    # the band's own fall state ended (its flag cleared) and the wearer moved since the previous uplink
    # (stillness_s restarted: shorter than the gap): up, even if sitting still without steps since
    stood = was_fall & ~band_fall & np.isfinite(still) & (still < ctx.dt)
    moving = (steps >= p.fall_recovered_steps) | (still0 < np.minimum(5.0, p.fall_stillness_s)) | stood
    fall_ok = ctx.state["fall_ok"][ctx.rows]  # OK pressed since the last impact (constant: no ok here)
    moving |= fall_ok
    lvl = np.where(moving, np.int8(CLEAR), np.int8(HOLD)).astype(np.int8)
    n = len(ctx.rows)
    return Verdict(
        lvl, ctx.col("accel_peak_g").copy(), np.zeros(n, dtype=bool), np.full(n, np.nan), cause=fall_ok
    )


def _fall_rank(ctx: RuleContext, worn: np.ndarray) -> Verdict:
    """FALL for readings of unique devices (one rank), with the impact state machine."""
    p, rows, t = ctx.p, ctx.rows, ctx.t
    st = ctx.state
    acc, still = ctx.col("accel_peak_g"), ctx.col("stillness_s")
    orient, steps = ctx.col("orientation_change_deg"), ctx.col("steps")
    still0 = np.where(np.isfinite(still), still, 0.0)
    band_fall = ctx.flag("fall")
    broken = ctx.flag("rest_broken")  # fw >= 1.6: the wearer moved again after the window's peak
    ok = _ok(ctx, worn)  # fw >= 1.7: the wearer pressed "I'm OK"
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
    # "I'm OK" cancels the impact (within the 30 s before paging: the band's cancel window) or the paged
    # fall, also in the impact's own uplink (the band accepts the press only after its fall alarm)
    moved |= ok
    lying = recent & worn & turned & ~moved & (still0 >= p.fall_stillness_s)
    got_up = recent & (~impact | ok) & moved
    st["impact_t"][rows[got_up]] = np.nan  # cancelled: never page a person who got up
    expired = np.isfinite(since) & (since > p.fall_window_s)
    st["impact_t"][rows[expired]] = np.nan
    st["fall_ok"][rows[impact & ~ok]] = False  # a new impact: an earlier OK says nothing about it
    st["fall_ok"][rows[ok]] = True
    # the band's own fall state ended (its flag cleared) and the wearer moved since the previous uplink
    # (stillness_s restarted: shorter than the gap): up, even if sitting still without steps since
    stood = was_fall & ~band_fall & np.isfinite(still) & (still < ctx.dt)
    moving = (steps >= p.fall_recovered_steps) | (still0 < np.minimum(5.0, p.fall_stillness_s)) | stood
    fall_ok = st["fall_ok"][rows]  # (a copy: fancy indexing)
    moving |= fall_ok
    lvl = select([lying, recent & ~got_up, moving | got_up], [HIGH, HOLD, CLEAR], HOLD).astype(np.int8)
    # a clear at a reading after an "I'm OK" since the last impact is the key's (the step says so:
    # OK_KEY_MARK, docs/loop.md), whatever else the reading shows
    return Verdict(
        lvl,
        np.where(recent, st["impact_orient"][rows], acc),
        lying,
        st["impact_t"][rows].copy(),
        cause=fall_ok,
    )


def _ok(ctx: RuleContext, worn: np.ndarray) -> np.ndarray:
    """The wearer's "I'm OK" per reading: the ``ok`` bit from firmware >= 1.7 (``OK_MIN_FW``) on a worn
    band. The same bit from an older firmware is a reserved bit (never set on purpose) and is ignored; so
    is a press on a band off the wrist (whoever pressed it, it says nothing about the wearer). Without
    the readings' firmware versions in the context (``fw_version``) nothing is taken as a press."""
    fw = getattr(ctx, "fw_version", None)
    if fw is None:
        return np.zeros(len(ctx.rows), dtype=bool)
    on: np.ndarray = ok_pressed(ctx.flags, fw) & worn
    return on


def _walk(ctx: RuleContext, cont: np.ndarray) -> np.ndarray:
    """Walking per reading, for the readings ``cont`` (indices) of unique devices that are down (the
    others are neither read nor touched); updates the bout of steps in the state.

    What the band reports (docs/payloads.md) is a step count per uplink window and the window's length
    (the time since the previous uplink) - no posture, no activity class, no cadence. A wrist pedometer
    also counts arm movements: a wearer on the floor waving or struggling, or a band being shaken, adds
    steps. So walking is a *bout* of windows whose steps look like a walk and could not be that noise:

    * **no pause**: a stepless stretch longer than ``WALK_PAUSE_S`` before a window with steps ends the
      bout (bursts of arm movement; at a 10 s or longer uplink: any stepless window);
    * **sustained**: the windows between the bout's first and its latest (a walk crosses them whole)
      average >= ``WALK_MIN_SPS``; when they do not, the bout restarts at the previous window (a walk may
      have begun at its end). The first and the latest window may hold a walk's start and end only;
    * **no impact**: a window whose peak acceleration reaches ``fall_impact_g`` (a fall, a knock, an arm
      flailing, a band shaken - a walking wrist peaks at ~1.2-2 g) ends the bout, its steps not counted;
    * **a walking rate**: at most ``WALK_MAX_SPS`` over the bout's time (its first window's start to this
      uplink); a bout faster than that once it spans ``WALK_RATE_MIN_S`` is a shaken band: its steps and
      the rest of that bout (until a pause) never count;
    * **enough**: ``WALK_STEPS`` beyond ``WALK_NOISE_SPS`` x the bout's time: at an uplink every second
      10-11 steps, in a 5-min summary 15, across two summaries 20;
    * judged at an uplink with steps.

    Any cadence (1 s to the 5-min summary, event uplinks between) and every firmware: it reads only
    ``steps``, ``accel_peak_g`` and the reading times (an unknown count is 0, docs/payloads.md; NaN
    steps read as 0, a NaN peak as no impact)."""
    st, rows, t, dt = ctx.state, ctx.rows[cont], ctx.t[cont], ctx.dt[cont]
    s = ctx.col("steps")[cont]
    s = np.where(np.isfinite(s), s, 0.0)
    g = np.broadcast_to(np.asarray(ctx.p.fall_impact_g, dtype=np.float64), (len(ctx.rows),))[cont]
    knock = (s > 0) & (ctx.col("accel_peak_g")[cont] >= g)
    n, first, last = st["walk_n"][rows], st["walk_first"][rows], st["walk_last"][rows]
    ts, t0, ls = st["walk_ts"][rows], st["walk_t0"][rows], st["walk_ls"][rows]
    step_t, shaken = st["walk_step_t"][rows], st["walk_shaken"][rows]
    prev_t = t - dt  # the end of the previous window (NaN: the device's first reading)
    stepping = s > 0
    # a pause before this window's steps: the bout before it (walked or shaken) is over
    paused = stepping & ((n > 0) | shaken) & (prev_t - step_t > WALK_PAUSE_S)
    shaken &= ~paused
    # sustained: the windows after the bout's first, up to the previous one, walked through
    span = prev_t - t0
    lapsed = paused | ((n > 0) & (span > 0) & (n - first < WALK_MIN_SPS * span))
    again = lapsed & ~paused & (last > 0)  # restart at the previous window
    n = np.where(lapsed, np.where(again, last, 0.0), n)
    first = np.where(lapsed, np.where(again, last, 0.0), first)
    t0 = np.where(lapsed, np.where(again, prev_t, np.nan), t0)
    ts = np.where(lapsed, np.where(again, ls, np.nan), ts)
    # an impact: the bout ends here, this window's steps not counted
    n, first = np.where(knock, 0.0, n), np.where(knock, 0.0, first)
    t0, ts = np.where(knock, np.nan, t0), np.where(knock, np.nan, ts)
    # this window: a new bout starts with it, or it extends the bout (a shaken one counts nothing)
    skip = shaken | knock
    new = (n <= 0) & stepping & ~skip
    first = np.where(new, s, first)
    t0 = np.where(new, t, t0)
    ts = np.where(new, prev_t, ts)
    n = np.where(skip, 0.0, n + s)
    last = np.where(skip, 0.0, s)
    ls = prev_t
    step_t = np.where(stepping, t, step_t)
    run_s = t - np.where(np.isfinite(ts), ts, t0)  # the bout's time
    fast = stepping & (n > 0) & (run_s >= WALK_RATE_MIN_S) & (n > WALK_MAX_SPS * run_s)
    shaken |= fast
    walked = stepping & (n > 0) & (n <= WALK_MAX_SPS * run_s) & (n >= WALK_STEPS + WALK_NOISE_SPS * run_s)
    done = fast | walked  # the bout is over: shaken (counts nothing until a pause) or walked
    n[done], first[done], last[done], t0[done], ts[done], ls[done] = 0, 0, 0, np.nan, np.nan, np.nan
    st["walk_n"][rows], st["walk_first"][rows], st["walk_last"][rows] = n, first, last
    st["walk_t0"][rows], st["walk_ts"][rows], st["walk_ls"][rows] = t0, ts, ls
    st["walk_step_t"][rows], st["walk_shaken"][rows] = step_t, shaken
    out = np.zeros(len(ctx.rows), dtype=bool)
    out[cont] = walked
    return out


def _recovery_rank(
    ctx: RuleContext, starts: dict[str, np.ndarray], ok: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Recovery evidence for readings of unique devices (one rank). ``starts``: per ``DOWN`` state, the
    readings that page the wearer as down (a fall's lying frame, an SOS press, daytime inactivity). The
    only evidence of recovery a band reports is walking (docs/detection-wristband.md; :func:`_walk`),
    counted from the uplink after the event. Walking ends every down state at once; the wearer's "I'm OK"
    (``ok``) ends ``down_fall`` only (an SOS is a call for help the operator answers; inactivity is not
    what the press cancels). Returns (walked, the down states after each reading); devices neither down
    nor starting are not touched (their run is not kept)."""
    st, rows, t = ctx.state, ctx.rows, ctx.t
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
    # a new event: the run restarts after it (the event frame's own steps may predate it)
    rs = rows[start_any]
    for name, fill in (("walk_n", 0.0), ("walk_first", 0.0), ("walk_last", 0.0)):
        st[name][rs] = fill
    for name in ("walk_t0", "walk_ts", "walk_ls", "walk_step_t"):
        st[name][rs] = np.nan
    st["walk_shaken"][rs] = False
    st["down_t"][rs] = t[start_any]
    cont = np.flatnonzero(was_down & ~start_any)
    walked = _walk(ctx, cont) if len(cont) else np.zeros(len(rows), dtype=bool)
    rw = rows[walked]
    for name in DOWN:
        st[name][rw] = False
    st["down_fall"][rows[ok]] = False
    return walked, {name: st[name][rows].copy() for name in DOWN}


def _recovery(
    ctx: RuleContext, starts: dict[str, np.ndarray], ok: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """:func:`_recovery_rank` over a batch: only devices down or starting (a few) run, rank by rank."""
    seg, st = ctx.seg, ctx.state
    n = len(ctx.rows)
    start_any = starts["down_fall"] | starts["down_sos"] | starts["down_idle"]
    srows = seg.seg_rows
    hot = seg.any(start_any) | st["down_fall"][srows] | st["down_sos"][srows] | st["down_idle"][srows]
    walked = np.zeros(n, dtype=bool)
    downs = {name: np.zeros(n, dtype=bool) for name in DOWN}
    if not hot.any():  # the usual batch: nobody down, nobody paged (nothing to change either)
        return walked, downs
    if seg.single:
        return _recovery_rank(ctx, starts, ok)
    hot_i = seg.in_segments(hot)
    for k in Segments(ctx.rows[hot_i]).ranks():
        ix = hot_i[k]
        w, d = _recovery_rank(ctx.sub(ix), {name: starts[name][ix] for name in DOWN}, ok[ix])
        walked[ix] = w
        for name in DOWN:
            downs[name][ix] = d[name]
    return walked, downs


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
    warm_n = per_row(p.home_learn_warmup_fixes)
    steps_b = ctx.col("steps")
    hour_b = ((t / 3600.0 + per_row(p.utc_offset_h)) % 24.0 + 24.0) % 24.0
    night_b = (hour_b < per_row(p.day_start_h)) | (hour_b >= per_row(p.day_end_h))
    still_b = ~(steps_b > per_row(p.rest_steps))  # NaN steps: no walking reported
    # the seed rank of each reading's fix (see STATE "gf_seed"): NaN steps rank last
    rank_b = np.where(charging | (night_b & still_b), -1.0, np.where(np.isfinite(steps_b), steps_b, np.inf))
    given = np.isfinite(home_lat) & np.isfinite(home_lon)
    any_given = bool(given.any())  # usually no band has a configured home: the learned one for all
    level, dist = np.empty(n, dtype=np.int8), np.empty(n)
    anchor_st, last_d_st, gf_learned = st["gf_anchor_t"], st["gf_last_d"], st["gf_learned"]
    gf_steps, steps = st["gf_steps"], ctx.col("steps")
    gf_seed = st["gf_seed"]
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
        anchored = (do <= rad[oi]) | approach
        anchor_st[ro] = np.where(anchored, ti[oi], np.nan)
        last_d_st[ro] = do
        # steps since the anchor: a wearer who walked home took them (>= 240 m from the hysteresis band,
        # hundreds of steps); one standing just outside, whose fix scattered inside or nearer, did not
        si = steps[ix]
        si = np.where(np.isfinite(si), si, 0.0)
        new_anchor = np.zeros(len(r), dtype=bool)
        new_anchor[oi[anchored]] = True
        gf_steps[r] = np.where(new_anchor, 0.0, gf_steps[r] + si)
        indoors = worn[ix] & ~f  # worn without a fix: indoors once the anchor is old enough
        ci = np.flatnonzero(indoors)
        indoors[ci] = (ti[ci] - anchor_st[r[ci]] >= _at(p.geofence_indoor_s, ix, ci)) & (  # NaN: False
            gf_steps[r[ci]] > _at(p.rest_steps, ix, ci)
        )
        home = (charging[ix] | indoors) & ~out  # a valid fix outside the fence always wins
        level[ix] = select([out, home, ~ok, d > 0.8 * rad], [MEDIUM, CLEAR, UNKNOWN, HOLD], CLEAR)
        dist[ix] = d
        # re-seed the learned home from a better fix: during the warm-up a fix with fewer steps than the
        # seed's (a band that starts on a walk seeded its home 150-170 m off and called an exit 100-250 s
        # early, seeds 11 / 15), and at any time the first fix on the charger or of a still night; only
        # from a fix within the fence's hysteresis band: a wearer standing still outside, sitting down
        # outside at night or charging from a power bank outside must not become "home"
        rk = rank_b[ix]
        near = ~(ok & (d > 0.8 * rad))
        reseed = f & ~g & near & ~(rk >= gf_seed[r]) & ((gf_learned[r] < warm_n[ix]) | (rk < 0.0))
        gf_seed[r] = np.where(reseed, rk, gf_seed[r])
        inside = np.flatnonzero((f & ~(ok & (d > 0.8 * rad))) | reseed)
        if reseed.any():
            dlat_det.arrays["mean"][r[reseed]] = np.nan  # fresh: the next learn takes the fix as it is
            dlon_det.arrays["mean"][r[reseed]] = np.nan
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
            | reseed[inside]
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

    # clears need evidence of recovery (walking), not the mere end of the signal: a wearer still on the
    # floor rolls over (stillness restarts), an SOS bit is only in the press's uplink, an arm movement
    # restarts the stillness of an inactive wearer; while down, those read HOLD instead of CLEAR
    fall = _fall(ctx, worn)
    assert fall.immediate is not None
    _walked, down = _recovery(
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
        EventType.GEOFENCE_EXIT: _geofence(ctx, worn, charging),
        EventType.BAND_REMOVED: Verdict(np.where(off, MEDIUM, CLEAR).astype(np.int8), ctx.battery),
        EventType.LOW_BATTERY: battery_verdict(ctx),
    }
