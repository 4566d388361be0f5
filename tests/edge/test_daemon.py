"""The gateway daemon end to end (edge/daemon.py): a real pseudo-terminal carrying SLIP frames, the real
detection engine, the outbox, the metrics endpoint, graceful stop and restart, the source supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from edge.config import GatewayConfig, parse_config
from edge.daemon import Gateway
from edge.outbox import iter_alert_events, iter_telemetry
from edge.status import diagnose_metrics
from firmware_bridge.framing import encode_frame
from firmware_bridge.kernel.events import EventType
from tests.aio import cancel_and_wait
from tests.edge.helpers import device_id, manhole_payload, smoke_payload


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    """A real pseudo-terminal: the test writes to the master, the daemon opens the slave path."""
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)  # held open by the test so bytes written while the daemon restarts are kept


def gateway_config(tmp_path: Path, port: str, extra: str = "", window_ms: float = 20) -> GatewayConfig:
    return parse_config(
        f"""
[gateway]
id = "gw-test"
data_dir = "{tmp_path / "data"}"

[[sources.serial]]
name = "radio0"
port = "{port}"

[uplink]
mode = "none"

[detection]
batch_window_ms = {window_ms}
tick_interval_s = 0.5

[metrics]
port = 0
{extra}
""",
        tmp_path / "gateway.toml",
    )


@contextlib.asynccontextmanager
async def running(cfg: GatewayConfig) -> AsyncIterator[Gateway]:
    gw = Gateway(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop), name="gateway-under-test")
    await asyncio.wait_for(gw.started.wait(), 10)
    for name, _ in cfg.source_names():  # pyserial flushes the input buffer when it opens the port
        await asyncio.wait_for(gw.sink.wait_up(name), 10)
    try:
        yield gw
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_pty_to_outbox_with_fire_alert_metrics_and_restart(
    tmp_path: Path, pty_pair: tuple[int, str]
) -> None:
    master, port = pty_pair
    cfg = gateway_config(tmp_path, port)
    stream = b"".join(encode_frame(device_id(i), manhole_payload(i, 1)) for i in range(50))
    fire = encode_frame(device_id(500), smoke_payload(500, 9, fire=True))
    corrupt = bytearray(encode_frame(device_id(7), manhole_payload(7, 2)))
    corrupt[12] ^= 0xFF  # a flipped byte: CRC reject, the neighbours must survive
    async with running(cfg) as gw:
        os.write(master, b"\x00garbage\xc0" + stream[:333])
        os.write(master, stream[333:] + bytes(corrupt) + fire)
        await gw.pipeline.wait_for(lambda: gw.pipeline.frames_total >= 51)
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{gw.metrics_server.port}/metrics")).text
        assert 'vigil_gateway_frames_total{source="radio0"} 51.0' in text
        assert 'vigil_gateway_rejects_total{reason="crc",source="radio0"} 1.0' in text
        report = diagnose_metrics(text)
        assert any("CRC errors" in line and "radio0" in line for line in report.lines)
    # stopped gracefully: telemetry and the FIRE alert are durable, the engine state was saved
    readings = sum(len(b) for b in iter_telemetry(cfg.outbox_path))
    assert readings == 51
    fires = [a for a in iter_alert_events(cfg.outbox_path) if a.event_type is EventType.FIRE]
    assert [a.device_id for a in fires] == [device_id(500)]
    async with running(cfg) as gw2:
        assert gw2.engine.devices == 51  # restored from the snapshot
        os.write(master, fire + encode_frame(device_id(501), manhole_payload(501, 1)))
        await gw2.pipeline.wait_for(lambda: gw2.pipeline.frames_total >= 1)
    assert sum(len(b) for b in iter_telemetry(cfg.outbox_path)) == 52  # the repeated fire frame: stored once
    assert len([a for a in iter_alert_events(cfg.outbox_path) if a.event_type is EventType.FIRE]) == 1


async def test_supervisor_restarts_a_failing_source(tmp_path: Path, pty_pair: tuple[int, str]) -> None:
    cfg = gateway_config(tmp_path, pty_pair[1])
    gw = Gateway(cfg)
    calls = 0
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls >= 3:
            done.set()
            await asyncio.Event().wait()
        raise RuntimeError("radio firmware crashed")

    task = asyncio.create_task(gw._supervise("flaky", flaky))
    await asyncio.wait_for(done.wait(), 10)
    await cancel_and_wait(task)
    gw.outbox.close()
    assert calls == 3
    assert (
        gw.metrics.registry.get_sample_value("vigil_gateway_source_restarts_total", {"source": "flaky"}) == 2
    )


def test_accelerated_clock_and_startup_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.daemon import run_gateway
    from firmware_bridge.kernel.clock import AcceleratedClock

    clock_file = tmp_path / "clock.json"
    AcceleratedClock(sim_epoch=1_700_000_000.0, real_epoch=0.0, speedup=60.0).save(clock_file)
    cfg = gateway_config(tmp_path, "/dev/null", extra=f'[clock]\nfile = "{clock_file}"\n')
    gw = Gateway(cfg)
    try:
        assert isinstance(gw.clock, AcceleratedClock) and gw.clock.speedup == 60.0
    finally:
        gw.outbox.close()
    bad = cfg.model_copy(
        update={"gateway": cfg.gateway.model_copy(update={"devices_file": tmp_path / "nope.csv"})}
    )
    assert run_gateway(bad) == 1  # one clear line in the log, no traceback


async def test_cloud_down_local_action_then_delivery(tmp_path: Path, pty_pair: tuple[int, str]) -> None:
    from tests.edge.cloudstub import CloudStub
    from tests.servers import free_port

    master, port = pty_pair
    cloud_port = free_port()
    buzzer = tmp_path / "gpio17_value"
    buzzer.write_text("0")
    cfg = gateway_config(
        tmp_path,
        port,
        extra=f"""
[[actions]]
name = "buzzer"
type = "buzzer"
path = "{buzzer}"
""",
    )
    cfg = cfg.model_copy(
        update={
            "uplink": cfg.uplink.model_copy(
                update={"mode": "http", "url": f"http://127.0.0.1:{cloud_port}", "backoff_max_s": 0.3}
            )
        }
    )
    cfg = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"credential": "tok"})})
    async with running(cfg) as gw:
        os.write(master, encode_frame(device_id(900), smoke_payload(900, 1, fire=True)))
        await gw.pipeline.wait_for(lambda: gw.pipeline.frames_total >= 1)
        async with asyncio.timeout(20):
            while not gw.actions.fired:  # the cloud is down (connection refused): the gateway buzzes itself
                await asyncio.sleep(0.05)
        assert buzzer.read_text() == "1"
        assert gw.sender is not None and gw.sender.up is False
        cloud = CloudStub(port=cloud_port)
        await cloud.start()
        try:
            async with asyncio.timeout(20):
                while gw.sender.up is not True or not cloud.alert_ids() or not cloud.readings():
                    await asyncio.sleep(0.05)
            assert [a.split("/")[1] for a in cloud.alert_ids()] == ["fire"]
            assert len(cloud.readings()) == 1
        finally:
            await cloud.stop()


async def test_stop_in_the_middle_of_a_window_commits_its_frames(
    tmp_path: Path, pty_pair: tuple[int, str]
) -> None:
    """A long merge window: frames the pipeline is still gathering when SIGTERM comes are committed."""
    _master, port = pty_pair
    cfg = gateway_config(tmp_path, port, window_ms=10_000)
    async with running(cfg) as gw:
        for i in range(5):
            await gw.sink.put((device_id(i), manhole_payload(i, 1), 1_700_000_000.0, "radio0"))
        await asyncio.sleep(0.2)
        assert gw.pipeline.frames_total == 0  # still inside the 10 s window
    assert sum(len(b) for b in iter_telemetry(cfg.outbox_path)) == 5
