"""After a stop, a gateway task that lost its cancel is cancelled again (``recancel``, which edge.daemon
shares with the simulators and the MQTT transport: firmware_bridge.kernel.aio).

Python 3.11's ``asyncio.wait_for`` drops a cancel that lands as the awaited thing finishes (CPython
gh-86296); aiomqtt awaits PUBACKs that way. The task here swallows its first cancel the same way and
goes on waiting: the TaskGroup would wait for it forever; ``recancel`` ends it.
"""

from __future__ import annotations

import asyncio

from firmware_bridge.kernel.aio import recancel


async def _loses_one_cancel(log: list[str]) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        log.append("first cancel lost")  # as wait_for returning the finished result instead
    await asyncio.sleep(3600)


async def test_a_task_that_lost_its_cancel_is_cancelled_again() -> None:
    log: list[str] = []
    stubborn = asyncio.create_task(_loses_one_cancel(log), name="uplink-session")
    polite = asyncio.create_task(asyncio.sleep(3600), name="tick")
    await asyncio.sleep(0)
    for t in (stubborn, polite):
        t.cancel()  # what the TaskGroup does on the stop
    watchdog = asyncio.create_task(recancel([stubborn, polite], after_s=0.05, every_s=0.05))
    try:
        done, _ = await asyncio.wait({stubborn, polite}, timeout=5)
    finally:
        watchdog.cancel()
    assert done == {stubborn, polite} and stubborn.cancelled() and polite.cancelled()
    assert log == ["first cancel lost"]


async def test_without_it_the_task_would_still_run() -> None:
    """The test above can fail: the same task, cancelled once, is still running a while later."""
    stubborn = asyncio.create_task(_loses_one_cancel([]))
    await asyncio.sleep(0)
    stubborn.cancel()
    done, _ = await asyncio.wait({stubborn}, timeout=0.3)
    assert not done
    stubborn.cancel()
    done, _ = await asyncio.wait({stubborn}, timeout=5)
    assert done
