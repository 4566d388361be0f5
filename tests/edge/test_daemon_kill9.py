"""``kill -9`` at random moments: every frame the gateway accepted survives, exactly once.

The daemon runs as a real subprocess (``vigil gateway --config``) reading SLIP frames from a pseudo-terminal
and uplinking to a real local HTTP cloud (tests/edge/cloudstub.py). Just before each SIGKILL the test
records what was accepted (outbox + cloud); after the restart all of it must still be there, nothing twice.
Frames that were not accepted are retransmitted (as a radio would), together with some that were, which the
gateway must recognise as duplicates. At the end every frame is stored exactly once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tty
from collections import Counter
from pathlib import Path

import httpx
import pytest

from edge.outbox import OutboxError, iter_telemetry
from firmware_bridge.framing import encode_frame
from tests.edge.cloudstub import CloudStub
from tests.edge.helpers import device_id, manhole_payload
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def counts(outbox: Path, cloud: CloudStub) -> tuple[Counter[tuple[str, int]], Counter[tuple[str, int]]]:
    """(readings waiting in the outbox, readings the cloud stored), each as a multiset."""
    waiting: Counter[tuple[str, int]] = Counter()
    try:
        for block in iter_telemetry(outbox):
            waiting.update(zip(block.device_id, block.seq, strict=True))
    except OutboxError:
        pass
    return waiting, Counter((d, s) for d, s, _ in cloud.readings())


def accepted(outbox: Path, cloud: CloudStub) -> set[tuple[str, int]]:
    """What the gateway has accepted: still waiting, or stored by the cloud. A batch the cloud stored whose
    ack the gateway has not processed yet is in both; it is resent with the same id and stored once."""
    waiting, stored = counts(outbox, cloud)
    assert max(waiting.values(), default=1) == 1, "a frame is twice in the outbox"
    assert max(stored.values(), default=1) == 1, "the cloud received a frame twice under different batch ids"
    return set(waiting) | set(stored)


def write_all(fd: int, data: bytes) -> None:
    """Blocking write to the pty (in a thread: the in-process cloud must keep answering meanwhile)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def start_daemon(config: Path, metrics_port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "vigil_cli.py", "gateway", "--config", str(config)],
            cwd=ROOT,
            stdout=fh,
            stderr=fh,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    async with httpx.AsyncClient() as client, asyncio.timeout(30):
        while True:  # an external process: poll its metrics until the serial source reports open
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                text = (await client.get(url, timeout=1)).text
                if 'vigil_gateway_source_up{source="radio0"} 1.0' in text:
                    return proc
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("seed", [1, 2])
async def test_kill_9_at_random_points_loses_nothing_accepted(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    cloud = CloudStub(port=free_port())
    await cloud.start()
    metrics_port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
id = "gw-kill"
credential = "tok"
data_dir = "{tmp_path / "data"}"
[[sources.serial]]
name = "radio0"
port = "{os.ttyname(slave)}"
[uplink]
mode = "http"
url = "{cloud.url}"
batch_max_records = 300
timeout_s = 2
backoff_initial_s = 0.05
backoff_max_s = 0.2
[detection]
batch_window_ms = 5
snapshot_interval_s = 0.5
[metrics]
port = {metrics_port}
""")
    outbox = tmp_path / "data" / "outbox.sqlite3"
    log = tmp_path / "daemon.log"
    frames = {
        (device_id(i % 400), 1 + i // 400): encode_frame(
            device_id(i % 400), manhole_payload(i % 400, 1 + i // 400)
        )
        for i in range(2400)
    }
    keys = list(frames)
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _round in range(4):
            proc = await start_daemon(config, metrics_port, log)
            have = accepted(outbox, cloud)
            todo = [k for k in keys if k not in have]
            todo += rng.sample([k for k in keys if k in have], min(50, len(have)))  # retransmitted duplicates
            rng.shuffle(todo)
            cut = rng.randrange(len(todo) // 4, len(todo))
            stream = b"".join(frames[k] for k in todo[:cut])
            pos = 0
            while pos < len(stream):
                n = rng.randrange(1, 4000)
                await asyncio.to_thread(write_all, master, stream[pos : pos + n])
                pos += n
                await asyncio.sleep(rng.random() * 0.01)  # pacing like a radio link, not synchronisation
            await asyncio.sleep(rng.random() * 0.3)  # kill at a random moment while batches are in flight
            before = accepted(outbox, cloud)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            after = accepted(outbox, cloud)
            assert before <= after, "a frame the gateway had accepted was lost"
        # last round: no kill; everything still missing is sent, then a graceful stop
        proc = await start_daemon(config, metrics_port, log)
        acc = accepted(outbox, cloud)
        missing = [k for k in keys if k not in acc]
        await asyncio.to_thread(write_all, master, b"".join(frames[k] for k in missing))
        async with asyncio.timeout(60):
            while len(counts(outbox, cloud)[1]) < len(keys):  # wait for the cloud to hold everything
                await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _waiting, stored = counts(outbox, cloud)
        assert set(stored) == set(keys) and max(stored.values()) == 1  # every frame, exactly once
        assert len(cloud.batches) >= 1 and "Traceback" not in log.read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        await cloud.stop()
        os.close(master)
        os.close(slave)
