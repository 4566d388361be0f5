"""Detection thresholds: per-kind defaults, per-device overrides, validated and typed.

Why here and why pydantic: every threshold in :mod:`alerts.detection.manhole` /
:mod:`alerts.detection.smoke_alarm` /
:mod:`alerts.detection.wristband` must be configurable per device (a cover on a steep road, a kitchen
detector, a
patient whose resting heart rate is 45), and a typo in the gateway TOML must fail loudly with the key's
name instead of silently using a default. Defaults come from ``/work/shared/REFERENCES.md`` (standards
named next to each field).

On the hot path a rule reads parameters through :class:`ParamView`: a plain Python float when no device
of the kind overrides the field (the common case, free for numpy broadcasting), otherwise a per-device
array filled once when the device first appears.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from firmware_bridge.kernel.events import Severity
from firmware_bridge.kernel.records import DeviceKind
from tests.alerts.detection.reference.detectors.base import grow

_log = logging.getLogger(__name__)


class ProfileError(ValueError):
    """A profile or per-device override is invalid (names the kind, device and key)."""


class KindProfile(BaseModel):
    """Fields every kind shares: silence, battery."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    silent_after_heartbeats: float = Field(
        2.2, gt=1.0, description="DEVICE_SILENT after this many missed intervals"
    )
    silent_severity: int = Field(int(Severity.LOW), ge=1, le=3)
    silent_remind_s: float = Field(
        24 * 3600.0, gt=0, description="repeat reminder while a device stays silent"
    )
    low_battery_pct: float = Field(15.0, ge=0, le=100)
    low_battery_clear_pct: float = Field(25.0, ge=0, le=100)


class ManholeProfile(KindProfile):
    # GB/T 41401-2022 vendors: |tilt - installed| > 10° (5° / 15° also used), unconditionally above 90°
    tilt_threshold_deg: float = Field(10.0, gt=0)
    tilt_clear_deg: float = Field(7.0, ge=0)
    tilt_open_deg: float = Field(90.0, gt=0)
    # a passing truck shakes the cover (~2 s spike). vibration_g is the peak since the previous uplink
    # (up to 24 h back): below this no vehicle touched the cover, so a tilted alarm frame is no truck
    truck_vibration_g: float = Field(0.15, gt=0)
    # a tilted frame with a vehicle in its window (and no tilt_settled bit) is a cover displaced unless the
    # device reports the return to normal within this long (docs/payloads.md: it must, within 30 s)
    displaced_confirm_s: float = Field(45.0, gt=0)
    # vibration_g's window is the time since the device's previous uplink: a tilted alarm frame is "no
    # vehicle" only when its uplinks were quiet for at least this long before it (a truck's rock lasts 1-2 s,
    # the tilt is a 1 s median; 5 s is also the firmware's own debounce, tilt_settled). A heartbeat due
    # 0.1 s after a truck's alarm uplink has seen 0.1 s of road: no evidence (docs/detection.md)
    quiet_window_s: float = Field(5.0, gt=0)
    # water within 30 cm of the cover overflows onto the road soon (simulators/manhole.py OVERFLOW_CM)
    overflow_medium_cm: float = Field(30.0, ge=0)
    overflow_high_cm: float = Field(15.0, ge=0)
    overflow_clear_cm: float = Field(40.0, ge=0)
    # GB/T 50493-2019: combustible 1st alarm <= 25 %LEL, 2nd <= 50 %LEL
    ch4_medium_pct_lel: float = Field(25.0, gt=0)
    ch4_high_pct_lel: float = Field(50.0, gt=0)
    ch4_clear_pct_lel: float = Field(20.0, ge=0)
    # H2S 10 ppm, OSHA ceiling 20 ppm
    h2s_medium_ppm: float = Field(10.0, gt=0)
    h2s_high_ppm: float = Field(20.0, gt=0)
    h2s_clear_ppm: float = Field(8.0, ge=0)
    o2_low_pct: float = Field(19.5, gt=0)
    o2_high_pct: float = Field(23.5, gt=0)
    o2_danger_low_pct: float = Field(16.0, gt=0)
    o2_hysteresis_pct: float = Field(0.3, ge=0)
    frozen_readings: float = Field(
        2.0, gt=1, description="tilt, temperature, water and O2 all repeating this many uplinks = stuck"
    )


class SmokeAlarmProfile(KindProfile):
    # EN 54-5 class A1: fixed 54-65 °C, rate of rise ~8.3 °C/min (15 °F/min)
    heat_fixed_c: float = Field(57.0, gt=0)
    heat_clear_c: float = Field(50.0)
    heat_ror_c_per_min: float = Field(8.3, gt=0)
    smoke_ror_db_m_per_min: float = Field(
        0.15, gt=0, description="unused since 2026-11 (thickening smoke is cooking too); kept for old configs"
    )
    # corroboration of the smoke bit against cooking / steam
    smoke_density_db_m: float = Field(0.15, gt=0, description="obscuration a detector alarms at (EN 14604)")
    fire_density_db_m: float = Field(
        1.0,
        gt=0,
        description="smoke alone this dense is a fire: burnt food stays below ~0.8 dB/m at the ceiling "
        "(estimate), EN 54-7 test fires end at 2 dB/m",
    )
    temp_rise_c: float = Field(8.0, gt=0, description="rise over the learned room baseline that corroborates")
    co_fire_ppm: float = Field(
        25.0,
        gt=0,
        description="CO together with smoke that means a smouldering fire (cooking stays below; EN 50291 "
        "devices may not alarm at 30 ppm before 120 min, so 25 ppm is still 'normal' air on its own)",
    )
    fire_persist_s: float = Field(
        2700.0, gt=0, description="smoke (no steam) held this long is beyond a meal's cooking: a fire"
    )
    neighbour_group: float = Field(
        float("nan"),
        description="number shared by alarms in *separate* dwellings (one building): smoke at two of them "
        "within neighbour_window_s is a spreading fire (NaN = no neighbours known)",
    )
    neighbour_window_s: float = Field(600.0, gt=0)
    steam_humidity_pct: float = Field(85.0, ge=0, le=100, description="absolute humidity that means steam")
    humidity_rise_pct: float = Field(4.0, gt=0, description="rise over the learned baseline that means steam")
    steam_humidity_unlearned_pct: float = Field(
        60.0, ge=0, le=100, description="humidity that means steam before the room's baseline is learned"
    )
    # a detector in a hallway or bedroom, far from any kitchen, may trust its dry smoke bit at once
    smoke_bit_immediate: bool = Field(
        False, description="a dry, steam-free smoke bit pages on its first frame"
    )
    nuisance_confirm_s: float = Field(
        20.0, ge=0, description="unused since 2026-11 (see fire_persist_s); kept for old configs"
    )
    hush_max_s: float = Field(600.0, ge=0, description="hush suppresses re-raise at most this long")
    # EN 50291 curve in alerts.detection.detectors.dose; clear below this concentration
    co_clear_ppm: float = Field(25.0, ge=0)
    co_clear_hold_s: float = Field(
        300.0,
        ge=0,
        description="fresh air (below co_clear_ppm, the device's CO bit clear) this long clears a CO alarm, "
        "seen by a later reading or by the device's silence (it must uplink when its CO bit sets again, "
        "docs/payloads.md); a shorter dip keeps it open. UL 2034 alarms re-sound within ~6 min when CO "
        "persists after a silence, so 5 min of clean air is the device's own notion of over",
    )
    co_bit_confirm: bool = Field(True, description="the device's own CO alarm bit raises at once")
    baseline_alpha: float = Field(0.05, gt=0, le=1)


class WristbandProfile(KindProfile):
    silent_severity: int = Field(int(Severity.MEDIUM), ge=1, le=3)
    silent_remind_s: float = Field(3600.0, gt=0)
    # ADI Analog Dialogue 43-07: impact > ~2-3.5 g, then stillness with an orientation change
    fall_impact_g: float = Field(2.5, gt=0)
    fall_stillness_s: float = Field(30.0, ge=0)
    fall_orientation_deg: float = Field(45.0, ge=0)
    fall_window_s: float = Field(
        400.0, gt=0, description="stillness must be confirmed this soon after impact"
    )
    fall_recovered_steps: float = Field(3.0, ge=0, description="steps after the impact that mean 'got up'")
    fall_motion_slack_s: float = Field(
        10.0, ge=0, description="stillness differing from the time since the peak by more = moved"
    )
    fall_uplink_delay_s: float = Field(
        30.0, ge=0, description="unused since 2026-11 (the peak time comes from stillness_s); old configs"
    )
    # heart rate at rest: alert after ~10 min above 120 or below 40-50 bpm; SpO2 < 90 % hypoxaemia
    rest_steps: float = Field(30.0, ge=0, description="steps per uplink still counted as at rest")
    hr_high_bpm: float = Field(120.0, gt=0)
    hr_critical_high_bpm: float = Field(150.0, gt=0)
    hr_low_bpm: float = Field(45.0, gt=0)
    hr_critical_low_bpm: float = Field(35.0, gt=0)
    hr_hysteresis_bpm: float = Field(5.0, ge=0)
    spo2_low_pct: float = Field(90.0, gt=0)
    spo2_critical_pct: float = Field(85.0, gt=0)
    spo2_clear_pct: float = Field(92.0, gt=0)
    inactivity_s: float = Field(2 * 3600.0, gt=0, description="still this long in the daytime")
    day_start_h: float = Field(7.0, ge=0, le=24, description="local hours when stillness is not sleep")
    day_end_h: float = Field(21.0, ge=0, le=24)
    utc_offset_h: float = Field(8.0, ge=-12, le=14, description="local time zone (China: UTC+8)")
    home_lat: float = Field(float("nan"), description="geofence centre (NaN = learn it from the band)")
    home_lon: float = Field(float("nan"))
    geofence_radius_m: float = Field(300.0, gt=0)
    geofence_indoor_s: float = Field(
        900.0,
        gt=0,
        description="worn with no GNSS fix this long after an in-fence fix or a fix approaching home: indoors"
        " at home (bands rarely get a fix indoors), the wandering alert clears",
    )
    geofence_approach_factor: float = Field(
        2.0, ge=1, description="a fix nearer home than the previous one is approaching within this x radius"
    )
    geofence_approach_m: float = Field(25.0, ge=0, description="nearer by at least this (GNSS scatter)")
    home_learn_step_m: float = Field(
        30.0,
        gt=0,
        description="learned home: a fix moves it by at most alpha x this per axis (a running median, not"
        " a mean: walks do not drag it); fixes taken on the charger are learned in full",
    )
    home_learn_warmup_fixes: float = Field(
        96.0, ge=0, description="the learned home takes its first fixes in full (a mean), then median steps"
    )
    band_removed_s: float = Field(900.0, ge=0, description="off the wrist (not charging) this long")


DEFAULTS: dict[DeviceKind, KindProfile] = {
    DeviceKind.MANHOLE: ManholeProfile.model_validate({}),
    DeviceKind.SMOKE_ALARM: SmokeAlarmProfile.model_validate({}),
    DeviceKind.WRISTBAND: WristbandProfile.model_validate({}),
}


class ProfileSet:
    """Default profile per kind plus per-device overrides (``{device_id: {field: value}}``)."""

    def __init__(
        self,
        defaults: Mapping[DeviceKind, KindProfile] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.defaults: dict[DeviceKind, KindProfile] = dict(DEFAULTS)
        for kind, prof in (defaults or {}).items():
            k = DeviceKind(kind)
            if type(prof) is not type(DEFAULTS[k]):
                raise ProfileError(f"profile for {k.value} must be a {type(DEFAULTS[k]).__name__}")
            self.defaults[k] = prof
        self.overrides: dict[str, dict[str, Any]] = {str(d): dict(o) for d, o in (overrides or {}).items()}
        known = set().union(*(type(p).model_fields for p in self.defaults.values()))
        for dev, o in self.overrides.items():
            bad = sorted(set(o) - known)
            if bad:
                raise ProfileError(f"device {dev}: unknown threshold(s) {', '.join(bad)}")
            # a value must be valid for at least one kind that has every overridden field
            if not any(set(o) <= set(type(p).model_fields) for p in self.defaults.values()):
                raise ProfileError(f"device {dev}: thresholds {sorted(o)} do not belong to one device kind")
            for p in self.defaults.values():
                if set(o) <= set(type(p).model_fields):
                    try:
                        type(p).model_validate(p.model_dump() | o)
                    except ValidationError as exc:
                        raise ProfileError(f"device {dev}: {_explain(exc)}") from exc

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ProfileSet:
        """Build from a TOML-style mapping: ``{"manhole": {...}, "devices": {"MH-1": {...}}}``."""
        defaults: dict[DeviceKind, KindProfile] = {}
        for key, value in data.items():
            if key == "devices":
                continue
            try:
                kind = DeviceKind(key)
            except ValueError:
                raise ProfileError(
                    f"unknown profile section {key!r}; expected a device kind or 'devices'"
                ) from None
            try:
                defaults[kind] = type(DEFAULTS[kind]).model_validate(dict(value))
            except ValidationError as exc:
                raise ProfileError(f"profile {key}: {_explain(exc)}") from exc
        return cls(defaults, data.get("devices") or {})

    def profile(self, kind: DeviceKind, device_id: str) -> KindProfile:
        base = self.defaults[DeviceKind(kind)]
        extra = self.overrides.get(device_id)
        if not extra:
            return base
        try:
            return type(base).model_validate(base.model_dump() | dict(extra))
        except ValidationError as exc:
            raise ProfileError(f"device {device_id}: {_explain(exc)}") from exc

    def overridden_fields(self, kind: DeviceKind) -> set[str]:
        fields = type(self.defaults[DeviceKind(kind)]).model_fields
        return {f for o in self.overrides.values() for f in o if f in fields}


def _explain(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


class ParamTable:
    """Per-device parameter arrays for the fields some device overrides; scalars for the rest."""

    def __init__(self, profiles: ProfileSet, kind: DeviceKind) -> None:
        self.profiles = profiles
        self.kind = DeviceKind(kind)
        self.default = profiles.defaults[self.kind]
        self.fields = sorted(profiles.overridden_fields(self.kind))
        self.dtypes = {f: bool if isinstance(getattr(self.default, f), bool) else float for f in self.fields}
        self.arrays: dict[str, npt.NDArray[Any]] = {f: np.zeros(0, dtype=self.dtypes[f]) for f in self.fields}

    def add(self, rows: npt.NDArray[np.int64], device_ids: list[str], capacity: int) -> None:
        """Fill the rows of newly seen devices from their overrides.

        An override that does not fit this kind (a manhole threshold listed for a wristband) is logged
        and the device runs on the kind's defaults: a config slip must not stop detection.
        """
        for f in self.fields:
            self.arrays[f] = grow(self.arrays[f], capacity, self.dtypes[f](getattr(self.default, f)))
        overrides = self.profiles.overrides
        if not overrides:
            return
        for row, dev in zip(rows.tolist(), device_ids, strict=True):
            if dev not in overrides:
                continue
            try:
                prof = self.profiles.profile(self.kind, dev)
            except ProfileError as exc:
                _log.warning("%s; this %s uses the default thresholds", exc, self.kind.value)
                continue
            for f in self.fields:
                self.arrays[f][row] = self.dtypes[f](getattr(prof, f))

    def view(self, rows: npt.NDArray[np.int64]) -> ParamView:
        return ParamView(self, rows)


class ParamView:
    """``view.field`` -> float (no device overrides it) or the array of ``rows``' values."""

    __slots__ = ("_rows", "_table")

    def __init__(self, table: ParamTable, rows: npt.NDArray[np.int64]) -> None:
        self._table = table
        self._rows = rows

    def __getattr__(self, name: str) -> Any:
        arr = self._table.arrays.get(name)
        if arr is None:
            return getattr(self._table.default, name)
        return arr[self._rows]
