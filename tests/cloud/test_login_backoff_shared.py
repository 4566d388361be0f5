"""Failed-login back-off is shared by every worker and survives a restart (issue 11).

Two app instances on one database stand for two `vigil cloud` workers (or one worker before and after a
restart): failures made at one are counted at the other, from the audit log both write to. On SQLite and
PostgreSQL (tests/cloud/cloudkit.py ``cloud`` fixture).
"""

from __future__ import annotations

import asyncio

from cloud.auth import LoginThrottle
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import Cloud, another_worker

LOGIN = "/api/v1/auth/login"
RIGHT = {"username": "root", "password": "correct horse"}
WRONG = {"username": "root", "password": "guess guess"}


async def test_backoff_is_shared_by_workers_and_kept_across_a_restart(cloud: Cloud) -> None:
    c = cloud
    await asyncio.to_thread(
        c.state.credentials.add_user, "root", "admin", password="correct horse", now=c.clock.now()
    )
    async with another_worker(c) as b:
        # five free failures, alternating between the two workers
        for i in range(5):
            client = c.client if i % 2 else b
            assert (await client.post(LOGIN, json=WRONG)).status_code == 401
        assert (await b.post(LOGIN, json=WRONG)).status_code == 401  # the 6th: locked for 1 s
        r = await c.client.post(LOGIN, json=RIGHT)  # the other worker knows
        assert r.status_code == 429 and 0 < r.json()["retry_after_s"] <= 1
        c.clock.advance(1.5)
        assert (await c.client.post(LOGIN, json=WRONG)).status_code == 401  # the 7th: 2 s
    # a restarted worker (nothing in memory) still refuses
    async with another_worker(c) as restarted:
        r = await restarted.post(LOGIN, json=RIGHT)
        assert r.status_code == 429 and 1 < r.json()["retry_after_s"] <= 2
        c.clock.advance(2.5)
        assert (await restarted.post(LOGIN, json=RIGHT)).status_code == 200  # a success clears the count
    async with another_worker(c) as fresh:
        assert (await fresh.post(LOGIN, json=WRONG)).status_code == 401  # free again
        assert (await fresh.post(LOGIN, json=RIGHT)).status_code == 200


def test_shared_counts_read_the_audit_log_by_user_and_address(cloud_sqlite: Cloud) -> None:
    from cloud.loop.config import audit

    db = cloud_sqlite.state.db
    t = LoginThrottle(db, free=2, max_s=60, window_s=1000)
    now = 10_000.0
    with db.write() as s:
        for i in range(4):  # 4 failures of "eve" from two addresses: user key locked for 2 s
            audit(
                s,
                actor="eve",
                role="",
                action="auth.login_failed",
                target=f"addr:10.0.0.{i % 2}",
                now=now + i,
            )
        audit(s, actor="old", role="", action="auth.login_failed", target="addr:10.0.0.9", now=now - 2000)
    assert t.retry_after(t.keys("eve", "192.0.2.1"), now=now + 3) == 2.0  # 3 + 2 - 3
    assert t.retry_after(t.keys("mallory", "10.0.0.1"), now=now + 3) == 0.0  # 2 failures from it: free
    assert t.retry_after(t.keys("old", "10.0.0.9"), now=now) == 0.0  # outside the window
    with db.write() as s:
        audit(s, actor="eve", role="", action="auth.login", target="addr:10.0.0.5", now=now + 4)
    assert t.retry_after(t.keys("eve", "192.0.2.1"), now=now + 4) == 0.0
