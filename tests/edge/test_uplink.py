"""HTTP uplink and the sender loop against a real local HTTP server (tests/edge/cloudstub.py).

Contract: alerts/contract.py (UplinkBatch / UplinkAck, HTTP_PATH); docs/contract.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.metrics import GatewayMetrics
from edge.outbox import Outbox
from edge.uplink import UplinkAuthError, UplinkProtocolError, UplinkSender, UplinkUnavailable
from edge.uplink.http import HttpUplink
from tests.aio import cancel_and_wait
from tests.edge.cloudstub import CloudStub
from tests.edge.helpers import alert, manhole_batch
from tests.servers import free_port


@pytest.fixture
async def cloud() -> AsyncIterator[CloudStub]:
    stub = CloudStub(port=free_port())
    await stub.start()
    yield stub
    await stub.stop()


@pytest.fixture
def outbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    ob = Outbox(tmp_path / "o.db")
    yield ob
    ob.close()


async def test_send_and_failure_modes(cloud: CloudStub, outbox: Outbox) -> None:
    outbox.commit([manhole_batch(3)], [alert(1)])
    pb = outbox.next_batch("gw-1")
    assert pb is not None
    up = HttpUplink(cloud.url, "tok", timeout_s=1.0)
    try:
        cloud.mode = "503"
        with pytest.raises(UplinkUnavailable) as e:
            await up.send(pb)
        assert e.value.reason == "http_503"
        cloud.mode = "slow"
        with pytest.raises(UplinkUnavailable) as e:
            await up.send(pb)
        assert e.value.reason == "timeout"
        cloud.mode = "garbage"
        with pytest.raises(UplinkProtocolError):
            await up.send(pb)
        cloud.mode = "ok"
        ack = await up.send(pb)  # the slow attempt was stored by the cloud: the retry is a duplicate
        assert ack.batch_id == pb.batch_id and ack.duplicate
        assert cloud.alert_ids() == [alert(1).alert_id]
    finally:
        await up.aclose()
    bad = HttpUplink(cloud.url, "wrong", timeout_s=1)
    try:
        with pytest.raises(UplinkAuthError):
            await bad.send(pb)
    finally:
        await bad.aclose()
    refused = HttpUplink(f"http://127.0.0.1:{free_port()}", "tok", timeout_s=1)
    try:
        with pytest.raises(UplinkUnavailable) as e:
            await refused.send(pb)
        assert e.value.reason == "connect"
    finally:
        await refused.aclose()


@contextlib.asynccontextmanager
async def sender_running(outbox: Outbox, url: str) -> AsyncIterator[UplinkSender]:
    up = HttpUplink(url, "tok", timeout_s=1)
    s = UplinkSender(
        outbox, up, GatewayMetrics(), "gw-1", max_records=100, backoff_initial_s=0.05, backoff_max_s=0.2
    )
    task = asyncio.create_task(s.run())
    try:
        yield s
    finally:
        await cancel_and_wait(task)
        await up.aclose()


async def wait_until(pred, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for a condition observable only from outside (the cloud's state), with a deadline."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


async def test_cloud_down_then_up_nothing_lost_nothing_doubled_alerts_first(outbox: Outbox) -> None:
    port = free_port()
    for i in range(5):
        outbox.commit([manhole_batch(60, first=i * 60)], [])
    async with sender_running(outbox, f"http://127.0.0.1:{port}") as sender:
        await wait_until(lambda: sender.up is False)  # connection refused: cloud unreachable
        assert sender.down_since is not None
        outbox.commit([], [alert(1), alert(2)])  # alerts raised during the outage
        sender.notify()
        cloud = CloudStub(port=port, mode="commit_then_503")  # the first answer after the outage is lost
        await cloud.start()
        try:
            await wait_until(lambda: outbox.stats().depth == {"alert": 0, "live": 0, "backlog": 0})
            assert sender.up is True and sender.down_since is None
        finally:
            await cloud.stop()
    first = cloud.batches[cloud.order[0]]
    assert len(first.alerts) == 2 and not first.telemetry  # alerts went first
    readings = cloud.readings()
    assert len(readings) == len(set(readings)) == 300  # every reading exactly once
    assert sorted(cloud.alert_ids()) == sorted([alert(1).alert_id, alert(2).alert_id])
    assert cloud.requests > len(cloud.batches)  # the lost answer was retried with the same batch id


async def test_alert_is_not_stuck_behind_backlog(outbox: Outbox, cloud: CloudStub) -> None:
    for i in range(20):
        outbox.commit([manhole_batch(100, first=i * 100)], [])
    async with sender_running(outbox, cloud.url):
        await wait_until(lambda: len(cloud.order) >= 2)
        outbox.commit([], [alert(9)])
        n_before = len(cloud.order)
        await wait_until(lambda: alert(9).alert_id in cloud.alert_ids())
        # at most one telemetry batch (already in flight) was sent before the alert
        position = next(i for i, b in enumerate(cloud.order) if cloud.batches[b].alerts)
        assert position <= n_before + 1  # index n_before is the batch that was already in flight


async def test_413_splits_the_batch(outbox: Outbox) -> None:
    # docs/contract.md: 413 = refused before it was read; "split into smaller batches"
    for i in range(4):
        outbox.commit([manhole_batch(50, first=i * 50)], [])
    cloud = CloudStub(port=free_port(), max_body=6_000)  # one 50-reading block fits, two do not
    await cloud.start()
    try:
        async with sender_running(outbox, cloud.url) as sender:
            await wait_until(lambda: outbox.stats().depth["live"] == 0)
            assert sender.max_records < 100
    finally:
        await cloud.stop()
    readings = cloud.readings()
    assert len(readings) == len(set(readings)) == 200


async def test_backlog_drains_at_the_configured_rate(tmp_path: Path, cloud: CloudStub) -> None:
    with Outbox(tmp_path / "b.db", live_window_s=0.001) as ob:  # everything is backlog at once
        for i in range(6):
            ob.commit([manhole_batch(50, first=i * 50)], [])
        up = HttpUplink(cloud.url, "tok", timeout_s=2)
        sender = UplinkSender(
            ob, up, GatewayMetrics(), "gw-1", backlog_records_per_s=100.0, backoff_initial_s=0.05
        )
        task = asyncio.create_task(sender.run())
        try:
            await wait_until(lambda: ob.stats().depth["backlog"] == 0)
        finally:
            await cancel_and_wait(task)
            await up.aclose()
    sizes = [sum(len(t) for t in cloud.batches[b].telemetry) for b in cloud.order]
    assert sum(sizes) == 300 and max(sizes) <= 100  # never more than one second's budget in a batch
