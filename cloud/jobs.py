"""Periodic jobs that run exactly once across all cloud processes.

Every cloud process may run a :class:`JobRunner` with the same jobs registered; for each job one process
holds the lease (:mod:`cloud.lease`) and runs its ticks, the others stand by and take over within about
one lease TTL when the holder dies. The API is three calls::

    runner = JobRunner(open_lease(db), clock=clock)
    runner.register("escalation", 5.0, escalation_tick)   # name, interval (clock seconds), async fn(ctx)
    await runner.run()                                     # until cancelled (one named task per job)

A job is ``async def fn(ctx: JobContext) -> None``. ``ctx.tick`` numbers its runs (1, 2, ...) across all
processes, ``ctx.scheduled_at`` is when the tick was due, ``ctx.now`` when it started. **Call
``ctx.fence(session)`` inside the transaction that writes the job's effects**: it commits the tick
together with those writes only if this process still holds the lease, else raises
:class:`~cloud.lease.LeaseLost` and the transaction rolls back. With it, a tick takes effect exactly once
even when its holder is killed mid-run (the next holder runs the tick again, the dead one's transaction
never committed). A job that does not fence is marked done by the runner after it returns: a holder
killed between the job's commit and that mark makes the tick run twice, so such a job must be idempotent.

Schedule: tick ``n + 1`` is due ``interval_s`` after tick ``n`` was due; a holder that takes over late
runs the overdue tick at once, once (missed intervals are coalesced, never replayed as a burst). A job
that raises is logged and counted and its tick is marked done (no hot retry loop); the next tick comes at
the next interval. Lease TTL: ``ttl_s`` (default 15 s, renewed every third of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.orm import Session

from cloud.errors import CloudError
from cloud.lease import Lease, LeaseLost, LocalLease
from firmware_bridge.kernel.clock import Clock, SystemClock

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JobContext:
    """One tick of one job, handed to the job function."""

    name: str
    tick: int
    token: int
    scheduled_at: float
    now: float
    next_due: float
    lease: Lease

    def fence(self, session: Session) -> None:
        """Commit this tick with ``session``'s transaction, or raise :class:`LeaseLost` (rolls it back)."""
        self.lease.fence(session, self.name, self.token, self.tick, self.next_due)


JobFn = Callable[[JobContext], Awaitable[None]]


class JobMetrics:
    """``vigil_cloud_job_*``; pass the app's registry to expose them on ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.runs = Counter(
            "vigil_cloud_job_runs_total",
            "Job ticks by result (ok, failed, lease_lost)",
            ["job", "result"],
            registry=r,
        )
        self.holder = Gauge(
            "vigil_cloud_job_holder", "1 while this process holds the job's lease", ["job"], registry=r
        )
        self.lag = Histogram(
            "vigil_cloud_job_lag_seconds",
            "Start of a tick minus when it was due (job clock)",
            ["job"],
            registry=r,
        )
        self.takeovers = Counter(
            "vigil_cloud_job_acquired_total", "Leases acquired by this process", ["job"], registry=r
        )
        self.lease_errors = Counter(
            "vigil_cloud_job_lease_errors_total", "Lease calls that failed (database unreachable)", registry=r
        )


@dataclass(slots=True)
class _Job:
    name: str
    interval_s: float
    fn: JobFn


@dataclass(slots=True)
class _Held:
    token: int
    done_tick: int
    next_due: float | None
    valid_until: float  # time.monotonic(): no tick starts after this without a renewal


class JobRunner:
    """Runs registered jobs under leases; see the module docstring."""

    def __init__(
        self,
        lease: Lease,
        *,
        clock: Clock | None = None,
        ttl_s: float = 15.0,
        poll_s: float | None = None,
        metrics: JobMetrics | None = None,
        only: Iterable[str] | None = None,
    ) -> None:
        """``only``: run just these of the registered jobs in this process (``None`` = all)."""
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.lease = lease
        self.clock: Clock = clock or SystemClock()
        self.ttl_s = ttl_s
        self.poll_s = poll_s if poll_s is not None else ttl_s / 3
        self.metrics = metrics or JobMetrics()
        self._jobs: dict[str, _Job] = {}
        self._only = None if only is None else frozenset(only)
        self._held: dict[str, _Held] = {}
        self._running = False
        # the embedded lease is a dict under a lock (no I/O): called on the event loop, not in a thread
        # (a thread hand-off costs ~80-100 us of CPU, one or two per tick: most of an idle runner's CPU)
        self._inline = type(lease) is LocalLease

    async def _lease_call(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args) if self._inline else await _finish(fn, *args)

    def register(self, name: str, interval_s: float, coro_fn: JobFn) -> None:
        """Add a job before :meth:`run`. ``name`` is the lease's key: the same in every process."""
        if self._running:
            raise RuntimeError("register jobs before JobRunner.run()")
        if name in self._jobs:
            raise ValueError(f"job {name!r} is already registered")
        if not 0 < len(name) <= 64:
            raise ValueError("a job name has 1 to 64 characters")
        if not interval_s > 0:
            raise ValueError(f"job {name!r}: interval_s must be > 0")
        self._jobs[name] = _Job(name, float(interval_s), coro_fn)

    @property
    def jobs(self) -> list[str]:
        """The jobs this process takes part in (registered, and selected by ``only``)."""
        return [n for n in self._jobs if self._only is None or n in self._only]

    def holds(self, name: str) -> bool:
        """Whether this process currently holds ``name``'s lease."""
        return name in self._held

    async def run(self) -> None:
        """Run until cancelled; leases held are released on the way out (a standby takes over at once)."""
        self._running = True
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._heartbeat(), name="jobs-heartbeat")
                for job in (self._jobs[n] for n in self.jobs):
                    tg.create_task(self._loop(job), name=f"job[{job.name}]")
        finally:
            held, self._held = dict(self._held), {}
            for name, h in held.items():
                self.metrics.holder.labels(name).set(0)
                try:
                    await self._lease_call(self.lease.release, name, h.token)
                except CloudError:
                    log.warning("could not release job lease", extra={"job": name})

    def _drop(self, name: str, why: str) -> None:
        if self._held.pop(name, None) is not None:
            self.metrics.holder.labels(name).set(0)
            log.warning("job lease lost", extra={"job": name, "reason": why})

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            tokens = {n: h.token for n, h in self._held.items()}
            if not tokens:
                continue
            sent = time.monotonic()
            try:
                still = await self._lease_call(self.lease.renew, tokens, self.ttl_s)
            except CloudError:
                self.metrics.lease_errors.inc()
                log.warning("job lease renewal failed", exc_info=True)
                continue  # valid_until lapses: no new tick starts until a renewal succeeds
            for name, token in tokens.items():
                h = self._held.get(name)
                if h is None or h.token != token:
                    continue
                if name in still:
                    h.valid_until = sent + self.ttl_s
                else:
                    self._drop(name, "renewal refused")

    async def _acquire(self, job: _Job) -> _Held | None:
        started = time.monotonic()
        try:
            grant = await self._lease_call(self.lease.acquire, job.name, self.ttl_s)
        except CloudError:
            self.metrics.lease_errors.inc()
            log.warning("job lease acquisition failed", extra={"job": job.name}, exc_info=True)
            return None
        if grant is None:
            return None
        h = _Held(grant.token, grant.done_tick, grant.next_due, started + self.ttl_s)
        self._held[job.name] = h
        self.metrics.holder.labels(job.name).set(1)
        self.metrics.takeovers.labels(job.name).inc()
        log.info("job lease acquired", extra={"job": job.name, "token": grant.token, "tick": grant.done_tick})
        return h

    async def _loop(self, job: _Job) -> None:
        while True:
            h = self._held.get(job.name) or await self._acquire(job)
            if h is None:
                await asyncio.sleep(self.poll_s)
                continue
            now = self.clock.now()
            due = h.next_due if h.next_due is not None else now
            if now < due:  # wake at least every poll_s real seconds to notice a lost lease
                await asyncio.sleep(min(self.clock.real_seconds(due - now), self.poll_s))
                continue
            if time.monotonic() >= h.valid_until:
                self._drop(job.name, "not renewed within the TTL")
                continue
            await self._tick(job, h, due, now)

    async def _tick(self, job: _Job, h: _Held, due: float, now: float) -> None:
        tick = h.done_tick + 1
        next_due = due + job.interval_s
        if next_due <= now:  # late by more than an interval: coalesce, keep the cadence from now
            next_due = now + job.interval_s
        ctx = JobContext(job.name, tick, h.token, due, now, next_due, self.lease)
        self.metrics.lag.labels(job.name).observe(max(0.0, now - due))
        result = "ok"
        try:
            await job.fn(ctx)
        except LeaseLost:
            self.metrics.runs.labels(job.name, "lease_lost").inc()
            self._drop(job.name, "fenced off")
            return
        except Exception:  # supervisor boundary: a failing job must not stop the runner or other jobs
            result = "failed"
            log.exception("job tick failed", extra={"job": job.name, "tick": tick})
        try:
            ok = await self._lease_call(self.lease.complete, job.name, h.token, tick, next_due)
        except CloudError:
            self.metrics.lease_errors.inc()
            self.metrics.runs.labels(job.name, result).inc()
            self._drop(job.name, "could not record the tick")
            return
        self.metrics.runs.labels(job.name, result if ok else "lease_lost").inc()
        if not ok:
            self._drop(job.name, "tick not recorded: token no longer current")
            return
        h.done_tick, h.next_due = tick, next_due


async def _finish(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread; if cancelled meanwhile, wait for the call to end before re-raising, so a
    stopping runner never leaves a lease call holding a database connection behind its back."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await fut
        raise


__all__ = ["JobContext", "JobFn", "JobMetrics", "JobRunner"]
