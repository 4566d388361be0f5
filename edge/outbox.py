"""The crash-safe outbox: everything the gateway owes the cloud, in one SQLite file (WAL mode).

Why SQLite: one file on the SD card, atomic multi-table transactions, a write-ahead log that survives
``kill -9`` and (with ``synchronous=FULL``) power cuts, and no server to run on a Pi.

Durability argument (``docs/gateway.md#outbox``): a frame counts as *accepted* only after the transaction
that holds its telemetry row, every alert step it caused, and its de-duplication key has committed. With
WAL + ``synchronous=FULL`` the commit returns after the WAL is fsynced, so a kill or power cut after that
point loses nothing; a kill before it loses only frames nobody was told were accepted. ``NORMAL`` (an
option) survives a process kill but may lose the last commits on power loss; it saves one fsync per batch.

Lanes: 0 = alert steps, 1 = telemetry. Telemetry younger than ``live_window_s`` is *live*, older is
*backlog*. Uplink batches take alerts first, then live telemetry, then backlog at a bounded rate.

A record leaves only on :meth:`Outbox.ack` (the cloud's :class:`~alerts.contract.UplinkAck`). A batch id is
written with its records *before* the batch is sent, so a retry after a crash reuses the same id.

Bounds: ``max_bytes`` and ``max_age_s`` drop the oldest telemetry (counted in ``dropped``); alert steps
are never dropped for space, only after ``alert_max_age_s``. The ``alert_journal`` keeps every alert step
ever produced (acked or not) for scoring and audit (:func:`iter_alert_events`).

Storage format (the quarantine and the dead letter keep JSON, readable with sqlite3 and jq): telemetry
records are binary blocks (:func:`alerts.uplink_body.encode_block`: typed columns,
about 10x cheaper to write than the JSON block and 2x smaller), alert steps are JSON (``alert_pending``
reads them with ``json_extract``). Records written by an older gateway (JSON blocks, first byte ``{``) are
read either way. A batch is rendered when it is loaded (:meth:`Outbox.next_batch`), in ``body_format``:
``msgpack`` merges each kind's records into one block (one block per kind is what the cloud validates,
screens and stores fastest) and writes the envelope around them; its JSON form, for a cloud that does not
read the binary body, is rendered from the same records on demand (:attr:`PendingBatch.json_body`).

Records the cloud refused (``UplinkAck.refused``) go to ``quarantine`` in the same transaction as the ack;
a batch the cloud keeps refusing whole is split (:meth:`Outbox.split`) and a lone bad record goes to
``dead_letter`` (:meth:`Outbox.dead_letter`). Both tables are bounded and counted (:mod:`edge.quarantine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgpack

from alerts.contract import CONTRACT_VERSION, AlertEvent, TelemetryBlock, UplinkAck, UplinkBatch
from alerts.uplink_body import (
    JSON_CONTENT_TYPE,
    MSGPACK_CONTENT_TYPE,
    block_batch,
    decode_block,
    encode_block,
    merge_blocks,
    msgpack_wire,
)
from edge.errors import OutboxError as OutboxError  # the gateway's one exception tree
from edge.quarantine import MAX_ROWS, quarantine_rows
from firmware_bridge.kernel.records import ReadingBatch

T = TypeVar("T")

SCHEMA_VERSION = 2  # PRAGMA user_version; 2 added quarantine + dead_letter (CREATE IF NOT EXISTS)
LANE_ALERT = 0
LANE_TELEMETRY = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    created REAL NOT NULL,
    n INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL,
    batch_id TEXT
);
CREATE INDEX IF NOT EXISTS records_pick ON records(lane, batch_id, id);
CREATE INDEX IF NOT EXISTS records_batch ON records(batch_id);
CREATE INDEX IF NOT EXISTS records_age ON records(lane, created);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, created REAL NOT NULL, attempts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (key BLOB PRIMARY KEY, t REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_t ON seen(t);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, batch_id TEXT NOT NULL, record TEXT NOT NULL,
    device_id TEXT NOT NULL, reason TEXT NOT NULL, n INTEGER NOT NULL, detail TEXT NOT NULL, body BLOB
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, batch_id TEXT NOT NULL, lane INTEGER NOT NULL,
    n INTEGER NOT NULL, reason TEXT NOT NULL, attempts INTEGER NOT NULL, body BLOB NOT NULL
);
"""


def frame_key(device_id: str, payload: bytes) -> bytes:
    """De-duplication key of a frame: the same bytes from the same device within the window are one frame."""
    return hashlib.blake2b(payload, digest_size=16, key=device_id.encode()[:64]).digest()


BodyFormat = Literal["msgpack", "json"]


@dataclass(frozen=True)
class PendingBatch:
    """An uplink batch whose id and records are already persisted.

    ``body`` is the UplinkBatch in ``content_type`` (JSON unless said otherwise, so a batch built from
    ``UplinkBatch.wire`` alone is complete). A binary body comes with ``json_body``, which renders the same
    batch as JSON, for a cloud that does not read the binary body (:meth:`as_json`).
    """

    batch_id: str
    body: bytes
    n_alerts: int
    n_readings: int
    record_ids: tuple[int, ...]
    content_type: str = JSON_CONTENT_TYPE
    json_body: Callable[[], bytes] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.content_type != JSON_CONTENT_TYPE and self.json_body is None:
            raise ValueError(f"a {self.content_type} batch needs json_body (its JSON rendering)")

    def as_json(self) -> bytes:
        """The batch as a JSON body (rendered on demand when ``body`` is binary)."""
        if self.content_type == JSON_CONTENT_TYPE:
            return self.body
        assert self.json_body is not None  # checked in __post_init__
        return self.json_body()


@dataclass(frozen=True)
class BatchInfo:
    """What the sender needs to decide about a batch that failed: how often, since when, how big."""

    batch_id: str
    created: float
    attempts: int
    n_records: int
    lane: int


@dataclass
class OutboxStats:
    depth: dict[str, int] = field(default_factory=dict)  # lane -> readings / alert steps
    oldest_age_s: float = 0.0
    bytes: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> records
    dead_letter: dict[str, int] = field(default_factory=dict)  # lane name -> records


class Outbox:
    """The outbox. Blocking API, confined to one worker thread; use :meth:`call` from asyncio."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = 512 * 1024 * 1024,
        max_age_s: float = 14 * 86400.0,
        alert_max_age_s: float = 90 * 86400.0,
        synchronous: str = "full",
        dedupe_window_s: float = 3600.0,
        live_window_s: float = 300.0,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.alert_max_age_s = alert_max_age_s
        self.dedupe_window_s = dedupe_window_s
        self.live_window_s = live_window_s
        self._now = wallclock
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self.path} has schema version {version}, this gateway knows {SCHEMA_VERSION}: "
                    "it was written by a newer Vigil; upgrade this gateway instead of downgrading"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size),0) FROM records").fetchone()[0])
            self.dropped: dict[str, int] = json.loads(self._kv_get("dropped") or b"{}")
            self.quarantined: dict[str, int] = json.loads(self._kv_get("quarantined") or b"{}")
            self.dead_lettered: dict[str, int] = json.loads(self._kv_get("dead_letter") or b"{}")
            #: the contract version written into batches; the sender lowers it for a version-1 cloud
            self.contract_version: int = CONTRACT_VERSION
            #: the body :meth:`next_batch` renders (``uplink.body``); either form can render the other
            self.body_format: BodyFormat = "msgpack"
        except (sqlite3.Error, OutboxError) as exc:
            self._executor.shutdown(wait=False)
            with contextlib.suppress(AttributeError):
                self._db.close()
            if isinstance(exc, OutboxError):
                raise
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

    # -- plumbing ----------------------------------------------------------------------------------------
    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking outbox method on the outbox thread (keeps the event loop free)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kv_get(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _kv_put(self, key: str, value: bytes) -> None:
        self._db.execute(
            "INSERT INTO kv(key,value,updated) VALUES(?,?,?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value,"
            " updated=excluded.updated",
            (key, value, self._now()),
        )

    def _drop(self, what: str, n: int) -> None:
        if n:
            self.dropped[what] = self.dropped.get(what, 0) + n
            self._kv_put("dropped", json.dumps(self.dropped).encode())

    # -- writing -----------------------------------------------------------------------------------------
    def unseen(self, keys: Sequence[bytes]) -> list[bool]:
        """For each key, True if no frame with that key was committed within the de-duplication window."""
        if not keys or self.dedupe_window_s <= 0:
            return [True] * len(keys)
        found: set[bytes] = set()
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key FROM seen WHERE key IN ({','.join('?' * len(chunk))})"
                found.update(bytes(r[0]) for r in self._db.execute(q, chunk))
        return [k not in found for k in keys]

    def commit(
        self,
        telemetry: Sequence[ReadingBatch],
        alerts: Sequence[AlertEvent],
        keys: Sequence[bytes] = (),
        kv: dict[str, bytes] | None = None,
    ) -> None:
        """Store telemetry, alert steps, de-dup keys and side state in ONE transaction (the accept point)."""
        now = self._now()
        rows: list[tuple[int, float, int, int, bytes]] = []
        for b in telemetry:
            if len(b):
                body = encode_block(b)
                rows.append((LANE_TELEMETRY, now, len(b), len(body), body))
        journal = []
        for a in alerts:
            body = a.model_dump_json().encode()
            rows.append((LANE_ALERT, now, 1, len(body), body))
            journal.append((a.time, body))
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT INTO records(lane,created,n,size,body) VALUES(?,?,?,?,?)", rows)
                self._db.executemany("INSERT INTO alert_journal(time,body) VALUES(?,?)", journal)
                if keys and self.dedupe_window_s > 0:
                    self._db.executemany(
                        "INSERT OR IGNORE INTO seen(key,t) VALUES(?,?)", ((k, now) for k in keys)
                    )
                for k, v in (kv or {}).items():
                    self._kv_put(k, v)
                self._bytes += sum(r[3] for r in rows)
                if self._bytes > self.max_bytes:
                    self._evict_locked()
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox commit failed: {exc}") from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size),0) FROM records").fetchone()[0])
        self.dropped = json.loads(self._kv_get("dropped") or b"{}")
        self.quarantined = json.loads(self._kv_get("quarantined") or b"{}")
        self.dead_lettered = json.loads(self._kv_get("dead_letter") or b"{}")

    def _evict_locked(self) -> None:
        """Drop the oldest telemetry until under ``max_bytes``. Alerts are never evicted for space."""
        excess = self._bytes - self.max_bytes
        freed = dropped = 0
        victims: list[int] = []
        for rid, n, size in self._db.execute(
            "SELECT id, n, size FROM records WHERE lane=? ORDER BY id", (LANE_TELEMETRY,)
        ):
            if freed >= excess:
                break
            victims.append(rid)
            freed += size
            dropped += n
        self._db.executemany("DELETE FROM records WHERE id=?", ((v,) for v in victims))
        self._bytes -= freed
        self._drop("telemetry_overflow", dropped)

    def prune(self) -> dict[str, int]:
        """Apply the age bounds and forget old de-dup keys; returns what was dropped."""
        now = self._now()
        out: dict[str, int] = {}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for what, lane, age in (
                    ("telemetry_expired", LANE_TELEMETRY, self.max_age_s),
                    ("alert_expired", LANE_ALERT, self.alert_max_age_s),
                ):
                    n, size = self._db.execute(
                        "SELECT COALESCE(SUM(n),0), COALESCE(SUM(size),0) FROM records"
                        " WHERE lane=? AND created<?",
                        (lane, now - age),
                    ).fetchone()
                    if n:
                        self._db.execute("DELETE FROM records WHERE lane=? AND created<?", (lane, now - age))
                        self._bytes -= int(size)
                        self._drop(what, int(n))
                        out[what] = int(n)
                self._db.execute("DELETE FROM alert_journal WHERE time<?", (now - self.alert_max_age_s,))
                self._db.execute("DELETE FROM seen WHERE t<?", (now - self.dedupe_window_s,))
                # a batch whose records all expired is forgotten (it would otherwise be "retried" empty)
                self._db.execute(
                    "DELETE FROM batches WHERE NOT EXISTS"
                    " (SELECT 1 FROM records r WHERE r.batch_id=batches.batch_id)"
                )
                for table in ("quarantine", "dead_letter"):
                    self._db.execute(
                        f"DELETE FROM {table} WHERE time<? OR id<=(SELECT MAX(id) FROM {table})-?",
                        (now - self.alert_max_age_s, MAX_ROWS),
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox prune failed: {exc}") from exc
        return out

    # -- uplink side -------------------------------------------------------------------------------------
    def next_batch(
        self,
        gateway_id: str,
        *,
        max_records: int = 5000,
        max_bytes: int = 1_000_000,
        backlog_budget: int = 0,
        status: dict[str, Any] | None = None,
    ) -> PendingBatch | None:
        """The next batch to send: new alerts first, else an unacknowledged batch, else live, then backlog.

        Alerts never wait behind an outstanding telemetry batch: a fresh alert-only batch is formed even
        while an older batch awaits its retry. ``backlog_budget`` caps backlog readings in this batch.
        """
        with self._lock:
            picked = self._pick(LANE_ALERT, None, max_records, max_bytes)
            if not picked:
                # alert batches waiting for a retry go before telemetry ones (an alert whose first send
                # failed still goes before any telemetry); a batch whose records all expired is skipped.
                # The halves of a split batch share its age: the one tried fewer times goes first, so a
                # refused record cannot keep its good siblings waiting behind it (they are acked, and that
                # is what lets the refused one be dead-lettered), whatever their random ids' order
                row = self._db.execute(
                    "SELECT b.batch_id FROM batches b JOIN records r ON r.batch_id=b.batch_id"
                    " GROUP BY b.batch_id ORDER BY MIN(r.lane), b.created, b.attempts, MIN(r.id) LIMIT 1"
                ).fetchone()
                if row is not None:
                    return self._load_batch(row[0], gateway_id, status)
                live_since = self._now() - self.live_window_s
                picked = self._pick(LANE_TELEMETRY, live_since, max_records, max_bytes)
                if not picked and backlog_budget > 0:
                    picked = self._pick(LANE_TELEMETRY, None, min(max_records, backlog_budget), max_bytes)
            if not picked:
                return None
            batch_id = f"{gateway_id[:24]}-{secrets.token_hex(12)}".replace(".", "_").replace(":", "_")
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO batches(batch_id,created,attempts) VALUES(?,?,0)", (batch_id, self._now())
            )
            self._db.executemany("UPDATE records SET batch_id=? WHERE id=?", ((batch_id, r) for r in picked))
            self._db.execute("COMMIT")
            return self._load_batch(batch_id, gateway_id, status)

    def _pick(self, lane: int, since: float | None, max_records: int, max_bytes: int) -> list[int]:
        q = "SELECT id, n, size FROM records WHERE lane=? AND batch_id IS NULL"
        args: list[Any] = [lane]
        if since is not None:
            q += " AND created>=?"
            args.append(since)
        q += " ORDER BY id"
        ids: list[int] = []
        n_tot = size_tot = 0
        for rid, n, size in self._db.execute(q, args):
            if ids and (n_tot + n > max_records or size_tot + size > max_bytes):
                break
            ids.append(rid)
            n_tot += n
            size_tot += size
        return ids

    def _load_batch(self, batch_id: str, gateway_id: str, status: dict[str, Any] | None) -> PendingBatch:
        rows = self._db.execute(
            "SELECT id, lane, n, body FROM records WHERE batch_id=? ORDER BY id", (batch_id,)
        )
        tele: list[bytes] = []
        alerts: list[bytes] = []
        ids: list[int] = []
        n_read = 0
        for rid, lane, n, body in rows:
            ids.append(rid)
            if lane == LANE_ALERT:
                alerts.append(bytes(body))
            else:
                tele.append(bytes(body))
                n_read += n
        render = functools.partial(
            _render,
            contract_version=self.contract_version,
            batch_id=batch_id,
            gateway_id=gateway_id,
            sent_at=self._now(),
            telemetry=tele,
            alerts=alerts,
            status=status,
        )
        if self.body_format == "json":
            return PendingBatch(batch_id, render(binary=False), len(alerts), n_read, tuple(ids))
        return PendingBatch(
            batch_id,
            render(binary=True),
            len(alerts),
            n_read,
            tuple(ids),
            content_type=MSGPACK_CONTENT_TYPE,
            json_body=functools.partial(render, binary=False),
        )

    def ack(self, ack: UplinkAck) -> int:
        """The cloud stored the batch durably: delete its records. Returns how many records left.

        Records the cloud refused (``ack.refused``) are moved to the quarantine in the same transaction:
        they are never re-sent, and they are counted in :attr:`quarantined` by reason.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            size = self._db.execute(
                "SELECT COALESCE(SUM(size),0) FROM records WHERE batch_id=?", (ack.batch_id,)
            ).fetchone()[0]
            if ack.telemetry_refused or ack.alerts_refused:
                self._quarantine_locked(ack)
            cur = self._db.execute("DELETE FROM records WHERE batch_id=?", (ack.batch_id,))
            self._db.execute("DELETE FROM batches WHERE batch_id=?", (ack.batch_id,))
            self._kv_put(
                "uplink_last_ack", json.dumps({"time": self._now(), "batch_id": ack.batch_id}).encode()
            )
            self._db.execute("COMMIT")
            self._bytes -= int(size)
            return cur.rowcount

    def _quarantine_locked(self, ack: UplinkAck) -> None:
        records = [  # the quarantine keeps JSON (readable with sqlite3 and jq)
            (int(lane) == LANE_ALERT, _kept(int(lane), bytes(body)))
            for lane, body in self._db.execute(
                "SELECT lane, body FROM records WHERE batch_id=? ORDER BY id", (ack.batch_id,)
            )
        ]
        rows = quarantine_rows(ack, records)
        now = self._now()
        self._db.executemany(
            "INSERT INTO quarantine(time,batch_id,record,device_id,reason,n,detail,body)"
            " VALUES(?,?,?,?,?,?,?,?)",
            [(now, ack.batch_id, r.record, r.device_id, r.reason, r.n, r.detail, r.body) for r in rows],
        )
        for r in rows:
            self.quarantined[r.reason] = self.quarantined.get(r.reason, 0) + r.n
        self._kv_put("quarantined", json.dumps(self.quarantined).encode())

    def batch_info(self, batch_id: str) -> BatchInfo | None:
        with self._lock:
            row = self._db.execute(
                "SELECT b.created, b.attempts, COUNT(r.id), COALESCE(MIN(r.lane), 1) FROM batches b"
                " LEFT JOIN records r ON r.batch_id=b.batch_id WHERE b.batch_id=? GROUP BY b.batch_id",
                (batch_id,),
            ).fetchone()
        if row is None:
            return None
        return BatchInfo(batch_id, float(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def split(self, batch_id: str) -> list[str]:
        """Split a refused batch into two new batches of halves (nothing of it was stored, or what was is
        idempotent). Returns the new batch ids; ``[]`` if it holds fewer than two records."""
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute("SELECT id FROM records WHERE batch_id=? ORDER BY id", (batch_id,))
            ]
            if len(ids) < 2:
                return []
            row = self._db.execute("SELECT created FROM batches WHERE batch_id=?", (batch_id,)).fetchone()
            created = self._now() if row is None else float(row[0])
            half = len(ids) // 2
            out = []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM batches WHERE batch_id=?", (batch_id,))
                for part in (ids[:half], ids[half:]):
                    new_id = f"{batch_id[:40]}-s{secrets.token_hex(6)}"
                    # keeps the parent's age, so the halves keep their place in the queue
                    self._db.execute(
                        "INSERT INTO batches(batch_id,created,attempts) VALUES(?,?,0)", (new_id, created)
                    )
                    self._db.executemany(
                        "UPDATE records SET batch_id=? WHERE id=?", ((new_id, r) for r in part)
                    )
                    out.append(new_id)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox split failed: {exc}") from exc
            return out

    def dead_letter(self, batch_id: str, reason: str) -> int:
        """Move a batch's records to ``dead_letter`` (kept, counted, never re-sent). Returns how many."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT attempts FROM batches WHERE batch_id=?", (batch_id,)
                ).fetchone()
                attempts = 0 if row is None else int(row[0])
                moved = self._db.execute(
                    "SELECT id, lane, n, size, body FROM records WHERE batch_id=?", (batch_id,)
                ).fetchall()
                now = self._now()
                self._db.executemany(
                    "INSERT INTO dead_letter(time,batch_id,lane,n,reason,attempts,body)"
                    " VALUES(?,?,?,?,?,?,?)",
                    [  # kept as JSON, like the quarantine: readable with sqlite3 and jq
                        (now, batch_id, lane, n, reason[:300], attempts, _kept(lane, bytes(body)))
                        for _, lane, n, _, body in moved
                    ],
                )
                self._db.execute("DELETE FROM records WHERE batch_id=?", (batch_id,))
                self._db.execute("DELETE FROM batches WHERE batch_id=?", (batch_id,))
                for _, lane, n, _, _ in moved:
                    key = "alert" if lane == LANE_ALERT else "telemetry"
                    self.dead_lettered[key] = self.dead_lettered.get(key, 0) + int(n)
                self._kv_put("dead_letter", json.dumps(self.dead_lettered).encode())
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox dead-letter failed: {exc}") from exc
            self._bytes -= sum(int(m[3]) for m in moved)
            return sum(int(m[2]) for m in moved)

    def requeue_dead_letter(self) -> int:
        """Put every dead-lettered record back in its lane (after the cloud was fixed); returns how many.

        The dead-letter counters are history and stay as they are; a record that fails again is isolated
        and dead-lettered again by the sender's usual bounds.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute("SELECT id, lane, n, body FROM dead_letter ORDER BY id").fetchall()
                now = self._now()
                self._db.executemany(
                    "INSERT INTO records(lane,created,n,size,body) VALUES(?,?,?,?,?)",
                    [(lane, now, n, len(body), body) for _, lane, n, body in rows],
                )
                self._db.execute("DELETE FROM dead_letter")
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox requeue failed: {exc}") from exc
            self._bytes += sum(len(r[3]) for r in rows)
            return len(rows)

    def quarantine_report(self, limit: int = 20) -> list[tuple[str, str, int]]:
        """``(device_id, reason, records)`` of the quarantine, most refused first (the installer report)."""
        with self._lock:
            return [
                (str(d), str(r), int(n))
                for d, r, n in self._db.execute(
                    "SELECT device_id, reason, SUM(n) FROM quarantine WHERE device_id != ''"
                    " GROUP BY device_id, reason ORDER BY 3 DESC LIMIT ?",
                    (limit,),
                )
            ]

    def release(self, batch_id: str) -> int:
        """Forget a batch the cloud refused *unread* (413): its records go back to their lanes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute("UPDATE records SET batch_id=NULL WHERE batch_id=?", (batch_id,))
            self._db.execute("DELETE FROM batches WHERE batch_id=?", (batch_id,))
            self._db.execute("COMMIT")
            return cur.rowcount

    def alert_pending(self, alert_id: str) -> bool:
        """True while a step of this alert is still waiting for the cloud's acknowledgement."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM records WHERE lane=? AND json_extract(body, '$.alert_id')=? LIMIT 1",
                (LANE_ALERT, alert_id),
            ).fetchone()
        return row is not None

    def note_attempt(self, batch_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE batches SET attempts=attempts+1 WHERE batch_id=?", (batch_id,))

    # -- state and introspection -------------------------------------------------------------------------
    def put_state(self, key: str, value: bytes) -> None:
        with self._lock:
            self._kv_put(key, value)

    def get_state(self, key: str) -> bytes | None:
        with self._lock:
            return self._kv_get(key)

    def stats(self) -> OutboxStats:
        now = self._now()
        live_since = now - self.live_window_s
        with self._lock:
            a, t_live, t_back, oldest = self._db.execute(
                "SELECT COALESCE(SUM(CASE WHEN lane=0 THEN n END),0),"
                " COALESCE(SUM(CASE WHEN lane=1 AND created>=? THEN n END),0),"
                " COALESCE(SUM(CASE WHEN lane=1 AND created<? THEN n END),0), MIN(created) FROM records",
                (live_since, live_since),
            ).fetchone()
        return OutboxStats(
            depth={"alert": int(a), "live": int(t_live), "backlog": int(t_back)},
            oldest_age_s=0.0 if oldest is None else max(0.0, now - float(oldest)),
            bytes=self._bytes,
            dropped=dict(self.dropped),
            quarantined=dict(self.quarantined),
            dead_letter=dict(self.dead_lettered),
        )


# -- records and bodies ---------------------------------------------------------------------------------
def _record_block(body: bytes) -> TelemetryBlock:
    """A stored telemetry record: a binary block, or a JSON block written by an older gateway."""
    if body[:1] == b"{":
        return TelemetryBlock.model_validate_json(body)
    return decode_block(msgpack.unpackb(body, raw=False))


def _kept(lane: int, body: bytes) -> bytes:
    """A record as the quarantine and the dead letter keep it (JSON; alert steps already are)."""
    return body if lane == LANE_ALERT else _record_json(body)


def _record_json(body: bytes) -> bytes:
    if body[:1] == b"{":
        return body
    return _record_block(body).model_dump_json().encode()


def _block_kind(body: bytes) -> str | None:
    """The kind of a stored binary block, read from its first entry (``encode_block`` writes it first)
    without decoding the columns."""
    head = msgpack.Unpacker(raw=False)
    head.feed(body[:80])
    head.read_map_header()
    key, value = head.unpack(), head.unpack()
    return value if key == "kind" and isinstance(value, str) else None


def merged_blocks(records: Sequence[bytes]) -> list[ReadingBatch]:
    """The telemetry records of a batch as one :class:`ReadingBatch` per kind, in record order."""
    by_kind: dict[str, list[ReadingBatch]] = {}
    for body in records:
        rb = _record_block(body).to_batch() if body[:1] == b"{" else block_batch(body)
        by_kind.setdefault(rb.kind.value, []).append(rb)
    return [parts[0] if len(parts) == 1 else ReadingBatch.concat(parts) for parts in by_kind.values()]


def _render(
    *,
    binary: bool,
    contract_version: int,
    batch_id: str,
    gateway_id: str,
    sent_at: float,
    telemetry: Sequence[bytes],
    alerts: Sequence[bytes],
    status: dict[str, Any] | None,
) -> bytes:
    """A loaded batch's body (alert records are JSON, telemetry records binary or, from an older gateway,
    JSON); each kind's records become one block (binary ones by :func:`~alerts.uplink_body.merge_blocks`,
    which joins their column bytes without decoding the values)."""
    head: dict[str, Any] = {
        "contract_version": contract_version,
        "batch_id": batch_id,
        "gateway_id": gateway_id,
        "sent_at": sent_at,
    }
    if not binary:
        blocks = [TelemetryBlock.from_batch(b).model_dump_json().encode() for b in merged_blocks(telemetry)]
        return UplinkBatch.wire(**head, telemetry=blocks, alerts=alerts, status=status)
    by_kind: dict[str | None, list[bytes]] = {}
    for body in telemetry:  # an older gateway's JSON record is re-encoded; binary ones stay bytes
        rec = body if body[:1] != b"{" else encode_block(_record_block(body).to_batch())
        by_kind.setdefault(_block_kind(rec), []).append(rec)
    telemetry = [parts[0] if len(parts) == 1 else merge_blocks(parts) for parts in by_kind.values()]
    return msgpack_wire(
        **head,
        telemetry=telemetry,
        alerts=[msgpack.packb(json.loads(a)) for a in alerts],
        status=status,
    )


# -- read-only access for tools (vigil score --outbox, vigil gateway alerts/status) ------------------------
def _ro(path: Path | str) -> sqlite3.Connection:
    p = Path(path)
    if not p.exists():
        raise OutboxError(f"no outbox at {p}")
    return sqlite3.connect(f"file:{p}?mode=ro", uri=True)


def iter_alert_events(path: Path | str) -> Iterator[AlertEvent]:
    """Every alert step the gateway ever produced (acknowledged or not), in order."""
    db = _ro(path)
    try:
        for (body,) in db.execute("SELECT body FROM alert_journal ORDER BY id"):
            yield AlertEvent.model_validate_json(body)
    finally:
        db.close()


def iter_telemetry(path: Path | str) -> Iterator[TelemetryBlock]:
    """Telemetry still waiting in the outbox (not yet acknowledged by the cloud)."""
    db = _ro(path)
    try:
        for (body,) in db.execute("SELECT body FROM records WHERE lane=? ORDER BY id", (LANE_TELEMETRY,)):
            yield _record_block(bytes(body))
    finally:
        db.close()


def read_state(path: Path | str, key: str) -> bytes | None:
    db = _ro(path)
    try:
        row = db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])
    finally:
        db.close()
