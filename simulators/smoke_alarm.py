"""Signal model of the smoke / heat / CO alarm (烟雾报警器), vectorised across all alarms.

The hard cases a detector must get right:
- cooking smoke and steam near kitchens: density rises and falls over 15-45 min at meal times (11:00-20:00
  local), humidity goes high (steam), temperature rises a little. When the density crosses the device's
  threshold its *own* ``smoke_alarm`` bit is set and it uplinks: labelled ``nuisance_cooking`` (NONE);
- about half of those residents press hush: ``hush`` flag for up to 10 min, alarm bit silenced
  (``nuisance_hush``);
- the monthly test button: ``test`` flag together with the ``smoke_alarm`` bit for 5-15 s
  (``nuisance_test``);
- a real fire: density and temperature keep rising (rate-of-rise well above 8 °C/min), CO follows; the
  device repeats its uplink every minute while in alarm;
- CO accumulating (faulty heater): ramps to 80-400 ppm over 15 min; ``co_alarm`` bit above 70 ppm;
- contamination (dust): the clean-air baseline drifts up and the ``contamination`` flag is set.

Heartbeat every ``HEARTBEAT_S`` (12 h, GB 20517 asks for a battery check at least daily).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from firmware_bridge.kernel.events import EventType as E
from firmware_bridge.kernel.events import Severity as S
from firmware_bridge.kernel.records import DeviceKind
from simulators.base import F64, I64, N_PARAMS, Effect, KindModel, Schedule

H = 3600.0
D = 86400.0
SMOKE_ALARM_DB_M = 0.15  # device threshold (EN 14604 sensitivity window is roughly 0.05-0.2 dB/m)
HEAT_ALARM_C = 57.0  # EN 54-5 class A1 fixed temperature
CO_ALARM_PPM = 70.0
HUSH_MAX_S = 600.0
CLEAR_MARGIN_DB_M = 0.02  # the smoke bit's hysteresis: it clears this far below the alarm threshold


class SmokeAlarmModel(KindModel):
    KIND: ClassVar[DeviceKind] = DeviceKind.SMOKE_ALARM
    EFFECTS: ClassVar[tuple[Effect, ...]] = (
        # p0 peak density (dB/m), p1 temperature rise (C), p2 ramp time (s)
        Effect(
            "fire",
            E.FIRE,
            S.HIGH,
            0.0001,
            (900.0, H),
            ((1.0, 4.0), (25.0, 70.0), (60.0, 240.0)),
            offsets=(30.0, 60.0, 120.0),
            repeat_s=60.0,
            group="alarm",
        ),
        Effect(
            "co",
            E.CO,
            S.HIGH,
            0.0002,
            (1800.0, 3 * H),
            ((80.0, 400.0),),
            offsets=(300.0, 600.0, 900.0),
            repeat_s=300.0,
            group="alarm",
        ),
        Effect(
            "contamination", E.CONTAMINATION, S.LOW, 0.0002, (3 * D, 30 * D), ((0.04, 0.1),), on_end=False
        ),
        # p0 peak density above base, p1 humidity rise (%RH), p2 temperature rise (C)
        Effect(
            "cooking",
            E.NUISANCE_COOKING,
            S.NONE,
            0.6,
            (900.0, 2700.0),
            ((0.03, 0.35), (20.0, 45.0), (1.0, 5.0)),
            hours=(11.0, 20.0),
            eligible="kitchen",
        ),
        Effect("hush", E.NUISANCE_HUSH, S.NONE, 0.0, (HUSH_MAX_S, HUSH_MAX_S), offsets=(0.5,), derived=True),
        Effect(
            "test",
            E.NUISANCE_TEST,
            S.NONE,
            0.01,
            (5.0, 15.0),
            offsets=(0.5,),
            hours=(9.0, 21.0),
            group="alarm",
        ),
        Effect("tamper", E.TAMPER, S.MEDIUM, 0.0002, (600.0, 12 * H), group="alarm"),
        Effect("sensor_fault", E.SENSOR_FAULT, S.LOW, 0.0002, (6 * H, 3 * D), group="alarm"),
        Effect("low_battery", E.LOW_BATTERY, S.LOW, 0.0003, (5 * D, 30 * D), ((5, 18),), on_end=False),
        Effect("device_silent", E.DEVICE_SILENT, S.LOW, 0.0005, (D, 7 * D), silent=True, group="alarm"),
        # a nuisance: a pot boiled dry or food burnt on the hob (烧干锅), thick smoke with some CO and a
        # little heat, 10-30 minutes, until someone turns the hob off and airs the kitchen. p0 peak density
        # (dB/m; over the detector's 1.0 "denser than burnt food" now and then), p1 peak CO (ppm; over its
        # 25 ppm "smouldering" now and then, under the device's 70 ppm bit), p2 temperature rise (C). The
        # device repeats its uplink every minute while its smoke bit is set, as in a fire. Off by default
        # (rate 0: the stock seeds' draws are unchanged); ``vigil demo`` turns it on
        Effect(
            "scorched_pot",
            E.NUISANCE_COOKING,
            S.NONE,
            0.0,
            (600.0, 1800.0),
            ((0.5, 1.5), (8.0, 40.0), (2.0, 6.0)),
            hours=(10.5, 20.5),
            eligible="kitchen",
            group="alarm",
        ),
    )
    # the fire put out and the smoke cleared, the flat aired and the heater off, the alarm reset; cooking,
    # its hush and the test button end by themselves
    REACTS: ClassVar[frozenset[str]] = frozenset(
        {"fire", "co", "tamper", "sensor_fault", "low_battery", "device_silent"}
    )

    def init_state(self) -> None:
        n, rng = self.n, self.rng
        self.smoke_base = rng.uniform(0.005, 0.03, n)
        self.temp_base = rng.uniform(19.0, 26.0, n)
        self.hum_base = rng.uniform(30.0, 60.0, n)
        self.co_base = rng.uniform(0.0, 3.0, n)
        self.battery0 = rng.uniform(40.0, 100.0, n)

    def _cooking_cross(self, row: int, s: Schedule) -> tuple[float, float] | None:
        """When a cooking episode's density crosses the device threshold (sin-shaped profile)."""
        dev = int(s.dev[row])
        # a contaminated chamber reads higher all along (its drift adds to the cooking smoke)
        dirty = (s.eff == self.eidx["contamination"]) & (s.dev == dev)
        dirty &= (s.start <= s.end[row]) & (s.end >= s.start[row])
        drift = float(s.p[dirty, 0].max()) if dirty.any() else 0.0
        need = SMOKE_ALARM_DB_M - self.smoke_base[dev] - drift
        peak = float(s.p[row, 0])
        if peak <= need:
            return None
        dur = float(s.end[row] - s.start[row])
        el = dur / math.pi * math.asin(need / peak)
        # the bit clears with hysteresis (density CLEAR_MARGIN below the threshold) and the device uplinks
        # then (docs/payloads.md: a state-change uplink when a bit clears), so that frame shows it cleared
        if need <= 0:  # the drift alone keeps the bit set: no crossing to report
            return None
        el_down = dur / math.pi * math.asin(max(need - CLEAR_MARGIN_DB_M, 0.0) / peak)
        return float(s.start[row] + el), float(s.end[row] - el_down)

    def derive(self, base: Schedule, start: float, duration_s: float) -> Schedule:
        e_cook = self.eidx["cooking"]
        rows: list[tuple[int, float, float]] = []
        for i in np.flatnonzero(base.eff == e_cook).tolist():
            c = self._cooking_cross(i, base)
            if c is not None and self.rng.random() < 0.5:
                h0 = c[0] + float(self.rng.uniform(20.0, 90.0))
                rows.append((int(base.dev[i]), h0, h0 + HUSH_MAX_S))
        if not rows:
            return Schedule.empty()
        k = len(rows)
        return Schedule(
            np.array([r[0] for r in rows], np.int64),
            np.full(k, self.eidx["hush"], np.int64),
            np.array([r[1] for r in rows]),
            np.array([r[2] for r in rows]),
            np.zeros((k, N_PARAMS)),
        )

    def _scorched_cross(self, row: int, s: Schedule) -> tuple[float, float] | None:
        """When a scorched pot's smoke (sin-shaped, like cooking) sets the smoke bit, and clears it."""
        need = SMOKE_ALARM_DB_M - self.smoke_base[int(s.dev[row])]
        peak = float(s.p[row, 0])
        if need <= 0 or peak <= need:
            return None
        dur = float(s.end[row] - s.start[row])
        el = dur / math.pi * math.asin(need / peak)
        el_down = dur / math.pi * math.asin(max(need - CLEAR_MARGIN_DB_M, 0.0) / peak)
        return float(s.start[row] + el), float(s.end[row] - el_down)

    def trigger_offsets(self, row: int, s: Schedule) -> list[float]:
        name = self.EFFECTS[int(s.eff[row])].name
        if name == "cooking":
            c = self._cooking_cross(row, s)
            return [] if c is None else [c[0], c[1]]
        if name == "scorched_pot":  # the bit set, a repeat every minute while set, the bit cleared
            c = self._scorched_cross(row, s)
            if c is None:
                return []
            return [*np.arange(c[0], c[1], 60.0).tolist(), c[1]]
        return super().trigger_offsets(row, s)

    def sample(self, idx: I64, tau: F64) -> tuple[F64, npt.NDArray[np.int64], F64]:
        m = len(idx)
        rng = self.rng
        f = self.spec.flag
        hour = ((tau + 8 * 3600.0) % 86400.0) / 3600.0
        base = self.smoke_base[idx]
        smoke = base + np.abs(rng.normal(0, 0.003, m))
        temp = self.temp_base[idx] + 1.5 * np.sin(2 * np.pi * (hour - 9.0) / 24.0) + rng.normal(0, 0.2, m)
        co = np.clip(self.co_base[idx] + rng.normal(0, 0.5, m), 0, None)
        hum = np.clip(self.hum_base[idx] + rng.normal(0, 2.0, m), 5, 95)
        battery = np.clip(self.battery0[idx] - 0.04 * (tau - self.t0) / 86400.0, 25.0, 100.0)
        flags = np.zeros(m, dtype=np.int64)

        a = self.active("contamination", idx, tau)
        smoke = np.where(a, smoke + self.param("contamination", idx, 0), smoke)
        flags |= np.where(a, f("contamination").mask, 0)
        a = self.active("cooking", idx, tau)
        el = self.elapsed("cooking", idx, tau)
        dur = self.act_end[self.eidx["cooking"], idx] - self.act_start[self.eidx["cooking"], idx]
        shape = np.sin(np.pi * np.clip(el / np.where(dur > 0, dur, 1.0), 0, 1))
        smoke = np.where(a, smoke + self.param("cooking", idx, 0) * shape, smoke)
        hum = np.where(a, np.minimum(hum + self.param("cooking", idx, 1) * shape, 98.0), hum)
        temp = np.where(a, temp + self.param("cooking", idx, 2) * shape, temp)
        a = self.active("scorched_pot", idx, tau)
        el = self.elapsed("scorched_pot", idx, tau)
        dur = self.duration("scorched_pot", idx)
        shape = np.sin(np.pi * np.clip(el / np.where(dur > 0, dur, 1.0), 0, 1))
        smoke = np.where(a, smoke + self.param("scorched_pot", idx, 0) * shape, smoke)
        co = np.where(a, co + self.param("scorched_pot", idx, 1) * shape, co)
        temp = np.where(a, temp + self.param("scorched_pot", idx, 2) * shape, temp)
        a = self.active("fire", idx, tau)
        el = self.elapsed("fire", idx, tau)
        ramp = np.maximum(self.param("fire", idx, 2), 1.0)
        smoke = np.where(a, smoke + self.param("fire", idx, 0) * np.clip(el / ramp, 0, 1), smoke)
        temp = np.where(a, temp + self.param("fire", idx, 1) * np.clip(el / (3 * ramp), 0, 1), temp)
        co = np.where(a, co + 40.0 * np.clip(el / 600.0, 0, 1), co)
        a = self.active("co", idx, tau)
        co = np.where(
            a, co + self.param("co", idx, 0) * np.clip(self.elapsed("co", idx, tau) / 900.0, 0, 1), co
        )
        hush = self.active("hush", idx, tau)
        test = self.active("test", idx, tau)
        flags |= np.where(hush, f("hush").mask, 0) | np.where(test, f("test").mask, 0)
        flags |= np.where(self.active("tamper", idx, tau), f("tamper").mask, 0)
        a = self.active("sensor_fault", idx, tau)
        flags |= np.where(a, f("fault").mask, 0)
        smoke = np.where(a, 0.0, smoke)
        a = self.active("low_battery", idx, tau)
        battery = np.where(a, self.param("low_battery", idx, 0), battery)
        flags |= np.where(battery < 20.0, f("low_battery").mask, 0)
        # the device's own decisions (a hush silences smoke, never heat or CO)
        smoke_alarm = ((smoke > SMOKE_ALARM_DB_M) & ~hush) | test
        flags |= np.where(smoke_alarm, f("smoke_alarm").mask, 0)
        flags |= np.where(temp > HEAT_ALARM_C, f("heat_alarm").mask, 0)
        flags |= np.where(co > CO_ALARM_PPM, f("co_alarm").mask, 0)
        values = np.stack([np.clip(smoke, 0, 10), temp, co, hum], axis=1)
        return values, flags, battery
