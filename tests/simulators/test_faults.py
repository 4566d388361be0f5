"""Link faults: every injected fault is recorded, and a real link decoder sees exactly what was injected.

SLIP framing per RFC 1055 and the CRC-16/CCITT-FALSE link frame of docs/framing.md (firmware_bridge.framing).
"""

from __future__ import annotations

from collections import Counter

import pytest

from firmware_bridge.errors import DecodeError
from firmware_bridge.framing import FrameDecoder, encode_frame
from firmware_bridge.kernel.records import DeviceKind as K
from firmware_bridge.registry import spec
from simulators.faults import LinkFaultRates
from simulators.fleet import Fleet

T0 = 1_780_272_000.0
RATES = LinkFaultRates(
    corrupt=0.03,
    truncate=0.03,
    duplicate=0.05,
    reorder=0.03,
    skewed_gateways=1.0,
    skew_s=45.0,
    outages_per_gateway_day=8.0,
    outage_s=(300.0, 900.0),
)


@pytest.fixture(scope="module")
def run():  # type: ignore[no-untyped-def]
    fleet = Fleet.build({K.MANHOLE: 20, K.SMOKE_ALARM: 20, K.WRISTBAND: 60}, seed=3, faults=RATES)
    frames = list(fleet.run(T0, 6 * 3600.0))
    return fleet, frames


def test_every_fault_is_logged(run) -> None:  # type: ignore[no-untyped-def]
    fleet, frames = run
    on_frames = Counter(f.fault for f in frames if f.fault)
    logged = Counter(str(r["fault"]) for r in fleet.faults_log)
    for name in ("corrupt", "truncate", "duplicate", "reorder", "outage_backlog"):
        assert on_frames[name] > 0, name
        assert logged[name] == on_frames[name], name
    assert logged["outage"] >= 1
    assert logged["clock_skew"] == len(fleet.gateway_ids)
    held = sum(int(r["frames_held"]) for r in fleet.faults_log if r["fault"] == "outage")
    assert held >= on_frames["outage_backlog"]


def test_stream_stays_in_time_order(run) -> None:  # type: ignore[no-untyped-def]
    _, frames = run
    times = [f.time for f in frames]
    assert times == sorted(times)


def test_serial_decoder_rejects_exactly_the_corrupt_frames(run) -> None:  # type: ignore[no-untyped-def]
    _, frames = run
    dec = FrameDecoder()
    good = []
    for f in frames:
        good.extend(dec.feed(f.apply_corruption(encode_frame(f.device_id, f.payload))))
    n_corrupt = sum(1 for f in frames if f.fault == "corrupt" or f.corrupt is not None)
    expected = [(f.device_id, f.payload) for f in frames if f.corrupt is None]
    assert [(g.device_id, g.payload) for g in good] == expected
    assert sum(dec.rejects.values()) >= n_corrupt > 0


def test_truncated_payloads_are_rejected_by_the_codec(run) -> None:  # type: ignore[no-untyped-def]
    _, frames = run
    cut = [f for f in frames if f.fault == "truncate"]
    assert cut
    for f in cut:
        with pytest.raises(DecodeError):
            spec(f.kind).codec.decode(f.payload, device_id=f.device_id, time=f.time)


def test_duplicates_are_the_same_frame_from_another_gateway(run) -> None:  # type: ignore[no-untyped-def]
    _, frames = run
    seen = {}
    for f in frames:
        if f.fault not in ("duplicate", "retry"):  # a retry re-sends a lost frame's seq and bytes later
            seen[(f.device_id, f.seq)] = f
    for f in frames:
        if f.fault == "duplicate":
            orig = seen[(f.device_id, f.seq)]
            assert orig.payload == f.payload and orig.gateway_id != f.gateway_id
            assert 0 < f.time - orig.time <= 0.5 + 1e-6 or orig.fault in ("reorder", "outage_backlog")


def test_backlog_frames_are_old_and_skew_is_visible(run) -> None:  # type: ignore[no-untyped-def]
    fleet, frames = run
    skew = {r["gateway_id"]: r["skew_s"] for r in fleet.faults_log if r["fault"] == "clock_skew"}
    backlog = [f for f in frames if f.fault == "outage_backlog"]
    assert backlog
    for f in backlog:
        assert f.time - (f.stamp - skew[f.gateway_id]) > 0  # delivered after it was sent
    late = max(f.time - (f.stamp - skew[f.gateway_id]) for f in backlog)
    assert late > 60
    clean = [f for f in frames if not f.fault]
    assert all(f.stamp - f.time == pytest.approx(skew[f.gateway_id]) for f in clean)
    for f in (f for f in frames if f.fault == "reorder"):
        assert f.time - (f.stamp - skew[f.gateway_id]) >= 1.0


def test_no_faults_by_default() -> None:
    fleet = Fleet.build({K.WRISTBAND: 10}, seed=1)
    frames = list(fleet.run(T0, 3600.0))
    assert frames and not any(f.fault for f in frames) and fleet.faults_log == []
