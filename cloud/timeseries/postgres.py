"""The production SQL time-series store: PostgreSQL, one wide table per device kind, bulk ``COPY``.

Same schema and semantics as the embedded SQLite store (:mod:`cloud.timeseries.sqlite`), so moving a
community from one box to a district database changes a URL, not code. Why ``COPY`` into a temporary
table and then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: ``COPY`` is PostgreSQL's fast bulk path
but it cannot skip duplicates, and the contract demands idempotency on ``(device_id, time_ms, seq)``;
the second statement runs entirely inside the server, keeps the duplicates out and its row count is the
number of new readings. NaN (a missing value) is turned into ``NULL`` there too (``NULLIF(x, 'NaN')``):
PostgreSQL would otherwise store NaN as a number. The temporary table is ``ON COMMIT DELETE ROWS``, so it
is empty again after every batch.

For TimescaleDB, run ``SELECT create_hypertable('ts_manhole', by_range('time_ms', 86400000))`` etc. on
the created tables; nothing here depends on it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence

import numpy as np

from cloud.timeseries.base import (
    BackendError,
    Series,
    WriteResult,
    bucket_ms_for,
    bucketed_series,
    empty_series,
    full_series,
    plan_query,
    table_name,
    time_ms_column,
)
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import KINDS, spec

log = logging.getLogger(__name__)

_BASE = ("device_id", "time_ms", "seq", "battery_pct", "flags", "fw_version")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _conninfo(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


class PostgresStore:
    """:class:`~cloud.timeseries.base.TimeSeriesStore` on PostgreSQL (psycopg 3)."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        import psycopg

        self._psycopg = psycopg
        self._lock = threading.Lock()
        self._closed = False
        self._conninfo = _conninfo(url)
        self._connect_timeout = int(connect_timeout)
        try:
            self._conn = psycopg.connect(
                self._conninfo, connect_timeout=self._connect_timeout, autocommit=True
            )
            self._ensure_schema()
        except psycopg.Error as exc:
            raise BackendError(f"cannot open PostgreSQL time-series store: {exc}") from exc

    def _ensure_schema(self) -> None:
        with self._conn.transaction():
            for kind, s in KINDS.items():
                t = _q(table_name(kind))
                chans = ", ".join(f"{_q(n)} double precision" for n in s.channel_names)
                self._conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {t} (device_id text NOT NULL, time_ms bigint NOT NULL, "
                    f"seq bigint NOT NULL, battery_pct double precision, flags bigint NOT NULL, "
                    f"fw_version integer NOT NULL, {chans}, PRIMARY KEY (device_id, time_ms, seq))"
                )
                for n in s.channel_names:
                    self._conn.execute(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {_q(n)} double precision")
        self._staged: set[DeviceKind] = set()

    def _stage_table(self, kind: DeviceKind) -> str:
        tmp = _q("stage_" + table_name(kind))
        if kind not in self._staged:
            self._conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {tmp} (LIKE {_q(table_name(kind))}) ON COMMIT DELETE ROWS"
            )
            self._staged.add(kind)
        return tmp

    def write(self, batch: ReadingBatch) -> WriteResult:
        n = len(batch)
        if n == 0:
            return WriteResult(0, 0)
        names = spec(batch.kind).channel_names
        cols = (*_BASE, *names)
        collist = ", ".join(_q(c) for c in cols)
        t_ms = time_ms_column(batch)
        columns = [
            batch.device_id.tolist(),
            t_ms.tolist(),
            batch.seq.astype(np.int64).tolist(),
            batch.battery_pct.tolist(),
            batch.flags.astype(np.int64).tolist(),
            batch.fw_version.astype(np.int32).tolist(),
            *batch.values.T.tolist(),
        ]
        types = ["text", "int8", "int8", "float8", "int8", "int4", *(["float8"] * len(names))]
        select = ", ".join(
            f"NULLIF({_q(c)}, 'NaN'::float8)" if c == "battery_pct" or c in names else _q(c) for c in cols
        )
        with self._lock:
            self._check_open()
            try:
                with self._conn.transaction():
                    tmp = self._stage_table(batch.kind)
                    with self._conn.cursor() as cur:
                        with cur.copy(f"COPY {tmp} ({collist}) FROM STDIN (FORMAT BINARY)") as cp:
                            cp.set_types(types)
                            for row in zip(*columns, strict=True):
                                cp.write_row(row)
                        cur.execute(
                            f"INSERT INTO {_q(table_name(batch.kind))} ({collist}) "
                            f"SELECT {select} FROM {tmp} "
                            "ON CONFLICT DO NOTHING"
                        )
                        stored = cur.rowcount
            except self._psycopg.Error as exc:
                self._staged.clear()  # a failed transaction may have rolled back the temp table's creation
                raise BackendError(
                    f"PostgreSQL write of {n} {batch.kind.value} readings failed: {exc}"
                ) from exc
        return WriteResult(stored=stored, duplicates=n - stored)

    def query(
        self,
        device_id: str,
        kind: DeviceKind,
        start: float,
        end: float,
        *,
        channels: Sequence[str] | None = None,
        max_points: int = 1000,
    ) -> Series:
        kind, names, s_ms, e_ms = plan_query(kind, channels, start, end, max_points)
        t = _q(table_name(kind))
        where = "device_id = %s AND time_ms >= %s AND time_ms < %s"
        args = (device_id, s_ms, e_ms)
        with self._lock:
            self._check_open()
            try:
                with self._conn.transaction(), self._conn.cursor() as cur:
                    cur.execute(f"SELECT COUNT(*) FROM {t} WHERE {where}", args)
                    row = cur.fetchone()
                    count = int(row[0]) if row else 0
                    if count == 0:
                        return empty_series(device_id, kind, names)
                    if count <= max_points:
                        cols = ", ".join(_q(n) for n in names)
                        cur.execute(
                            f"SELECT time_ms, {cols} FROM {t} WHERE {where} ORDER BY time_ms, seq", args
                        )
                        return full_series(device_id, kind, names, cur.fetchall())
                    bucket = bucket_ms_for(s_ms, e_ms, max_points)
                    aggs = ", ".join(f"AVG({_q(n)}), MIN({_q(n)}), MAX({_q(n)})" for n in names)
                    cur.execute(
                        f"SELECT (time_ms - %s) / %s AS b, {aggs} FROM {t} WHERE {where} "
                        "GROUP BY b ORDER BY b",
                        (s_ms, bucket, *args),
                    )
                    rows = cur.fetchall()
            except self._psycopg.Error as exc:
                raise BackendError(f"PostgreSQL query for {device_id!r} failed: {exc}") from exc
        return bucketed_series(device_id, kind, names, rows, s_ms, bucket)

    def latest(self, device_ids: Sequence[str]) -> dict[str, float]:
        ids = list(dict.fromkeys(device_ids))
        out: dict[str, int] = {}
        if not ids:
            return {}
        with self._lock:
            self._check_open()
            try:
                with self._conn.transaction(), self._conn.cursor() as cur:
                    for kind in KINDS:
                        cur.execute(
                            f"SELECT device_id, MAX(time_ms) FROM {_q(table_name(kind))} "
                            "WHERE device_id = ANY(%s) GROUP BY device_id",
                            (ids,),
                        )
                        for dev, ms in cur.fetchall():
                            if ms is not None and ms > out.get(dev, -1):
                                out[dev] = int(ms)
            except self._psycopg.Error as exc:
                raise BackendError(f"PostgreSQL latest() failed: {exc}") from exc
        return {d: ms / 1000.0 for d, ms in out.items()}

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def _check_open(self) -> None:
        """Refuse after :meth:`close`; reconnect a connection the server dropped (a PostgreSQL restart or
        failover breaks it: the call that finds it broken has already failed with a :class:`BackendError`
        the caller retries, and the next call gets a fresh connection instead of failing forever)."""
        if self._closed:
            raise BackendError("the time-series store is closed")
        if self._conn.closed or self._conn.broken:
            try:
                with contextlib.suppress(self._psycopg.Error):
                    self._conn.close()
                self._conn = self._psycopg.connect(
                    self._conninfo, connect_timeout=self._connect_timeout, autocommit=True
                )
            except self._psycopg.Error as exc:
                raise BackendError(f"PostgreSQL time-series store unreachable: {exc}") from exc
            self._staged = set()  # temp tables died with the old session
            log.warning("reconnected to the PostgreSQL time-series store")

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
