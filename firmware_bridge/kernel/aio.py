"""Stopping asyncio tasks surely: repeat a cancel that a library lost.

On Python 3.11 ``asyncio.wait_for`` drops a cancellation that lands as the awaited thing finishes (CPython
gh-86296, fixed in 3.12). Our own code uses ``asyncio.timeout``, but aiomqtt awaits its CONNACK, SUBACK,
PUBACK and disconnect with ``wait_for``: a task stopped inside one of those calls may run on, and the
``TaskGroup`` (or ``await task``) stopping it waits for it forever. Used by the gateway daemon
(``edge.daemon``), the simulators' runner and :class:`~firmware_bridge.transports.mqtt.MqttTransport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

__all__ = ["RECANCEL_AFTER_S", "RECANCEL_EVERY_S", "recancel", "recancelling"]

log = logging.getLogger(__name__)

#: after a stop, a task still running this long after its cancel is cancelled again, this often (read
#: when a ``recancel`` starts, so a test may shorten them)
RECANCEL_AFTER_S = 5.0
RECANCEL_EVERY_S = 2.0


async def recancel(
    tasks: Sequence[asyncio.Task[Any]], after_s: float | None = None, every_s: float | None = None
) -> None:
    """Cancel the tasks still running ``after_s`` after the stop again, every ``every_s`` (by default
    :data:`RECANCEL_AFTER_S` and :data:`RECANCEL_EVERY_S`). Start it as its own task when the tasks are
    cancelled, and cancel it when they have ended.

    A lost cancel is lost once: the first ``after_s`` let clean-up (a flush, a disconnect) finish without
    interruption, and the repeats are far enough apart not to interrupt it in a loop. Without this, a
    gateway whose uplink was stopped just as its publish was confirmed ran on until systemd's stop timeout
    killed it (the outbox loses nothing then, but the stop takes 90 s instead of a second)."""
    await asyncio.sleep(RECANCEL_AFTER_S if after_s is None else after_s)
    while True:
        for t in [t for t in tasks if not t.done()]:
            log.warning(
                "task still running after the stop; cancelling it again", extra={"task": t.get_name()}
            )
            t.cancel()
        await asyncio.sleep(RECANCEL_EVERY_S if every_s is None else every_s)


@contextlib.asynccontextmanager
async def recancelling(
    tasks: Sequence[asyncio.Task[Any]], after_s: float | None = None, every_s: float | None = None
) -> AsyncIterator[None]:
    """``async with recancelling(tasks): await ...``: :func:`recancel` runs while the block waits for the
    tasks, cancelled just before it, to end (a ``TaskGroup``'s exit, an ``await``)."""
    watchdog = asyncio.get_running_loop().create_task(recancel(tasks, after_s, every_s), name="recancel")
    try:
        yield
    finally:
        watchdog.cancel()  # it only sleeps: the cancel takes
