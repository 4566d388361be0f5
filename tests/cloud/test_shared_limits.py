"""Rate limits hold across worker processes on PostgreSQL (cloud/limits.py ``SharedBuckets``).

A district runs several ``vigil cloud api`` workers behind a balancer on one PostgreSQL: limits kept in each
process's memory would be N times looser. Two app instances on one PostgreSQL (started by tests/servers.py)
stand for two workers: the per-link position limit (12 at once, 6 a minute) is one allowance for both, and
concurrent takes from two connection pools admit exactly the burst. On the embedded SQLite database (one
process by design) the buckets stay in memory: no table, no round trip.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from cloud.app import create_app
from cloud.auth import GatewayCertificateError
from cloud.certrefusals import record_certificate_refusal
from cloud.db import Database, upgrade_head
from cloud.limits import (
    LINK_READS_BURST,
    LINK_READS_PER_MINUTE,
    KeyedRateLimit,
    SharedBuckets,
    link_read_limit,
)
from cloud.notify.links import Purpose
from tests.cloud.cloudkit import T0, Cloud, another_worker, make_settings, start_cloud
from tests.cloud.notify.test_responder_position import BAND, FLAG, PARK, WORN_FIX, band, open_case

BURST = int(LINK_READS_BURST)


@pytest.fixture
async def cloud_pg(tmp_path: Path, pg_url: str) -> AsyncIterator[Cloud]:
    async with start_cloud(make_settings(tmp_path, pg_url)) as c:
        r = await c.client.post("/api/v1/devices", json=BAND, headers=c.admin)
        assert r.status_code == 201, r.text
        yield c


async def test_link_read_limit_is_one_allowance_for_two_workers(cloud_pg: Cloud) -> None:
    c = cloud_pg
    incident_id = await open_case(c, band((1, T0 + 9.0, *PARK, WORN_FIX | FLAG["fall"])))
    token = c.app.state.notify.links.token(Purpose.ON_THE_WAY, str(incident_id), "user:7", now=c.clock.now())
    path = f"/api/v1/links/{token}/position"
    async with another_worker(c) as b:
        workers = (c.client, b)
        # the balancer alternates: 12 reads in all are served, not 12 per worker
        for i in range(BURST):
            r = await workers[i % 2].get(path)
            assert r.status_code == 200, (i, r.text)
        for w in workers:
            r = await w.get(path)
            assert r.status_code == 429, r.text
            assert r.json()["reason"] == "link_reads"
            assert r.headers["retry-after"] == str(round(60 / LINK_READS_PER_MINUTE))
        # one read's refill: exactly one more read, at whichever worker, then both refuse again
        c.clock.advance(60 / LINK_READS_PER_MINUTE)
        assert (await b.get(path)).status_code == 200
        assert (await c.client.get(path)).status_code == 429
        assert (await b.get(path)).status_code == 429
        # the page's own pace (every 30 s) is always served, wherever it lands
        c.clock.advance(60.0)
        for i in range(8):
            assert (await workers[i % 2].get(path)).status_code == 200
            c.clock.advance(30.0)
    limit = c.app.state.vigil_link_reads
    assert isinstance(limit, KeyedRateLimit) and limit.shared is not None and len(limit._buckets) == 0


def test_concurrent_takes_from_two_pools_admit_exactly_the_burst(pg_url: str) -> None:
    upgrade_head(pg_url)
    dbs = [Database(pg_url), Database(pg_url)]
    try:
        now = 1_000_000.0
        stores = [SharedBuckets(db, now=lambda: now) for db in dbs]
        results: list[float] = []
        lock = threading.Lock()
        start = threading.Barrier(8)

        def worker(i: int) -> None:
            start.wait()
            for _ in range(25):
                w = stores[i % 2].take("test", ("k", 1), 1, 0.1, 12)
                with lock:
                    results.append(w)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 200 and results.count(0.0) == 12  # 200 concurrent tries, the burst admitted
        assert all(w == pytest.approx(10.0) for w in results if w)  # (1 - level) / rate with level 0
        # strict ("once per window"): a second take within the window is refused, after it admitted
        assert stores[0].take("once", "x", 1, 1 / 60, 1, strict=True) == 0.0
        assert stores[1].take("once", "x", 1, 1 / 60, 1, strict=True) == pytest.approx(60.0)
        # rows of buckets full again are swept, and a swept bucket answers as a full one
        later = SharedBuckets(dbs[0], now=lambda: now + 3600)
        assert later.take("test", ("k", 2), 1, 0.1, 12) == 0.0  # this take sweeps the full rows
        with dbs[0].read() as s:
            keys = set(s.execute(text("SELECT key FROM rate_limit_buckets")).scalars())
        assert keys == {"test:k:2"}
    finally:
        for db in dbs:
            db.close()


def test_embedded_sqlite_keeps_the_buckets_in_memory(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/x.db")  # not even migrated: nothing touches the table
    try:
        clock = [0.0]
        limit = link_read_limit(monotonic=lambda: clock[0], db=db)
        assert limit.shared is None
        assert [limit.wait_s("a") for _ in range(BURST + 1)][-1] == pytest.approx(10.0)
        assert len(limit._buckets) == 1
    finally:
        db.close()


async def test_a_certificate_refusal_is_audited_once_by_two_workers(cloud_pg: Cloud) -> None:
    """The once-a-minute audit rule per (gateway, reason, certificate) is shared too: a gateway whose
    retries land on two workers is audited once a minute, not once per worker."""
    c = cloud_pg
    app_b = await asyncio.to_thread(create_app, c.settings, clock=c.clock)
    async with app_b.router.lifespan_context(app_b):
        exc = GatewayCertificateError(
            "revoked", reason="certificate_revoked", gateway_id="gw-9", subject="CN=gw-9"
        )
        extra = {"fingerprint": "AB" * 20, "serial": "0A"}
        for state in (c.state, app_b.state.vigil, c.state, app_b.state.vigil):
            await record_certificate_refusal(state, exc, "proxy", extra)
        c.clock.advance(61.0)
        await record_certificate_refusal(app_b.state.vigil, exc, "proxy", extra)
        await record_certificate_refusal(c.state, exc, "proxy", extra)
    r = await c.client.get("/api/v1/loop/audit", headers=c.admin)
    got = [e for e in r.json()["entries"] if e["action"] == "auth.gateway_certificate_refused"]
    assert len(got) == 2, got  # one per minute, whichever worker heard it


def _sessions(pg_url: str) -> int:
    import psycopg

    name = pg_url.rsplit("/", 1)[1]
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = ''", (name,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_closing_the_database_closes_the_shared_connections_and_later_takes_stay_local(
    pg_url: str,
) -> None:
    """An app's shutdown closes its database: the buckets' own connections go with it at once (left to the
    garbage collector they outlived their app and warned in whichever test came next), a take still in
    flight gives its connection back to be closed, and a take after the close is limited per process."""
    upgrade_head(pg_url)
    db = Database(pg_url)
    buckets = SharedBuckets(db, now=lambda: 1_000_000.0)
    assert buckets.take("t", "k", 1, 0.1, 2) == 0.0
    idle = buckets._checkout()
    busy = buckets._checkout()  # a second connection, as a take running in another thread holds it
    buckets._checkin(idle)
    assert _sessions(pg_url) == 2
    db.close()
    buckets._checkin(busy)  # the take in flight ends after the close
    deadline = time.monotonic() + 5
    while _sessions(pg_url) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _sessions(pg_url) == 0
    # after the close: this process's buckets (a fresh key starts full, the burst of 2 then a wait)
    assert [buckets.take("t", "k", 1, 0.1, 2) for _ in range(3)][-1] == pytest.approx(10.0)
    assert _sessions(pg_url) == 0
