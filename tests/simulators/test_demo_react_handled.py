"""Responders end the episodes that used to end only by themselves (``Fleet.handle``; docs/simulators.md
"Responders on site"): a wanderer found and walked home at walking pace, a vital-sign episode treated by a
doctor, a flooded well pumped down. Only through what the device measures: the positions walk home, the
values return to normal, the water falls over minutes; the detection engine clears the alert from those
frames and the ground truth records the handled end.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from alerts.detection.engine import DetectionEngine
from edge.offline import run_fleet
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind as K
from firmware_bridge.registry import spec
from simulators.demo_actors import HANDLING_S, MEDICAL_EVENTS, MEDICAL_ROLES, phones_for
from simulators.fleet import Fleet
from simulators.manhole import DEVICE_WATER_ALARM_CM, OVERFLOW_CM, ManholeModel
from simulators.neighbourhood import M_PER_DEG_LAT
from simulators.wristband import GEOFENCE_M, WristbandModel

T0 = 1_780_272_000.0  # 2026-06-01 08:00 in Beijing
HOURS = 8.0
WORK_S = 600.0
END = T0 + HOURS * 3600.0


class _Handled(Fleet):
    """Responders arrive 10 minutes into each running episode of ``events`` and take ``WORK_S``."""

    events: tuple[EventType, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (device, event) -> (on site, done, end applied, the truth's own end before)
        self.handled: dict[tuple[str, str], tuple[float, float, float | None, float]] = {}
        self.frames: list[Any] = []

    def run_ticks(self, start: float, duration_s: float) -> Any:
        for tick_end, frames in super().run_ticks(start, duration_s):
            self.frames += frames
            yield tick_end, frames
            for r in list(self.truth):
                key = (r.device_id, r.event_type.value)
                going = r.start + 600.0 <= tick_end < r.end - WORK_S - 60.0 and tick_end + 2 * WORK_S < END
                if r.event_type in self.events and key not in self.handled and going and not r.handled:
                    end = self.handle(*key, on_site=tick_end, done=tick_end + WORK_S)
                    self.handled[key] = (tick_end, tick_end + WORK_S, end, r.end)


def _sim(events: tuple[EventType, ...], counts: dict[K, int], rates: dict[K, dict[str, float]]) -> Any:
    fleet = type("F", (_Handled,), {"events": events})(counts, seed=3, rates=rates, step_s=60.0)
    run = run_fleet(fleet, T0, HOURS * 3600.0, DetectionEngine())
    return fleet, run


@pytest.fixture(scope="module")
def wander() -> Any:
    return _sim((EventType.GEOFENCE_EXIT,), {K.WRISTBAND: 40}, {K.WRISTBAND: {"geofence_exit": 2.0}})


def _reads(fleet: Any, device: str) -> list[Any]:
    out = [
        spec(f.kind).codec.decode(f.payload, device_id=f.device_id, time=f.time)
        for f in fleet.frames
        if f.device_id == device and not f.fault
    ]
    return sorted(out, key=lambda r: r.time)


def _alerts(run: Any, device: str, event: str) -> list[Any]:
    return [a for a in run.alerts if a.device_id == device and a.event_type.value == event]


def test_a_wanderer_found_is_walked_home_at_walking_pace(wander: Any) -> None:
    fleet, _ = wander
    model = fleet.models[K.WRISTBAND]
    assert isinstance(model, WristbandModel)
    sites = fleet.neighbourhood.sites[K.WRISTBAND]
    row = {d: i for i, d in enumerate(sites.device_id)}
    assert len(fleet.handled) >= 4, fleet.handled
    for (device, _), (_on, done, door, own_end) in fleet.handled.items():
        # handled (before: None, nothing reacted); at the door after the walk home, before the walk the
        # wearer would have taken by themselves
        assert door is not None and done < door, (device, done, door)
        (rec,) = [
            r
            for r in fleet.truth
            if r.device_id == device and r.event_type is EventType.GEOFENCE_EXIT and r.handled
        ]
        assert rec.handled and done <= rec.end < door and rec.end < own_end, (rec, done, door, own_end)
        i = row[device]
        gait = float(model.gait[i])
        lat0, lon0 = float(sites.lat[i]), float(sites.lon[i])
        m_lon = M_PER_DEG_LAT * math.cos(math.radians(lat0))
        fixes = [
            (r.time, math.hypot((r.value("lat") - lat0) * M_PER_DEG_LAT, (r.value("lon") - lon0) * m_lon))
            for r in _reads(fleet, device)
            if done <= r.time <= door and r.flags & spec(K.WRISTBAND).flag("gps_valid").mask
        ]
        assert fixes, device
        # on the way home: nearer all the time, at walking pace (GNSS scatter 8 m per axis: 4 sigma)
        for (t1, d1), (t2, d2) in itertools.pairwise(fixes):
            assert d2 <= d1 + 45.0 and d1 - d2 <= gait * (t2 - t1) + 45.0, (device, fixes)
        # the truth says inside the fence from rec.end: the fixes after it are within it
        assert all(d <= GEOFENCE_M + 35.0 for t, d in fixes if t >= rec.end), (device, rec.end, fixes)


def test_the_geofence_alert_clears_after_the_walk_home(wander: Any) -> None:
    fleet, run = wander
    cleared = 0
    for (device, event), (_on, _done, door, own_end) in fleet.handled.items():
        if door is None or door + 1800.0 > END:
            continue  # home after the end of the run
        (rec,) = [
            r for r in fleet.truth if r.device_id == device and r.event_type.value == event and r.handled
        ]
        mine = _alerts(run, device, event)
        if not any(a.phase is AlertPhase.RAISED for a in mine):
            continue
        clears = [a.time for a in mine if a.phase is AlertPhase.CLEARED and a.time >= rec.end]
        # in-fence fix or 15 min of indoor evidence; before: not until the wearer's own way home
        assert clears and min(clears) <= rec.end + 1800.0 and min(clears) < own_end, (device, rec, clears)
        cleared += 1
    assert cleared >= 3


def test_a_doctors_visit_ends_a_vital_sign_episode() -> None:
    rates = {K.WRISTBAND: {"hr_high": 2.0, "hr_low": 2.0, "spo2_low": 2.0}}
    events = (EventType.HEART_RATE_HIGH, EventType.HEART_RATE_LOW, EventType.SPO2_LOW)
    fleet, run = _sim(events, {K.WRISTBAND: 40}, rates)
    assert {e for (_, e) in fleet.handled} == {e.value for e in events}, fleet.handled
    for (device, event), (_on, done, end, _own) in fleet.handled.items():
        assert end == done, (device, event, end)
        (rec,) = [
            r for r in fleet.truth if r.device_id == device and r.event_type.value == event and r.handled
        ]
        assert rec.handled and rec.end == done
        after = [r for r in _reads(fleet, device) if r.time > done]
        assert after and after[0].time - done < 2.0  # the doctor's spot measurement
        hr, spo2 = after[0].value("heart_rate_bpm"), after[0].value("spo2_pct")
        assert 45.0 < hr < 120.0 and spo2 >= 92.0, (event, hr, spo2)
        mine = _alerts(run, device, event)
        if any(a.phase is AlertPhase.RAISED for a in mine):
            clears = [a.time for a in mine if a.phase is AlertPhase.CLEARED and a.time >= done]
            assert clears and min(clears) <= done + 600.0, (device, event, clears)


def test_a_flooded_well_is_pumped_down_over_minutes() -> None:
    fleet, run = _sim((EventType.OVERFLOW,), {K.MANHOLE: 120}, {K.MANHOLE: {"rain": 6.0}})
    model = fleet.models[K.MANHOLE]
    assert isinstance(model, ManholeModel)
    row = {d: i for i, d in enumerate(fleet.neighbourhood.sites[K.MANHOLE].device_id)}
    assert len(fleet.handled) >= 4, fleet.handled
    for (device, event), (on, done, end, own_end) in fleet.handled.items():
        assert end == done, (device, end)
        (rec,) = [
            r for r in fleet.truth if r.device_id == device and r.event_type.value == event and r.handled
        ]
        # the water leaves the overflow line while the crew pumps: not at once, not at the rain's end
        assert rec.handled and on < rec.end < done and rec.end < own_end, (rec, on, done, own_end)
        depth = float(model.depth_cm[row[device]])
        reads = [r for r in _reads(fleet, device) if on < r.time <= done + 5.0]
        # the firmware's return-to-normal uplink at its own alarm line, during the pumping, then the
        # crew's reading at the end: the usual level
        mid = [r for r in reads if r.time < done]
        assert mid and abs(mid[-1].value("water_distance_cm") - DEVICE_WATER_ALARM_CM) < 6.0, [
            (r.time - on, r.value("water_distance_cm")) for r in reads
        ]
        assert reads[-1].value("water_distance_cm") > depth - 10.0
        assert depth - OVERFLOW_CM > 0
        mine = _alerts(run, device, event)
        if any(a.phase is AlertPhase.RAISED for a in mine):
            clears = [a.time for a in mine if a.phase is AlertPhase.CLEARED and a.time >= rec.end]
            assert clears and min(clears) <= done + 120.0, (device, clears, done)


def test_only_a_doctor_treats_vital_signs() -> None:
    assert set(HANDLING_S) >= MEDICAL_EVENTS and {"overflow", "geofence_exit"} <= set(HANDLING_S)

    class P:
        def __init__(self, username: str, role: str) -> None:
            self.username, self.name, self.roles, self.lat, self.lon = username, username, [role], None, None

    phones = phones_for([P("doc", "community_doctor"), P("vol", "volunteer")], {"doc": "t1", "vol": "t2"})
    assert [p.role in MEDICAL_ROLES for p in phones] == [True, False]


def test_the_geofence_truth_is_measured_against_the_registered_home_and_the_detectors_radius() -> None:
    # the fence the truth uses is the detector's when it is given the registered home (devices.csv, 6
    # decimals) and the profile's radius: valid fixes, measured as the detector measures (6,371 km sphere),
    # are inside before the truth's crossing out and outside between the crossings (GNSS 8 m per axis)
    from alerts.detection.profiles import WristbandProfile
    from alerts.detection.wristband import EARTH_RADIUS_M

    radius = WristbandProfile.model_fields["geofence_radius_m"].default
    assert radius == GEOFENCE_M
    fleet = _Handled({K.WRISTBAND: 40}, seed=5, rates={K.WRISTBAND: {"geofence_exit": 2.0}}, step_s=60.0)
    list(fleet.run_ticks(T0, HOURS * 3600.0))
    sites = fleet.neighbourhood.sites[K.WRISTBAND]
    home = {
        d: (round(float(a), 6), round(float(o), 6))
        for d, a, o in zip(sites.device_id, sites.lat, sites.lon, strict=True)
    }
    valid = spec(K.WRISTBAND).flag("gps_valid").mask
    recs = [r for r in fleet.truth if r.event_type is EventType.GEOFENCE_EXIT and r.end < END - 60]
    assert len(recs) >= 10
    inside = outside = 0
    for rec in recs:
        lat0, lon0 = home[rec.device_id]
        for r in _reads(fleet, rec.device_id):
            if not r.flags & valid:
                continue
            dy = math.radians(r.value("lat") - lat0)
            dx = math.radians(r.value("lon") - lon0) * math.cos(math.radians(lat0))
            d = EARTH_RADIUS_M * math.hypot(dx, dy)
            if rec.start - 900.0 <= r.time < rec.start - 30.0:
                inside += 1
                assert d <= radius + 35.0, (rec, r.time - rec.start, d)
            elif rec.start + 30.0 <= r.time <= rec.end - 30.0:
                outside += 1
                assert d >= radius - 35.0, (rec, r.time - rec.start, d)
    assert inside >= 5 and outside >= 20, (inside, outside)
