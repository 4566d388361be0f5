"""Signal model of the smart manhole cover (智能井盖), vectorised across all covers.

What makes it realistic enough to fool a naive threshold detector:
- every cover has its own installed tilt (``tilt_ref_deg``, the road's slope: 0.5-4 ° on roads, 0-2 ° on
  pavements), so "tilt > 10 °" is the wrong rule; "|tilt - tilt_ref| > 10 °" is the right one;
- passing trucks shake covers on busy roads for 1-2 s (3-15 ° tilt spike, 0.3-2.5 g). The firmware catches
  about a third of them and sends an immediate uplink, sometimes with its own alarm bit set; all of them
  show up in the next heartbeat's ``vibration_g`` (peak since the last uplink). Labelled
  ``nuisance_traffic`` (severity NONE);
- rain raises the water in every well on a street at once (trapezoid: 30 min rise, plateau, 30 min fall,
  per-well share of the street's peak). Only wells whose water comes within ``OVERFLOW_CM`` of the cover
  get an ``overflow`` truth record, from the moment it crosses to the moment it falls back;
- noise, slow sensor drift, a daily temperature cycle and months-long battery discharge.

Heartbeat every ``HEARTBEAT_S`` (12 h); immediate uplinks on alarm, while in alarm (repeats) and on
return to normal, as GB/T 41401-2022 covers do.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from firmware_bridge.kernel.events import EventType as E
from firmware_bridge.kernel.events import Severity as S
from firmware_bridge.kernel.records import DeviceKind
from simulators.base import F64, HANDLED_UPLINK_S, I64, N_PARAMS, Effect, KindModel, Schedule
from simulators.truth import TruthRecord

H = 3600.0
D = 86400.0
OVERFLOW_CM = 30.0  # truth: water within 30 cm of the cover is an overflow
DEVICE_WATER_ALARM_CM = 50.0  # the device's own early warning
TILT_ALARM_DEG = 10.0  # vendors alarm at |tilt - ref| > 10 ° (REFERENCES.md)
RAMP_S = 1800.0  # rain: rise and fall time
DIURNAL_CM = 4.0  # the sewer's daily flow cycle: the water stands up to 4 cm higher or lower by the hour
TRUTH_STEP_S = 5.0  # the overflow truth's crossings are found on this grid, then interpolated
GAS_RAMP_S = 300.0


class ManholeModel(KindModel):
    KIND: ClassVar[DeviceKind] = DeviceKind.MANHOLE
    EFFECTS: ClassVar[tuple[Effect, ...]] = (
        # p0 tilt spike (deg), p1 vibration (g), p2 < 0.35: the firmware caught it and sent an uplink
        Effect(
            "truck",
            E.NUISANCE_TRAFFIC,
            S.NONE,
            6.0,
            (1.0, 2.0),
            ((3, 15), (0.3, 2.5), (0, 1)),
            offsets=(0.5,),
            eligible="trafficked",
        ),
        Effect(
            "cover_displaced",
            E.COVER_DISPLACED,
            S.HIGH,
            0.002,
            (0.5 * H, 6 * H),
            ((12, 40),),
            offsets=(1.0,),
            repeat_s=1800.0,
            group="cover",
        ),
        Effect(
            "cover_open",
            E.COVER_OPEN,
            S.HIGH,
            0.001,
            (1200.0, 4 * H),
            ((0, 170),),
            offsets=(1.0,),
            repeat_s=600.0,
            group="cover",
        ),
        # rain: rate is per *street*-day; p0 = this well's water rise at the plateau (cm)
        Effect("rain", E.OVERFLOW, S.MEDIUM, 0.2, (2.5 * H, 6 * H), ((50, 350),), derived=True),
        Effect(
            "gas_combustible",
            E.GAS_COMBUSTIBLE,
            S.MEDIUM,
            0.0005,
            (1200.0, 3 * H),
            ((28, 70),),
            offsets=(GAS_RAMP_S,),
            repeat_s=600.0,
        ),
        Effect(
            "gas_toxic",
            E.GAS_TOXIC,
            S.HIGH,
            0.0005,
            (1200.0, 3 * H),
            ((12, 80),),
            offsets=(GAS_RAMP_S,),
            repeat_s=600.0,
        ),
        Effect(
            "oxygen_abnormal",
            E.OXYGEN_ABNORMAL,
            S.MEDIUM,
            0.0003,
            (1200.0, 3 * H),
            ((15.5, 19.0),),
            offsets=(GAS_RAMP_S,),
            repeat_s=600.0,
        ),
        Effect("tamper", E.TAMPER, S.MEDIUM, 0.0005, (300.0, H), group="cover"),
        Effect("sensor_fault", E.SENSOR_FAULT, S.LOW, 0.0003, (6 * H, 3 * D), group="cover"),
        Effect("low_battery", E.LOW_BATTERY, S.LOW, 0.0003, (5 * D, 30 * D), ((5, 18),), on_end=False),
        Effect("device_silent", E.DEVICE_SILENT, S.LOW, 0.0005, (D, 7 * D), silent=True, group="cover"),
        # a nuisance: a heavy truck rocks a cover in its worn seat and leaves it askew (p0 tilt above the
        # installed one, deg; p1 the truck's vibration, g) until the next vehicles settle it, 1-8 minutes
        # later. The firmware alarms (|tilt - ref| > 10 °) and reports the return; longer than the
        # detector's 45 s for a truck's spike, so a displaced cover may be paged. Off by default (rate 0:
        # the stock seeds' draws are unchanged); ``vigil demo`` turns it on
        Effect(
            "cover_rocked",
            E.NUISANCE_TRAFFIC,
            S.NONE,
            0.0,
            (60.0, 480.0),
            ((10.5, 14.0), (0.8, 2.5)),
            offsets=(0.5,),
            eligible="trafficked",
            group="cover",
        ),
    )
    # the crew reseats and locks the cover, ventilates the well, fixes the lid switch, replaces the
    # battery or the radio, clears the blocked drain and pumps the well down (rain: the water falls over
    # the handling time, handled_end_of); the rain itself and trucks go on whatever anyone does
    REACTS: ClassVar[frozenset[str]] = frozenset(
        {
            "rain",
            "cover_displaced",
            "cover_open",
            "tamper",
            "gas_combustible",
            "gas_toxic",
            "oxygen_abnormal",
            "sensor_fault",
            "low_battery",
            "device_silent",
        }
    )

    def init_state(self) -> None:
        n, rng = self.n, self.rng
        on_road = self.sites.on_road
        self.tilt_ref = np.where(on_road, rng.uniform(0.5, 4.0, n), rng.uniform(0.0, 2.0, n))
        self.depth_cm = rng.uniform(120.0, 400.0, n)
        self.drift_phase = rng.uniform(0, 2 * np.pi, n)
        self.temp_base = rng.uniform(11.0, 19.0, n)
        self.ch4_base = rng.uniform(0.0, 3.0, n)
        self.h2s_base = rng.uniform(0.0, 1.0, n)
        self.battery0 = rng.uniform(40.0, 100.0, n)
        self.trafficked = on_road & (rng.random(n) < 0.8)
        self._pump_reset()

    def _pump_reset(self) -> None:
        """Wells a crew pumps down (handled_end_of): per rain row (pumping from, the rise then, the rain's
        own end) and per well for the rain under way."""
        self.pumped: dict[int, tuple[float, float, float]] = {}
        self.pump_start = np.full(self.n, np.nan)
        self.pump_from = np.full(self.n, np.inf)
        self.pump_rise = np.zeros(self.n)
        self.pump_end0 = np.zeros(self.n)

    def plan(self, start: float, duration_s: float) -> None:
        super().plan(start, duration_s)
        self._pump_reset()

    # -- rain: one schedule per street, expanded to its wells -------------------------------------------
    def derive(self, base: Schedule, start: float, duration_s: float) -> Schedule:
        e_i = self.eidx["rain"]
        e = self.EFFECTS[e_i]
        rate = self.rates.get("rain", e.rate_per_device_day)
        streets = np.unique(self.sites.street) if self.n else np.empty(0, np.int64)
        k = (
            int(self.rng.poisson(rate * len(streets) * duration_s / 86400.0))
            if len(streets) and rate > 0
            else 0
        )
        if k == 0:
            return Schedule.empty()
        which = streets[self.rng.integers(0, len(streets), k)]
        st = start + self.rng.uniform(0, duration_s, k)
        dur = self.rng.uniform(*e.duration_s, k)
        peak = self.rng.uniform(*e.params[0], k)
        parts = []
        for j in range(k):  # one row per well of the street: sparse, not a hot path
            wells = np.flatnonzero(self.sites.street == which[j])
            p = np.zeros((len(wells), N_PARAMS))
            p[:, 0] = peak[j] * self.rng.uniform(0.5, 1.3, len(wells))
            parts.append(
                Schedule(
                    wells.astype(np.int64),
                    np.full(len(wells), e_i, np.int64),
                    np.full(len(wells), st[j]),
                    np.full(len(wells), st[j] + dur[j]),
                    p,
                )
            )
        return Schedule.concat(parts)

    def _crossing(self, row: int, s: Schedule, level_cm: float) -> tuple[float, float] | None:
        """When the water of rain row ``row`` comes within ``level_cm`` of the cover, and leaves again
        (for a well pumped down, on the pumped fall: :meth:`handled_end_of`)."""
        dev = int(s.dev[row])
        need = self.depth_cm[dev] - level_cm  # rise needed
        peak = float(s.p[row, 0])
        if peak <= need:
            return None
        frac = max(need, 0.0) / peak
        up = float(s.start[row] + RAMP_S * frac)
        pump = self.pumped.get(row)
        if pump is None:
            return up, float(s.end[row] - RAMP_S * frac)
        t_p, r_p, end0 = pump  # pumping from t_p, when the rise was r_p, until s.end (the rain's end end0)
        down = float(min(end0 - RAMP_S * frac, t_p + (float(s.end[row]) - t_p) * max(r_p - need, 0.0) / r_p))
        if down <= up:
            return None  # pumped down before the water reached the level
        return up, down

    def _water_cm(self, row: int, s: Schedule, t: F64) -> F64:
        """The water's distance from the cover (cm) in rain row ``row``'s well at times ``t`` within the
        rain: what :meth:`sample` reads without its sensor noise - the daily cycle included (it is the
        water, not the sensor), and the pumped fall of a well a crew attends (:meth:`handled_end_of`)."""
        dev = int(s.dev[row])
        st, end = float(s.start[row]), float(s.end[row])
        hour = ((t + 8 * H) % D) / H
        pump = self.pumped.get(row)
        left = (end if pump is None else pump[2]) - t
        rise = float(s.p[row, 0]) * np.clip(np.minimum(t - st, left) / RAMP_S, 0.0, 1.0)
        if pump is not None:
            t_p, r_p, _ = pump
            pumping = np.clip((end - t) / max(end - t_p, 1e-9), 0.0, 1.0) * r_p
            rise = np.where(t >= t_p, np.minimum(rise, pumping), rise)
        return np.asarray(self.depth_cm[dev] + DIURNAL_CM * np.sin(2 * np.pi * hour / 24.0) - rise)

    def _overflow_span(self, row: int, s: Schedule) -> tuple[float, float] | None:
        """When the water of rain row ``row`` first comes within ``OVERFLOW_CM`` of the cover and when it
        last leaves (:meth:`_water_cm`, daily cycle included), or None. :meth:`_crossing` leaves the daily
        cycle out: a well whose rain alone stops 0.8 cm short of the line but whose water stands 1.3 cm
        higher at that hour overflowed (the detector paged it, 28.8 cm read) with no truth record."""
        st, end = float(s.start[row]), float(s.end[row])
        t = np.append(np.arange(st, end, TRUTH_STEP_S), end)
        w = self._water_cm(row, s, t)
        over = np.flatnonzero(w <= OVERFLOW_CM)
        if not len(over):
            return None

        def cross(a: int, b: int) -> float:  # the line between grid points a and b (linear)
            wa, wb = float(w[a]), float(w[b])
            return float(t[a] + (t[b] - t[a]) * (wa - OVERFLOW_CM) / (wa - wb)) if wa != wb else float(t[b])

        i, j = int(over[0]), int(over[-1])
        up = float(t[0]) if i == 0 else cross(i - 1, i)
        down = float(t[-1]) if j == len(t) - 1 else cross(j, j + 1)
        return up, down

    def handled_end_of(self, row: int, start: float, done: float) -> tuple[float, list[float]]:
        """Rain in a well a crew attends (an overflow): they clear the blocked drain and pump from
        ``start`` (on site) to ``done``, the water falling linearly from its level then to the well's usual
        one at ``done``; the firmware reports the water back below its alarm line (the uplink at that
        crossing) and the crew's final reading at ``done``. The truth's end is the water leaving the
        overflow line on the way down (:meth:`_crossing`). The rest: KindModel.handled_end_of."""
        s = self.schedule
        if self.EFFECTS[int(s.eff[row])].name != "rain" or row in self.pumped:
            return super().handled_end_of(row, start, done)
        st, end0, peak = float(s.start[row]), float(s.end[row]), float(s.p[row, 0])
        t_p = min(start, done)
        r_p = peak * min(max(min(t_p - st, end0 - t_p) / RAMP_S, 0.0), 1.0)
        if r_p <= 0.0:
            return super().handled_end_of(row, start, done)
        self.pumped[row] = (t_p, r_p, end0)
        dev = int(s.dev[row])  # the well's rain that started at st: the pumped fall from t_p
        self.pump_start[dev], self.pump_from[dev], self.pump_rise[dev], self.pump_end0[dev] = (
            st,
            t_p,
            r_p,
            end0,
        )
        s.end[row] = done  # so _crossing sees the pumped fall's end
        ups = [done + HANDLED_UPLINK_S]
        c = self._crossing(row, s, DEVICE_WATER_ALARM_CM)
        if c is not None and t_p < c[1] < done:
            ups.insert(0, c[1])  # the firmware's return-to-normal uplink
        return done, ups

    def trigger_offsets(self, row: int, s: Schedule) -> list[float]:
        name = self.EFFECTS[int(s.eff[row])].name
        if name == "truck":
            if s.p[row, 2] >= 0.35:
                return []
            return [float(s.start[row]) + 0.2, float(s.end[row]) + 0.5]  # the spike, then back to normal
        if name == "rain":
            c = self._crossing(row, s, DEVICE_WATER_ALARM_CM)
            return [] if c is None else [c[0], c[0] + 600.0, c[1]] if c[1] > c[0] + 600 else [c[0], c[1]]
        return super().trigger_offsets(row, s)

    def truth_of(self, row: int, s: Schedule, run_end: float) -> TruthRecord | None:
        if self.EFFECTS[int(s.eff[row])].name == "rain":
            c = self._overflow_span(row, s)
            if c is None or c[0] >= run_end:
                return None
            dev = int(s.dev[row])
            return TruthRecord(
                self.sites.device_id[dev],
                self.KIND,
                E.OVERFLOW,
                c[0],
                min(c[1], run_end),
                S.HIGH if self.sites.on_road[dev] else S.MEDIUM,
                handled=row in self.handled_rows,
            )
        return super().truth_of(row, s, run_end)

    def severity_of(self, row: int, s: Schedule) -> S:
        name = self.EFFECTS[int(s.eff[row])].name
        if name == "cover_displaced":
            return S.HIGH if self.sites.on_road[int(s.dev[row])] else S.MEDIUM
        if name == "gas_combustible":
            return S.HIGH if s.p[row, 0] >= 50 else S.MEDIUM
        return super().severity_of(row, s)

    # -- readings -------------------------------------------------------------------------------------
    def sample(self, idx: I64, tau: F64) -> tuple[F64, npt.NDArray[np.int64], F64]:
        m = len(idx)
        rng = self.rng
        f = self.spec.flag
        ref = self.tilt_ref[idx]
        days = (tau - self.t0) / 86400.0
        tilt = ref + 0.1 * np.sin(2 * np.pi * days / 30.0 + self.drift_phase[idx]) + rng.normal(0, 0.05, m)
        vib = np.abs(rng.normal(0.02, 0.01, m))
        hour = ((tau + 8 * 3600.0) % 86400.0) / 3600.0
        water = self.depth_cm[idx] + DIURNAL_CM * np.sin(2 * np.pi * hour / 24.0) + rng.normal(0, 1.0, m)
        ch4 = np.clip(self.ch4_base[idx] + rng.normal(0, 0.3, m), 0, None)
        h2s = np.clip(self.h2s_base[idx] + rng.normal(0, 0.2, m), 0, None)
        o2 = 20.8 + rng.normal(0, 0.05, m)
        temp = self.temp_base[idx] + 3.0 * np.sin(2 * np.pi * (hour - 9.0) / 24.0) + rng.normal(0, 0.2, m)
        battery = np.clip(self.battery0[idx] - 0.03 * days, 25.0, 100.0)
        flags = np.zeros(m, dtype=np.int64)

        a = self.active("truck", idx, tau)
        tilt = np.where(a, tilt + self.param("truck", idx, 0), tilt)
        recent = self.since_last_uplink("truck", idx, tau)
        vib = np.where(recent, np.maximum(vib, self.param("truck", idx, 1)), vib)
        a = self.active("cover_rocked", idx, tau)
        tilt = np.where(a, tilt + self.param("cover_rocked", idx, 0), tilt)
        recent = self.since_last_uplink("cover_rocked", idx, tau)
        vib = np.where(recent, np.maximum(vib, self.param("cover_rocked", idx, 1)), vib)
        a = self.active("cover_displaced", idx, tau)
        tilt = np.where(a, ref + self.param("cover_displaced", idx, 0), tilt)
        a = self.active("cover_open", idx, tau)
        tilt = np.where(a, self.param("cover_open", idx, 0), tilt)
        flags |= np.where(a, f("cover_open").mask, 0)
        a = self.active("rain", idx, tau)
        el = self.elapsed("rain", idx, tau)
        left = self.act_end[self.eidx["rain"], idx] - tau
        pumped = self.act_start[self.eidx["rain"], idx] == self.pump_start[idx]  # NaN: never
        if pumped.any():  # the rain's own fall, or the pumped one from pump_from (whichever is lower)
            left = np.where(pumped, self.pump_end0[idx] - tau, left)
        rise = self.param("rain", idx, 0) * np.clip(np.minimum(el, left) / 1800.0, 0, 1)
        if pumped.any():
            t_p, end = self.pump_from[idx], self.act_end[self.eidx["rain"], idx]
            pumping = np.clip((end - tau) / np.maximum(end - t_p, 1e-9), 0.0, 1.0) * self.pump_rise[idx]
            rise = np.where(pumped & (tau >= t_p), np.minimum(rise, pumping), rise)
        water = np.where(a, water - rise, water)
        for name in ("gas_combustible", "gas_toxic", "oxygen_abnormal"):
            a = self.active(name, idx, tau)
            ramp = np.clip(self.elapsed(name, idx, tau) / GAS_RAMP_S, 0, 1)
            target = self.param(name, idx, 0)
            if name == "gas_combustible":
                ch4 = np.where(a, ch4 + (target - ch4) * ramp, ch4)
            elif name == "gas_toxic":
                h2s = np.where(a, h2s + (target - h2s) * ramp, h2s)
            else:
                o2 = np.where(a, o2 + (target - o2) * ramp, o2)
        flags |= np.where(self.active("tamper", idx, tau), f("tamper").mask, 0)
        a = self.active("sensor_fault", idx, tau)
        flags |= np.where(a, f("sensor_fault").mask, 0)
        water = np.where(a, 0.0, water)  # ultrasonic blind: reads 0
        a = self.active("low_battery", idx, tau)
        battery = np.where(a, self.param("low_battery", idx, 0), battery)
        flags |= np.where(battery < 20.0, f("low_battery").mask, 0)
        water = np.clip(water, 0.0, None)
        # the firmware's own alarm bit
        alarm = (
            (np.abs(tilt - ref) > TILT_ALARM_DEG)
            | ((flags & f("cover_open").mask) > 0)
            | ((water < DEVICE_WATER_ALARM_CM) & ((flags & f("sensor_fault").mask) == 0))
            | (ch4 > 25.0)
            | (h2s > 10.0)
            | (o2 < 19.5)
            | ((flags & f("tamper").mask) > 0)
        )
        flags |= np.where(alarm, f("alarm").mask, 0)
        values = np.stack([tilt, ref, vib, water, ch4, h2s, o2, temp], axis=1)
        return values, flags, battery
