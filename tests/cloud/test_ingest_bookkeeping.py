"""Device bookkeeping of many devices in one batch: every device's own counts, newest reading, lost frames.

The bookkeeping is one statement for all the batch's devices (arrays on PostgreSQL, one prepared UPDATE
stepped per device on SQLite), so a misaligned column would give one device another's figures. Each
device here has its own history, sequence numbers around the 16-bit wrap, and either newer or only late
readings in the second batch; the expected values are worked out per device, independently of
:mod:`cloud.sequence`, on SQLite and PostgreSQL, through ``ingest`` and ``ingest_many``.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from alerts.contract import UplinkAck
from cloud.db import Database
from cloud.errors import StorageError
from cloud.ingest import IngestService
from cloud.sequence import batch_sequences, first_frame_gaps, sequence_summary
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from firmware_bridge.registry import spec
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import CSV_HEADER, GW1, T0, Cloud, batch

M = DeviceKind.MANHOLE
N_DEV = 40
DEVICES = [f"70b3d57ee{i:07x}" for i in range(N_DEV)]


def block(rows: list[tuple[str, int, float, float]]) -> ReadingBatch:
    """Readings ``(device, seq, time, battery)`` of manholes."""
    n_ch = len(spec(M).channels)
    rs = [
        Reading(
            kind=M, device_id=d, seq=q, time=t, battery_pct=b, flags=0, values=(1.0,) * n_ch, fw_version=1
        )
        for d, q, t, b in rows
    ]
    return ReadingBatch.from_readings(M, rs)


def first_rows(i: int) -> list[tuple[str, int, float, float]]:
    """Device i: three frames ending at seq 65533 + i (wrapping past 65535 for i >= 3), one lost between."""
    last = (65533 + i) % 65536
    seqs = [(last - 3) % 65536, (last - 1) % 65536, last]  # last - 2 lost
    return [(DEVICES[i], q, T0 + 1000 * i + 60 * k, 50.0 + i) for k, q in enumerate(seqs)]


def second_rows(i: int) -> list[tuple[str, int, float, float]]:
    """Even devices: two newer frames, the first continuing across the wrap, then i % 4 lost. Odd devices:
    two late frames (older than the first batch's newest): counted, but last seen / seq stay."""
    d, last = DEVICES[i], (65533 + i) % 65536
    if i % 2 == 0:
        t = T0 + 1000 * i + 600
        return [(d, (last + 1) % 65536, t, 10.0 + i), (d, (last + 2 + i % 4) % 65536, t + 60, 20.0 + i)]
    return [
        (d, (last - 5) % 65536, T0 + 1000 * i - 300, 1.0),
        (d, (last - 4) % 65536, T0 + 1000 * i - 240, 2.0),
    ]


@pytest.mark.parametrize("many", [False, True], ids=["ingest", "ingest_many"])
async def test_each_device_of_a_batch_gets_its_own_bookkeeping(cloud: Cloud, many: bool) -> None:
    rows = [f"{d},manhole,,39.9,116.3,,,,,false,{GW1},,,,,,," for d in DEVICES]
    cloud.state.registry.import_csv("\n".join([CSV_HEADER, *rows]) + "\n", now=cloud.clock.now())
    order = np.random.default_rng(7).permutation(N_DEV)  # devices interleaved, not in id order
    b1 = batch("batch-book-01", block([r for i in order for r in first_rows(int(i))]))
    b2 = batch("batch-book-02", block([r for i in order for r in second_rows(int(i))]))
    svc = cloud.state.ingest
    if many:
        out = [await svc.ingest_many([(b1, GW1)]), await svc.ingest_many([(b2, GW1)])]
        acks = [o[0] for o in out]
    else:
        acks = [await svc.ingest(b1, gateway_id=GW1), await svc.ingest(b2, gateway_id=GW1)]
    assert [a.telemetry_stored for a in acks] == [3 * N_DEV, 2 * N_DEV]
    total_gaps = 0
    for i, dev_id in enumerate(DEVICES):
        dev = cloud.state.registry.get(dev_id, "admin")
        last = (65533 + i) % 65536
        if i % 2 == 0:  # newest frames in the second batch: 1 lost before + i % 4 lost between them
            gaps = 1 + i % 4
            want = ((last + 2 + i % 4) % 65536, T0 + 1000 * i + 660, 20.0 + i)
        else:  # late frames: no gap counted (older than the stored last seen), nothing moves back
            gaps = 1
            want = (last, T0 + 1000 * i + 120, 50.0 + i)
        total_gaps += gaps
        assert (dev.last_seq, dev.last_seen, dev.last_battery_pct) == want, dev_id
        assert (dev.readings_total, dev.seq_gaps_total) == (5, gaps), dev_id
        assert dev.last_received_at == cloud.clock.now()
    assert f"vigil_cloud_seq_gaps_total {float(total_gaps)}" in (await cloud.client.get("/metrics")).text


def reference_summary(
    rows: list[tuple[str, int, float, float]],
    last_seq: dict[str, int | None],
    last_seen: dict[str, float | None],
) -> dict[str, tuple[int, int, float, int, float]]:
    """Per device, one frame at a time in (time, seq, arrival) order: (count, gaps, last time, last seq,
    last battery)."""
    out = {}
    for dev in sorted({r[0] for r in rows}):
        frames = [
            (t, q, b)
            for _t, _q, _i, t, q, b in sorted(
                (t, q, i, t, q, b) for i, (d, q, t, b) in enumerate(rows) if d == dev
            )
        ]
        prev = last_seq.get(dev)
        seen = last_seen.get(dev)
        if prev is not None and seen is not None and frames[0][0] < seen:
            prev = None  # the batch starts before the stored newest frame: no comparison
        gaps = 0
        for _t, q, _b in frames:
            if prev is not None:
                d = (q - prev) % 65536
                gaps += d - 1 if 1 < d < 32768 else 0
            prev = q
        t, q, b = frames[-1]
        out[dev] = (len(frames), gaps, t, q, b)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_sequence_summary_matches_a_frame_by_frame_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    devs = [f"dev{i:03d}" for i in range(30)]
    n = 600
    ids = rng.choice(devs, n)
    seq = (65500 + rng.integers(0, 120, n)) % 65536  # around the wrap, with repeats
    t = T0 + rng.integers(0, 50, n) * 60.0  # equal times too: then seq orders them
    batt = rng.random(n) * 100
    stored_q: dict[str, int | None] = {d: int(rng.integers(0, 65536)) for d in devs[:20]}
    stored_t: dict[str, float | None] = {d: T0 + float(rng.integers(-5, 55)) * 60.0 for d in devs[:20]}
    stored_q["dev005"] = None  # never heard from, but with a last seen (registry import)
    summ = sequence_summary(ids, seq, t, batt, stored_q, stored_t)
    got = {
        d: (int(c), int(g), float(lt), int(q), float(b))
        for d, c, g, lt, q, b in zip(
            summ.device_id,
            summ.count,
            summ.gaps,
            summ.last_time,
            summ.last_seq,
            summ.last_battery,
            strict=True,
        )
    }
    rows = list(zip(ids.tolist(), seq.tolist(), t.tolist(), batt.tolist(), strict=True))
    assert got == reference_summary(rows, stored_q, stored_t)


async def test_two_workers_sharing_devices_never_deadlock(cloud: Cloud) -> None:
    """Two ingest services (two connection pools, as two worker processes) commit groups of batches over
    the same 40 devices at once, each listing the devices in another order. The device rows are locked in
    id order, so they wait for each other and never deadlock (PostgreSQL would abort one transaction:
    a StorageError here); every reading is counted once."""
    rows = [f"{d},manhole,,39.9,116.3,,,,,false,{GW1},,,,,,," for d in DEVICES]
    cloud.state.registry.import_csv("\n".join([CSV_HEADER, *rows]) + "\n", now=cloud.clock.now())
    other_db = Database(cloud.settings.database_url)
    other = IngestService(other_db, cloud.state.store, clock=cloud.clock, limits=cloud.state.ingest.limits)
    try:
        rounds = 6
        for r in range(rounds):
            groups = []
            for w, order in enumerate((DEVICES, DEVICES[::-1])):
                group = []
                for g in range(2):
                    k = (r * 2 + w) * 2 + g  # every batch its own sequence numbers and times
                    t = T0 + 60.0 * k
                    group.append((batch(f"batch-dl-{k:04d}", block([(d, k, t, 50.0) for d in order])), GW1))
                groups.append(group)
            outs = await asyncio.gather(
                cloud.state.ingest.ingest_many(groups[0]), other.ingest_many(groups[1])
            )
            assert all(isinstance(a, UplinkAck) and a.telemetry_stored == N_DEV for o in outs for a in o)
    finally:
        other_db.close()
    for dev_id in DEVICES:
        dev = cloud.state.registry.get(dev_id, "admin")
        assert (dev.readings_total, dev.last_seq) == (rounds * 4, rounds * 4 - 1), dev_id


@pytest.mark.parametrize("seed", range(5))
def test_two_step_summary_matches_the_reference(seed: int) -> None:
    """What the ingest service does: the batch on its own first (devices in order of first appearance),
    the first frames against the stored state after; the same figures as the frame-by-frame reference."""
    rng = np.random.default_rng(100 + seed)
    devs = [f"dev{i:03d}" for i in range(30)]
    n = 600
    ids = rng.choice(devs, n)
    seq = (65500 + rng.integers(0, 120, n)) % 65536
    t = T0 + rng.integers(0, 50, n) * 60.0
    batt = rng.random(n) * 100
    stored_q: dict[str, int | None] = {d: int(rng.integers(0, 65536)) for d in devs[:20]}
    stored_t: dict[str, float | None] = {d: T0 + float(rng.integers(-5, 55)) * 60.0 for d in devs[:20]}
    stored_q["dev005"] = None
    b = batch_sequences(ids, seq.astype(np.uint32), t, batt)
    assert b.device_id == list(dict.fromkeys(ids.tolist()))
    prev = [-1 if (q := stored_q.get(d)) is None else q for d in b.device_id]
    seen = [np.nan if (s := stored_t.get(d)) is None else s for d in b.device_id]
    gaps = b.gaps + first_frame_gaps(b, prev, seen)
    got = {
        d: (int(c), int(g), float(lt), int(q), float(bt))
        for d, c, g, lt, q, bt in zip(
            b.device_id, b.count, gaps, b.last_time, b.last_seq, b.last_battery, strict=True
        )
    }
    rows = list(zip(ids.tolist(), seq.tolist(), t.tolist(), batt.tolist(), strict=True))
    assert got == reference_summary(rows, stored_q, stored_t)


async def test_a_failure_inside_the_transaction_leaves_nothing_of_it_and_the_retry_counts_once(
    cloud: Cloud,
) -> None:
    """A telemetry-only batch on SQLite commits on the driver connection without an ORM session: a failure
    after the batch row and the device bookkeeping were written (here the gateway row, refused by a real
    SQLite trigger that fails at run time) must roll all of it back, so the retry is stored (not answered
    duplicate) and every device is counted once. Fails if that transaction commits what it did before the
    error."""
    rows = [f"{d},manhole,,39.9,116.3,,,,,false,{GW1},,,,,,," for d in DEVICES]
    cloud.state.registry.import_csv("\n".join([CSV_HEADER, *rows]) + "\n", now=cloud.clock.now())
    b1 = batch("batch-rollback-01", block([r for i in range(N_DEV) for r in first_rows(i)]))
    svc = cloud.state.ingest
    if not svc.db.is_sqlite:
        pytest.skip("the driver-level transaction is SQLite's; PostgreSQL keeps the session")
    engine = svc.db.engine
    with engine.begin() as c:
        c.exec_driver_sql(
            "CREATE TRIGGER fail_gateway_row BEFORE UPDATE ON gateways "
            "BEGIN SELECT abs(-9223372036854775808); END"  # 'integer overflow' at run time
        )
    with pytest.raises(StorageError):
        await svc.ingest(b1, gateway_id=GW1)
    with engine.connect() as c:
        rows_left = c.exec_driver_sql(
            "SELECT COUNT(*) FROM ingested_batches WHERE batch_id = 'batch-rollback-01'"
        ).scalar()
        counted = c.exec_driver_sql(
            "SELECT COUNT(*) FROM devices WHERE readings_total > 0 AND device_id IN "
            f"({', '.join('?' * N_DEV)})",
            tuple(DEVICES),
        ).scalar()
    assert rows_left == 0
    assert counted == 0
    with engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER fail_gateway_row")
    ack = await svc.ingest(b1, gateway_id=GW1)
    assert not ack.duplicate
    assert ack.telemetry_stored + ack.telemetry_duplicates == 3 * N_DEV
    for dev_id in DEVICES:
        dev = cloud.state.registry.get(dev_id, "admin")
        assert dev.readings_total == 3
        assert dev.seq_gaps_total == 1
    again = await svc.ingest(b1, gateway_id=GW1)
    assert again.duplicate
