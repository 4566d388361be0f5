"""A simulated wearer who gets up by themselves after a fall, an SOS or hours of stillness walks soon
after; one still down takes no steps (docs/simulators.md "Recovery").

Read from the decoded uplinks: steps are per uplink window (since the previous uplink), so an uplink whose
window lies inside an episode shows none, and within the walk delay (<= 120 s) plus one 5-minute summary
after the truth's end an uplink shows walking: at least ``WALK_STEPS`` beyond the false steps a 5-min
summary may hold (``WALK_NOISE_SPS`` x 300 s), what the detector's walking evidence needs from one summary
(``alerts.detection.wristband._walk``, docs/detection.md "Walking, not a pedometer's false steps").
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest

from alerts.detection.wristband import WALK_NOISE_SPS, WALK_STEPS
from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind as K
from firmware_bridge.kernel.records import Reading
from firmware_bridge.registry import spec
from simulators.fleet import Fleet
from simulators.wristband import RECOVER_WALK_S, WristbandModel

T0 = 1_780_243_200.0  # 2026-06-01 00:00 local (UTC+8)
DAYS = 2.0
RATES = {K.WRISTBAND: {"fall": 0.1, "sos": 0.1, "inactivity": 0.1}}
SUMMARY_S = 300.0
DOWN = {EventType.FALL, EventType.SOS, EventType.INACTIVITY}

Sim = tuple[Fleet, dict[str, list[Reading]], list[bytes]]


def _run(seed: int) -> Sim:
    fleet = Fleet.build({K.WRISTBAND: 150}, seed=seed, rates=RATES)
    frames = list(fleet.run(T0, DAYS * 86400.0))
    codec = spec(K.WRISTBAND).codec
    ups: dict[str, list[Reading]] = defaultdict(list)
    for f in frames:
        if not f.fault:
            ups[f.device_id].append(codec.decode(f.payload, device_id=f.device_id, time=f.time))
    for v in ups.values():
        v.sort(key=lambda r: r.time)
    return fleet, ups, [f.payload for f in frames]


@pytest.fixture(scope="module")
def sim() -> Sim:
    return _run(21)


def _episodes(fleet: Fleet) -> list[tuple[str, EventType, float, float]]:
    end = T0 + DAYS * 86400.0
    return [
        (r.device_id, r.event_type, r.start, r.end)
        for r in fleet.truth
        if r.event_type in DOWN and not r.must_not_alert and r.end < end - 3600.0
    ]


def test_a_wearer_who_got_up_walks_within_the_delay_and_one_summary(sim: Sim) -> None:
    fleet, ups, _ = sim
    eps = _episodes(fleet)
    assert len(eps) >= 20, len(eps)
    slow = []
    for dev, et, _st, en in eps:
        after = [r for r in ups[dev] if en < r.time <= en + RECOVER_WALK_S[1] + SUMMARY_S + 5.0]
        if not any(r.value("steps") >= WALK_STEPS + WALK_NOISE_SPS * SUMMARY_S for r in after):
            slow.append((dev, et.value, en, [(round(r.time - en), r.value("steps")) for r in after]))
    assert not slow, slow[:5]


def test_no_steps_while_down_nor_before_the_first_steps(sim: Sim) -> None:
    fleet, ups, _ = sim
    checked = 0
    for dev, et, st, en in _episodes(fleet):
        rows = ups[dev]
        for prev, cur in itertools.pairwise(rows):
            # the whole window since the previous uplink inside [start, end + shortest walk delay]
            if prev.time >= st and cur.time <= en + RECOVER_WALK_S[0]:
                checked += 1
                assert cur.value("steps") == 0, (dev, et.value, st, en, cur.time, cur.value("steps"))
    assert checked >= 50, checked


def test_truth_ends_when_the_wearer_got_up_and_seeds_stay_deterministic(sim: Sim) -> None:
    fleet, _, payloads = sim
    model = fleet.models[K.WRISTBAND]
    assert isinstance(model, WristbandModel)
    s = model.schedule
    ids = model.sites.device_id
    ends = {(ids[int(d)], float(st)): float(en) for d, st, en in zip(s.dev, s.start, s.end, strict=True)}
    for dev, _et, st, en in _episodes(fleet):
        assert ends[(dev, st)] == en  # the schedule's end (got up), not the first steps
    again = _run(21)
    assert again[2] == payloads
    assert [r.to_dict() for r in again[0].truth] == [r.to_dict() for r in fleet.truth]
