"""What the gateway fault scenarios share: a real ``vigil gateway`` subprocess, its config, kill -9, a real
HTTP cloud that can fail on demand, a real cloud (ingest service + store) for the MQTT uplink, and counting.

The approach is the one of ``tests/edge/test_daemon_kill9.py`` (whose helpers are reused): the daemon runs
as ``vigil gateway --config``; readiness is read from its Prometheus endpoint (the test polls an external
process with a deadline); "accepted" = in the outbox or already stored by the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response

from alerts.uplink_body import decode_batch, media_type
from edge.outbox import OutboxError, iter_telemetry
from tests.edge.cloudstub import CloudStub
from tests.edge.helpers import device_id

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_BROKER = ROOT / "deploy" / "mosquitto" / "vigil-durability.conf"

Key = tuple[str, int]  # (device id, sequence number): one frame


def durable_broker_config() -> str:
    """The shipped ``deploy/mosquitto/vigil-durability.conf`` minus its production path (the test broker
    keeps its files in its temp dir)."""
    lines = SHIPPED_BROKER.read_text().splitlines()
    return "\n".join(ln for ln in lines if not ln.startswith("persistence_location")) + "\n"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    path: Path,
    *,
    detection: str = "batch_window_ms = 10\nsnapshot_interval_s = 0.5",
    gateway_id: str,
    data_dir: Path,
    sources: str,
    uplink: str,
    metrics_port: int,
    extra: str = "",
) -> Path:
    path.write_text(
        f"""
[gateway]
id = "{gateway_id}"
credential = "tok"
data_dir = "{data_dir}"
{extra}
{sources}
{uplink}
[detection]
{detection}
[metrics]
port = {metrics_port}
"""
    )
    return path


def http_uplink(url: str, **overrides: object) -> str:
    """An ``[uplink]`` table for HTTP; ``overrides`` replace or add keys (``backoff_max_s=0.2`` ...)."""
    keys: dict[str, object] = {"mode": "http", "url": url, "batch_max_records": 300, "timeout_s": 2}
    keys.update(overrides)
    return "[uplink]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in keys.items())


@dataclass
class Daemon:
    """One ``vigil gateway --config`` subprocess at a time, restarted after each kill."""

    config: Path
    metrics_port: int
    log: Path
    source: str
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0
    starts: int = 0

    async def start(self) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "vigil_cli.py", "gateway", "--config", str(self.config)],
                cwd=ROOT,
                stdout=fh,
                stderr=fh,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        self.starts += 1
        up = f'vigil_gateway_source_up{{source="{self.source}"}} 1.0'
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with httpx.AsyncClient() as client, asyncio.timeout(60):
            while True:  # an external process: poll its metrics until the source reports up
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                with contextlib.suppress(httpx.HTTPError):
                    if up in (await client.get(url, timeout=1)).text:
                        return
                await asyncio.sleep(0.05)

    async def samples(self, prefix: str) -> dict[str, float]:
        """The running daemon's metric samples whose name (with labels) starts with ``prefix``."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with httpx.AsyncClient() as client:
            text = (await client.get(url, timeout=2)).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(prefix) and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    async def metric(self, name: str) -> float | None:
        """One sample (``name`` with its labels), ``None`` if absent."""
        return (await self.samples(name)).get(name)

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self.kills += 1

    def stop(self) -> int:
        """Graceful stop (SIGTERM); the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def traceback_free(self) -> bool:
        return "Traceback" not in self.log.read_text(errors="replace")


def waiting(outbox: Path) -> Counter[Key]:
    """Readings still waiting in the gateway's outbox (a multiset: a frame twice there is a bug)."""
    out: Counter[Key] = Counter()
    try:
        for block in iter_telemetry(outbox):
            out.update(zip(block.device_id, (int(s) for s in block.seq), strict=True))
    except OutboxError:
        pass
    return out


def accepted_keys(outbox: Path, stored: Counter[Key]) -> set[Key]:
    """What the gateway has accepted: still waiting in its outbox, or stored by the cloud."""
    w = waiting(outbox)
    assert max(w.values(), default=1) == 1, "a frame is twice in the outbox"
    return set(w) | set(stored)


# -- the HTTP cloud, with failure modes ------------------------------------------------------------------
@dataclass
class FaultyCloud(CloudStub):
    """:class:`tests.edge.cloudstub.CloudStub` plus a ``"500"`` mode, the arrival time of every stored batch,
    and what the failing answers carried (which alert steps had a failed send)."""

    arrived: dict[str, float] = field(default_factory=dict)  # batch id -> monotonic time first stored
    failed_alerts: set[str] = field(default_factory=set)  # alert ids in a request answered 5xx
    failed_requests: int = 0

    async def ingest(self, request: Request) -> Response:
        if self.mode in ("500", "503") and request.headers.get("authorization") == f"Bearer {self.token}":
            self.requests += 1
            self.failed_requests += 1
            body = await request.body()
            batch = decode_batch(body, media_type(request.headers.get("content-type")) or "")
            self.failed_alerts.update(a.alert_id for a in batch.alerts)
            return Response(status_code=int(self.mode))
        before = len(self.order)
        response = await super().ingest(request)
        now = time.monotonic()
        for bid in self.order[before:]:
            self.arrived[bid] = now
        return response

    def stored(self) -> Counter[Key]:
        return Counter((d, int(s)) for d, s, _ in self.readings())

    async def restart(self) -> None:
        await self.stop()
        await self.start()


# -- a real cloud: ingest service + time-series store (for the MQTT uplink and its ingest workers) ------
@contextlib.asynccontextmanager
async def real_cloud(tmp_path: Path, gateway_id: str, devices: list[tuple[str, str]]) -> AsyncIterator[Any]:
    """The cloud's app state (``create_app`` on SQLite, system clock), with ``gateway_id`` provisioned and
    ``devices`` (device id, kind) assigned to it. Yields ``app.state.vigil``."""
    from cloud.app import create_app
    from tests.cloud.cloudkit import make_settings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path}/vigil.db", run_jobs=False)
    app = await asyncio.to_thread(create_app, settings)
    async with app.router.lifespan_context(app):
        st = app.state.vigil
        now = time.time()
        await asyncio.to_thread(st.credentials.add_gateway, gateway_id, now=now)
        rows = [f"{d},{k},n{i},{gateway_id}" for i, (d, k) in enumerate(devices)]
        csv = "device_id,kind,name,gateway_id\n" + "\n".join(rows) + "\n"
        await asyncio.to_thread(st.registry.import_csv, csv, now=now)
        yield st


def store_keys(ts_path: Path, kinds: tuple[str, ...] = ("manhole",)) -> Counter[Key]:
    """Every (device, seq) row in the cloud's SQLite time-series file, duplicates included."""
    out: Counter[Key] = Counter()
    if not ts_path.exists():
        return out
    con = sqlite3.connect(f"file:{ts_path}?mode=ro", uri=True, timeout=30)
    try:
        for kind in kinds:
            with contextlib.suppress(sqlite3.OperationalError):  # table not created yet
                out.update((d, int(s)) for d, s in con.execute(f'SELECT device_id, seq FROM "ts_{kind}"'))
    finally:
        con.close()
    return out


def fleet(n: int) -> list[str]:
    return [device_id(i) for i in range(n)]


async def poll(pred: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    """Wait for an outside-observable condition, with a deadline that names what did not happen."""
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


def load() -> float:
    return round(os.getloadavg()[0], 2)
