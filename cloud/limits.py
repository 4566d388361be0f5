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

Where the limits live (docs/security.md, "Limits shared by the workers"): on the embedded SQLite database (one
process by design) every bucket is in memory. On PostgreSQL (a district's several ``vigil cloud api``
workers) a :class:`KeyedRateLimit` given the database keeps its buckets in the UNLOGGED table
``rate_limit_buckets`` (:class:`SharedBuckets`: one atomic upsert-and-check statement per limited
request), so N workers do not make it N times looser. :class:`GatewayQuota` (ingest) stays per process: a
database round trip per batch is not worth a disk-fill bound (its figures are per worker).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar
from weakref import WeakKeyDictionary

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter

from cloud.db.models import Base
from cloud.errors import CloudError, ConfigError

if TYPE_CHECKING:
    from cloud.db.session import Database

log = logging.getLogger(__name__)


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

    def take(self, key: Hashable, n: float, rate: float, burst: float, *, strict: bool = False) -> float:
        """Take ``n`` tokens; returns 0 if admitted, else the seconds until the bucket is positive again.

        ``strict``: admitted only while the bucket holds ``n`` (burst 1: once per ``1 / rate`` seconds)."""
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
            if strict and b.level < n - 1e-9:
                return (n - b.level) / rate
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


#: the shared buckets (PostgreSQL): UNLOGGED there (migration 0020_rate_limit_buckets), no WAL per limited
#: request; a database crash empties it, which gives every key a fresh burst once (docs/security.md)
rate_limit_buckets = sa.Table(
    "rate_limit_buckets",
    Base.metadata,
    #: ``<limit name>:<key>`` (longer than 200 characters: the limit name and a SHA-256 of the key)
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("level", sa.Float(), nullable=False),
    #: when the level was computed (the cloud's clock, UTC epoch seconds; never moves back)
    sa.Column("t", sa.Float(), nullable=False),
    #: when the bucket is full again: a row past it is the same as no row, and is swept
    sa.Column("full_at", sa.Float(), nullable=False),
    #: whether the last take was admitted (what the upsert returns)
    sa.Column("admitted", sa.Boolean(), nullable=False),
)

_REFILL = "least(%(burst)s, b.level + greatest(0.0, %(now)s - b.t) * %(rate)s)"
_LEVEL = f"CASE WHEN {_REFILL} > %(floor)s THEN {_REFILL} - %(n)s ELSE {_REFILL} END"
#: one statement, one round trip: refill, check, take and say which, atomically per key (the row lock of
#: ON CONFLICT DO UPDATE serialises concurrent takes of one key from every worker). psycopg's own
#: parameters: the statement goes straight to the driver (SQLAlchemy's pool and compilation cost 4x the
#: client CPU of the round trip itself, bench/bench_shared_limits.py)
_TAKE_SQL = (
    "INSERT INTO rate_limit_buckets AS b (key, level, t, full_at, admitted) "
    "VALUES (%(key)s, %(burst)s - %(n)s, %(now)s, %(now)s + %(n)s / %(rate)s, true) "
    "ON CONFLICT (key) DO UPDATE SET "
    f"level = {_LEVEL}, "
    "t = greatest(b.t, %(now)s), "
    f"full_at = greatest(b.t, %(now)s) + (%(burst)s - ({_LEVEL})) / %(rate)s, "
    f"admitted = {_REFILL} > %(floor)s "
    "RETURNING level, admitted"
)
_SWEEP_SQL = "DELETE FROM rate_limit_buckets WHERE full_at <= %(now)s"


class SharedBuckets:
    """:class:`TokenBuckets` kept in the operational PostgreSQL database, shared by every worker process.

    :meth:`take` is one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` in autocommit (one round trip;
    concurrent takes of one key are serialised by its row lock, so N workers admit what one would). The
    same rule as :class:`TokenBuckets`: admitted while the refilled level is above zero (``strict``: at
    least ``n``, for "once per window"), a new key starts full, a clock set back adds nothing (the row keeps
    the latest time any worker saw). Times come from ``now`` (wall clock: the workers may be on several
    hosts). Rows of buckets full again are deleted every ``sweep_every_s`` (a missing row is a full
    bucket, so the sweep changes no answer). If the database cannot be reached the take falls back to
    this process's own buckets (logged once a minute): a limit per process rather than none.
    """

    def __init__(
        self,
        db: Database,
        *,
        now: Callable[[], float] = time.time,
        sweep_every_s: float = 60.0,
        max_connections: int = 2,
    ) -> None:
        engine = db.engine
        self._connect_args = engine.dialect.create_connect_args(engine.url)
        self._idle: list[Any] = []  # psycopg connections in autocommit, at most max_connections
        self._lock = threading.Lock()
        self._max_connections = max_connections
        self._open = 0
        self._closed = False
        weakref.finalize(self, _close_all, self._idle)  # an app's limits go: so do their connections
        db.closes_with(self)  # and when its database is closed (the app's shutdown), at once
        self._now = now
        self._sweep_every_s = sweep_every_s
        self._next_sweep = 0.0
        self._fallback = TokenBuckets(monotonic=now)
        self._last_error_log = -60.0

    def _checkout(self) -> Any:
        """An idle connection, a new one (up to ``max_connections``), or wait for one (5 s, then error)."""
        deadline = time.monotonic() + 5.0
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the shared rate limits are closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self._max_connections:
                    self._open += 1
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("no connection for the shared rate limits within 5 s")
            time.sleep(0.001)
        try:
            import psycopg

            args, kwargs = self._connect_args
            return psycopg.connect(*args, **{**kwargs, "autocommit": True, "connect_timeout": 5})
        except BaseException:
            with self._lock:
                self._open -= 1
            raise

    def _checkin(self, conn: Any) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        self._discard(conn)  # closed meanwhile: a connection in use is closed when it comes back

    def _discard(self, conn: Any) -> None:
        with self._lock:
            self._open -= 1
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        """Close the idle connections (a connection in use is closed when it comes back); later takes
        use this process's own buckets. The idle list is emptied in place: the finalizer holds it."""
        with self._lock:
            self._closed = True
            idle = self._idle[:]
            self._idle.clear()
            self._open -= len(idle)
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    @staticmethod
    def row_key(name: str, key: Hashable) -> str:
        text = ":".join(map(str, key)) if isinstance(key, tuple) else str(key)
        full = f"{name}:{text}"
        if len(full) <= 200:
            return full
        return f"{name}:sha256:{hashlib.sha256(text.encode('utf-8', 'replace')).hexdigest()}"

    def take(
        self, name: str, key: Hashable, n: float, rate: float, burst: float, *, strict: bool = False
    ) -> float:
        """Take ``n`` tokens of ``name``'s bucket ``key``: 0 if admitted, else the seconds to wait."""
        if self._closed:  # the app is shutting down: a request still in flight is limited per process
            return self._fallback.take((name, key), n, rate, burst, strict=strict)
        now = self._now()
        floor = n - 1e-9 if strict else 0.0
        params = {
            "key": self.row_key(name, key),
            "n": float(n),
            "rate": float(rate),
            "burst": float(burst),
            "now": float(now),
            "floor": floor,
        }
        conn = None
        try:
            conn = self._checkout()
            with conn.cursor() as cur:
                cur.execute(_TAKE_SQL, params)
                level, admitted = cur.fetchone()
                if now >= self._next_sweep:
                    self._next_sweep = now + self._sweep_every_s
                    cur.execute(_SWEEP_SQL, {"now": float(now)})
            self._checkin(conn)
        except Exception as exc:  # the driver's errors, a timeout waiting for a connection
            if conn is not None:
                self._discard(conn)
            mono = time.monotonic()
            if mono - self._last_error_log >= 60.0:
                self._last_error_log = mono
                log.error(
                    "共享限流表不可用，改用本进程限流 / shared rate-limit table unavailable, limiting per "
                    "process: %s",
                    type(exc).__name__,
                )
            return self._fallback.take((name, key), n, rate, burst, strict=strict)
        if admitted:
            return 0.0
        return max((n if strict else 1.0) - float(level), 1e-3) / rate


def _close_all(conns: list[Any]) -> None:
    for conn in conns:
        with contextlib.suppress(Exception):
            conn.close()


def shared_buckets(db: Database | None, *, now: Callable[[], float] = time.time) -> SharedBuckets | None:
    """:class:`SharedBuckets` on ``db`` when it is PostgreSQL; None for SQLite (one process: in memory)."""
    if db is None or db.is_sqlite:
        return None
    return SharedBuckets(db, now=now)


class KeyedRateLimit:
    """One request limit over many keys: ``per_minute`` sustained and ``burst`` at once, per key.

    :meth:`check` raises :class:`RateLimitedError` (429, ``Retry-After``, ``reason`` = :attr:`name`) while
    the key's bucket is empty, and counts the refusal in ``vigil_cloud_rate_limited_requests_total{limit}``
    when given the app's :class:`GuardMetrics`. At most ``max_keys`` keys are remembered (least recently
    used forgotten first): call it only with keys an attacker cannot mint at will (a verified link's nonce,
    a client address), or a flood of new keys would give an old key a fresh burst.

    Given the operational database ``db`` and that is PostgreSQL, the buckets are :class:`SharedBuckets`
    (every worker draws on the same ones) on ``wall_clock`` (default: ``monotonic`` when one is given, it
    is then the cloud's clock; else ``time.time``); on SQLite, or without ``db``, they are in memory.
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
        db: Database | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        if not (per_minute > 0 and burst >= 1):
            raise ConfigError(f"rate limit {name}: per_minute must be > 0 and burst >= 1")
        self.name, self.per_minute, self.burst, self.detail = name, per_minute, burst, detail
        self._buckets = TokenBuckets(monotonic=monotonic, max_keys=max_keys)
        if wall_clock is None:
            wall_clock = time.time if monotonic is time.monotonic else monotonic
        #: the buckets every worker shares (PostgreSQL), or None: this process's own
        self.shared = shared_buckets(db, now=wall_clock)

    def wait_s(self, key: Hashable) -> float:
        """Take one request for ``key``: 0 if admitted, else the seconds to wait (nothing taken)."""
        if self.shared is not None:
            return self.shared.take(self.name, key, 1, self.per_minute / 60.0, self.burst)
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


def link_read_limit(
    *, monotonic: Callable[[], float] = time.monotonic, db: Database | None = None
) -> KeyedRateLimit:
    """The per-link limit on position reads (:data:`LINK_READS_PER_MINUTE`, :data:`LINK_READS_BURST`);
    shared by every worker when ``db`` is PostgreSQL."""
    return KeyedRateLimit(
        "link_reads",
        per_minute=LINK_READS_PER_MINUTE,
        burst=LINK_READS_BURST,
        detail=LINK_READS_DETAIL,
        monotonic=monotonic,
        db=db,
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
    "SharedBuckets",
    "TokenBuckets",
    "install_log_throttle",
    "link_read_limit",
    "rate_limit_buckets",
    "shared_buckets",
    "uninstall_log_throttle",
]
