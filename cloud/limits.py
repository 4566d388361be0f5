"""Bounds that keep one gateway, or one noisy client, from silencing everybody else's alarms.

- :class:`IngestLimits`: how far a record's time may be from the cloud's clock (a clear stamped in 2100
  must not keep an alert closed; a reading from 1e30 must not make a device impossible to flag as silent),
  and each gateway's quota of readings and alert steps (one gateway must not fill the disk).
  Read from ``VIGIL_CLOUD_LIMIT_<NAME>`` environment variables by :meth:`IngestLimits.from_env`.
- :class:`GatewayQuota`: per-gateway token buckets. A batch over quota is refused whole with
  :class:`RateLimitedError` (429, ``Retry-After``): nothing is stored, the gateway keeps it and retries.
  Alert-only batches draw on their own bucket, so a telemetry flood never delays an alarm.
- :class:`TokenBuckets`: the quota's building block, token buckets keyed by anything, bounded in number;
  :class:`KeyedRateLimit` over them refuses a request (429 with a ``reason``) while its key's bucket is
  empty: :func:`link_read_limit` (a responder link's reads of the wearer's position, cloud/api/links.py);
  cloud/tls.py uses it for the audit of nginx's certificate-refusal reports per client address.
- :class:`LogThrottle`: a ``logging.Filter`` that lets a repeated line (same logger, level and message
  template) through at most ``burst`` times per ``window_s`` and then reports how many were suppressed, so a
  hostile client cannot grow the journal by 98 MB in 25 s.

The quota and rate-limit state is per process (each worker has its own buckets), documented in
``docs/security.md``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from typing import ClassVar
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter

from cloud.errors import CloudError, ConfigError


class RateLimitedError(CloudError):
    """429: the gateway is over its quota; nothing stored, retry the same batch after ``retry_after_s``."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after_s: float, reason: str | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
        #: which limit refused (``link_reads``, ...); in the body when set
        self.reason = reason

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {**super().body(), "retry_after_s": round(self.retry_after_s, 1)}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """Ingest bounds; every field is also ``VIGIL_CLOUD_LIMIT_<FIELD>`` (see :meth:`from_env`)."""

    #: a record may be at most this far in the cloud's future (gateway clock skew, NTP not yet synced)
    max_future_s: float = 300.0
    #: and at most this far in its past (the gateway outbox keeps alerts 90 days, telemetry 14 days)
    max_past_s: float = 400 * 86400.0
    #: per-gateway sustained readings per second, and the burst (a drained outbox after an outage)
    readings_per_s: float = 2000.0
    readings_burst: float = 500_000.0
    #: per-gateway sustained alert steps per second, and the burst
    alert_steps_per_s: float = 50.0
    alert_steps_burst: float = 5000.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> IngestLimits:
        env = os.environ if environ is None else environ
        values: dict[str, float] = {}
        for f in fields(cls):
            key = f"VIGIL_CLOUD_LIMIT_{f.name.upper()}"
            if key in env:
                try:
                    v = float(env[key])
                except ValueError as exc:
                    raise ConfigError(f"{key}: not a number: {env[key]!r}") from exc
                if not v > 0:
                    raise ConfigError(f"{key}: must be > 0, got {v}")
                values[f.name] = v
        return cls(**values)

    def time_window(self, now: float) -> tuple[float, float]:
        """``(lowest, highest)`` acceptable record time at cloud time ``now``."""
        return now - self.max_past_s, now + self.max_future_s


class GuardMetrics:
    """Counters of refusals, quotas and slow clients; registered once per Prometheus registry."""

    _by_registry: ClassVar[WeakKeyDictionary[CollectorRegistry, GuardMetrics]] = WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.refused = Counter(
            "vigil_cloud_refused_records_total",
            "Records of accepted batches that were not stored, by record type and reason",
            ["record", "reason"],
            registry=r,
        )
        self.quota = Counter(
            "vigil_cloud_quota_refusals_total",
            "Batches refused with 429 because their gateway was over its quota, by lane",
            ["lane"],
            registry=r,
        )
        self.connections_refused = Counter(
            "vigil_cloud_connections_refused_total",
            "Connections closed by the server's guards, by reason (per_client_cap, header_timeout, ...)",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "vigil_cloud_rate_limited_requests_total",
            "Requests refused with 429 by a per-key rate limit (cloud.limits.KeyedRateLimit), by limit",
            ["limit"],
            registry=r,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> GuardMetrics:
        with cls._lock:
            found = cls._by_registry.get(registry)
            if found is None:
                found = cls._by_registry[registry] = cls(registry)
            return found


class _Bucket:
    __slots__ = ("level", "t")

    def __init__(self, level: float, t: float) -> None:
        self.level, self.t = level, t


class TokenBuckets:
    """Token buckets keyed by anything hashable; at most ``max_keys`` (the least recently used go first).

    :meth:`take` admits while the key's bucket is above zero and may take it negative by one draw, so a
    key's long-run rate is bounded and no draw is ever too large to be admitted at all. A new key starts
    full. Thread-safe.
    """

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._now = monotonic
        self._max = max_keys
        self._lock = threading.Lock()
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, n: float, rate: float, burst: float) -> float:
        """Take ``n`` tokens; returns 0 if admitted, else the seconds until the bucket is positive again."""
        with self._lock:
            now = self._now()
            b = self._buckets.get(key)
            if b is None:
                b = self._buckets[key] = _Bucket(burst, now)
                if len(self._buckets) > self._max:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            b.level = min(burst, b.level + max(0.0, now - b.t) * rate)  # a clock set back adds none
            b.t = now
            if b.level <= 0:
                return (1.0 - b.level) / rate
            b.level -= n
            return 0.0


class GatewayQuota:
    """Token buckets per gateway: ``admit`` refuses (429) a batch while its lane's bucket is empty.

    A bucket may go negative by one batch (a batch is admitted whole while the bucket is above zero), so
    a gateway's long-run rate is bounded and no batch is ever too large to be admitted at all.
    """

    def __init__(
        self,
        limits: IngestLimits,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        max_gateways: int = 100_000,
    ) -> None:
        self.limits = limits
        self._buckets = TokenBuckets(monotonic=monotonic, max_keys=max_gateways)

    def _take(self, key: tuple[str, str], n: int, rate: float, burst: float) -> float:
        return self._buckets.take(key, n, rate, burst)

    def admit(self, gateway_id: str, *, readings: int, alert_steps: int) -> None:
        """Raise :class:`RateLimitedError` if this batch is over the gateway's quota."""
        lim = self.limits
        if readings:
            wait = self._take((gateway_id, "telemetry"), readings, lim.readings_per_s, lim.readings_burst)
            if wait:
                raise RateLimitedError(
                    f"gateway {gateway_id!r} is over its quota of {lim.readings_per_s:g} readings/s; "
                    "nothing was stored, retry the same batch later",
                    retry_after_s=wait,
                )
        if alert_steps:
            wait = self._take(
                (gateway_id, "alert"), alert_steps, lim.alert_steps_per_s, lim.alert_steps_burst
            )
            if wait:
                raise RateLimitedError(
                    f"gateway {gateway_id!r} is over its quota of {lim.alert_steps_per_s:g} alert "
                    "steps/s; nothing was stored, retry the same batch later",
                    retry_after_s=wait,
                )


class KeyedRateLimit:
    """One request limit over many keys: ``per_minute`` sustained and ``burst`` at once, per key.

    :meth:`check` raises :class:`RateLimitedError` (429, ``Retry-After``, ``reason`` = :attr:`name`) while
    the key's bucket is empty, and counts the refusal in ``vigil_cloud_rate_limited_requests_total{limit}``
    when given the app's :class:`GuardMetrics`. At most ``max_keys`` keys are remembered (least recently
    used forgotten first): call it only with keys an attacker cannot mint at will (a verified link's nonce,
    a client address), or a flood of new keys would give an old key a fresh burst.
    """

    def __init__(
        self,
        name: str,
        *,
        per_minute: float,
        burst: float,
        detail: str,
        monotonic: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if not (per_minute > 0 and burst >= 1):
            raise ConfigError(f"rate limit {name}: per_minute must be > 0 and burst >= 1")
        self.name, self.per_minute, self.burst, self.detail = name, per_minute, burst, detail
        self._buckets = TokenBuckets(monotonic=monotonic, max_keys=max_keys)

    def wait_s(self, key: Hashable) -> float:
        """Take one request for ``key``: 0 if admitted, else the seconds to wait (nothing taken)."""
        return self._buckets.take(key, 1, self.per_minute / 60.0, self.burst)

    def check(self, key: Hashable, metrics: GuardMetrics | None = None) -> None:
        wait = self.wait_s(key)
        if wait:
            if metrics is not None:
                metrics.rate_limited.labels(self.name).inc()
            raise RateLimitedError(self.detail, retry_after_s=wait, reason=self.name)


#: reads of a wristband wearer's position through one personal responder / family link (the page's load,
#: its refresh every 30 s, a return to the page): 6 a minute, 12 at once. A leaked link cannot be polled
#: continuously; the page's own use stays far below (docs/security.md, "Link position reads")
LINK_READS_PER_MINUTE = 6.0
LINK_READS_BURST = 12.0
LINK_READS_DETAIL = (
    "此链接查询位置过于频繁，请稍后再试 / this link asked for the wearer's position too often; "
    "try again in a moment"
)


def link_read_limit(*, monotonic: Callable[[], float] = time.monotonic) -> KeyedRateLimit:
    """The per-link limit on position reads (:data:`LINK_READS_PER_MINUTE`, :data:`LINK_READS_BURST`)."""
    return KeyedRateLimit(
        "link_reads",
        per_minute=LINK_READS_PER_MINUTE,
        burst=LINK_READS_BURST,
        detail=LINK_READS_DETAIL,
        monotonic=monotonic,
    )


class LogThrottle(logging.Filter):
    """Let each repeated log line through at most ``burst`` times per ``window_s`` seconds.

    Lines are keyed by logger name, level and the *unformatted* message template, so "request failed for
    %s" from a thousand clients is one key. The first line after a suppressed stretch carries
    ``suppressed=<n>``. Keys are kept in a bounded LRU (a flood of distinct templates cannot grow memory).
    """

    def __init__(
        self,
        *,
        burst: int = 5,
        window_s: float = 10.0,
        max_keys: int = 4096,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst, self.window_s, self.max_keys = burst, window_s, max_keys
        self._now = monotonic
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()  # start, count, dropped
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self._now()
        with self._lock:
            st = self._seen.get(key)
            if st is None or now - st[0] >= self.window_s:
                dropped = int(st[2]) if st is not None else 0
                self._seen[key] = [now, 1, 0]
                self._seen.move_to_end(key)
                if len(self._seen) > self.max_keys:
                    self._seen.popitem(last=False)
                if dropped:
                    record.suppressed = dropped
                return True
            st[1] += 1
            if st[1] <= self.burst:
                return True
            st[2] += 1
            self.suppressed_total += 1
            return False


def install_log_throttle(logger: logging.Logger | None = None, **kw: float) -> LogThrottle:
    """Attach one :class:`LogThrottle` to every handler of ``logger`` (default: the root logger)."""
    target = logger or logging.getLogger()
    throttle = LogThrottle(**kw)  # type: ignore[arg-type]
    for h in target.handlers:
        if not any(isinstance(f, LogThrottle) for f in h.filters):
            h.addFilter(throttle)
    return throttle


def uninstall_log_throttle(throttle: LogThrottle, logger: logging.Logger | None = None) -> None:
    """Take ``throttle`` (from :func:`install_log_throttle`) off the handlers of ``logger`` (default root)."""
    for h in (logger or logging.getLogger()).handlers:
        h.removeFilter(throttle)


__all__ = [
    "LINK_READS_BURST",
    "LINK_READS_PER_MINUTE",
    "GatewayQuota",
    "GuardMetrics",
    "IngestLimits",
    "KeyedRateLimit",
    "LogThrottle",
    "RateLimitedError",
    "TokenBuckets",
    "install_log_throttle",
    "link_read_limit",
    "uninstall_log_throttle",
]
