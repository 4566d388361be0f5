"""Confirmed (event) uplinks are retried until acknowledged (docs/payloads.md); periodic reports are not.

The same fleet and seed run twice, once on a clean link and once on a lossy one (the models' random
streams do not depend on the link's): every event uplink of the clean run must reach a real receiver
(SLIP + CRC link decoder, then the payload codec) intact on the lossy link too, its bytes unchanged (a
LoRaWAN retransmission carries the same FCnt and payload), a few seconds later at most per lost attempt;
a lost periodic report stays lost.
"""

from __future__ import annotations

from collections import Counter

import pytest

from firmware_bridge.errors import DecodeError
from firmware_bridge.framing import FrameDecoder, encode_frame
from firmware_bridge.kernel.records import DeviceKind as K
from firmware_bridge.registry import spec
from simulators.faults import MAX_TRANSMISSIONS, RETRY_DELAY_S, LinkFaultRates, SimFrame
from simulators.fleet import Fleet

T0 = 1_780_272_000.0
COUNTS = {K.MANHOLE: 40, K.SMOKE_ALARM: 40, K.WRISTBAND: 40}
RATES = LinkFaultRates(corrupt=0.1, truncate=0.1, duplicate=0.05, reorder=0.02)
RATES_OUTAGE = LinkFaultRates(
    corrupt=0.1, truncate=0.1, outages_per_gateway_day=12.0, outage_s=(300.0, 900.0)
)


def _fleet(faults: LinkFaultRates | None) -> Fleet:
    kw = {"faults": faults} if faults is not None else {}
    return Fleet.build(COUNTS, seed=11, **kw)


def _received(frames: list[SimFrame]) -> list[tuple[SimFrame, bytes]]:
    """What a receiver accepts: frames whose link CRC and payload codec pass."""
    out = []
    for f in frames:
        dec = FrameDecoder()
        if not dec.feed(f.apply_corruption(encode_frame(f.device_id, f.payload))):
            continue
        try:
            spec(f.kind).codec.decode(f.payload, device_id=f.device_id, time=f.time)
        except DecodeError:
            continue
        out.append((f, f.payload))
    return out


def _is_event(f: SimFrame) -> bool:
    return (
        not spec(f.kind).codec.decode(f.payload, device_id=f.device_id, time=f.time).flags
        & spec(f.kind).flag("heartbeat").mask
    )


@pytest.fixture(scope="module", params=[RATES, RATES_OUTAGE], ids=["lossy", "lossy+outages"])
def runs(request):  # type: ignore[no-untyped-def]
    clean = _fleet(None)
    clean_frames = list(clean.run(T0, 12 * 3600.0))
    lossy = _fleet(request.param)
    lossy_frames = list(lossy.run(T0, 12 * 3600.0))
    return clean, clean_frames, lossy, lossy_frames


def test_no_event_uplink_is_lost_for_good(runs) -> None:  # type: ignore[no-untyped-def]
    _, clean_frames, lossy, lossy_frames = runs
    events = {(f.device_id, f.seq, f.payload): f.time for f in clean_frames if _is_event(f)}
    assert len(events) > 40
    got: dict[tuple[str, int, bytes], float] = {}
    for f, payload in _received(lossy_frames):
        got.setdefault((f.device_id, f.seq, payload), f.time)
    missing = [k for k in events if k not in got]
    assert missing == []
    lost_first = [r for r in lossy.faults_log if r["fault"] in ("corrupt", "truncate") and "attempt" not in r]
    retried = [r for r in lossy.faults_log if r["fault"] == "retry"]
    assert retried, "the lossy link lost no event uplink: the test proves nothing"
    by_key = {(str(r["device_id"]), int(r["seq"])): r for r in retried}
    outages = [r for r in lossy.faults_log if r["fault"] == "outage"]
    for r in retried:
        sent, first = float(r["sent"]), float(r["first_sent"])
        n = int(r["attempt"])
        assert 2 <= n <= MAX_TRANSMISSIONS
        assert RETRY_DELAY_S[0] * (n - 1) - 1e-3 <= sent - first <= RETRY_DELAY_S[1] * (n - 1) + 1e-3
        if not outages:
            assert float(r["time"]) == pytest.approx(sent, abs=1e-3)
    # every lost first transmission of an event uplink has its retry; no periodic report has one
    lost_events = 0
    heartbeat_lost = 0
    clean_by_seq = {(f.device_id, f.seq): f for f in clean_frames}
    for r in lost_first:
        orig = clean_by_seq[(str(r["device_id"]), int(r["seq"]))]
        if _is_event(orig):
            lost_events += 1
            assert (orig.device_id, orig.seq) in by_key
        else:
            heartbeat_lost += 1
            assert (orig.device_id, orig.seq) not in by_key
    assert lost_events > 0 and heartbeat_lost > 0


def test_lost_periodic_reports_stay_lost(runs) -> None:  # type: ignore[no-untyped-def]
    _, clean_frames, _, lossy_frames = runs
    periodic = {(f.device_id, f.seq, f.payload) for f in clean_frames if not _is_event(f)}
    got = {(f.device_id, f.seq, p) for f, p in _received(lossy_frames)}
    assert periodic - got  # some heartbeats never arrive: unconfirmed uplinks are not re-sent


def test_truth_and_clean_frames_do_not_depend_on_the_link(runs) -> None:  # type: ignore[no-untyped-def]
    clean, clean_frames, lossy, lossy_frames = runs
    assert clean.truth == lossy.truth
    # everything the lossy receiver accepts is a frame the devices sent, bytes and seq unchanged
    sent = {(f.device_id, f.seq, f.payload) for f in clean_frames}
    assert {(f.device_id, f.seq, p) for f, p in _received(lossy_frames)} <= sent
    # each fault row is one frame on the link (retries included), the receiver's reject counts match
    on_frames = Counter(f.fault for f in lossy_frames if f.fault)
    logged = Counter(str(r["fault"]) for r in lossy.faults_log)
    for name in ("corrupt", "truncate", "retry"):
        assert logged[name] == on_frames[name], name
    assert [f.time for f in lossy_frames] == sorted(f.time for f in lossy_frames)


def test_a_seed_without_lost_events_is_unchanged() -> None:
    """Retries draw from their own stream: heartbeat-only losses leave the fault log of a seed as it was."""
    a = Fleet.build({K.WRISTBAND: 20}, seed=4, faults=LinkFaultRates(corrupt=0.05))
    fa = list(a.run(T0, 3 * 3600.0))
    b = Fleet.build({K.WRISTBAND: 20}, seed=4, faults=LinkFaultRates(corrupt=0.05))
    fb = list(b.run(T0, 3 * 3600.0))
    assert fa == fb and a.faults_log == b.faults_log
