"""The wearer of a simulated wristband walks home at the end of a geofence exit (docs/simulators.md).

Ground truth ends when the wearer is back inside the fence; between that moment and the schedule's end
(the door) the band keeps sending outdoor fixes inside the fence, at the wearer's gait speed. The
expected positions are worked out from the model's own parameters (reach, bearing, gait), not from its
code path, and compared with the decoded uplinks.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest

from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind as K
from firmware_bridge.kernel.records import Reading
from firmware_bridge.registry import spec
from simulators.fleet import Fleet
from simulators.neighbourhood import M_PER_DEG_LAT
from simulators.wristband import GAIT_MPS, GEOFENCE_M, OUTDOOR_M, WristbandModel

T0 = 1_780_243_200.0  # 2026-06-01 00:00 local (UTC+8)
RATES = {K.WRISTBAND: {"geofence_exit": 1.0, "fall": 0.2, "charging": 0.3}}
NOISE_M = 8.0 * 4  # the position noise is N(0, 8 m) per axis: 4 sigma


Sim = tuple[Fleet, WristbandModel, dict[str, list[Reading]], list[bytes]]


def _run(seed: int) -> Sim:
    fleet = Fleet.build({K.WRISTBAND: 120}, seed=seed, rates=RATES)
    frames = list(fleet.run(T0, 86400.0))
    model = fleet.models[K.WRISTBAND]
    assert isinstance(model, WristbandModel)
    codec = spec(K.WRISTBAND).codec
    ups: dict[str, list[Reading]] = defaultdict(list)
    for f in frames:
        if not f.fault:
            ups[f.device_id].append(codec.decode(f.payload, device_id=f.device_id, time=f.time))
    return fleet, model, ups, [f.payload for f in frames]


@pytest.fixture(scope="module", params=[3, 4])
def sim(request: pytest.FixtureRequest) -> Sim:
    return _run(int(request.param))


def _episodes(fleet: Fleet, model: WristbandModel) -> list[tuple[int, float, float, float, float, float]]:
    """(device row, start, schedule end, reach m, bearing, gait m/s) of every geofence exit."""
    s = model.schedule
    g = s.eff == model.eidx["geofence_exit"]
    return [
        (int(d), float(st), float(en), GEOFENCE_M * float(p[0]), float(p[1]), float(model.gait[d]))
        for d, st, en, p in zip(s.dev[g], s.start[g], s.end[g], s.p[g], strict=True)
    ]


def _offset(model: WristbandModel, d: int, r: Reading) -> tuple[float, float]:
    """East and north offset (m) of a reading's position from the wearer's home."""
    lat0, lon0 = float(model.sites.lat[d]), float(model.sites.lon[d])
    north = (r.value("lat") - lat0) * M_PER_DEG_LAT
    east = (r.value("lon") - lon0) * M_PER_DEG_LAT * math.cos(math.radians(lat0))
    return east, north


def test_truth_ends_back_inside_the_fence(sim) -> None:  # type: ignore[no-untyped-def]
    fleet, model, _, _ = sim
    ids = list(model.sites.device_id)
    truth = {(r.device_id, round(r.start)): r for r in fleet.truth if r.event_type is EventType.GEOFENCE_EXIT}
    eps = _episodes(fleet, model)
    assert len(eps) > 40
    matched = 0
    for d, st, en, _, _, gait in eps:
        rec = next((r for (dev, _), r in truth.items() if dev == ids[d] and st <= r.start < en), None)
        assert rec is not None, (ids[d], st)
        matched += 1
        if en <= T0 + 86400.0:
            # the last GEOFENCE_M / gait seconds of the episode: walking from the fence to the door
            assert rec.end == pytest.approx(en - GEOFENCE_M / gait, abs=1e-3)
        else:
            assert rec.end == T0 + 86400.0  # clipped to the run
        assert rec.start < rec.end
    assert matched == len(truth)
    assert all(GAIT_MPS[0] <= g <= GAIT_MPS[1] for g in model.gait)


def test_walks_home_at_gait_speed_with_fixes(sim) -> None:  # type: ignore[no-untyped-def]
    fleet, model, ups, _ = sim
    ids = list(model.sites.device_id)
    n_home = n_fix = n_inside_fix = 0
    for d, st, en, reach, bearing, gait in _episodes(fleet, model):
        walk_s = reach / gait
        if en > T0 + 86400.0 or en - st < 2 * walk_s:  # short episodes: the two ramps meet lower
            continue
        # outdoors on the way home: from the farthest point until OUTDOOR_M from the door
        for r in (r for r in ups[ids[d]] if en - walk_s + 60 <= r.time < en - OUTDOOR_M / gait):
            n_home += 1
            if not r.has_flag("gps_valid"):
                continue
            n_fix += 1
            east, north = _offset(model, d, r)
            expect = gait * (en - r.time)  # straight back along the bearing of the way out
            assert math.hypot(east - expect * math.cos(bearing), north - expect * math.sin(bearing)) < NOISE_M
            n_inside_fix += expect < GEOFENCE_M
    assert n_home > 30
    assert n_fix >= 0.85 * n_home, (n_fix, n_home)  # P_FIX_OUTDOORS after the time to first fix
    assert n_inside_fix > 5  # fixes inside the fence after the truth's end, before the door


def test_last_metres_are_indoors_and_home_after_the_episode(sim) -> None:  # type: ignore[no-untyped-def]
    fleet, model, ups, _ = sim
    ids = list(model.sites.device_id)
    indoor = indoor_fix = 0
    for d, _, en, _, _, gait in _episodes(fleet, model):
        for r in ups[ids[d]]:
            if en - OUTDOOR_M / gait <= r.time < en:  # the courtyard and stairs: no sky
                indoor += 1
                indoor_fix += r.has_flag("gps_valid")
            if en <= r.time < en + 600 and r.has_flag("gps_valid"):  # home: no fix outside the fence
                assert math.hypot(*_offset(model, d, r)) < GEOFENCE_M
    assert indoor > 3
    assert indoor_fix <= 0.2 * indoor + 1


def test_same_seed_same_bytes_and_truth() -> None:
    a_fleet, _, _, a = _run(5)
    b_fleet, _, _, b = _run(5)
    assert a == b and a_fleet.truth == b_fleet.truth
    _, _, _, c = _run(6)
    assert c != a
