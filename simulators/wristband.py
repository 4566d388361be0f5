"""Signal model of the wristband worn by elderly people living alone (智能手环), vectorised.

The daily life a detector must not mistake for an emergency:
- heart rate follows sleep (22:00-06:00 local, resting rate minus ~7 bpm) and daytime activity bursts
  (up to +40 bpm while walking, with steps); SpO2 dips a point in sleep;
- at night the wearer lies still for hours (``stillness_s`` grows): that is sleep, not inactivity;
- a knock of the band on a table gives a 2-3.2 g peak with no fall flag and no stillness (unlabelled);
- daytime walks move the position up to half the geofence radius from home;
- a geofence exit walks out, stays out, and walks straight back home at the wearer's own gait speed
  (``GAIT_MPS``, from the band's activity level) with outdoor fixes on the way: the episode's truth ends
  when the wearer is back inside the fence, the schedule's end when they are at the door;
- GNSS is an outdoor sensor: indoors (asleep, at home, the band on the table or the charger) most
  uplinks carry no fresh fix (``gps_valid`` clear); outdoors (beyond ``OUTDOOR_M`` on a walk, a geofence
  exit, a fall in the park) fixes are valid after a per-band time to first fix. Without a fix the band
  repeats its last fix, sends 0/0 or sends "not available" (NaN), one behaviour per band (its vendor's
  firmware, ``GPS_VENDORS``); docs/simulators.md "GNSS fixes".
- in the evening the band sits on its charger for 0.5-2 h: ``worn`` clear and HR 0 like a removed band,
  but with the ``charging`` flag (unlabelled: a band_removed alert for it is a false alarm).

Events: a *fall* is a 2.5-6 g impact, the band's ``fall`` flag, a changed orientation and then growing
stillness while the person stays down (``fall``, HIGH). When the person gets up within 5-25 s the episode
is labelled ``fall`` with severity NONE: the band fired, but no one should be paged (docs/simulators.md).
SOS button, heart rate too high/low at rest, SpO2 below 90 %, hours of daytime inactivity, leaving the
home geofence (``GEOFENCE_M``), band removed (``worn`` clear, HR 0), low battery, silence.

A summary every ``HEARTBEAT_S`` (5 min); immediately on SOS, fall and wear changes.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from firmware_bridge.kernel.events import EventType as E
from firmware_bridge.kernel.events import Severity as S
from firmware_bridge.kernel.records import DeviceKind
from simulators.base import F64, I64, Effect, KindModel, Schedule
from simulators.neighbourhood import M_PER_DEG_LAT
from simulators.truth import TruthRecord

H = 3600.0
D = 86400.0
GEOFENCE_M = 300.0  # home geofence radius (profile "default"; docs/simulators.md)
WALK_PERIOD_S = 7200.0  # the daytime activity wave: out and back home every two hours
WALK_MAX_M = GEOFENCE_M * 0.5  # how far the daytime walk goes at full activity
ACTIVITY = (0.3, 1.0)  # per wearer: how active (the walk wave's height)
# per wearer, from the activity level: usual gait speed of older adults (m/s) on the way home
# (Studenski et al., JAMA 2011: 0.92 +/- 0.27 m/s; Bohannon & Williams Andrews, Physiotherapy 2011:
# 0.94-1.26 m/s for ages 70-99); the simulated route home is straight, so this is also the speed
# towards home
GAIT_MPS = (0.7, 1.2)
OUTDOOR_M = 0.3 * GEOFENCE_M  # further than this from home the wearer is out of doors (sky in view)
# what a band puts in lat/lon without a fresh fix (docs/simulators.md "GNSS fixes")
GPS_REPEAT, GPS_ZERO, GPS_NAN = 0, 1, 2
GPS_VENDORS = ("repeat last fix", "0/0", "not available")
GPS_VENDOR_P = (0.5, 0.25, 0.25)
TTFF_S = (15.0, 60.0)  # time to first fix after stepping outside (warm/hot start, assisted), per band
P_FIX_OUTDOORS = 0.95  # after the first fix: uplinks with a fix outdoors (trees, high-rise canyons)
P_FIX_INDOORS = (0.0, 0.08)  # per band: share of indoor uplinks with a fix (by a window, single storey)
GPS_STREAM = 0x475053  # "GPS": spawn key of the GNSS random stream (the others' draws stay unchanged)


class WristbandModel(KindModel):
    KIND: ClassVar[DeviceKind] = DeviceKind.WRISTBAND
    EFFECTS: ClassVar[tuple[Effect, ...]] = (
        # p0 impact peak (g), p1 orientation change (deg)
        Effect(
            "fall",
            E.FALL,
            S.HIGH,
            0.002,
            (1200.0, 5400.0),
            ((2.5, 6.0), (45.0, 150.0)),
            offsets=(1.0, 30.0, 60.0, 120.0),
            repeat_s=300.0,
            hours=(6.0, 23.0),
            group="person",
        ),
        Effect(
            "fall_recovered",
            E.FALL,
            S.NONE,
            0.003,
            (5.0, 25.0),
            ((2.5, 4.5), (30.0, 120.0)),
            offsets=(1.0,),
            hours=(6.0, 23.0),
            group="person",
        ),
        Effect(
            "bump", None, S.NONE, 0.05, (1.0, 1.0), ((2.0, 3.2),), offsets=(), on_end=False, hours=(7.0, 22.0)
        ),
        Effect("sos", E.SOS, S.HIGH, 0.002, (180.0, 1200.0), offsets=(0.5,), repeat_s=60.0, group="person"),
        Effect(
            "hr_high",
            E.HEART_RATE_HIGH,
            S.MEDIUM,
            0.001,
            (900.0, 5400.0),
            ((125.0, 165.0),),
            offsets=(),
            on_end=False,
            hours=(8.0, 20.0),
            group="person",
        ),
        Effect(
            "hr_low",
            E.HEART_RATE_LOW,
            S.MEDIUM,
            0.001,
            (900.0, 5400.0),
            ((32.0, 42.0),),
            offsets=(),
            on_end=False,
            hours=(8.0, 20.0),
            group="person",
        ),
        Effect(
            "spo2_low",
            E.SPO2_LOW,
            S.MEDIUM,
            0.001,
            (600.0, 3600.0),
            ((80.0, 89.0),),
            offsets=(),
            on_end=False,
            group="person",
        ),
        Effect(
            "inactivity",
            E.INACTIVITY,
            S.MEDIUM,
            0.001,
            (3 * H, 6 * H),
            offsets=(),
            on_end=False,
            hours=(8.0, 14.0),
            group="person",
        ),
        # p0 how far out (x radius), p1 bearing (rad), p2 fraction of the episode spent walking out; the
        # walk home at the wearer's gait speed takes the episode's last reach / GAIT seconds (_gf_dist)
        Effect(
            "geofence_exit",
            E.GEOFENCE_EXIT,
            S.MEDIUM,
            0.002,
            (2400.0, 3 * H),
            ((1.6, 4.0), (0.0, 2 * np.pi), (0.3, 0.6)),
            offsets=(),
            on_end=False,
            hours=(7.0, 19.0),
            group="person",
        ),
        Effect("band_removed", E.BAND_REMOVED, S.MEDIUM, 0.01, (H, 6 * H), hours=(7.0, 21.0), group="person"),
        # on the charger in the evening: off the wrist like a removed band, but with the charging flag
        Effect("charging", None, S.NONE, 0.3, (1800.0, 2 * H), hours=(20.0, 23.0), group="person"),
        Effect("low_battery", E.LOW_BATTERY, S.LOW, 0.002, (2 * H, 12 * H), ((5.0, 14.0),), on_end=False),
        Effect("device_silent", E.DEVICE_SILENT, S.LOW, 0.002, (2 * H, D), silent=True, group="person"),
    )

    def init_state(self) -> None:
        n, rng = self.n, self.rng
        self.rest_hr = rng.uniform(58.0, 80.0, n)
        self.spo2_base = rng.uniform(95.0, 98.5, n)
        self.activity = rng.uniform(*ACTIVITY, n)
        # no draw: the gait speed follows the activity level (a more active wearer walks faster)
        self.gait = GAIT_MPS[0] + (GAIT_MPS[1] - GAIT_MPS[0]) * (self.activity - ACTIVITY[0]) / (
            ACTIVITY[1] - ACTIVITY[0]
        )
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.walk_dir = rng.uniform(0, 2 * np.pi, n)
        self.batt_phase = rng.uniform(0, 75.0 / 0.6 * H, n)
        self.m_per_deg_lon = M_PER_DEG_LAT * np.cos(np.radians(self.sites.lat if n else np.zeros(0)))
        # a walk is out of doors while sin(wave) >= w0: out_r >= OUTDOOR_M (the clip at 1 only caps the
        # walk at WALK_MAX_M > OUTDOOR_M); the outdoor spell starts at phase phi0 and lasts pi - 2 phi0
        w0 = np.sqrt(np.minimum(OUTDOOR_M / (WALK_MAX_M * 1.5 * self.activity), 1.0))
        self.walk_phi0 = np.arcsin(w0)
        self.walk_out_span = np.pi - 2 * self.walk_phi0
        # GNSS draws come from their own stream, spawned from the fleet's seed for this kind: adding them
        # leaves every other draw (schedule, vital signs, noise) of a seed exactly as it was
        self.gps_rng = np.random.default_rng(_child_seed(self.rng, GPS_STREAM))
        g = self.gps_rng
        self.gps_vendor = g.choice(len(GPS_VENDORS), size=n, p=GPS_VENDOR_P).astype(np.int64)
        self.gps_rep = self.gps_vendor == GPS_REPEAT
        self.gps_fill = np.where(self.gps_vendor == GPS_ZERO, 0.0, np.nan)  # what "zero" / "n/a" bands send
        self.ttff = g.uniform(*TTFF_S, n)
        self.p_fix_in = g.uniform(*P_FIX_INDOORS, n)
        # the last fix each band holds (vendor "repeat"): from before the run, near home
        self.fix_lat = self.sites.lat + g.normal(0, 15.0, n) / M_PER_DEG_LAT if n else np.zeros(0)
        self.fix_lon = self.sites.lon + g.normal(0, 15.0, n) / self.m_per_deg_lon if n else np.zeros(0)

    def _walk(self, idx: I64, tau: F64, hour: F64 | None = None) -> tuple[F64, F64, F64]:
        """Daytime walk at ``tau``: activity, distance from home (m), and seconds since the wearer stepped
        out of doors (NaN when indoors). Closed form: out of doors while ``sin`` of the activity wave is
        above ``w0``; the spell began where it crossed ``w0`` (or at 06:00 when the day began mid-spell)."""
        if hour is None:
            hour = ((tau + 8 * 3600.0) % 86400.0) / 3600.0
        asleep = (hour >= 22.0) | (hour < 6.0)
        theta = 2 * np.pi * tau / WALK_PERIOD_S + self.phase[idx]
        wave = np.clip(np.sin(theta), 0, 1)
        act = np.where(asleep, 0.0, self.activity[idx] * wave**2)
        out_r = WALK_MAX_M * np.clip(act * 1.5, 0, 1)
        dth = np.mod(theta - self.walk_phi0[idx], 2 * np.pi)
        outside = ~asleep & (dth <= self.walk_out_span[idx])
        since = np.minimum(dth * (WALK_PERIOD_S / (2 * np.pi)), (hour - 6.0) * 3600.0)
        return act, out_r, np.where(outside, since, np.nan)

    def truth_of(self, row: int, s: Schedule, run_end: float) -> TruthRecord | None:
        if self.EFFECTS[int(s.eff[row])].name == "geofence_exit":
            # the truth is the time outside the fence: from crossing it on the way out to crossing it on
            # the way home (the same ramps as sample(), without the 8 m position noise)
            dev = int(s.dev[row])
            st, en = float(s.start[row]), float(s.end[row])
            ramps = _gf_ramps(self.gait[[dev]], np.array([en - st]), s.p[[row], 0], s.p[[row], 2])
            reach, out_s, home_s = (float(x[0]) for x in ramps)
            if reach * min(1.0, (en - st) / (out_s + home_s)) <= GEOFENCE_M:
                return None  # too short to get out of the fence (not with the stock durations)
            cross_out = st + out_s * GEOFENCE_M / reach
            cross_in = en - home_s * GEOFENCE_M / reach
            if cross_out >= run_end:
                return None
            return TruthRecord(
                self.sites.device_id[dev],
                self.KIND,
                E.GEOFENCE_EXIT,
                cross_out,
                float(min(cross_in, run_end)),
                S.MEDIUM,
            )
        if self.EFFECTS[int(s.eff[row])].name == "spo2_low":
            rec = super().truth_of(row, s, run_end)
            if rec is not None and s.p[row, 0] < 85:
                return TruthRecord(rec.device_id, rec.kind, rec.event_type, rec.start, rec.end, S.HIGH)
            return rec
        return super().truth_of(row, s, run_end)

    def sample(self, idx: I64, tau: F64) -> tuple[F64, npt.NDArray[np.int64], F64]:
        m = len(idx)
        rng = self.rng
        f = self.spec.flag
        hour = ((tau + 8 * 3600.0) % 86400.0) / 3600.0
        asleep = (hour >= 22.0) | (hour < 6.0)
        since_bed = np.where(hour >= 22.0, hour - 22.0, hour + 2.0) * 3600.0
        act, out_r, out_since = self._walk(idx, tau, hour)
        rest = self.rest_hr[idx]
        prev = self.prev_up_of(idx)
        gap = np.clip(tau - prev, 0, 300.0)
        hr = np.where(asleep, rest - 7.0, rest + 40.0 * act) + rng.normal(0, 2.5, m)
        spo2 = self.spo2_base[idx] - np.where(asleep, 1.0, 0.0) + rng.normal(0, 0.7, m)
        peak = 1.0 + 0.9 * act + np.abs(rng.normal(0, 0.04, m))
        still = np.where(
            asleep, since_bed, np.where(act < 0.05, gap * rng.uniform(0.5, 1.0, m), rng.uniform(0, 30, m))
        )
        orient = np.where(asleep, rng.uniform(0, 15, m), rng.uniform(0, 40, m))
        steps = np.rint(act * 1.6 * gap * rng.uniform(0.7, 1.0, m))
        bearing = self.walk_dir[idx] + tau / 3600.0
        nx, ny = rng.normal(0, 8.0, m), rng.normal(0, 8.0, m)
        dx = out_r * np.cos(bearing) + nx
        dy = out_r * np.sin(bearing) + ny
        battery = 100.0 - ((tau - self.t0 + self.batt_phase[idx]) * 0.6 / H) % 75.0
        flags = np.full(m, f("worn").mask, dtype=np.int64)

        a = self.since_last_uplink("bump", idx, tau)
        peak = np.where(a, np.maximum(peak, self.param("bump", idx, 0)), peak)
        for name in ("fall", "fall_recovered"):
            hit = self.since_last_uplink(name, idx, tau)
            peak = np.where(hit, self.param(name, idx, 0), peak)
            orient = np.where(hit, self.param(name, idx, 1), orient)
            flags |= np.where(hit, f("fall").mask, 0)
            # stillness is measured from the impact: lying still so far, or until the person got up
            since = np.minimum(self.elapsed(name, idx, tau), self.duration(name, idx))
            still = np.where(hit, np.maximum(since, 0.0), still)
        a = self.active("fall", idx, tau)  # still down
        el = self.elapsed("fall", idx, tau)
        still = np.where(a, el, still)
        orient = np.where(a, self.param("fall", idx, 1), orient)
        steps = np.where(a, 0.0, steps)
        hr = np.where(a, rest + 15.0 + rng.normal(0, 3, m), hr)
        flags |= np.where(a, f("fall").mask, 0)
        if a.any():  # lying where they fell: position and sky view of the impact, the fix keeps coming
            fs = np.where(a, self.act_start[self.eidx["fall"], idx], tau)
            _, r_f, since_f = self._walk(idx, fs)
            b_f = self.walk_dir[idx] + fs / 3600.0
            dx = np.where(a, r_f * np.cos(b_f) + nx, dx)
            dy = np.where(a, r_f * np.sin(b_f) + ny, dy)
            out_since = np.where(a, since_f + el, out_since)
        fr = self.act_end[self.eidx["fall_recovered"], idx]
        got_up = (fr <= tau) & (fr > prev)  # first uplink after getting up
        still = np.where(got_up, fr - self.act_start[self.eidx["fall_recovered"], idx], still)
        steps = np.where(got_up, np.maximum(steps, 5.0), steps)
        flags |= np.where(self.active("sos", idx, tau), f("sos").mask, 0)
        a = self.active("hr_high", idx, tau)
        hr = np.where(a, self.param("hr_high", idx, 0) + rng.normal(0, 3, m), hr)
        steps = np.where(a, np.minimum(steps, 3.0), steps)
        a = self.active("hr_low", idx, tau)
        hr = np.where(a, self.param("hr_low", idx, 0) + rng.normal(0, 1.5, m), hr)
        a = self.active("spo2_low", idx, tau)
        spo2 = np.where(a, self.param("spo2_low", idx, 0) + rng.normal(0, 1.0, m), spo2)
        a = self.active("inactivity", idx, tau)
        still = np.where(a, self.elapsed("inactivity", idx, tau), still)
        steps = np.where(a, 0.0, steps)
        peak = np.where(a, 1.0 + np.abs(rng.normal(0, 0.01, m)), peak)
        hr = np.where(a, rest + rng.normal(0, 2, m), hr)
        a = self.active("geofence_exit", idx, tau)
        el, dur = self.elapsed("geofence_exit", idx, tau), self.duration("geofence_exit", idx)
        reach, out_s, home_s = _gf_ramps(
            self.gait[idx], dur, self.param("geofence_exit", idx, 0), self.param("geofence_exit", idx, 2)
        )
        # out along the bearing over out_s, back home over the last home_s (on a short episode the two
        # ramps meet before the farthest point: a lower peak, still beyond the fence)
        dist = reach * np.clip(np.minimum(el / out_s, (dur - el) / home_s), 0, 1)
        g_b = self.param("geofence_exit", idx, 1)
        dx = np.where(a, dist * np.cos(g_b) + rng.normal(0, 8.0, m), dx)
        dy = np.where(a, dist * np.sin(g_b) + rng.normal(0, 8.0, m), dy)
        steps = np.where(a, np.maximum(steps, np.rint(1.2 * gap)), steps)
        # walked out of the door at the start; indoors again (courtyard, stairs) within OUTDOOR_M of home
        # on the way back, like the daytime walk
        back_in = (dur - el) * self.gait[idx] < OUTDOOR_M
        out_since = np.where(a, np.where(back_in, np.nan, el), out_since)
        removed = self.active("band_removed", idx, tau)
        charging = self.active("charging", idx, tau)
        a = removed | charging
        flags |= np.where(charging, f("charging").mask, 0)
        hr = np.where(a, 0.0, hr)
        spo2 = np.where(a, 0.0, spo2)
        steps = np.where(a, 0.0, steps)
        off_since = np.where(
            removed, self.elapsed("band_removed", idx, tau), self.elapsed("charging", idx, tau)
        )
        still = np.where(a, off_since, still)
        peak = np.where(a, 1.0, peak)
        flags &= np.where(a, ~f("worn").mask, -1)
        out_since = np.where(a, np.nan, out_since)  # the band lies on the table or the charger at home
        a = self.active("low_battery", idx, tau)
        battery = np.where(a, self.param("low_battery", idx, 0), battery)
        flags |= np.where(battery < 15.0, f("low_battery").mask, 0)
        lat = self.sites.lat[idx] + dy / M_PER_DEG_LAT
        lon = self.sites.lon[idx] + dx / self.m_per_deg_lon[idx]
        lat, lon, valid = self._gnss(idx, tau, lat, lon, out_since)
        flags |= np.where(valid, f("gps_valid").mask, 0)
        hr = np.where(hr > 0, np.clip(hr, 25, 220), 0.0)
        spo2 = np.where(spo2 > 0, np.clip(spo2, 70, 100), 0.0)
        values = np.stack([hr, spo2, peak, np.clip(still, 0, 65535), orient, steps, lat, lon], axis=1)
        return values, flags, battery

    def _gnss(self, idx: I64, tau: F64, lat: F64, lon: F64, out_since: F64) -> tuple[F64, F64, F64]:
        """What the band reports for position: ``(lat, lon, gps_valid)``.

        A fix is valid outdoors once ``ttff`` has passed since stepping out (then with ``P_FIX_OUTDOORS``),
        indoors with the band's small ``p_fix_in``. Without one the band's vendor behaviour fills lat/lon:
        the last fix it holds (earlier in this tick or before it), 0/0, or NaN ("not available")."""
        m = len(idx)
        g = self.gps_rng
        u = g.uniform(0, 1, m)
        # NaN (indoors) compares False: indoors the threshold is the band's indoor fix share instead
        outdoors = out_since >= 0.0
        fix_out = (out_since >= self.ttff[idx]) & (u < P_FIX_OUTDOORS)
        valid = np.where(outdoors, fix_out, u < self.p_fix_in[idx])
        in_fix = np.flatnonzero(valid & ~outdoors)
        if len(in_fix):  # a fix taken indoors is poorer (multipath, few satellites): ~20 m more scatter
            lat[in_fix] += g.normal(0, 20.0, len(in_fix)) / M_PER_DEG_LAT
        # the fix each band holds before this uplink: its stored one, or an earlier one in this tick
        rep_lat, rep_lon = self.fix_lat[idx], self.fix_lon[idx]
        later = self.prev_up_of(idx) > self.last_up[idx]  # not the band's first uplink of this tick
        several = np.zeros(m, dtype=bool)
        if later.any():  # bands with several uplinks in this tick: in time order, on their rows only
            mark = np.zeros(self.n, dtype=bool)
            mark[idx[later]] = True
            several = mark[idx]
            rows = np.flatnonzero(several)
            r_lat, r_lon = rep_lat[rows], rep_lon[rows]
            self._fill_within_tick(idx[rows], tau[rows], lat[rows], lon[rows], valid[rows], r_lat, r_lon)
            rep_lat[rows], rep_lon[rows] = r_lat, r_lon
        v = np.flatnonzero(valid & ~several)  # one uplink per band: no order to respect
        self.fix_lat[idx[v]] = lat[v]
        self.fix_lon[idx[v]] = lon[v]
        rep = self.gps_rep[idx]
        fill_lat = np.where(rep, rep_lat, self.gps_fill[idx])
        fill_lon = np.where(rep, rep_lon, self.gps_fill[idx])
        return np.where(valid, lat, fill_lat), np.where(valid, lon, fill_lon), valid

    def _fill_within_tick(
        self, idx: I64, tau: F64, lat: F64, lon: F64, valid: npt.NDArray[np.bool_], rep_lat: F64, rep_lon: F64
    ) -> None:
        """Bands with several uplinks in one tick: forward-fill each one's latest fix in time order, and
        keep the last one as the band's held fix (in place on ``rep_*`` and the model's state)."""
        m = len(idx)
        order = np.lexsort((tau, idx))
        d_s, v_s = idx[order], valid[order]
        first = np.r_[True, d_s[1:] != d_s[:-1]]
        pos = np.arange(m)
        g0 = np.maximum.accumulate(np.where(first, pos, 0))
        # the latest fix strictly before each uplink, within the band's own uplinks of this tick
        lastv = np.maximum.accumulate(np.where(v_s, pos, -1))
        before = np.r_[-1, lastv[:-1]]
        have = before >= g0
        src = order[np.maximum(before, 0)]
        rep_lat[order[have]] = lat[src[have]]
        rep_lon[order[have]] = lon[src[have]]
        end = ~np.r_[~first[1:], False]  # each band's last uplink of the tick
        held = end & (lastv >= g0)
        k = order[np.maximum(lastv, 0)][held]
        self.fix_lat[d_s[held]] = lat[k]
        self.fix_lon[d_s[held]] = lon[k]


def _gf_ramps(gait: F64, dur: F64, p0: F64, p2: F64) -> tuple[F64, F64, F64]:
    """A geofence exit's farthest distance from home (m) and the lengths (s) of its two ramps: walking out
    (``p2`` of the episode ``dur``) and walking home (that distance at the wearer's ``gait`` speed)."""
    reach = np.asarray(GEOFENCE_M * p0, dtype=np.float64)
    out_s = np.asarray(np.maximum(dur * p2, 1.0), dtype=np.float64)
    home_s = np.asarray(np.maximum(reach / gait, 1.0), dtype=np.float64)
    return reach, out_s, home_s


def _child_seed(rng: np.random.Generator, key: int) -> np.random.SeedSequence:
    """A seed sequence independent of ``rng``'s stream, derived from the seed ``rng`` was made from."""
    ss = getattr(rng.bit_generator, "seed_seq", None) or getattr(rng.bit_generator, "_seed_seq", None)
    if isinstance(ss, np.random.SeedSequence):
        return np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, key))
    # a generator not made from a SeedSequence: take one draw (deterministic, shifts its stream once)
    return np.random.SeedSequence(int(rng.integers(0, 2**63)), spawn_key=(key,))
