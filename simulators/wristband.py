"""Signal model of the wristband worn by elderly people living alone (智能手环), vectorised.

The daily life a detector must not mistake for an emergency:
- heart rate follows sleep (22:00-06:00 local, resting rate minus ~7 bpm) and daytime activity bursts
  (up to +40 bpm while walking, with steps); SpO2 dips a point in sleep;
- at night the wearer lies still for hours (``stillness_s`` grows): that is sleep, not inactivity;
- a knock of the band on a table gives a 2-3.2 g peak with no fall flag and no stillness (unlabelled);
- daytime walks move the position up to half the geofence radius from home;
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
        # p0 how far out (x radius), p1 bearing (rad), p2 fraction of the episode spent walking out
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
        self.activity = rng.uniform(0.3, 1.0, n)
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.walk_dir = rng.uniform(0, 2 * np.pi, n)
        self.batt_phase = rng.uniform(0, 75.0 / 0.6 * H, n)
        self.m_per_deg_lon = M_PER_DEG_LAT * np.cos(np.radians(self.sites.lat if n else np.zeros(0)))

    def truth_of(self, row: int, s: Schedule, run_end: float) -> TruthRecord | None:
        if self.EFFECTS[int(s.eff[row])].name == "geofence_exit":
            ramp = float((s.end[row] - s.start[row]) * s.p[row, 2])
            cross = float(s.start[row]) + ramp / float(s.p[row, 0])
            if cross >= run_end:
                return None
            return TruthRecord(
                self.sites.device_id[int(s.dev[row])],
                self.KIND,
                E.GEOFENCE_EXIT,
                cross,
                float(min(s.end[row], run_end)),
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
        wave = np.clip(np.sin(2 * np.pi * tau / 7200.0 + self.phase[idx]), 0, 1)
        act = np.where(asleep, 0.0, self.activity[idx] * wave**2)
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
        out_r = GEOFENCE_M * 0.5 * np.clip(act * 1.5, 0, 1)
        bearing = self.walk_dir[idx] + tau / 3600.0
        dx = out_r * np.cos(bearing) + rng.normal(0, 8.0, m)
        dy = out_r * np.sin(bearing) + rng.normal(0, 8.0, m)
        battery = 100.0 - ((tau - self.t0 + self.batt_phase[idx]) * 0.6 / H) % 75.0
        flags = np.full(m, f("worn").mask | f("gps_valid").mask, dtype=np.int64)

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
        ramp = np.maximum(self.duration("geofence_exit", idx) * self.param("geofence_exit", idx, 2), 1.0)
        dist = (
            GEOFENCE_M
            * self.param("geofence_exit", idx, 0)
            * np.clip(self.elapsed("geofence_exit", idx, tau) / ramp, 0, 1)
        )
        g_b = self.param("geofence_exit", idx, 1)
        dx = np.where(a, dist * np.cos(g_b) + rng.normal(0, 8.0, m), dx)
        dy = np.where(a, dist * np.sin(g_b) + rng.normal(0, 8.0, m), dy)
        steps = np.where(a, np.maximum(steps, np.rint(1.2 * gap)), steps)
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
        a = self.active("low_battery", idx, tau)
        battery = np.where(a, self.param("low_battery", idx, 0), battery)
        flags |= np.where(battery < 15.0, f("low_battery").mask, 0)
        lat = self.sites.lat[idx] + dy / M_PER_DEG_LAT
        lon = self.sites.lon[idx] + dx / self.m_per_deg_lon[idx]
        hr = np.where(hr > 0, np.clip(hr, 25, 220), 0.0)
        spo2 = np.where(spo2 > 0, np.clip(spo2, 70, 100), 0.0)
        values = np.stack([hr, spo2, peak, np.clip(still, 0, 65535), orient, steps, lat, lon], axis=1)
        return values, flags, battery
