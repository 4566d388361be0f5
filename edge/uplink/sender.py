"""The uplink loop: outbox -> batches -> cloud, with lanes, bounded retries and cloud state.

Order of service: fresh alert steps always first (an alert never queues behind telemetry, even behind a
batch that is waiting for its retry), then unacknowledged batches (alert batches before telemetry ones;
same id as before: idempotent), then live telemetry, then backlog through a token bucket
(``backlog_records_per_s``) so draining weeks of backlog after an outage never delays a live alert by more
than one bounded batch. A new alert also cuts short any backoff pause.

No batch is retried forever (issue 11), and nothing is given up during an outage:

- records the cloud refused inside an acknowledged batch go to the quarantine with the ack
  (:meth:`edge.outbox.Outbox.ack`), counted by reason;
- a batch the cloud reads and refuses whole (400/422, :class:`UplinkInvalid`) is split in halves at once
  (splitting is always safe: nothing of it was stored); a lone record refused ``max_refusals`` times goes
  to the dead letter once the cloud has acknowledged some other batch since, or after
  ``dead_letter_after_s`` (a systematic refusal must not hide behind "the cloud is just broken");
- a batch that only ever gets a 500 (a cloud bug its content provokes) is split after ``max_attempts``,
  and a lone record is dead-lettered only when the cloud acknowledged other batches meanwhile. An outage
  (nothing acknowledged at all), a 503 (storage down: the cloud says "retry the same batch"), a timeout
  or a 429 (over quota; the pause honours ``Retry-After``) never dead-letters anything; the outbox's age
  bounds still apply;
- a refused credential (401/403) is retried slowly and shown by ``vigil gateway status``: dropping data
  because of a wrong token would be worse.

Backoff is jittered and exponential (:class:`firmware_bridge.backoff.Backoff`); while the cloud is merely
unreachable it is capped at ``recovery_probe_s`` so the gateway notices within seconds that it is back.
A cloud that answers 422 naming ``contract_version`` gets version-1 batches (it predates version 2).

**Heartbeat.** The cloud judges a gateway online from its batches (``gateway_offline_s``, default 300 s),
and a gateway whose devices are quiet (manhole covers report every 12-24 h) may have nothing to send for
hours. When nothing was acknowledged for ``heartbeat_s`` and the outbox has nothing to send, the sender
sends a status-only batch (no records, the gateway's status, a fresh batch id), acknowledged like any
batch. It is never persisted (nothing to retry: the next heartbeat replaces it), it is only sent when the
outbox has nothing (so it never queues before a pending batch), and a new alert cancels one in flight. In
an outage one heartbeat is in flight at a time, failed ones are spaced by a jittered exponential pause up
to ``heartbeat_s``, and each keeps the failed one's id until one is acknowledged: the cloud stores at most
one per outage, even when a broker queued copies for a cloud worker that was down.

**Linger** (Kafka's ``linger.ms``). Under load the sender would send whatever committed while the last
batch was in flight: many small batches, each one cloud transaction and fsync. After an acknowledged
telemetry batch that was not full and held only readings committed since the batch before (not a backlog
drain, not a retry), the next batch is formed no sooner than ``linger_s`` after it, unless a batch's worth
(``max_records``) of fresh readings is waiting first or an alert step arrives (:meth:`notify`). So a
steady load gives one batch per ``max(round trip, linger_s)``; an alert, a retry, a backlog drain and the
first reading after a quiet spell never wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from alerts.contract import UplinkAck, UplinkBatch
from edge.metrics import GatewayMetrics
from edge.outbox import LANE_ALERT, Outbox, PendingBatch
from edge.quarantine import QuarantineMetrics
from edge.uplink.base import (
    Uplink,
    UplinkAuthError,
    UplinkError,
    UplinkInvalid,
    UplinkRejected,
    UplinkThrottled,
    UplinkTooLarge,
)
from firmware_bridge.backoff import Backoff

#: failures that may come from a batch's content (a cloud bug); others are outages or throttling
_CONTENT_5XX = frozenset({"http_500", "internal"})
#: how often a linger looks at the pipeline's commit counter (a batch's worth waiting ends it early)
_LINGER_LOOK_S = 0.02
#: how often an idle sender looks at the outbox
_IDLE_LOOK_S = 0.25

log = logging.getLogger(__name__)


class UplinkSender:
    def __init__(
        self,
        outbox: Outbox,
        uplink: Uplink,
        metrics: GatewayMetrics,
        gateway_id: str,
        *,
        max_records: int = 5000,
        max_bytes: int = 1_000_000,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 60.0,
        backlog_records_per_s: float = 5000.0,
        status: Callable[[], dict[str, Any]] | None = None,
        wallclock: Callable[[], float] = time.time,
        recovery_probe_s: float = 5.0,
        max_attempts: int = 20,
        max_refusals: int = 3,
        dead_letter_after_s: float = 3600.0,
        heartbeat_s: float = 60.0,
        linger_s: float = 0.5,
        committed: Callable[[], int] | None = None,
    ) -> None:
        """``committed``: a running count of readings committed to the outbox (the pipeline's); with it a
        linger ends as soon as a batch's worth is waiting, and a batch holding more than was committed
        since the one before (a backlog or a restart's leftovers) is known to be a drain. Without it a
        linger always lasts ``linger_s``."""
        self.outbox, self.uplink, self.metrics, self.gateway_id = outbox, uplink, metrics, gateway_id
        self.max_records, self.max_bytes = max_records, max_bytes
        self.backoff_max_s = backoff_max_s
        self.backoff_initial_s = min(backoff_initial_s, backoff_max_s)
        self.recovery_probe_s = max(self.backoff_initial_s, min(backoff_max_s, recovery_probe_s))
        self.max_attempts, self.max_refusals = max_attempts, max_refusals
        self.dead_letter_after_s = dead_letter_after_s
        self.rate = backlog_records_per_s
        self.status = status
        self._now = wallclock
        self.wake = asyncio.Event()
        self.up: bool | None = None  # None = not tried yet
        self.down_since: float | None = None
        self.last_error = ""
        self.batches_acked = 0
        self.last_ack_at: float | None = None  # wall clock of the last acknowledgement (any batch)
        self.heartbeat_s, self.linger_s, self.committed = heartbeat_s, linger_s, committed
        self.heartbeats_acked = 0
        self.last_heartbeat_at: float | None = None  # wall clock of the last acknowledged heartbeat
        self._acked_mono: float | None = None  # monotonic time of the last ack, batch or heartbeat
        self._heartbeat_after = 0.0  # monotonic: no heartbeat before (a failed one waits a backoff pause)
        self._heartbeat_id: str | None = None  # the unacknowledged heartbeat's id, reused until acked
        #: pauses after failed heartbeats: nothing waits to be sent, so up to heartbeat_s apart
        self._heartbeat_backoff = Backoff(
            initial=self.backoff_initial_s,
            maximum=max(self.backoff_initial_s, min(heartbeat_s, backoff_max_s)),
        )
        self.linger_until: float | None = None  # monotonic: form the next batch no sooner (None: at once)
        self._committed_mark = 0  # ``committed()`` when the last batch was formed
        self._tokens = backlog_records_per_s
        self._t_tokens = time.monotonic()
        self.qmetrics = QuarantineMetrics.for_registry(
            metrics.registry, quarantined=outbox.quarantined, dead_letter=outbox.dead_lettered
        )

    def notify(self) -> None:
        """New alert steps are in the outbox: send now (also cuts short a backoff pause)."""
        self.wake.set()

    def _budget(self) -> int:
        t = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (t - self._t_tokens) * self.rate)
        self._t_tokens = t
        return int(self._tokens)

    def _mark(self, ok: bool, error: str = "") -> None:
        if ok:
            if self.up is not True:
                log.info(
                    "cloud reachable again%s",
                    f" after {self._now() - self.down_since:.0f} s" if self.down_since else "",
                )
            self.up, self.down_since, self.last_error = True, None, ""
        else:
            if self.up is not False:
                self.down_since = self._now()
                log.warning("cloud unreachable: %s", error)
            self.up, self.last_error = False, error
        self.metrics.uplink_up.set(1 if ok else 0)
        self.metrics.uplink_down_since.set(self.down_since or 0)
        state = {
            "up": self.up,
            "down_since": self.down_since,
            "last_error": self.last_error,
            "time": self._now(),
        }
        self.outbox.put_state("uplink_state", json.dumps(state).encode())

    def _status(self) -> dict[str, Any] | None:
        status = self.status() if self.status else None
        if status is not None and self.outbox.contract_version >= 2:  # fields a version-1 cloud refuses
            status = {
                **status,
                "quarantined_total": sum(self.outbox.quarantined.values()),
                "dead_letter_total": sum(self.outbox.dead_lettered.values()),
            }
        return status

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when a new alert is committed (since the last look at the outbox)."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that arrives as
        # the event is set, and a stopping gateway would then keep sending
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.wake.wait()

    async def run(self) -> None:
        probe = Backoff(initial=self.backoff_initial_s, maximum=self.recovery_probe_s)
        refused = Backoff(initial=self.backoff_initial_s, maximum=self.backoff_max_s)
        while True:
            woken = self.wake.is_set()  # an alert committed while the last batch was in flight
            self.wake.clear()  # before looking: an alert committed after this point wakes any pause
            if self.linger_until is not None and not woken:
                await self._linger(self.linger_until)
            self.linger_until = None
            status = self._status()
            mark = self.committed() if self.committed is not None else 0
            pending = await self.outbox.call(
                functools.partial(
                    self.outbox.next_batch,
                    self.gateway_id,
                    max_records=self.max_records,
                    max_bytes=self.max_bytes,
                    backlog_budget=self._budget(),
                    status=status,
                )
            )
            if pending is None:
                if self._heartbeat_due():
                    await self._heartbeat(probe)
                else:
                    await self._pause(_IDLE_LOOK_S)
                continue
            fresh = mark - self._committed_mark  # readings committed since the last telemetry batch
            if pending.n_readings:
                self._committed_mark = mark
            formed = time.monotonic()
            await self.outbox.call(self.outbox.note_attempt, pending.batch_id)
            try:
                ack = await self.uplink.send(pending)
            except UplinkTooLarge as exc:
                # refused before it was read (docs/contract.md: 413): nothing stored, so the records may
                # be regrouped into smaller batches under new ids
                self.metrics.uplink_errors.labels(exc.reason).inc()
                self.max_records = max(1, self.max_records // 2)
                self.max_bytes = max(10_000, self.max_bytes // 2)
                await self.outbox.call(self.outbox.release, pending.batch_id)
                log.warning(
                    "batch too large for the cloud; now at most %d records / %d bytes per batch",
                    self.max_records,
                    self.max_bytes,
                )
                continue
            except UplinkError as exc:
                self.metrics.uplink_errors.labels(exc.reason).inc()
                if not isinstance(exc, UplinkInvalid):  # an invalid batch proves the cloud is up
                    await self.outbox.call(self._mark, False, str(exc))
                if await self._after_failure(pending, exc):
                    continue  # split, dead-lettered or downgraded: the next attempt is a different one
                # refusals do not heal by themselves: retry slowly (status shows why); an unreachable
                # cloud is probed every few seconds so its return is noticed at once
                slow = isinstance(exc, UplinkRejected | UplinkAuthError)
                delay = refused.next() if slow else probe.next()
                if isinstance(exc, UplinkThrottled):
                    delay = max(delay, min(exc.retry_after_s, self.backoff_max_s))
                await self._pause(delay)
                continue
            await self.outbox.call(self.outbox.ack, ack)
            self._count_refusals(ack, pending)
            self._tokens -= pending.n_readings if pending.n_alerts == 0 else 0
            self.batches_acked += 1
            self.last_ack_at = self._now()
            self._acked_mono = time.monotonic()
            self.metrics.uplink_batches.inc()
            if self.up is not True:
                await self.outbox.call(self._mark, True)
            probe.reset()
            refused.reset()
            if self._may_linger(pending, fresh):
                self.linger_until = formed + self.linger_s

    def _may_linger(self, pending: PendingBatch, fresh: int) -> bool:
        """After this acknowledged batch, may the next one wait for more? Only after live telemetry that
        did not fill the batch and held nothing older than what was committed since the batch before."""
        if self.linger_s <= 0 or pending.n_alerts or not pending.n_readings:
            return False
        full = pending.n_readings >= self.max_records or len(pending.body) * 10 >= self.max_bytes * 9
        drain = self.committed is not None and pending.n_readings > fresh
        return not (full or drain)

    async def _linger(self, until: float) -> None:
        """Wait for a fuller batch: until ``until``, until a batch's worth of readings was committed since
        the last batch, or until an alert step arrives (:meth:`notify`)."""
        while not self.wake.is_set():
            left = until - time.monotonic()
            if left <= 0:
                return
            if self.committed is None:
                await self._pause(left)
                return
            if self.committed() - self._committed_mark >= self.max_records:
                return
            await self._pause(min(left, _LINGER_LOOK_S))

    def _heartbeat_due(self) -> bool:
        t = time.monotonic()
        if t < self._heartbeat_after:
            return False
        return self._acked_mono is None or t - self._acked_mono >= self.heartbeat_s

    async def _heartbeat(self, probe: Backoff) -> None:
        """Send one status-only batch (the outbox is empty); an alert committed meanwhile (:meth:`notify`)
        cancels it at once. Not persisted: nothing is retried. Until one is acknowledged the next keeps its
        id, so however long an outage lasts the cloud stores at most one (a copy queued by a broker while
        the cloud's worker was down is answered ``duplicate``), and failed ones are spaced by a jittered
        exponential pause up to ``heartbeat_s``."""
        if self._heartbeat_id is None:
            token = secrets.token_hex(12)
            self._heartbeat_id = f"{self.gateway_id[:24]}-{token}".replace(".", "_").replace(":", "_")
        batch_id = self._heartbeat_id
        body = UplinkBatch.wire(
            contract_version=self.outbox.contract_version,
            batch_id=batch_id,
            gateway_id=self.gateway_id,
            sent_at=self._now(),
            status=self._status(),
        )
        send = asyncio.ensure_future(self.uplink.send(PendingBatch(batch_id, body, 0, 0, ())))
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait((send, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if not send.done():
                send.cancel()
                with contextlib.suppress(asyncio.CancelledError, UplinkError):
                    await send
        if send.cancelled():
            return  # an alert goes first
        exc = send.exception()
        if exc is None:
            self._heartbeat_id = None
            self.heartbeats_acked += 1
            self.last_heartbeat_at = self._now()
            self._acked_mono = time.monotonic()
            if self.up is not True:
                await self.outbox.call(self._mark, True)
            probe.reset()
            self._heartbeat_backoff.reset()
            return
        if not isinstance(exc, UplinkError):
            raise exc
        self.metrics.uplink_errors.labels(exc.reason).inc()
        if isinstance(exc, UplinkInvalid):
            log.warning("the cloud refused a heartbeat (status-only batch): %s", str(exc)[:200])
        else:
            await self.outbox.call(self._mark, False, str(exc))
        delay = self._heartbeat_backoff.next()
        if isinstance(exc, UplinkThrottled):
            delay = max(delay, min(exc.retry_after_s, self.backoff_max_s))
        self._heartbeat_after = time.monotonic() + delay

    def _count_refusals(self, ack: UplinkAck, pending: PendingBatch) -> None:
        if not (ack.telemetry_refused or ack.alerts_refused):
            return
        listed: dict[str, int] = {}
        for r in ack.refused:
            listed[r.reason] = listed.get(r.reason, 0) + r.count
        unlisted = ack.telemetry_refused + ack.alerts_refused - sum(listed.values())
        if unlisted > 0:
            listed["unlisted"] = unlisted
        for reason, n in listed.items():
            self.qmetrics.quarantined.labels(reason).inc(n)
        log.warning(
            "the cloud refused %d reading(s) and %d alert step(s) of batch %s; quarantined: %s",
            ack.telemetry_refused,
            ack.alerts_refused,
            pending.batch_id,
            ", ".join(f"{k} x{v}" for k, v in sorted(listed.items())),
        )

    async def _after_failure(self, pending: PendingBatch, exc: UplinkError) -> bool:
        """Split, dead-letter or downgrade a failing batch; ``True`` if the next attempt may go at once."""
        ob = self.outbox
        if isinstance(exc, UplinkInvalid) and "contract_version" in str(exc) and ob.contract_version > 1:
            ob.contract_version = 1
            log.warning("the cloud does not know contract version 2; sending version-1 batches")
            return True
        if not isinstance(exc, UplinkInvalid) and exc.reason not in _CONTENT_5XX:
            return False  # an outage, storage down, throttled, or a credential problem: wait, never give up
        info = await ob.call(ob.batch_info, pending.batch_id)
        if info is None:
            return True
        invalid = isinstance(exc, UplinkInvalid)
        if not invalid and info.attempts < self.max_attempts:
            return False  # an outage until proven otherwise
        if info.n_records > 1:
            halves = await ob.call(ob.split, pending.batch_id)
            if halves:
                self.qmetrics.splits.inc()
                log.warning(
                    "batch %s failed %d time(s) (%s); split in two to isolate the bad record",
                    pending.batch_id,
                    info.attempts,
                    exc.reason,
                )
                return True
        cloud_takes_others = self.last_ack_at is not None and self.last_ack_at > info.created
        too_old = self._now() - info.created >= self.dead_letter_after_s
        give_up = cloud_takes_others or (invalid and too_old)
        if info.attempts < (self.max_refusals if invalid else self.max_attempts) or not give_up:
            return False
        n = await ob.call(ob.dead_letter, pending.batch_id, f"{exc.reason}: {exc}")
        lane = "alert" if info.lane == LANE_ALERT else "telemetry"
        self.qmetrics.dead_letter.labels(lane).inc(n)
        log.error(
            "batch %s: %d %s record(s) moved to the dead letter after %d attempts (%s); "
            "inspect with vigil gateway status",
            pending.batch_id,
            n,
            lane,
            info.attempts,
            str(exc)[:200],
        )
        return True
