"""The uplink linger (edge/uplink/sender.py): under load the sender waits up to ``linger_s`` for a fuller
batch; an alert, a batch's worth of readings, a backlog drain and the first reading after a quiet spell
never wait. ``linger_s`` is 60 s here, three times every test's deadline: a batch that arrives at all did
not linger, and one that waits is seen waiting by what goes before it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from edge.metrics import GatewayMetrics
from edge.outbox import Outbox
from edge.uplink import UplinkSender
from tests.aio import cancel_and_wait
from tests.edge.helpers import alert, manhole_batch
from tests.edge.test_heartbeat import ScriptedUplink, wait_until

GW = "gw-linger-1"
LONG = 60.0


class Pipeline:
    """Commits readings like edge/pipeline.py and counts them (the sender's ``committed`` hint)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox, self.total, self.next_seq = outbox, 0, 0

    def commit(self, n: int) -> None:
        self.outbox.commit([manhole_batch(n, first=self.next_seq)], [])
        self.next_seq += n
        self.total += n


@contextlib.asynccontextmanager
async def sending(outbox: Outbox, up: ScriptedUplink, pipe: Pipeline) -> AsyncIterator[UplinkSender]:
    s = UplinkSender(
        outbox,
        up,
        GatewayMetrics(),
        GW,
        max_records=100,
        heartbeat_s=3600.0,
        linger_s=LONG,
        committed=lambda: pipe.total,
    )
    task = asyncio.create_task(s.run())
    try:
        yield s
    finally:
        await cancel_and_wait(task)


def sizes(up: ScriptedUplink) -> list[tuple[int, int]]:
    """(readings, alert steps) of each batch, in the order sent."""
    return [(sum(len(b) for b in x.telemetry), len(x.alerts)) for x in up.sent]


async def test_readings_wait_for_company_and_an_alert_cuts_the_linger_short(tmp_path: Path) -> None:
    up = ScriptedUplink()
    with Outbox(tmp_path / "o.db") as ob:
        pipe = Pipeline(ob)
        async with sending(ob, up, pipe) as s:
            pipe.commit(5)  # the first reading after a quiet spell goes at once
            await wait_until(lambda: s.batches_acked == 1)
            await wait_until(lambda: s.linger_until is not None)
            pipe.commit(5)  # a small batch was just sent: these wait for more
            pipe.commit(5)
            ob.commit([], [alert(1)])
            s.notify()  # ... until an alert arrives: it goes first, and the readings right after it
            await wait_until(lambda: s.batches_acked == 3)
            await wait_until(lambda: s.linger_until is not None)
            pipe.commit(100)  # a batch's worth ends a linger at once
            await wait_until(lambda: s.batches_acked == 4)
    assert sizes(up) == [(5, 0), (0, 1), (10, 0), (100, 0)]


async def test_a_backlog_drains_without_lingering(tmp_path: Path) -> None:
    up = ScriptedUplink()
    with Outbox(tmp_path / "o.db") as ob:
        pipe = Pipeline(ob)
        for i in range(5):  # left by an outage or a restart: not counted as committed since the last batch
            ob.commit([manhole_batch(50, first=1000 + 50 * i)], [])
        async with sending(ob, up, pipe) as s:
            await wait_until(lambda: s.batches_acked == 3)
            pipe.commit(5)  # the drain's partial tail did not start a linger either
            await wait_until(lambda: s.batches_acked == 4)
    assert sizes(up) == [(100, 0), (100, 0), (50, 0), (5, 0)]
