"""Stopping a background task in a test, surely.

``task.cancel(); await task`` hangs when the cancel is lost: on Python 3.11 ``asyncio.wait_for`` drops a
cancellation that reaches its task after the awaited thing finished but before the task woke up (CPython
gh-86296, fixed in 3.12). aiomqtt waits for each QoS 1 PUBACK that way, so a test's MQTT helper stopped
just as its publish was confirmed went on running, and CI hung 300 s in ``await task`` (twice). Our own
code uses ``asyncio.timeout`` (tests/cloud/test_mqtt_ingest_cancel.py); a library's we cannot change.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: a task gets this long after the first cancel to run its clean-up before the cancel is repeated
FIRST_WAIT_S = 5.0
#: then the cancel is repeated this often (a lost one is lost once; clean-up is not interrupted in a loop)
AGAIN_EVERY_S = 2.0


async def cancel_and_wait(task: asyncio.Task[Any], *, within: float = 30.0, errors: bool = True) -> None:
    """Cancel ``task`` and wait until it has ended, repeating a lost cancel; fail, naming where the task
    waits, if it has not ended within ``within`` seconds. What the task ended with is raised again,
    unless it is the cancellation (as ``suppress(CancelledError): await task`` did) or ``errors`` is
    false (as ``gather(task, return_exceptions=True)``). A cancel of the caller itself is not swallowed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    wait = FIRST_WAIT_S
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            where = "".join(
                f"\n  {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack()
            )
            raise AssertionError(
                f"task {task.get_name()!r} did not stop within {within:g} s of its cancel:{where}"
            )
        task.cancel()
        await asyncio.wait({task}, timeout=min(wait, left))
        wait = AGAIN_EVERY_S
    if errors and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
