"""Every effect of every signal model passes the same checks (the per-kind quality checklist).

Run one effect at a time at a high rate on a small fleet and check: its episodes reach the ground truth
with a label and severity from the shared vocabulary (firmware_bridge.kernel.events.KIND_EVENTS), every
frame decodes with
the kind's codec and every value stays inside its declared valid range (firmware_bridge channel
declarations, docs/payloads.md), triggered uplinks arrive, silent devices stay silent.
"""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np
import pytest

from firmware_bridge.kernel.events import KIND_EVENTS, Severity
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.registry import spec
from simulators.base import N_PARAMS
from simulators.fleet import Fleet
from simulators.registry import MODELS

T0 = 1_780_243_200.0  # local midnight
CASES = [
    (kind, e.name)
    for kind, model in MODELS.items()
    for e in model.EFFECTS
    if not e.derived or e.name == "rain"
]


def test_declarations() -> None:
    for kind, model in MODELS.items():
        names = [e.name for e in model.EFFECTS]
        assert len(names) == len(set(names)), kind
        for e in model.EFFECTS:
            assert e.label is None or e.label in KIND_EVENTS[kind], (kind, e.name)
            assert e.label is None or not e.label.is_nuisance or e.severity is Severity.NONE
            assert 0 < e.duration_s[0] <= e.duration_s[1]
            assert len(e.params) <= N_PARAMS and all(lo <= hi for lo, hi in e.params)
            assert 0 <= e.hours[0] < e.hours[1] <= 24


@pytest.mark.parametrize(("kind", "effect"), CASES, ids=[f"{k.value}-{e}" for k, e in CASES])
def test_effect(kind: DeviceKind, effect: str) -> None:
    model = MODELS[kind]
    rates = {e.name: 0.0 for e in model.EFFECTS}
    rates[effect] = 50.0 if effect == "rain" else 3.0
    e = next(x for x in model.EFFECTS if x.name == effect)
    if e.eligible == "fw17":  # only bands on firmware 1.7 press "I'm OK": all of them here
        rates["fw_1_7"] = 1.0
    fleet = Fleet.build({kind: 24}, seed=zlib.crc32(effect.encode()) % 1000, rates={kind: rates}, step_s=900)
    frames = list(fleet.run(T0, 86400.0))
    codec = spec(kind).codec
    batch, rejects = codec.decode_many(
        [f.payload for f in frames], device_ids=[f.device_id for f in frames], times=[f.time for f in frames]
    )
    assert rejects == [] and len(batch) == len(frames) > 0
    # values outside a channel's valid range decode to NaN ("not available"): the models never produce them,
    # except a wristband's position without a fresh fix (gps_valid clear): a band of the "not available"
    # vendor behaviour sends that pattern on purpose (docs/simulators.md "GNSS fixes"); with a fix, never
    no_fix = np.zeros(len(batch), dtype=bool)
    if kind is DeviceKind.WRISTBAND:
        no_fix = (batch.flags.astype(np.int64) & spec(kind).flag("gps_valid").mask) == 0
    may_be_na = {"lat", "lon"} if kind is DeviceKind.WRISTBAND else set()
    bad_channels = [
        bool(np.isnan(batch.values[:, i] if c.name not in may_be_na else batch.values[~no_fix, i]).any())
        for i, c in enumerate(codec.channels)
    ]
    assert not any(bad_channels), [c.name for c, bad in zip(codec.channels, bad_channels, strict=True) if bad]
    labels = {r.event_type for r in fleet.truth}
    if e.label is not None:
        assert e.label in labels, effect
    assert all(r.event_type in KIND_EVENTS[kind] for r in fleet.truth)
    sent: dict[str, list[float]] = defaultdict(list)
    for f in frames:
        sent[f.device_id].append(f.time)
    mine = [r for r in fleet.truth if e.label is not None and r.event_type is e.label]
    if e.silent:
        for r in mine:
            assert not [t for t in sent[r.device_id] if r.start <= t < r.end]
    elif e.offsets and e.offsets[0] <= 1.0 and effect not in ("truck", "cooking", "scorched_pot", "rain"):
        # (smoke: the bit sets when the density crosses the threshold, minutes into the episode)
        # an immediate uplink: within a second or two of the start (radio latency included)
        for r in mine:
            assert any(r.start <= t <= r.start + e.offsets[0] + 1.0 for t in sent[r.device_id]), r
