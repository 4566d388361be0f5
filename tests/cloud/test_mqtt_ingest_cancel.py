"""A worker told to stop stops, whenever the stop arrives (the stop-22 CI hung here for 300 s).

Python 3.11's ``asyncio.wait_for`` returns the inner result, and drops the cancellation, when the cancel
reaches the waiting task after the awaited thing finished but before the task woke up (CPython
gh-86296, fixed in 3.12 by rewriting ``wait_for`` on ``asyncio.timeout``). A worker being stopped at
that moment kept running, and ``await task`` after ``task.cancel()`` never returned. The worker's
waits now use ``asyncio.timeout``; this sweeps the cancel over every loop step of one ingest.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig, _Delivery
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import GW1, MANHOLE_1, batch, readings


class _Instant:
    """An ingest service that answers after one loop step (nothing to store)."""

    def __init__(self) -> None:
        self.calls = 0

    async def ingest(self, b: object, *, gateway_id: str) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        return "stored"


async def _swallowed(depth: int, wait: object) -> bool:
    """Cancel ``wait()`` after ``depth`` loop steps; ``True`` when it returned instead of raising (a
    task that finished before the cancel is not counted: nothing was asked of it)."""
    task = asyncio.ensure_future(wait())  # type: ignore[operator]
    for _ in range(depth):
        await asyncio.sleep(0)
    if not task.cancel():
        return False
    try:
        await task
    except asyncio.CancelledError:
        return False
    return True


@pytest.mark.parametrize("depth", range(8))
async def test_a_cancel_at_any_step_of_an_ingest_is_honoured(depth: int) -> None:
    service = _Instant()
    cfg = MqttIngestConfig(host="127.0.0.1", port=1, alert_lane=False)
    worker = IngestWorker(cfg, service)  # type: ignore[arg-type]
    d = _Delivery(1, 1, 1, f"vigil/v1/gw/{GW1}/up", b"{}")
    b = batch("cancel-1", readings(DeviceKind.MANHOLE, MANHOLE_1, [1]))
    assert not await _swallowed(depth, lambda: worker._ingest_until_stored(d, b, GW1))


async def test_the_sweep_catches_wait_for_swallowing_a_cancel() -> None:
    """The sweep above can fail: the same steps around 3.11's ``wait_for`` lose the cancel."""

    async def with_wait_for() -> object:
        return await asyncio.wait_for(_Instant().ingest(None, gateway_id=GW1), 5)

    swallowed = [d for d in range(8) if await _swallowed(d, with_wait_for)]
    if sys.version_info < (3, 12):
        assert swallowed, "3.11's wait_for was expected to drop a cancel at one of the steps"
    else:
        assert not swallowed


def test_shipped_code_waits_with_asyncio_timeout() -> None:
    """No ``asyncio.wait_for`` in what we ship (the reason above); ``async with asyncio.timeout(s)``."""
    root = Path(__file__).resolve().parents[2]
    found = [
        f"{path.relative_to(root)}:{n}"
        for pkg in ("edge", "cloud", "simulators", "firmware_bridge", "alerts", "dashboards", "bench")
        for path in sorted((root / pkg).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "asyncio.wait_for(" in line
    ]
    assert not found, found
