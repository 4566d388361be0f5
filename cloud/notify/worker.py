"""The delivery loop: pull the loop's intents, plan them, claim due rows, send, record, repeat.

Several cloud workers run this side by side; the outbox's claim keeps them from sending a row twice.
Rows for one robot claimed together go out as one digest message. Every send has a deadline
(``3 x http_timeout_s``). Stopping is graceful: a cancelled worker lets the sends already on the wire
finish and records their outcome before it exits, so a restart neither loses nor repeats those pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from cloud.notify.channel import Channel, GiveUp, Notice, Outcome, Retry
from cloud.notify.contacts import FAMILY_PREFIX, Contacts
from cloud.notify.outbox import CALL_TASK, NAMED_TARGET_CHANNELS, Claimed, Outbox, Settled
from cloud.notify.planner import NotifyRequest, Planner
from cloud.notify.render import digest
from firmware_bridge.kernel.clock import Clock

log = logging.getLogger(__name__)

#: "nobody to notify" is logged at most once per target per this many seconds (the worker's clock); the
#: pages in between are counted and the next line carries the count. Every page is still settled failed and
#: raised in-app to operators: only the journal is spared a line per page of a misconfigured target.
NOBODY_LOG_EVERY_S = 600.0
#: targets whose "nobody to notify" lines are remembered; past this, quiet entries are forgotten first
NOBODY_LOG_TARGETS = 1024


class IntentSource(Protocol):
    """Where requests come from (the loop's ``notification_intents`` table); blocking methods."""

    def claim(self, *, now: float, limit: int) -> list[NotifyRequest]: ...

    def settle(self, intent_key: str, state: str, *, now: float, detail: str = "") -> None: ...


class ReopenSource(Protocol):
    """Family pages for reopened cases (``cloud.notify.loopbridge.ReopenWatch``); blocking."""

    def poll(self, *, now: float) -> list[NotifyRequest]: ...


class NotifyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sends = Counter(
            "vigil_cloud_notify_sends_total",
            "Send attempts by channel and outcome (delivered, retry, give_up)",
            ["channel", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "vigil_cloud_notify_failures_total",
            "Notifications that failed on every channel (raised in-app to operators)",
            registry=registry,
        )
        self.send_seconds = Histogram(
            "vigil_cloud_notify_send_seconds", "Time of one send call", ["channel"], registry=registry
        )


class IdleGate:
    """Whether an idle round can be skipped on the embedded database (SQLite), exactly.

    An idle round (nothing claimed) costs ~2-4 ms of CPU (the intents' and the outbox's "anything due?"
    reads through the ORM, thread hand-offs): at ``poll_s`` = 0.5 s that was ~40 % of an idle cloud's CPU.
    Work appears in two ways only: a commit (a new intent, a new or re-queued delivery, a reopen event),
    which moves SQLite's ``PRAGMA data_version`` as seen from this gate's own connection (a commit by any
    other connection, in this process or another; ~4 us to read), or time (a retry's ``next_at``, an
    expired ``sending`` lease, an expired intent claim), whose earliest instant is read once after each
    empty round. So a round is skipped only when nothing was committed since the last empty round began and
    that instant has not come: a skipped round would have found nothing. PostgreSQL (several processes,
    another invalidation story) is not gated. Any error of the gate means: do the round."""

    def __init__(self, path: str, intent_lease_s: float | None, max_skip_s: float = float("inf")) -> None:
        self._conn = sqlite3.connect(
            Path(path).resolve().as_uri() + "?mode=ro",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
        )
        self._lock = threading.Lock()  # reads and close never overlap (see cloud/loop/idle.py)
        self._closed = False
        self._intent_lease_s = intent_lease_s
        self._max_skip_s = max_skip_s  # a full round at least this often (the reopen watch's own throttle)
        self._version: int | None = None  # data_version when the last empty round began (None: no skip)
        self._due_at = 0.0

    def version(self) -> int | None:
        with self._lock:
            if self._closed:
                return None
            try:
                return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                return None

    def can_skip(self, now: float) -> bool:
        return self._version is not None and now < self._due_at and self.version() == self._version

    def after_round(self, began: int | None, found: bool, now: float) -> None:
        """``began``: :meth:`version` read before the round (a commit during it then forces the next)."""
        self._version = None
        if found or began is None:
            return
        parts = [
            "SELECT MIN(next_at) FROM notify_deliveries WHERE status = 'pending'",
            "SELECT MIN(lease_until) FROM notify_deliveries WHERE status = 'sending'",
        ]
        if self._intent_lease_s is not None:
            parts.append(
                f"SELECT MIN(updated_at) + {float(self._intent_lease_s)!r} FROM notification_intents "
                "WHERE state = 'claimed'"
            )
            # a pending intent is takeable at once: any left (none should be after an empty round) -> no skip
            parts.append(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM notification_intents WHERE state = 'pending') "
                "THEN -1e300 END"
            )
        with self._lock:
            if self._closed:
                return
            try:
                rows = self._conn.execute(" UNION ALL ".join(parts)).fetchall()
            except sqlite3.Error:
                return
        times = [float(r[0]) for r in rows if r[0] is not None]
        self._due_at = min(times, default=now + self._max_skip_s)
        self._due_at = min(self._due_at, now + self._max_skip_s)
        self._version = began

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


class DeliveryWorker:
    def __init__(
        self,
        *,
        outbox: Outbox,
        planner: Planner,
        contacts: Contacts,
        channels: Mapping[str, Channel],
        named: Mapping[str, Channel],
        clock: Clock,
        metrics: NotifyMetrics,
        poll_s: float = 0.5,
        batch_size: int = 20,
        send_timeout_s: float = 15.0,
        source: IntentSource | None = None,
    ) -> None:
        self.outbox = outbox
        self.planner = planner
        self.contacts = contacts
        self.channels = channels
        self.named = named
        self.clock = clock
        self.metrics = metrics
        self.poll_s = poll_s
        self.batch_size = batch_size
        self.send_timeout_s = send_timeout_s
        self.source = source
        self.reopens: ReopenSource | None = None  # set by NotifyService.connect_loop
        self._wake = asyncio.Event()  # the loop handled committed alerts: intents are waiting
        #: skips idle rounds that would find nothing (embedded SQLite only): see :class:`IdleGate`
        self.idle_gate: IdleGate | None = None
        self.gate_idle = True  # False: every idle round runs (as before the gate)
        self._intake_found = False  # the last intake took requests (work done even if nothing was sent)
        # target -> (when its last "nobody to notify" line was logged, pages suppressed since)
        self._nobody: dict[str, tuple[float, int]] = {}

    def wake(self) -> None:
        """Take intents and send now (the loop just wrote intents), instead of at the next poll."""
        self._wake.set()

    async def submit(self, reqs: Sequence[NotifyRequest]) -> int:
        """Plan and enqueue requests (idempotent); returns how many deliveries are new.

        A request nobody can receive (no recipient for the target, or none with a configured channel) is
        settled ``failed`` at once and raised to operators in-app: left claimed, it was taken again after
        every lease, forever (soak, issue 11).
        """
        now = self.clock.now()
        planned = await asyncio.to_thread(self.planner.plan_each, reqs, now=now)
        rows = [d for _, ds in planned for d in ds]
        new = await asyncio.to_thread(self.outbox.enqueue, rows, now=now)
        for req, ds in planned:
            if ds:
                continue
            self.metrics.failures.inc()
            target = f"{req.target_kind}:{req.target_id}"
            self._log_nobody(target, req.facts.incident_id, now)
            await asyncio.to_thread(
                self.outbox.raise_unreachable,
                req.facts.incident_id,
                req.facts.summary,
                target,
                int(req.facts.severity),
                now=now,
            )
            if self.source is not None and req.intent_key:
                await asyncio.to_thread(
                    self.source.settle,
                    req.intent_key,
                    "failed",
                    now=now,
                    detail=f"nobody to notify ({target})",
                )
        return new

    def _log_nobody(self, target: str, incident_id: str, now: float) -> None:
        """One error line per target per :data:`NOBODY_LOG_EVERY_S`, with the pages suppressed since the
        previous one: a misconfigured target stays loud without a line per page (the demo's empty roster
        wrote 98 of them in two simulated hours)."""
        last = self._nobody.get(target)
        if last is not None and now - last[0] < NOBODY_LOG_EVERY_S:
            self._nobody[target] = (last[0], last[1] + 1)
            return
        if last is None and len(self._nobody) >= NOBODY_LOG_TARGETS:
            # forget targets with nothing left to report (their window is over, no count pending)
            for t, (at, n) in list(self._nobody.items()):
                if n == 0 and now - at >= NOBODY_LOG_EVERY_S:
                    del self._nobody[t]
        suppressed = last[1] if last is not None else 0
        log.error(
            "nobody to notify",
            extra={"incident": incident_id, "target": target, "suppressed": suppressed},
        )
        if last is not None or len(self._nobody) < NOBODY_LOG_TARGETS:
            self._nobody[target] = (now, 0)

    async def intake_once(self) -> int:
        """Claim the loop's pending intents and plan them; returns how many deliveries are new."""
        reqs: list[NotifyRequest] = []
        if self.source is not None:
            reqs = await asyncio.to_thread(self.source.claim, now=self.clock.now(), limit=self.batch_size)
        if self.reopens is not None:  # a reopened case's family is paged again (once per reopen)
            reqs += await asyncio.to_thread(self.reopens.poll, now=self.clock.now())
        self._intake_found = bool(reqs)
        return await self.submit(reqs) if reqs else 0

    async def run_once(self) -> int:
        """One intake and one send round (tests drive the worker with this)."""
        await self.intake_once()
        return await self.send_once()

    async def send_once(self) -> int:
        """Claim due deliveries, send them concurrently, record every outcome; returns how many."""
        claimed = await asyncio.to_thread(self.outbox.claim, now=self.clock.now(), limit=self.batch_size)
        if not claimed:
            return 0
        units: dict[tuple[str, str], list[Claimed]] = defaultdict(list)
        singles: list[list[Claimed]] = []
        for c in claimed:
            if c.channel in ("dingtalk_robot", "wecom_robot"):
                units[(c.channel, c.target)].append(c)
            else:
                singles.append([c])
        rounds = [*units.values(), *singles]
        wanted = [
            (int(u[0].recipient.removeprefix("user:")), u[0].channel)
            for u in rounds
            if u[0].recipient.startswith("user:") and u[0].channel not in NAMED_TARGET_CHANNELS
        ]
        found = await asyncio.to_thread(self.contacts.addresses, wanted) if wanted else {}
        # a wearer's family (SMS / voice): the registered number is unsealed here, at send time, and
        # lives only in this round's memory (never stored with the delivery, logged or put in a URL)
        family = {
            (u[0].recipient, u[0].channel)
            for u in rounds
            if u[0].recipient.startswith(FAMILY_PREFIX)
            and u[0].channel not in ("inapp_ops", CALL_TASK)
            and u[0].channel not in NAMED_TARGET_CHANNELS
        }
        family_found = await asyncio.to_thread(self._family_addresses, family) if family else {}
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(
                    self._send(u, self._address(u[0], found, family_found)),
                    name=f"notify-{u[0].channel}-{u[0].id}",
                )
                for u in rounds
            ]
        outcomes = [t.result() for t in tasks]
        items = [(c, out) for u, out in zip(rounds, outcomes, strict=True) for c in u]
        settled = await asyncio.to_thread(self.outbox.finish_many, items, now=self.clock.now())
        for (c, out), st in zip(items, settled, strict=True):
            await self._after(c, st, out)
        return len(claimed)

    async def run(self) -> None:
        """Rounds of intake + sending until cancelled; idle rounds wait for ``wake()`` or ``poll_s``.

        One sequential loop on purpose: measured on SQLite (one writer per process), splitting intake and
        sending into two concurrent loops made pages slower, not faster (bench/bench_notify.py). On SQLite
        an idle round that would find nothing is skipped (:class:`IdleGate`); ``wake()`` always runs one.
        """
        gate = self.idle_gate = self._idle_gate() if self.gate_idle else None
        woken = True
        try:
            while True:
                n = 0
                if woken or gate is None or not gate.can_skip(self.clock.now()):
                    began = gate.version() if gate is not None else None
                    task = asyncio.ensure_future(self.run_once())
                    try:
                        n = await asyncio.shield(task)
                    except asyncio.CancelledError:
                        # graceful stop: let the sends on the wire finish and be recorded, then stop
                        await asyncio.wait({task}, timeout=self.send_timeout_s + 5)
                        raise
                    except Exception:  # supervisor boundary: log, count, keep delivering
                        log.exception("notification delivery round failed")
                        n, began = 0, None
                    if gate is not None:
                        gate.after_round(began, found=n > 0 or self._intake_found, now=self.clock.now())
                woken = False
                if n == 0:
                    # idle: poll, or go at once when the loop has just handled committed alerts (wake()).
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
                    # arrives as the event is set, and the stopping worker would then poll forever.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.clock.real_seconds(self.poll_s)):
                            await self._wake.wait()
                            woken = True
                    self._wake.clear()
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError
        finally:
            if gate is not None:
                gate.close()
                self.idle_gate = None

    def _idle_gate(self) -> IdleGate | None:
        """The gate for the embedded database file, when every source of work is one it knows."""
        from cloud.notify.loopbridge import REOPEN_POLL_S, LoopIntents, ReopenWatch

        db = getattr(self.outbox, "db", None)
        path = db.engine.url.database if db is not None and db.is_sqlite else None
        if not path or path == ":memory:" or path.startswith("file:"):
            return None
        if self.source is not None and not isinstance(self.source, LoopIntents):
            return None  # another intent source: its own timing is unknown here
        if self.reopens is not None and not isinstance(self.reopens, ReopenWatch):
            return None
        try:
            return IdleGate(
                path,
                self.source.lease_s if self.source is not None else None,
                REOPEN_POLL_S if self.reopens is not None else float("inf"),
            )
        except sqlite3.Error:
            log.warning("idle gate unavailable: every idle round runs", exc_info=True)
            return None

    @staticmethod
    def _address(
        c: Claimed,
        found: Mapping[tuple[int, str], str | None],
        family: Mapping[tuple[str, str], str | None],
    ) -> str | None:
        if c.channel in NAMED_TARGET_CHANNELS:
            return c.target
        if c.channel == CALL_TASK:  # the device: the call takers on duty are looked up at this send
            return c.recipient.removeprefix(FAMILY_PREFIX)
        if c.channel != "inapp_ops" and c.recipient.startswith(FAMILY_PREFIX):
            return family.get((c.recipient, c.channel))
        if c.channel == "inapp_ops" or not c.recipient.startswith("user:"):
            return ""
        return found.get((int(c.recipient.removeprefix("user:")), c.channel))

    def _family_addresses(self, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        return {(r, ch): self.contacts.family_address(r, ch) for r, ch in wanted}

    def _channel(self, c: Claimed) -> Channel | None:
        if c.channel in NAMED_TARGET_CHANNELS:
            return self.named.get(c.target)
        return self.channels.get("inapp" if c.channel == "inapp_ops" else c.channel)

    async def _send(self, unit: list[Claimed], address: str | None) -> Outcome:
        first = unit[0]
        channel = self._channel(first)
        outcome: Outcome
        if channel is None:
            outcome = GiveUp(f"channel {first.channel!r} {first.target!r} is not configured")
        elif address is None:
            outcome = GiveUp(f"recipient has no {first.channel} address bound")
        else:
            notices = [Notice.from_json(c.notice) for c in unit]
            notice = digest(notices, lang=notices[0].lang)
            with self.metrics.send_seconds.labels(first.channel).time():
                try:
                    async with asyncio.timeout(self.send_timeout_s):
                        outcome = await channel.send(notice, address, key=first.dedup_key)
                except TimeoutError:
                    outcome = Retry(f"send did not finish within {self.send_timeout_s} s")
        label = {"Delivered": "delivered", "Retry": "retry", "GiveUp": "give_up"}[type(outcome).__name__]
        self.metrics.sends.labels(first.channel, label).inc()
        return outcome

    async def _after(self, c: Claimed, settled: Settled, outcome: Outcome) -> None:
        if settled.failure_raised:
            self.metrics.failures.inc()
            log.error(
                "notification failed on every channel",
                extra={
                    "incident": c.incident_id,
                    "recipient": c.recipient,
                    "channel": c.channel,
                    "reason": getattr(outcome, "reason", ""),
                },
            )
        elif settled.fallback_channel:
            log.warning(
                "channel gave up, falling back",
                extra={
                    "incident": c.incident_id,
                    "recipient": c.recipient,
                    "from": c.channel,
                    "to": settled.fallback_channel,
                },
            )
        if self.source is not None and settled.intent_key and settled.status in ("delivered", "failed"):
            if settled.status == "failed" and not settled.failure_raised:
                return  # a fallback channel is still trying
            state = "sent" if settled.status == "delivered" else "failed"
            detail = f"{c.channel} → {c.recipient}" if state == "sent" else getattr(outcome, "reason", "")
            await asyncio.to_thread(
                self.source.settle, settled.intent_key, state, now=self.clock.now(), detail=detail
            )
