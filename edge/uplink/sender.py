"""The uplink loop: outbox -> batches -> cloud, with lanes, jittered exponential backoff and cloud state.

Order of service: fresh alert steps always first (an alert never queues behind telemetry, even behind a
batch that is waiting for its retry), then the oldest unacknowledged batch (same id as before: idempotent),
then live telemetry, then backlog through a token bucket (``backlog_records_per_s``) so draining weeks of
backlog after an outage never delays a live alert by more than one bounded batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from edge.metrics import GatewayMetrics
from edge.outbox import Outbox
from edge.uplink.base import Uplink, UplinkAuthError, UplinkError, UplinkRejected, UplinkTooLarge

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
    ) -> None:
        self.outbox, self.uplink, self.metrics, self.gateway_id = outbox, uplink, metrics, gateway_id
        self.max_records, self.max_bytes = max_records, max_bytes
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.rate = backlog_records_per_s
        self.status = status
        self._now = wallclock
        self.wake = asyncio.Event()
        self.up: bool | None = None  # None = not tried yet
        self.down_since: float | None = None
        self.last_error = ""
        self.batches_acked = 0
        self._tokens = backlog_records_per_s
        self._t_tokens = time.monotonic()

    def notify(self) -> None:
        """New records are in the outbox (alerts: send now)."""
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

    async def run(self) -> None:
        backoff = self.backoff_initial_s
        while True:
            status = self.status() if self.status else None
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
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.25)
                continue
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
                await self.outbox.call(self._mark, False, str(exc))
                # refusals (400/401/403/422) will not heal by themselves: retry slowly, status shows why
                delay = self.backoff_max_s if isinstance(exc, UplinkRejected | UplinkAuthError) else backoff
                backoff = min(backoff * 2, self.backoff_max_s)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            await self.outbox.call(self.outbox.ack, ack)
            self._tokens -= pending.n_readings if pending.n_alerts == 0 else 0
            self.batches_acked += 1
            self.metrics.uplink_batches.inc()
            if self.up is not True:
                await self.outbox.call(self._mark, True)
            backoff = self.backoff_initial_s
