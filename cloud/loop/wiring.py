"""How the loop plugs into the app: a queueing sink, its drain task, a periodic job, the routers.

``create_app`` wraps its sink in :class:`LoopSink` before the state is built (so ingest, the
connectivity monitor and cloud-side detection all feed the loop) and calls :func:`install` once the
state exists. The wrapped sink (a test's recorder, the console's live stream) is called at once.

Off the request: the sink only appends the committed steps to a bounded in-process queue and wakes
the drain task (:meth:`LoopSink.run`, the ``loop-intake`` task of the app's lifespan), which hands
many steps to the loop per transaction (:meth:`LoopService.take_batch`). A gateway's ack never waits
for routing, dispatch or paging. Nothing is dropped: when the queue is full the steps stay where
ingest committed them and the ``loop`` job's reconcile pass picks them up (counted in
``vigil_cloud_loop_queue_overflow_total``). Without a running drain task (no lifespan) the sink hands
steps to the loop inline, as before.

Priority: a backlog is taken most urgent first (:func:`cloud.loop.intake.priority`). Danger to a person
now (fire, CO, gas, a fall, SOS) is taken before the other life-safety events (an open cover), and those
before the rest: one FIFO per tier, and a transaction is filled from the most urgent tier down. A fire
alarm that arrives behind 5,000 cover alarms waits for at most the one batch being handled, then is the
first signal of the next transaction.

After each drained batch the ``on_handled`` callbacks run (the notify worker's wake-up: intents are
waiting). Tests wait for the queue with ``await sink.drained()`` (``Cloud.drained()`` in the test kit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import FastAPI
from prometheus_client import Counter, Gauge

from alerts.contract import AlertEvent
from alerts.loop.rosters import Roster
from cloud.ingest import AlertSink, NullAlertSink
from cloud.loop.config import load
from cloud.loop.intake import TIERS, step_priority
from cloud.loop.service import LoopService

log = logging.getLogger(__name__)
JOB_NAME = "loop"
#: how often the ``loop`` job reconciles missed alerts and fires due timers (clock seconds)
DEFAULT_TICK_S = 1.0
#: alert steps the queue holds before new ones are left to the reconcile pass
QUEUE_MAX_STEPS = 20_000
#: alert steps handed to the loop in one transaction: a storm's incidents become visible (and paged) every
#: few hundred steps instead of after one long transaction (bench_loop --drain-steps 250 vs 2000 at load
#: 2.5: 749 vs 797 alerts/s; bench_district measured the visibility lag it removes)
DRAIN_BATCH_STEPS = 250


class LoopSink:
    """An :class:`~cloud.ingest.AlertSink` that queues steps for the loop, then calls the wrapped sink."""

    def __init__(
        self,
        then: AlertSink | None = None,
        *,
        max_steps: int = QUEUE_MAX_STEPS,
        batch_steps: int = DRAIN_BATCH_STEPS,
    ) -> None:
        self.then: AlertSink = then or NullAlertSink()
        self.service: LoopService | None = None
        self.max_steps = max_steps
        self.batch_steps = batch_steps
        #: called (on the event loop) after the loop handled a batch: e.g. wake the notify worker
        self.on_handled: list[Callable[[], None]] = []
        self.overflowed = 0  # steps left to the reconcile pass because the queue was full
        self.overflow_counter: Counter | None = None
        # one FIFO per priority tier: (steps, source, monotonic time queued)
        self._queues: list[deque[tuple[list[AlertEvent], str, float]]] = [deque() for _ in range(TIERS)]
        self._queued = 0  # steps in the queue
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = False

    @property
    def queued(self) -> int:
        return self._queued

    def oldest_age(self) -> float:
        """Seconds the oldest waiting step has been queued (0 when empty): a backlog shows here first.

        Safe from the metrics server's thread: a head taken meanwhile is skipped, not an error."""
        heads: list[float] = []
        for q in self._queues:
            with contextlib.suppress(IndexError):
                heads.append(q[0][2])
        return max(0.0, time.monotonic() - min(heads)) if heads else 0.0

    async def alerts_committed(self, steps: Sequence[AlertEvent], *, source: str) -> None:
        try:
            if self.service is not None and steps:
                if self._running:
                    self._enqueue(list(steps), source)
                else:
                    await asyncio.to_thread(self.service.take_steps, steps, source)
                    self._handled()
        finally:
            await self.then.alerts_committed(steps, source=source)

    def _enqueue(self, steps: list[AlertEvent], source: str) -> None:
        if self._queued + len(steps) > self.max_steps:
            # never dropped: committed by ingest, so the reconcile pass finds them without a link
            self.overflowed += len(steps)
            if self.overflow_counter is not None:
                self.overflow_counter.inc(len(steps))
            log.warning(
                "loop queue full: steps left to the reconcile pass",
                extra={"count": len(steps), "queued": self._queued},
            )
            return
        at = time.monotonic()
        tiers: list[list[AlertEvent]] = [[] for _ in range(TIERS)]
        for st in steps:
            tiers[step_priority(st)].append(st)
        for tier, part in enumerate(tiers):
            if part:
                self._queues[tier].append((part, source, at))
        self._queued += len(steps)
        self._idle.clear()
        self._wake.set()

    def _take(self) -> list[tuple[list[AlertEvent], str]]:
        """The next transaction's steps, up to ``batch_steps``: most urgent tier first, then the next
        ones while they fit (never a less urgent step ahead of a more urgent one that did not fit). A
        hand-off larger than a batch is split: its first part now, the rest stays at the head."""
        out: list[tuple[list[AlertEvent], str]] = []
        n = 0
        for queue in self._queues:
            while queue and (not out or n + len(queue[0][0]) <= self.batch_steps):
                steps, source, at = queue.popleft()
                if len(steps) > self.batch_steps:
                    queue.appendleft((steps[self.batch_steps :], source, at))
                    steps = steps[: self.batch_steps]
                out.append((steps, source))
                n += len(steps)
            if queue:
                break
        return out

    def _handled(self) -> None:
        for cb in self.on_handled:
            try:
                cb()
            except Exception:  # a listener never stops the drain
                log.exception("loop on_handled callback failed")

    async def drained(self) -> None:
        """Return once every queued step has been handed to the loop (and ``on_handled`` ran)."""
        await self._idle.wait()

    async def run(self) -> None:
        """The ``loop-intake`` background task: drain the queue in large batches until cancelled."""
        self._running = True
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while any(self._queues):
                    batch = self._take()
                    n = sum(len(steps) for steps, _ in batch)
                    try:
                        if self.service is not None:
                            await _finish(asyncio.to_thread(self.service.take_batch, batch))
                    except Exception:  # the steps are committed: the reconcile pass retries them
                        log.exception(
                            "loop drain failed: steps left to the reconcile pass", extra={"count": n}
                        )
                    finally:
                        self._queued -= n
                    self._handled()
                if not any(self._queues):
                    self._idle.set()
        finally:
            # stopped: later steps go inline; what is still queued is left to the reconcile pass
            self._running = False
            if self.service is not None:
                self.service.close_gate()  # the job's idle gate connection (cloud/loop/idle.py)
            for q in self._queues:
                q.clear()
            self._queued = 0
            self._idle.set()


async def _finish(call: Coroutine[Any, Any, object]) -> None:
    """Await a worker-thread call; if cancelled, let the call finish first (its connection goes back to
    the pool before the app closes the database), then stop."""
    task = asyncio.ensure_future(call)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


def install(app: FastAPI, sink: LoopSink) -> LoopService:
    """Build the service on the app's state, register the ``loop`` job and the API routers."""
    from cloud.api import incidents, kpi, reports, rosters
    from cloud.api.deps import ERROR_RESPONSES

    state: Any = app.state.vigil
    service = LoopService(state.db, box=state.registry.box, clock=state.clock)
    sink.service = service
    sink.overflow_counter = Counter(
        "vigil_cloud_loop_queue_overflow",
        "Committed alert steps left to the loop's reconcile pass because the intake queue was full",
        registry=state.metrics.registry,
    )
    queued = Gauge(
        "vigil_cloud_loop_queue_steps",
        "Committed alert steps waiting in the loop's intake queue (a loop falling behind shows here)",
        registry=state.metrics.registry,
    )
    queued.set_function(lambda: float(sink.queued))
    oldest = Gauge(
        "vigil_cloud_loop_queue_oldest_seconds",
        "Seconds the oldest alert step in the loop's intake queue has waited (0 when empty): alert -> "
        "incident lag under a storm",
        registry=state.metrics.registry,
    )
    oldest.set_function(sink.oldest_age)
    tick = float(os.environ.get("VIGIL_CLOUD_LOOP_TICK_S", DEFAULT_TICK_S))
    if tick > 0:
        state.jobs.register(JOB_NAME, tick, service.job)
    app.state.loop = service
    app.state.loop_sink = sink
    _install_call_task_handover(app, state, service)
    for module in (incidents, reports, rosters, kpi):
        app.include_router(module.router, responses=ERROR_RESPONSES)  # the spec declares the error bodies
    return service


def _install_call_task_handover(app: FastAPI, state: Any, service: LoopService) -> None:
    """The 请致电家属 call tasks not done at a call takers' shift change go to the incoming shift
    (:class:`cloud.notify.family.CallTaskHandover`, job ``call-task-handover``; docs/notifications.md)."""
    notify = getattr(app.state, "notify", None)
    if notify is None:
        return
    from cloud.notify.family import CALL_TAKER, HANDOVER_TICK_S, CallTaskHandover

    contacts = notify.contacts

    def roster() -> Roster:
        with state.db.read() as s:
            return load(s, service._cfg_cache).roster

    handover = CallTaskHandover(
        state.db,
        on_duty=lambda incident, device, now: contacts.on_duty_users(CALL_TAKER, incident, device, now),
        roster=roster,
        now=state.clock.now,
    )
    app.state.call_task_handover = handover
    tick = float(os.environ.get("VIGIL_CLOUD_HANDOVER_TICK_S", HANDOVER_TICK_S))
    if tick > 0:
        state.jobs.register("call-task-handover", tick, handover.job)
