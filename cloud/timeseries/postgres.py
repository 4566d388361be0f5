"""The production SQL time-series store: PostgreSQL, one wide table per device kind, bulk ``COPY``.

Same schema and semantics as the embedded SQLite store (:mod:`cloud.timeseries.sqlite`), so moving a
community from one box to a district database changes a URL, not code.

How a batch is written (``docs/timeseries.md`` has the measurements):

1. The client builds the binary ``COPY`` stream of the whole batch with numpy in one pass
   (:func:`copy_binary`: byte for byte what psycopg's ``write_row`` would send, NaN already ``NULL``),
   instead of a Python call per row.
2. **Fast path**: ``COPY`` straight into the kind's table, in its own transaction. A batch of new readings
   (nearly every batch) is then a bulk heap insert plus one unique-index insert per row.
3. **Redelivery path**, only when the fast path hit the unique key ``(device_id, time_ms, seq)`` (a batch
   re-sent after a lost ack, the same frame heard by two gateways, duplicates inside one batch): that
   transaction rolled back as a whole, so nothing of it is stored, and the same stream goes to a temporary
   ``ON COMMIT DELETE ROWS`` table from which ``INSERT .. SELECT .. ON CONFLICT DO NOTHING`` moves the new
   rows; its row count is ``stored``. Idempotency is the unique key's, in both paths.
4. **In a redelivery storm** (a batch of the kind met a duplicate within the last 32 batches) a batch
   whose first reading is stored already goes straight to the merge: one key probe instead of a ``COPY``
   that would fail.

New tables key ``device_id`` bytewise (``COLLATE "C"``): comparing ids in the primary key is a large part
of a ``COPY``'s server work, and reads test ids for equality (retention's walk over the devices compares
them in the column's own order on both sides, whichever it is). A table made by an older store
works as before; the ``ALTER`` that upgrades it (:func:`collation_upgrade_sql`) rebuilds the key index
under a lock, so the store runs it at open only on a table of at most :data:`AUTO_UPGRADE_ROWS`
readings and otherwise logs that ``vigil cloud timeseries-upgrade`` (:func:`upgrade_command`) does it.

Why not always the second path: ``INSERT .. ON CONFLICT`` inserts row by row with a speculative insertion
per row (a unique check, the heap insert, the index insert, a confirm record) where ``COPY`` inserts heap
tuples in bulk; the server spent about twice the CPU per batch on it (15.4 vs 8.4 ms per 2,000 readings,
``bench/bench_pg_store.py``).

For TimescaleDB, run ``SELECT create_hypertable('ts_manhole', by_range('time_ms', 86400000))`` etc. on
the created tables; nothing here depends on it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

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


_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # binary COPY header: signature, flags 0, no extension
_TRAILER = b"\xff\xff"  # field count -1: end of data
_SCHEMA_LOCK = 0x76696769_6C747300  # pg_advisory_xact_lock key of the schema set-up ("vigilts")
_PROBE_AFTER_CONFLICT = 32  # batches of a kind probed first after one met a duplicate
_PAIR = np.dtype([("len", ">i4"), ("val", ">f8")])


def _utf8_ids(ids: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Device ids as a ``(n, width)`` matrix of UTF-8 bytes padded with zeros, and each id's byte length."""
    arr = np.ascontiguousarray(ids if ids.dtype.kind == "U" else ids.astype(str))
    n, width = len(arr), arr.dtype.itemsize // 4
    if width == 0:
        return np.zeros((n, 0), np.uint8), np.zeros(n, np.int64)
    codes = arr.view(np.uint32).reshape(n, width)
    if int(codes.max(initial=0)) < 128:  # ASCII (every id seen so far): one byte per code point
        return codes.astype(np.uint8), np.strings.str_len(arr).astype(np.int64)
    enc = np.strings.encode(arr, "utf-8")
    return enc.view(np.uint8).reshape(n, enc.dtype.itemsize), np.strings.str_len(enc).astype(np.int64)


class _Scratch:
    """Reusable buffers for one stream being built. Fresh arrays of a few hundred kB per batch cost more in
    the kernel than in numpy: each is a new ``mmap`` whose pages fault in (measured: ~400 page faults and
    ~1 ms of system CPU per 2,000-reading batch, against 0.6 ms of user CPU for the whole encoding)."""

    def __init__(self) -> None:
        self.bufs: dict[str, npt.NDArray[np.uint8]] = {}

    def get(self, name: str, size: int) -> npt.NDArray[np.uint8]:
        buf = self.bufs.get(name)
        if buf is None or buf.size < size:
            buf = np.empty(max(size, 1 << 16, 0 if buf is None else 2 * buf.size), np.uint8)
            self.bufs[name] = buf
        return buf[:size]


_FREE: list[_Scratch] = []  # list.pop / append are atomic: no lock needed
_KEEP_SCRATCH, _KEEP_BYTES = 4, 32 << 20  # kept for reuse: at most 4 sets, none above 32 MiB (huge batches)


def _take_scratch() -> _Scratch:
    try:
        return _FREE.pop()
    except IndexError:
        return _Scratch()


def _give_scratch(s: _Scratch) -> None:
    if len(_FREE) < _KEEP_SCRATCH and sum(b.nbytes for b in s.bufs.values()) <= _KEEP_BYTES:
        _FREE.append(s)


def copy_binary(batch: ReadingBatch) -> bytes:
    """The batch as a complete ``COPY .. FROM STDIN (FORMAT BINARY)`` stream for the columns ``_BASE`` +
    the kind's channels, NaN (battery or channel) sent as ``NULL``.

    One numpy record per row holds every field at its final place (big-endian, each behind its length
    word); rows with a NULL or an id shorter than the longest are then cut to size by one boolean mask over
    the bytes. Same bytes as psycopg's ``write_row`` with ``None`` for NaN (a test compares them).
    """
    scratch = _take_scratch()
    try:
        return bytes(_copy_binary_view(batch, scratch))
    finally:
        _give_scratch(scratch)


def _copy_binary_view(batch: ReadingBatch, scratch: _Scratch) -> memoryview:
    """:func:`copy_binary` in ``scratch``'s buffers: valid while the caller holds ``scratch``."""
    n, k = batch.values.shape
    ids, id_len = _utf8_ids(batch.device_id)
    width = ids.shape[1]
    rec_t = np.dtype(
        [
            ("nfields", ">i2"),
            ("id_len", ">i4"),
            ("id", "u1", (width,)),
            ("t_len", ">i4"),
            ("t", ">i8"),
            ("seq_len", ">i4"),
            ("seq", ">i8"),
            ("bat", _PAIR),
            ("flags_len", ">i4"),
            ("flags", ">i8"),
            ("fw_len", ">i4"),
            ("fw", ">i4"),
            ("ch", _PAIR, (k,)),
        ]
    )  # no align=True: packed, as the wire format is
    size = n * rec_t.itemsize
    raw = scratch.get("rec", size)
    rec = raw.view(rec_t)
    rec["nfields"] = len(_BASE) + k
    rec["id_len"] = id_len
    rec["id"] = ids
    rec["t_len"], rec["t"] = 8, time_ms_column(batch)
    rec["seq_len"], rec["seq"] = 8, batch.seq
    bat_nan = np.isnan(batch.battery_pct)
    rec["bat"]["len"], rec["bat"]["val"] = 8, batch.battery_pct
    rec["bat"]["len"][bat_nan] = -1
    rec["flags_len"], rec["flags"] = 8, batch.flags
    rec["fw_len"], rec["fw"] = 4, batch.fw_version
    ch_nan = np.isnan(batch.values)
    rec["ch"]["len"], rec["ch"]["val"] = 8, batch.values
    rec["ch"]["len"][ch_nan] = -1
    head = len(_SIGNATURE)
    if not ((id_len < width).any() or bat_nan.any() or ch_nan.any()):
        kept = size
        out = scratch.get("out", head + kept + len(_TRAILER))
        out[head : head + kept] = raw
    else:
        keep = scratch.get("keep", size).view(bool).reshape(n, rec_t.itemsize)
        keep[...] = True
        fields = rec_t.fields
        assert fields is not None
        at = fields["id"][1]
        keep[:, at : at + width] = np.arange(width) < id_len[:, None]
        at = fields["bat"][1] + 4
        keep[:, at : at + 8] = ~bat_nan[:, None]
        at = fields["ch"][1]
        keep[:, at : at + 12 * k].reshape(n, k, 12)[:, :, 4:] = ~ch_nan[:, :, None]
        flat = keep.reshape(-1)
        kept = int(np.count_nonzero(flat))
        out = scratch.get("out", head + kept + len(_TRAILER))
        np.compress(flat, raw, out=out[head : head + kept])
    out[:head] = np.frombuffer(_SIGNATURE, np.uint8)
    out[head + kept :] = np.frombuffer(_TRAILER, np.uint8)
    return out.data


def collation_upgrade_sql(kind: DeviceKind) -> str:
    """The statement that gives a table made before the ``COLLATE "C"`` key the new layout (it rebuilds the
    primary key index and blocks the table meanwhile: :func:`upgrade_collation` runs it with care)."""
    return f'ALTER TABLE {_q(table_name(kind))} ALTER COLUMN device_id TYPE text COLLATE "C"'


#: Tables of at most this many readings are given the bytewise key by the store itself at open, under the
#: schema advisory lock (the ``ALTER`` then blocks that table's writers for well under a second, measured in
#: docs/timeseries.md); bigger ones wait for ``vigil cloud timeseries-upgrade`` at a time the operator picks.
AUTO_UPGRADE_ROWS = 200_000
APPLICATION_NAME = "vigil-timeseries"  # the store's sessions, so maintenance can see who is writing


class UpgradeRefusedError(BackendError):
    """The collation upgrade would block writers that are connected now (``force`` overrides)."""


@dataclass(frozen=True, slots=True)
class CollationUpgrade:
    """What :func:`upgrade_collation` did to one kind's table."""

    table: str
    state: str  # "upgraded", "already" (bytewise already), "missing" (no such table yet)
    rows: int  # the planner's estimate (pg_class.reltuples), -1 when never analysed
    index_bytes: int  # size of the primary key index before
    lock_wait_s: float = 0.0  # waiting for the ACCESS EXCLUSIVE lock
    locked_s: float = 0.0  # holding it: the ALTER (index rebuild) and its commit


def _old_tables(cur: Any, kinds: Sequence[DeviceKind]) -> list[tuple[DeviceKind, str, bool, int, int]]:
    """``(kind, table, exists and not bytewise, estimated rows, key index bytes)`` for ``kinds``."""
    out = []
    for kind in kinds:
        t = table_name(kind)
        cur.execute(
            "SELECT a.attcollation <> 'pg_catalog.\"C\"'::regcollation, c.reltuples::bigint, "
            "COALESCE((SELECT pg_relation_size(i.indexrelid) FROM pg_index i "
            "WHERE i.indrelid = c.oid AND i.indisprimary), 0) "
            "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'device_id' "
            "WHERE c.oid = to_regclass(%s)",
            (_q(t),),
        )
        row = cur.fetchone()
        if row is None:
            out.append((kind, t, False, -2, 0))
        else:
            out.append((kind, t, bool(row[0]), int(row[1]), int(row[2])))
    return out


def _writers(cur: Any, tables: Sequence[str]) -> list[str]:
    """Other sessions that write or may write ``tables``: store sessions (by application name) and any
    session holding a lock on one of them; one line each, no query text (it may hold personal data)."""
    cur.execute(
        "SELECT a.pid, a.application_name, COALESCE(host(a.client_addr), 'local'), a.state, "
        "a.backend_start FROM pg_stat_activity a WHERE a.datname = current_database() "
        "AND a.pid <> pg_backend_pid() AND (a.application_name = %s OR EXISTS (SELECT 1 FROM pg_locks l "
        "WHERE l.pid = a.pid AND l.relation = ANY(SELECT to_regclass(x) FROM unnest(%s::text[]) x))) "
        "ORDER BY a.pid",
        (APPLICATION_NAME, [_q(t) for t in tables]),
    )
    return [
        f"pid {pid} {app or '-'} from {addr}, {state or '?'}, since {start:%Y-%m-%d %H:%M:%S%z}"
        for pid, app, addr, state, start in cur.fetchall()
    ]


def upgrade_collation(
    url: str,
    kinds: Sequence[DeviceKind] | None = None,
    *,
    force: bool = False,
    lock_timeout_s: float = 10.0,
    connect_timeout: float = 10.0,
) -> list[CollationUpgrade]:
    """Give the tables an older store made the bytewise ``device_id`` key of new tables
    (:func:`collation_upgrade_sql`), one table per transaction.

    Refuses (:class:`UpgradeRefusedError`, nothing changed) while another session of the store is
    connected or a session holds a lock on a table to upgrade, unless ``force``: writers then wait while
    the lock is held (their batches are not lost: the caller's write returns later). The lock is taken
    explicitly first with ``lock_timeout``: a long transaction on the table makes this fail after
    ``lock_timeout_s`` instead of queueing every writer behind the waiting ``ALTER``. Runs under the
    schema advisory lock, so a store opening meanwhile waits instead of altering the same table."""
    import psycopg

    todo = list(KINDS) if kinds is None else list(kinds)
    try:
        conn = psycopg.connect(
            _conninfo(url),
            connect_timeout=int(connect_timeout),
            autocommit=True,
            application_name="vigil-timeseries-upgrade",
        )
    except psycopg.Error as exc:
        raise BackendError(f"cannot open PostgreSQL time-series store: {exc}") from exc
    out: list[CollationUpgrade] = []
    try:
        with conn.cursor() as cur:
            found = _old_tables(cur, todo)
            old = [t for _, t, is_old, _, _ in found if is_old]
            busy = _writers(cur, old) if old else []
            if busy and not force:
                raise UpgradeRefusedError(
                    "仍有写入会话连接，未做任何更改 / sessions that write the time-series store are "
                    "connected; nothing changed. Stop the ingest workers and the cloud service first, or "
                    "pass --force (their writes then wait while each table is rebuilt):\n  "
                    + "\n  ".join(busy)
                )
            for kind, t, is_old, rows, index_bytes in found:
                if not is_old:
                    out.append(CollationUpgrade(t, "missing" if rows == -2 else "already", rows, index_bytes))
                    continue
                t0 = time.perf_counter()
                with conn.transaction():
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    cur.execute(f"SET LOCAL lock_timeout = {max(1, round(lock_timeout_s * 1000))}")
                    cur.execute(f"LOCK TABLE {_q(t)} IN ACCESS EXCLUSIVE MODE")
                    t1 = time.perf_counter()
                    cur.execute(collation_upgrade_sql(kind))
                t2 = time.perf_counter()
                log.info("%s: device_id is now compared bytewise (%.2f s under lock)", t, t2 - t1)
                out.append(CollationUpgrade(t, "upgraded", rows, index_bytes, t1 - t0, t2 - t1))
    except psycopg.errors.LockNotAvailable as exc:
        raise BackendError(
            f"表被长事务占用，已放弃 / could not lock the table within {lock_timeout_s:g} s (a long "
            f"transaction holds it); nothing more changed: {exc}"
        ) from exc
    except psycopg.Error as exc:
        raise BackendError(f"PostgreSQL collation upgrade failed: {exc}") from exc
    finally:
        conn.close()
    return out


def upgrade_command(
    url: str,
    *,
    force: bool = False,
    lock_timeout_s: float = 10.0,
    on_upgraded: Callable[[CollationUpgrade], None] | None = None,
) -> int:
    """``vigil cloud timeseries-upgrade``: :func:`upgrade_collation` on the store at ``url``, one line per
    table on stdout (Chinese first); refusals and failures on stderr with exit status 1. ``on_upgraded``
    is called for each table upgraded (the CLI writes the audit row)."""
    import sys

    if not url.split("://", 1)[0].lower().startswith("postgres"):
        print(
            f"时序库不是 PostgreSQL，无需升级 / the time-series store is not PostgreSQL "
            f"({url.split('://', 1)[0]}://): nothing to upgrade",
            file=sys.stderr,
        )
        return 1
    try:
        results = upgrade_collation(url, force=force, lock_timeout_s=lock_timeout_s)
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        if r.state == "upgraded":
            if on_upgraded is not None:
                on_upgraded(r)
            rows = f"~{r.rows:,} readings" if r.rows >= 0 else "readings not yet counted (never analysed)"
            print(
                f'{r.table}: 已升级 / upgraded: device_id COLLATE "C", {rows}, key '
                f"index {r.index_bytes / 2**20:.1f} MB rebuilt; writes blocked {r.locked_s:.2f} s "
                f"(waited {r.lock_wait_s:.2f} s for the lock)"
            )
        elif r.state == "already":
            print(f"{r.table}: 无需升级 / already bytewise")
        else:
            print(f"{r.table}: 表尚不存在 / no such table yet (the store creates it bytewise)")
    return 0


def _conninfo(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


class PostgresStore:
    """:class:`~cloud.timeseries.base.TimeSeriesStore` on PostgreSQL (psycopg 3)."""

    #: after a batch met a duplicate, the next batches of its kind probe their first reading's key and
    #: skip the ``COPY`` when it is stored (a redelivery storm; measured in docs/timeseries.md)
    merge_first = True

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        import psycopg

        self._psycopg = psycopg
        self._lock = threading.Lock()
        # per kind: batches left to probe first since the last one that met a duplicate
        self._conflicted: dict[DeviceKind, int] = {}
        self._closed = False
        self._conninfo = _conninfo(url)
        self._connect_timeout = int(connect_timeout)
        try:
            self._conn = psycopg.connect(
                self._conninfo,
                connect_timeout=self._connect_timeout,
                autocommit=True,
                application_name=APPLICATION_NAME,
            )
        except psycopg.Error as exc:
            raise BackendError(f"cannot open PostgreSQL time-series store: {exc}") from exc
        try:
            self._ensure_schema()
        except psycopg.Error as exc:
            self._conn.close()
            raise BackendError(f"cannot open PostgreSQL time-series store: {exc}") from exc

    def _ensure_schema(self) -> None:
        with self._conn.transaction():
            # Workers starting together on a new database would race in CREATE TABLE IF NOT EXISTS (the
            # loser fails on pg_type's unique index): one at a time, for this transaction only.
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for kind, s in KINDS.items():
                t = _q(table_name(kind))
                chans = ", ".join(f"{_q(n)} double precision" for n in s.channel_names)
                self._conn.execute(
                    f'CREATE TABLE IF NOT EXISTS {t} (device_id text COLLATE "C" NOT NULL, '
                    "time_ms bigint NOT NULL, seq bigint NOT NULL, battery_pct double precision, "
                    f"flags bigint NOT NULL, fw_version integer NOT NULL, {chans}, "
                    "PRIMARY KEY (device_id, time_ms, seq))"
                )
                for n in s.channel_names:
                    self._conn.execute(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {_q(n)} double precision")
                self._auto_upgrade(kind)
        self._staged: set[DeviceKind] = set()

    def _auto_upgrade(self, kind: DeviceKind) -> None:
        """Inside :meth:`_ensure_schema`'s transaction (schema advisory lock held, the table locked by its
        ``ADD COLUMN``): a table made before the bytewise key gets it now when it holds at most
        :data:`AUTO_UPGRADE_ROWS` readings; otherwise the store logs how to upgrade it and works as it is."""
        with self._conn.cursor() as cur:
            [(_, t, is_old, estimate, _)] = _old_tables(cur, [kind])
            if not is_old:
                return
            rows = estimate
            if rows <= AUTO_UPGRADE_ROWS:  # the estimate may be stale or absent (-1): count, but bounded
                cur.execute(f"SELECT count(*) FROM (SELECT 1 FROM {_q(t)} LIMIT {AUTO_UPGRADE_ROWS + 1}) x")
                rows = int(cur.fetchone()[0])  # type: ignore[index]
            if rows <= AUTO_UPGRADE_ROWS:
                # the ADD COLUMN IF NOT EXISTS above already holds the table's ACCESS EXCLUSIVE lock
                t0 = time.perf_counter()
                cur.execute(collation_upgrade_sql(kind))
                log.warning(
                    "%s (%d readings) now compares device ids bytewise: upgraded at open in %.3f s",
                    t, rows, time.perf_counter() - t0,
                )  # fmt: skip
                return
            log.warning(
                "%s was created before device ids were compared bytewise and holds more than %d readings; "
                "it works as it is, and its writes cost the server less after "
                "`vigil cloud timeseries-upgrade` (%s: rebuilds the key index, blocking writes meanwhile; "
                "docs/timeseries.md)",
                t, AUTO_UPGRADE_ROWS, collation_upgrade_sql(kind),
            )  # fmt: skip

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
        collist = ", ".join(_q(c) for c in (*_BASE, *spec(batch.kind).channel_names))
        scratch = _take_scratch()
        try:
            # the stream is built outside the lock: another thread may use the connection meanwhile
            return self._write(batch, collist, _copy_binary_view(batch, scratch))
        finally:
            _give_scratch(scratch)

    def _write(self, batch: ReadingBatch, collist: str, data: memoryview) -> WriteResult:
        n = len(batch)
        table = _q(table_name(batch.kind))
        with self._lock:
            self._check_open()
            try:
                left = self._conflicted.get(batch.kind, 0)
                if self.merge_first and left > 0 and self._first_stored(table, batch):
                    # a redelivery storm is on and this batch's first reading is stored: skip the COPY
                    # that would fail on it
                    stored = self._merge(batch.kind, table, collist, data)
                    self._conflicted[batch.kind] = _PROBE_AFTER_CONFLICT
                else:
                    try:
                        with (
                            self._conn.transaction(),
                            self._conn.cursor() as cur,
                            cur.copy(f"COPY {table} ({collist}) FROM STDIN (FORMAT BINARY)") as cp,
                        ):
                            cp.write(data)
                        stored = n
                        if left > 0:
                            self._conflicted[batch.kind] = left - 1
                    except self._psycopg.errors.UniqueViolation:
                        # a duplicate: that transaction rolled back whole; skip the duplicates row by row
                        stored = self._merge(batch.kind, table, collist, data)
                        self._conflicted[batch.kind] = _PROBE_AFTER_CONFLICT
            except self._psycopg.Error as exc:
                self._staged.clear()  # a failed transaction may have rolled back the temp table's creation
                raise BackendError(
                    f"PostgreSQL write of {n} {batch.kind.value} readings failed: {exc}"
                ) from exc
        return WriteResult(stored=stored, duplicates=n - stored)

    def _first_stored(self, table: str, batch: ReadingBatch) -> bool:
        """Whether the batch's first reading is in ``table`` already (one probe of the key)."""
        key = (str(batch.device_id[0]), int(time_ms_column(batch)[0]), int(batch.seq[0]))
        return (
            self._conn.execute(
                f"SELECT 1 FROM {table} WHERE device_id = %s AND time_ms = %s AND seq = %s", key
            ).fetchone()
            is not None
        )

    def _merge(self, kind: DeviceKind, table: str, collist: str, data: memoryview) -> int:
        """The redelivery path: the stream into the staging table, then only the new rows into ``table``;
        returns how many were new."""
        with self._conn.transaction():
            tmp = self._stage_table(kind)
            with self._conn.cursor() as cur:
                with cur.copy(f"COPY {tmp} ({collist}) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.write(data)
                cur.execute(
                    f"INSERT INTO {table} ({collist}) SELECT {collist} FROM {tmp} ON CONFLICT DO NOTHING"
                )
                return int(cur.rowcount)

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
                    self._conninfo,
                    connect_timeout=self._connect_timeout,
                    autocommit=True,
                    application_name=APPLICATION_NAME,
                )
            except self._psycopg.Error as exc:
                raise BackendError(f"PostgreSQL time-series store unreachable: {exc}") from exc
            self._staged = set()  # temp tables died with the old session
            log.warning("reconnected to the PostgreSQL time-series store")

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
