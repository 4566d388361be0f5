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

import dataclasses
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from firmware_bridge.kernel.events import EventType as E
from firmware_bridge.kernel.events import Severity as S
from firmware_bridge.kernel.records import DeviceKind
from simulators.base import F64, HANDLED_UPLINK_S, I64, Effect, KindModel, Schedule
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
# Getting up by oneself after a fall, an SOS or hours of stillness (the episode's truth end: upright),
# the wearer sits a moment (the chair, the bed's edge) and then walks a few dozen steps (to the phone,
# the bathroom, a glass of water) before the day's own activity resumes. No published distribution of
# "upright -> first steps" was found (docs/simulators.md "Recovery"); assumed: 30-120 s, uniform per
# episode, then RECOVER_BOUT_S of walking at CADENCE_SPS (older adults walk at ~100 steps/min; the
# daytime wave below uses the same 1.6 steps/s). A wearer still down (a long lie) takes no steps at all.
RECOVERS = ("fall", "sos", "inactivity")
RECOVER_WALK_S = (30.0, 120.0)  # from getting up to the first steps, per episode (schedule p2)
RECOVER_BOUT_S = 60.0  # the first walk after getting up (60 s x 1.6 steps/s ~ 100 steps)
CADENCE_SPS = 1.6
# helped up by a responder (vigil demo's Fleet.handle): the wearer walks with them to a chair or the bed,
# ~12 s at CADENCE_SPS (~19 steps), and the band's state-change uplink (the fall state over, the SOS
# reset) follows that walk. 8 steps in the uplink right after getting up, as before, is no walk to the
# wristband rules since aab14f6 (a bout of >= 10 steps beyond one false step a minute): the demo's
# handled falls and SOS then stayed open until the wearer's next walk
HELPED_WALK_S = 12.0
RECOVER_STREAM = 0x524543  # "REC": spawn key of the recovery draws (every other draw stays unchanged)
# "I'm OK" (flag bit 8, firmware >= 1.7; docs/payloads.md, docs/simulators.md "I'm OK"). ``fw_1_7`` (a
# setting in [scenarios.wristband], default 0) is the share of bands on firmware 1.7, the rest stay on
# FW_OLD; ``ok_press`` the share of falls and recovered falls on those bands in which the wearer presses
# OK (default OK_PRESS). Their draws come from their own stream: with fw_1_7 = 0 a seed's frames and
# truth are byte-identical to before
OK_STREAM = 0x4F4B  # "OK"
FW_OLD, FW_OK = 0x0102, 0x0107
OK_PRESS = 0.5
OK_LATE_S = (5.0, 60.0)  # a real fall: pressed this long before getting up (after the page: >= OK_PAGED_S)
OK_PAGED_S = 35.0  # the fall is paged at 30 s of stillness; a later press clears the alert
OK_SEATED_S = (0.2, 0.8)  # a recovered fall: pressed this long after sitting up, before the first steps


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
        # a nuisance: the band taken off and dropped on the table (a bath, washing up) for 20-50 minutes,
        # the wearer at home and well; long enough for the band-removed rule (15 min) to page the family.
        # p0: the knock on the table (g), in the uplink sent as it comes off. Off by default (rate 0: the
        # stock seeds' draws are unchanged); ``vigil demo`` turns it on
        Effect(
            "band_off_table",
            E.BAND_REMOVED,
            S.NONE,
            0.0,
            (1200.0, 3000.0),
            ((1.5, 2.4),),
            hours=(7.0, 22.0),
            group="person",
        ),
        # a fall the wearer is fine after (firmware 1.7 bands only): the impact, then sitting on the floor
        # for 40-180 s (past the 30 s after which a fall is paged) and getting up; the "I'm OK" long press
        # at p2 seconds after the impact, inside the band's cancel window. Truth: fall, severity NONE
        # (cancelled; a page is a false alarm). Off by default (rate 0: the stock seeds' draws unchanged)
        Effect(
            "fall_ok",
            E.FALL,
            S.NONE,
            0.0,
            (40.0, 180.0),
            ((2.5, 6.0), (45.0, 150.0), (6.0, 25.0)),
            offsets=(1.0, 30.0),
            hours=(6.0, 23.0),
            eligible="fw17",
            group="person",
        ),
    )
    SETTINGS: ClassVar[tuple[str, ...]] = ("fw_1_7", "ok_press")
    # helped up (the band sees steps and an upright wearer), the SOS answered and reset, the band put back
    # on, the wearer roused, the band charged or mended; a wanderer found and walked home at their own pace
    # (handled_end_of); heart rate / SpO2 treated on a doctor's visit (simulators.demo_actors decides who
    # may: MEDICAL_ROLES), the values normal again from ``done``. Daytime walks and the charger are not a
    # responder's to end
    REACTS: ClassVar[frozenset[str]] = frozenset(
        {
            "fall",
            "sos",
            "band_removed",
            "inactivity",
            "low_battery",
            "device_silent",
            "geofence_exit",
            "hr_high",
            "hr_low",
            "spo2_low",
        }
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
        self.recover_rng = np.random.default_rng(_child_seed(self.rng, RECOVER_STREAM))
        # firmware per band: a share on 1.7 (the "I'm OK" key), the rest as before; own stream
        self.ok_rng = np.random.default_rng(_child_seed(self.rng, OK_STREAM))
        share = float(self.rates.get("fw_1_7", 0.0))
        self.fw17 = self.ok_rng.uniform(0, 1, n) < share if share > 0 else np.zeros(n, dtype=bool)
        self.fw = np.where(self.fw17, FW_OK, FW_OLD).astype(np.int64)
        self.ok_t = np.full(n, np.nan)  # per band: the OK press of its latest fall episode (NaN: none)
        self.ok_fall = np.zeros(n, dtype=bool)  # ... and whether that episode is a real fall (row "fall")
        self.ok_at = np.empty(0)
        self._gf_reset()

    def _gf_reset(self) -> None:
        """Wanderers found by a responder (handled_end_of): per schedule row (found at, the episode's own
        duration) and per band for the episode under way (its start, found at, own duration)."""
        self.gf_found: dict[int, tuple[float, float]] = {}
        self.gf_h_start = np.full(self.n, np.nan)
        self.gf_h_found = np.full(self.n, np.inf)
        self.gf_h_dur0 = np.zeros(self.n)

    def plan(self, start: float, duration_s: float) -> None:
        """The base schedule, then each fall / SOS / inactivity episode's delay from getting up to the first
        steps (``RECOVER_WALK_S``) in its free third parameter, from the recovery stream (so the schedule,
        the truth and every other draw of a seed are exactly what they were without it)."""
        super().plan(start, duration_s)
        self._gf_reset()
        s = self.schedule
        rows = np.flatnonzero(np.isin(s.eff, [self.eidx[n] for n in RECOVERS]))
        s.p[rows, 2] = self.recover_rng.uniform(*RECOVER_WALK_S, len(rows))
        self._plan_ok()

    def _plan_ok(self) -> None:
        """The "I'm OK" presses (``ok_at`` per schedule row, NaN: none) and their event uplinks, merged
        into the triggered uplinks. Only bands on firmware 1.7; every draw from the OK stream, so without
        such bands nothing changes. A cancelled fall (``fall_ok``) always has its press (p2 after the
        impact); in a real fall the wearer presses (share ``ok_press``) ``OK_LATE_S`` before getting up,
        after the page; after a recovered fall, ``OK_SEATED_S`` after sitting up, before walking."""
        s = self.schedule
        self.ok_at = np.full(len(s), np.nan)
        if not self.fw17.any() or len(s) == 0:
            return
        share = float(self.rates.get("ok_press", OK_PRESS))
        on17 = self.fw17[s.dev]
        e = s.eff
        cancel = np.flatnonzero(e == self.eidx["fall_ok"])
        self.ok_at[cancel] = s.start[cancel] + s.p[cancel, 2]
        g = self.ok_rng
        for name in ("fall", "fall_recovered"):
            rows = np.flatnonzero((e == self.eidx[name]) & on17)
            u, w = g.uniform(0, 1, len(rows)), g.uniform(0, 1, len(rows))
            rows, w = rows[u < share], w[u < share]
            if name == "fall":
                t = s.end[rows] - (OK_LATE_S[0] + w * (OK_LATE_S[1] - OK_LATE_S[0]))
                t = np.maximum(t, s.start[rows] + OK_PAGED_S)
                ok = t < s.end[rows]
                rows, t = rows[ok], t[ok]
            else:
                t = s.end[rows] + OK_SEATED_S[0] + w * (OK_SEATED_S[1] - OK_SEATED_S[0])
            self.ok_at[rows] = t
        rows = np.flatnonzero(np.isfinite(self.ok_at))
        if len(rows) == 0:
            return
        t = self.ok_at[rows] + g.uniform(0.05, 0.5, len(rows))  # firmware + radio latency
        tt = np.concatenate([self._trig_time, t])
        dd = np.concatenate([self._trig_dev, s.dev[rows]])
        rr = np.concatenate([self._trig_row, rows])
        order = np.argsort(tt, kind="stable")
        self._trig_time, self._trig_dev, self._trig_row = tt[order], dd[order], rr[order]

    def _activate(self, t1: float) -> None:
        """The base's, and each band's latest fall episode's OK press (``ok_t``)."""
        lo = self._ptr
        super()._activate(t1)
        if len(self.ok_at) == 0 or self._ptr <= lo:
            return
        s = self.schedule
        falls = [self.eidx[n] for n in ("fall", "fall_recovered", "fall_ok")]
        rows = lo + np.flatnonzero(np.isin(s.eff[lo : self._ptr], falls))
        self.ok_t[s.dev[rows]] = self.ok_at[rows]  # in start order: the latest wins
        self.ok_fall[s.dev[rows]] = s.eff[rows] == self.eidx["fall"]

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

    def handled_end_of(self, row: int, start: float, done: float) -> tuple[float, list[float]]:
        """A geofence exit: the responder finds the wanderer at ``done`` and walks them home at the
        wearer's own gait, straight back along the bearing (the band goes on reporting at its cadence:
        no extra uplink); the episode is over at the door (its truth ends at the fence, truth_of). The
        rest: over at ``done`` (KindModel.handled_end_of)."""
        s = self.schedule
        name = self.EFFECTS[int(s.eff[row])].name
        if name in RECOVERS:  # helped up at done, walked to a chair, then the band's uplink
            return done, [done + HELPED_WALK_S + HANDLED_UPLINK_S]
        if name != "geofence_exit":
            return super().handled_end_of(row, start, done)
        if row in self.gf_found:  # found already (a second responder): on the way home
            return float(s.end[row]), []
        dev, st = int(s.dev[row]), float(s.start[row])
        dur0 = float(s.end[row]) - st
        found = max(done, start)
        d_f = float(self._gf_dist(np.array([dev]), np.array([found - st]), np.array([dur0]), row)[0])
        door = min(found + d_f / float(self.gait[dev]), st + dur0)
        self.gf_found[row] = (found, dur0)
        self.gf_h_start[dev], self.gf_h_found[dev], self.gf_h_dur0[dev] = st, found, dur0
        return door, []

    def _gf_dist(self, idx: I64, el: F64, dur: F64, row: int | None = None) -> F64:
        """Distance from home (m) ``el`` seconds into a geofence exit of (own) duration ``dur``: out along
        the bearing over out_s, back home over the last home_s (on a short episode the two ramps meet
        before the farthest point: a lower peak, still beyond the fence). Parameters from schedule row
        ``row``, else from each band's episode under way."""
        if row is None:
            p0, p2 = self.param("geofence_exit", idx, 0), self.param("geofence_exit", idx, 2)
        else:
            p0, p2 = self.schedule.p[[row], 0], self.schedule.p[[row], 2]
        reach, out_s, home_s = _gf_ramps(self.gait[idx], dur, p0, p2)
        dist = reach * np.clip(np.minimum(el / out_s, (dur - el) / home_s), 0, 1)
        return np.asarray(dist, dtype=np.float64)

    def truth_of(self, row: int, s: Schedule, run_end: float) -> TruthRecord | None:
        if self.EFFECTS[int(s.eff[row])].name == "geofence_exit":
            # the truth is the time outside the fence: from crossing it on the way out to crossing it on
            # the way home (the same ramps as sample(), without the 8 m position noise); the fence is
            # GEOFENCE_M around the registered home (sites.lat/lon, devices.csv), where the ramps start
            dev = int(s.dev[row])
            st, en = float(s.start[row]), float(s.end[row])
            found, dur0 = self.gf_found.get(row, (np.inf, en - st))
            ramps = _gf_ramps(self.gait[[dev]], np.array([dur0]), s.p[[row], 0], s.p[[row], 2])
            reach, out_s, home_s = (float(x[0]) for x in ramps)
            if reach * min(1.0, dur0 / (out_s + home_s)) <= GEOFENCE_M:
                return None  # too short to get out of the fence (not with the stock durations)
            cross_out = st + out_s * GEOFENCE_M / reach
            cross_in = st + dur0 - home_s * GEOFENCE_M / reach
            if np.isfinite(found):  # found and walked home: inside the fence once the walk covers the rest
                d_f = float(self._gf_dist(np.array([dev]), np.array([found - st]), np.array([dur0]), row)[0])
                cross_in = min(cross_in, found + max(d_f - GEOFENCE_M, 0.0) / float(self.gait[dev]))
            if cross_out >= run_end or cross_in <= cross_out:
                return None
            return TruthRecord(
                self.sites.device_id[dev],
                self.KIND,
                E.GEOFENCE_EXIT,
                cross_out,
                float(min(cross_in, run_end)),
                S.MEDIUM,
                handled=row in self.handled_rows,
            )
        if self.EFFECTS[int(s.eff[row])].name == "spo2_low":
            rec = super().truth_of(row, s, run_end)
            if rec is not None and s.p[row, 0] < 85:
                return dataclasses.replace(rec, severity=S.HIGH)
            return rec
        rec = super().truth_of(row, s, run_end)
        if rec is not None and row < len(self.ok_at) and np.isfinite(self.ok_at[row]):
            t_ok = float(self.ok_at[row])
            # a handled fall (helped up before the press) had no press: the band's alarm was over
            if t_ok < run_end and (self.EFFECTS[int(s.eff[row])].name != "fall" or t_ok < s.end[row]):
                rec = dataclasses.replace(rec, ok_at=t_ok)
        return rec

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
        for name in ("fall", "fall_recovered", "fall_ok"):
            hit = self.since_last_uplink(name, idx, tau)
            peak = np.where(hit, self.param(name, idx, 0), peak)
            orient = np.where(hit, self.param(name, idx, 1), orient)
            flags |= np.where(hit, f("fall").mask, 0)
            # stillness is measured from the impact: lying still so far, or until the person got up
            since = np.minimum(self.elapsed(name, idx, tau), self.duration(name, idx))
            still = np.where(hit, np.maximum(since, 0.0), still)
        a = self.active("fall_ok", idx, tau)  # sitting on the floor, fine (pressed OK or about to)
        still = np.where(a, self.elapsed("fall_ok", idx, tau), still)
        orient = np.where(a, self.param("fall_ok", idx, 1), orient)
        steps = np.where(a, 0.0, steps)
        # "I'm OK" pressed since the previous uplink (firmware 1.7; one-shot: only the first uplink after
        # the press, its own event uplink); a real fall's press only while the band's alarm shows (not
        # after a responder helped the wearer up)
        ok_t = self.ok_t[idx]
        okup = self.fw17[idx] & (ok_t > prev) & (ok_t <= tau)
        okup &= ~self.ok_fall[idx] | (ok_t < self.act_end[self.eidx["fall"], idx])
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
        # the pedometer counts steps over the window since the previous uplink: none while down (a fall, an
        # SOS, hours of stillness) nor between getting up and the first steps; then a short walk
        # (RECOVER_BOUT_S at CADENCE_SPS) once the wearer got up by themselves (a helped-up wearer walks
        # at once: below). The truth's end stays the moment they got up
        win = np.maximum(tau - prev, 1e-9)
        for name in RECOVERS:
            e = self.eidx[name]
            st_e, en_e = self.act_start[e, idx], self.act_end[e, idx]
            natural = np.isfinite(en_e) & (en_e != self.handled_end[e, idx])
            w0 = en_e + np.where(natural, self.param(name, idx, 2), 0.0)  # first steps
            down = np.clip(np.minimum(tau, w0) - np.maximum(prev, st_e), 0.0, None)
            steps = np.where(down > 0, np.rint(steps * (1.0 - np.minimum(down / win, 1.0))), steps)
            walked = np.clip(np.minimum(tau, w0 + RECOVER_BOUT_S) - np.maximum(prev, w0), 0.0, None)
            walk = natural & (walked > 0)
            steps = np.where(walk, np.maximum(steps, np.rint(CADENCE_SPS * walked)), steps)
            still = np.where(walk, np.minimum(still, np.maximum(tau - w0 - RECOVER_BOUT_S, 0.0)), still)
        # seen to by a responder (handle()): after a fall, an SOS or a long stillness the wearer is helped up
        # and walks with the responder to a chair (HELPED_WALK_S at CADENCE_SPS: the only recovery a band
        # can see); the uplinks whose windows hold that walk show its steps, and a stillness that
        # restarted after it
        hf = self.handled_end[[self.eidx[n] for n in RECOVERS]][:, idx].max(axis=0)
        helped_walk = np.clip(np.minimum(tau, hf + HELPED_WALK_S) - np.maximum(prev, hf), 0.0, None)
        helped = (hf <= tau) & (helped_walk > 0)
        if helped.any():
            steps = np.where(helped, np.maximum(steps, np.rint(CADENCE_SPS * helped_walk)), steps)
            still = np.where(helped, np.minimum(still, np.maximum(tau - hf - HELPED_WALK_S, 0.0)), still)
        for name in ("fall_recovered", "fall_ok"):
            fr = self.act_end[self.eidx[name], idx]
            up_s = fr - self.act_start[self.eidx[name], idx]
            # first uplink after getting up; after a recovered fall with OK pressed once seated, the OK's
            # uplink carries no steps yet (pressed before walking) and the next one the first steps
            seated_ok = okup & (fr <= tau) & (fr > prev)
            after_ok = (ok_t > fr) & (ok_t <= prev) & (prev <= fr + 1.4) & (fr <= prev)
            got_up = ((fr <= tau) & (fr > prev) & ~seated_ok) | after_ok
            still = np.where(got_up | seated_ok, up_s, still)
            steps = np.where(got_up, np.maximum(steps, 5.0), np.where(seated_ok, 0.0, steps))
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
        # found by a responder (handled_end_of): the ramps of the episode's own duration until then, then
        # straight home at the wearer's gait from where they were found
        gf_st = self.act_start[self.eidx["geofence_exit"], idx]
        h = gf_st == self.gf_h_start[idx]  # NaN: never
        dur = np.where(h, self.gf_h_dur0[idx], dur)
        dist = self._gf_dist(idx, el, dur)
        if h.any():
            f_t = np.where(h, self.gf_h_found[idx], tau)
            d_f = self._gf_dist(idx, np.where(h, f_t - np.where(h, gf_st, 0.0), el), dur)
            walked = np.maximum(d_f - self.gait[idx] * (tau - f_t), 0.0)
            dist = np.where(h & (tau >= f_t), np.minimum(dist, walked), dist)
        g_b = self.param("geofence_exit", idx, 1)
        dx = np.where(a, dist * np.cos(g_b) + rng.normal(0, 8.0, m), dx)
        dy = np.where(a, dist * np.sin(g_b) + rng.normal(0, 8.0, m), dy)
        # walking out and home: the pedometer counts the window's part of the episode, also in the first
        # uplink after the door (before, that window's walk home was lost: 0 steps at home)
        gf_en = self.act_end[self.eidx["geofence_exit"], idx]
        walked = np.clip(np.minimum(tau, gf_en) - np.maximum(prev, gf_st), 0.0, 300.0)
        steps = np.where(walked > 0, np.maximum(steps, np.rint(1.2 * walked)), steps)
        # walked out of the door at the start; indoors again (courtyard, stairs) within OUTDOOR_M of home
        # on the way back, like the daytime walk
        back_in = np.where(h, dist < OUTDOOR_M, (dur - el) * self.gait[idx] < OUTDOOR_M)
        out_since = np.where(a, np.where(back_in, np.nan, el), out_since)
        removed = self.active("band_removed", idx, tau)
        charging = self.active("charging", idx, tau)
        tabled = self.active("band_off_table", idx, tau)
        a = removed | charging | tabled
        flags |= np.where(charging, f("charging").mask, 0)
        hr = np.where(a, 0.0, hr)
        spo2 = np.where(a, 0.0, spo2)
        steps = np.where(a, 0.0, steps)
        off_since = np.where(
            removed,
            self.elapsed("band_removed", idx, tau),
            np.where(tabled, self.elapsed("band_off_table", idx, tau), self.elapsed("charging", idx, tau)),
        )
        still = np.where(a, off_since, still)
        peak = np.where(a, 1.0, peak)
        # the knock as it landed on the table, in the first uplink after (peak since the last uplink)
        knock = self.since_last_uplink("band_off_table", idx, tau)
        peak = np.where(knock, self.param("band_off_table", idx, 0), peak)
        flags &= np.where(a, ~f("worn").mask, -1)
        flags |= np.where(okup & ~a, f("ok").mask, 0)  # a band off the wrist shows no alarm to cancel
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
