"""Slow and greedy clients against the real cloud served by uvicorn with the connection guard (issue 11).

The attack found: half-sent requests never timed out, and 1,100 idle connections from one client made
``/healthz`` time out for everybody. Here: a real uvicorn on a free port (``cloud.connguard.server_config``,
as ``vigil cloud`` serves), raw sockets as the attacker, and an honest client's ``/healthz`` as the
observable.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from cloud.connguard import ConnectionLimits, server_config
from cloud.limits import GuardMetrics
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import Cloud
from tests.servers import free_port

LIMITS = ConnectionLimits(header_timeout_s=0.5, body_timeout_s=0.8, per_client=20, total=1000)


@contextlib.asynccontextmanager
async def served(c: Cloud, limits: ConnectionLimits = LIMITS) -> AsyncIterator[str]:
    port = free_port()
    metrics = GuardMetrics.for_registry(c.state.metrics.registry)
    cfg = server_config(c.app, host="127.0.0.1", port=port, metrics=metrics, limits=limits, lifespan="off")
    server = uvicorn.Server(cfg)
    task = asyncio.create_task(server.serve(), name="guarded-cloud")
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def open_raw(url: str, first: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    r, w = await asyncio.open_connection(host, int(port))
    if first:
        w.write(first)
        await w.drain()
    return r, w


async def closed_within(r: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while await r.read(4096):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_half_sent_request_head_is_closed_after_the_header_timeout(cloud_sqlite: Cloud) -> None:
    async with served(cloud_sqlite) as url:
        t0 = time.monotonic()
        r, w = await open_raw(url, b"POST /api/v1/ingest/batches HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert await closed_within(r, 3.0)
        assert 0.4 <= time.monotonic() - t0 < 2.0
        w.close()
        idle_r, idle_w = await open_raw(url)  # connects and never sends a byte
        assert await closed_within(idle_r, 3.0)
        idle_w.close()
    text = (await cloud_sqlite.client.get("/metrics")).text
    assert 'vigil_cloud_connections_refused_total{reason="header_timeout"} 2.0' in text


async def test_trickled_body_is_cut_after_the_body_timeout_and_nothing_is_stored(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    async with served(c) as url:
        head = (
            "POST /api/v1/ingest/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {c.gw1_token}\r\nContent-Length: 100000\r\n\r\n"
        ).encode()
        r, w = await open_raw(url, head)
        t0 = time.monotonic()
        closed = False
        for _ in range(40):  # one byte every 0.1 s: each byte is "progress", the deadline still holds
            try:
                w.write(b" ")
                await w.drain()
            except ConnectionError:
                closed = True
                break
            if r.at_eof():
                closed = True
                break
            await asyncio.sleep(0.1)
        closed = closed or await closed_within(r, 2.0)
        assert closed and time.monotonic() - t0 < 3.0
        w.close()
    text = (await c.client.get("/metrics")).text
    assert 'vigil_cloud_connections_refused_total{reason="body_timeout"} 1.0' in text


async def test_one_client_cannot_exhaust_connections_and_healthz_stays_fast(cloud_sqlite: Cloud) -> None:
    limits = ConnectionLimits(header_timeout_s=30.0, body_timeout_s=30.0, per_client=20, total=1000)
    async with served(cloud_sqlite, limits) as url:
        held = [await open_raw(url) for _ in range(60)]  # 3x the per-client cap, all idle
        await asyncio.sleep(0.2)
        refused = sum([await closed_within(r, 0.05) for r, _ in held])
        assert refused == 40
        # an honest client from another address: the guard counts per address, so use ::1 / a 127.0.0.2
        alt = _other_loopback()
        if alt is None:
            pytest.skip("no second loopback address to act as another client")
        port = int(url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=alt)) as client:
            t0 = time.monotonic()
            r = await client.get(f"http://127.0.0.1:{port}/healthz", timeout=5.0)
            # answered, and well inside the 5 s a blocked client would wait (latency: bench/fuzz_hostile.py)
            assert r.status_code == 200 and time.monotonic() - t0 < 4.0
        for _, w in held:
            w.close()
    text = (await cloud_sqlite.client.get("/metrics")).text
    assert 'vigil_cloud_connections_refused_total{reason="per_client_cap"} 40.0' in text


def _other_loopback() -> str | None:
    s = socket.socket()
    try:
        s.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return None
    finally:
        s.close()


def test_connection_limits_from_env(tmp_path: Path) -> None:
    from cloud.errors import ConfigError

    lim = ConnectionLimits.from_env(
        {"VIGIL_CLOUD_LIMIT_PER_CLIENT": "7", "VIGIL_CLOUD_LIMIT_HEADER_TIMEOUT_S": "2.5"}
    )
    assert (lim.per_client, lim.header_timeout_s) == (7, 2.5)
    with pytest.raises(ConfigError, match="VIGIL_CLOUD_LIMIT_TOTAL"):
        ConnectionLimits.from_env({"VIGIL_CLOUD_LIMIT_TOTAL": "-1"})
