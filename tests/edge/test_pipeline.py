"""Frames -> batched decode -> real detection engine -> outbox (edge/pipeline.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from alerts.contract import AlertEvent
from alerts.detection.engine import DetectionEngine
from edge.metrics import GatewayMetrics
from edge.outbox import Outbox, iter_alert_events, iter_telemetry
from edge.pipeline import Pipeline
from edge.sources.base import FrameSink
from edge.sources.devices import DeviceEntry, DeviceList
from firmware_bridge.kernel.clock import SystemClock
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from tests.edge.helpers import device_id, manhole_payload, smoke_payload

T0 = 1_700_000_000.0


class FixedClock(SystemClock):
    def now(self) -> float:
        return T0 + 10


def sample(m: GatewayMetrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


@pytest.fixture
def outbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    ob = Outbox(tmp_path / "o.db")
    yield ob
    ob.close()


def test_mixed_batch_good_bad_duplicate_and_fire(outbox: Outbox, tmp_path: Path) -> None:
    m = GatewayMetrics()
    p = Pipeline(DetectionEngine(), outbox, m, FixedClock())
    good = [(device_id(i), manhole_payload(i, 1), T0, "radio0") for i in range(20)]
    fire = (device_id(100), smoke_payload(100, 7, fire=True), T0 + 1, "radio0")
    corrupt_len = (device_id(200), manhole_payload(200, 1)[:-3], T0, "radio0")
    bad_version = (device_id(201), b"\x09" + manhole_payload(201, 1)[1:], T0, "mqtt")
    bad_kind = (device_id(202), b"\x01\x7f" + b"\x00" * 20, T0, "mqtt")
    res = p.handle([*good, fire, corrupt_len, good[3], bad_version, bad_kind])
    assert res.accepted == 21
    assert res.rejects == {
        ("radio0", "length"): 1,
        ("radio0", "duplicate"): 1,
        ("mqtt", "version"): 1,
        ("mqtt", "kind"): 1,
    }
    assert res.samples[("radio0", "length")][0] == corrupt_len[1]  # the bad frame's bytes, for the log
    [step] = [a for a in res.alerts if a.event_type is EventType.FIRE]
    assert (
        step.device_id == device_id(100)
        and step.phase is AlertPhase.RAISED
        and step.severity is Severity.HIGH
    )
    # committed: telemetry of both kinds and the alert (journal) are in the outbox
    kinds = {b.kind: len(b) for b in iter_telemetry(outbox.path)}
    assert kinds == {DeviceKind.MANHOLE: 20, DeviceKind.SMOKE_ALARM: 1}
    assert [a.alert_id for a in iter_alert_events(outbox.path)] == [a.alert_id for a in res.alerts]
    assert sample(m, "vigil_gateway_frames_total", source="radio0") == 21
    # the same frames again (a replay, or a second gateway path): nothing new is stored, no second alert
    res2 = p.handle([*good, fire])
    assert res2.accepted == 0 and not res2.alerts and res2.rejects == {("radio0", "duplicate"): 21}


def test_unknown_devices_counted_and_optionally_refused(outbox: Outbox) -> None:
    devices = DeviceList({device_id(1): DeviceEntry(device_id(1), DeviceKind.MANHOLE)})
    m = GatewayMetrics()
    p = Pipeline(DetectionEngine(), outbox, m, FixedClock(), devices=devices, accept_unknown=False)
    res = p.handle(
        [(device_id(1), manhole_payload(1, 1), T0, "s"), (device_id(2), manhole_payload(2, 1), T0, "s")]
    )
    assert res.accepted == 1 and res.rejects == {("s", "unknown_device"): 1}
    assert sample(m, "vigil_gateway_unknown_devices_total") == 1
    assert device_id(2) in p.unknown_seen


async def test_collect_batches_by_window_and_size(outbox: Outbox) -> None:
    m = GatewayMetrics()
    sink = FrameSink(m, maxsize=10)
    p = Pipeline(DetectionEngine(), outbox, m, FixedClock(), window_s=0.05, max_frames=4)
    for i in range(6):
        sink.offer((device_id(i), manhole_payload(i, 1), T0, "s"))
    assert len(await p.collect(sink.queue)) == 4  # size bound
    assert len(await p.collect(sink.queue)) == 2  # window closes with what there is
    for i in range(10, 20):
        sink.offer((device_id(i), b"", T0, "s"))
    assert not sink.offer((device_id(99), b"", T0, "s"))  # full: dropped newest, counted
    assert sample(m, "vigil_gateway_dropped_total", what="queue_full") == 1
    assert sample(m, "vigil_gateway_rejects_total", source="s", reason="queue_full") == 1


async def test_run_publishes_alerts_and_counts_rejects(outbox: Outbox) -> None:
    m = GatewayMetrics()
    sink = FrameSink(m)
    p = Pipeline(DetectionEngine(), outbox, m, FixedClock(), window_s=0.01)
    got: asyncio.Queue[list[AlertEvent]] = asyncio.Queue()
    task = asyncio.create_task(p.run(sink, got.put_nowait))
    await sink.put((device_id(5), smoke_payload(5, 1, fire=True), T0, "radio0"))
    await sink.put((device_id(6), b"\x01", T0, "radio0"))
    alerts = await asyncio.wait_for(got.get(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [a.event_type for a in alerts] == [EventType.FIRE]
    assert sample(m, "vigil_gateway_rejects_total", source="radio0", reason="length") == 1


class BrokenEngine:
    def process(self, batch: object, now: float) -> list[object]:
        raise ZeroDivisionError("a detector bug")

    def tick(self, now: float) -> list[object]:
        return []

    def snapshot(self) -> bytes:
        return b""


def test_a_detector_bug_does_not_lose_telemetry(outbox: Outbox) -> None:
    m = GatewayMetrics()
    p = Pipeline(BrokenEngine(), outbox, m, FixedClock())  # type: ignore[arg-type]
    res = p.handle([(device_id(i), manhole_payload(i, 1), T0, "s") for i in range(5)])
    assert res.accepted == 5 and not res.alerts
    assert sum(len(b) for b in iter_telemetry(outbox.path)) == 5
    assert sample(m, "vigil_gateway_dropped_total", what="detection_skipped") == 5


def test_rejects_are_logged_with_their_bytes_and_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    sink = FrameSink(GatewayMetrics(), log_interval_s=60)
    with caplog.at_level("WARNING", logger="edge.sources"):
        sink.reject("radio0", "crc", b"\xc0\x01\x02\xff", "bad CRC")
        for _ in range(5):
            sink.reject("radio0", "crc", b"\x00")  # within the interval: counted, not logged
        sink.reject("radio0", "short", b"\x07")  # another reason: logged
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "radio0: rejected frame (crc): bad CRC bytes=c0 01 02 ff",
        "radio0: rejected frame (short) bytes=07",
    ]
    assert (
        sink.metrics.registry.get_sample_value(
            "vigil_gateway_rejects_total", {"source": "radio0", "reason": "crc"}
        )
        == 6
    )
    sink._last_log.clear()  # the interval has passed: the next log line reports what was suppressed
    with caplog.at_level("WARNING", logger="edge.sources"):
        sink.reject("radio0", "crc", b"\x01")
    assert caplog.records[-1].getMessage().endswith("[5 similar suppressed]")


def test_is_urgent_reads_the_life_safety_bits_of_every_kind() -> None:
    from edge.pipeline import URGENT_FLAGS, is_urgent
    from firmware_bridge import wristband
    from firmware_bridge.kernel.records import Reading

    assert is_urgent(smoke_payload(1, 1, fire=True))  # smoke_alarm bit
    assert not is_urgent(smoke_payload(1, 2))  # a heartbeat
    assert not is_urgent(manhole_payload(1, 1))
    assert not is_urgent(b"") and not is_urgent(b"\x01\x02\x00") and not is_urgent(b"\x01\x7f" + b"\xff" * 20)

    def band(flags: int) -> bytes:
        values = (70.0, 97.0, 1.0, 0.0, 0.0, 10.0, 0.0, 0.0)
        r = Reading(DeviceKind.WRISTBAND, device_id(9), 1, 0.0, 80.0, flags, values, fw_version=0x0106)
        return wristband.encode(r)

    worn = wristband.CODEC.flags[1].mask
    assert not is_urgent(band(worn))
    assert is_urgent(band(worn | wristband.CODEC.flags[0].mask))  # SOS
    assert is_urgent(band(worn | wristband.CODEC.flags[2].mask))  # the band's fall detector
    # the table covers every kind the gateway decodes
    from firmware_bridge.registry import BY_CODE

    assert set(URGENT_FLAGS) == set(BY_CODE) and all(URGENT_FLAGS.values())


async def test_an_urgent_frame_closes_the_window_at_once(outbox: Outbox) -> None:
    m = GatewayMetrics()
    sink = FrameSink(m)
    p = Pipeline(DetectionEngine(), outbox, m, FixedClock(), window_s=30.0)
    loop = asyncio.get_running_loop()
    sink.offer((device_id(1), manhole_payload(1, 1), T0, "s"))
    t0 = loop.time()
    task = asyncio.create_task(p.collect(sink.queue))
    await asyncio.sleep(0.05)
    assert not task.done()  # an ordinary frame waits for the (here 30 s) window
    sink.offer((device_id(2), smoke_payload(2, 1, fire=True), T0, "s"))
    sink.offer((device_id(3), manhole_payload(3, 1), T0, "s"))  # already queued: joins the batch
    frames = await asyncio.wait_for(task, 5)
    assert [f[0] for f in frames] == [device_id(1), device_id(2), device_id(3)]
    assert loop.time() - t0 < 5 and p.urgent_batches_total == 1
    # the first frame of a window urgent: no wait at all
    sink.offer((device_id(4), smoke_payload(4, 1, fire=True), T0, "s"))
    assert len(await asyncio.wait_for(p.collect(sink.queue), 5)) == 1


async def test_urgent_flush_off_keeps_the_window(outbox: Outbox) -> None:
    m = GatewayMetrics()
    sink = FrameSink(m)
    p = Pipeline(DetectionEngine(), outbox, m, FixedClock(), window_s=0.3, urgent_flush=False)
    loop = asyncio.get_running_loop()
    sink.offer((device_id(2), smoke_payload(2, 1, fire=True), T0, "s"))
    t0 = loop.time()
    assert len(await p.collect(sink.queue)) == 1
    assert loop.time() - t0 >= 0.29 and p.urgent_batches_total == 0


async def test_a_cancelled_window_keeps_its_frames_for_the_shutdown(outbox: Outbox) -> None:
    m = GatewayMetrics()
    sink = FrameSink(m)
    p = Pipeline(DetectionEngine(), outbox, m, FixedClock(), window_s=30.0)
    task = asyncio.create_task(p.collect(sink.queue))
    for i in range(3):
        sink.offer((device_id(i), manhole_payload(i, 1), T0, "s"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    held = p.take_held()
    assert [f[0] for f in held] == [device_id(i) for i in range(3)]  # before: lost with the task
    assert p.take_held() == []
    # a new window starts from nothing
    sink.offer((device_id(7), smoke_payload(7, 1, fire=True), T0, "s"))
    assert [f[0] for f in await asyncio.wait_for(p.collect(sink.queue), 5)] == [device_id(7)]


def test_a_new_bit_is_urgent_and_a_repeat_only_after_repeat_s() -> None:
    from edge.pipeline import UrgentFilter

    flt = UrgentFilter(repeat_s=10.0, max_devices=2)
    fire, calm = smoke_payload(1, 1, fire=True), smoke_payload(1, 2)
    assert flt(device_id(1), fire, T0)  # the alarm starts
    assert not flt(device_id(1), smoke_payload(1, 3, fire=True), T0 + 1)  # a burst of repeats: waits
    assert flt(device_id(1), smoke_payload(1, 4, fire=True), T0 + 12)  # the device's next uplink: urgent
    assert flt(device_id(2), fire, T0 + 12.5)  # another device's start is its own
    assert not flt(device_id(1), calm, T0 + 13) and flt(device_id(1), fire, T0 + 13.5)  # cleared, set again
    assert not flt(device_id(1), b"", T0 + 14)  # not a payload: never urgent
    # past its bound the memory restarts: a repeat counts as a start again (flushes; never delays)
    assert flt(device_id(3), fire, T0 + 14) and flt(device_id(1), smoke_payload(1, 5, fire=True), T0 + 14)


async def test_a_repeated_alarm_bit_does_not_cut_a_storm_into_tiny_batches(outbox: Outbox) -> None:
    m = GatewayMetrics()
    sink = FrameSink(m)
    p = Pipeline(DetectionEngine(), outbox, m, FixedClock(), window_s=0.2)
    sink.offer((device_id(1), smoke_payload(1, 1, fire=True), T0, "s"))
    assert len(await asyncio.wait_for(p.collect(sink.queue), 5)) == 1  # the start: at once
    loop = asyncio.get_running_loop()
    for seq in range(2, 6):  # the same alarm repeating within seconds (a replayed backlog), a neighbour
        sink.offer((device_id(1), smoke_payload(1, seq, fire=True), T0 + seq, "s"))
    sink.offer((device_id(2), manhole_payload(2, 1), T0, "s"))
    t0 = loop.time()
    assert len(await p.collect(sink.queue)) == 5
    assert loop.time() - t0 >= 0.19 and p.urgent_batches_total == 1  # the window, not five batches


async def test_urgent_closes_are_spaced_by_the_gap(outbox: Outbox) -> None:
    """An alarm storm (a new device in alarm every frame) still makes batches: one early close per gap."""
    m = GatewayMetrics()
    sink = FrameSink(m)
    p = Pipeline(DetectionEngine(), outbox, m, FixedClock(), window_s=30.0, urgent_gap_s=0.3)
    loop = asyncio.get_running_loop()
    sink.offer((device_id(1), smoke_payload(1, 1, fire=True), T0, "s"))
    t0 = loop.time()
    assert len(await asyncio.wait_for(p.collect(sink.queue), 5)) == 1  # the first: at once
    for i in range(2, 5):
        sink.offer((device_id(i), smoke_payload(i, 1, fire=True), T0, "s"))
    batch = await asyncio.wait_for(p.collect(sink.queue), 5)
    assert [f[0] for f in batch] == [device_id(i) for i in range(2, 5)]
    assert 0.29 <= loop.time() - t0 < 5 and p.urgent_batches_total == 2  # the gap, not the 30 s window
