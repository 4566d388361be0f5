"""Logins (issue 11): audited in the existing audit log, failed logins back off, no username oracle."""

from __future__ import annotations

import contextlib
import time

from cloud.auth import LoginThrottle, verify_password
from cloud.errors import AuthenticationError
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import Cloud

LOGIN = "/api/v1/auth/login"


async def test_logins_and_failed_logins_are_audited(cloud: Cloud) -> None:
    cloud.state.credentials.add_user("root", "admin", password="correct horse", now=cloud.clock.now())
    assert (
        await cloud.client.post(LOGIN, json={"username": "root", "password": "nope nope"})
    ).status_code == 401
    assert (
        await cloud.client.post(LOGIN, json={"username": "ghost", "password": "nope nope"})
    ).status_code == 401
    r = await cloud.client.post(LOGIN, json={"username": "root", "password": "correct horse"})
    assert r.status_code == 200
    entries = (await cloud.client.get("/api/v1/loop/audit", headers=cloud.admin)).json()["entries"]
    got = [(e["action"], e["actor"]) for e in entries if e["action"].startswith("auth.")]
    assert got == [("auth.login", "root"), ("auth.login_failed", "ghost"), ("auth.login_failed", "root")]
    assert all("correct horse" not in str(e) and "nope" not in str(e) for e in entries)


async def test_failed_logins_back_off_per_user(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    c.state.credentials.add_user("root", "admin", password="correct horse", now=c.clock.now())
    for _ in range(5):
        assert (
            await c.client.post(LOGIN, json={"username": "root", "password": "guess guess"})
        ).status_code == 401
    assert (
        await c.client.post(LOGIN, json={"username": "root", "password": "guess guess"})
    ).status_code == 401
    # locked now: even the right password waits, and the answer says how long
    r = await c.client.post(LOGIN, json={"username": "root", "password": "correct horse"})
    assert r.status_code == 429 and r.json()["retry_after_s"] > 0
    c.clock.advance(2)
    assert (
        await c.client.post(LOGIN, json={"username": "root", "password": "correct horse"})
    ).status_code == 200


def test_throttle_doubles_and_is_bounded() -> None:
    t = LoginThrottle(free=1, max_s=10, max_keys=3)
    k = t.keys("u", "1.2.3.4")
    t.failed(k, now=0)
    assert t.retry_after(k, now=0) == 0
    t.failed(k, now=0)
    t.failed(k, now=0)
    assert t.retry_after(k, now=0) == 2
    for _ in range(10):
        t.failed(k, now=0)
    assert t.retry_after(k, now=0) == 10
    t.succeeded(k)
    assert t.retry_after(k, now=0) == 0
    for i in range(10):
        t.failed((f"user:{i}",), now=0)
    assert len(t._fails) == 3


def test_login_takes_the_same_time_whether_the_user_exists_or_not(cloud_sqlite: Cloud) -> None:
    creds = cloud_sqlite.state.credentials
    creds.add_user("root", "admin", password="correct horse", now=0)
    verify_password("warm up", None)

    def cost(user: str) -> float:
        t0 = time.perf_counter()
        for _ in range(3):
            with contextlib.suppress(AuthenticationError):
                creds.login(user, "wrong password", now=0)
        return time.perf_counter() - t0

    cost("ghost")  # builds the dummy hash once
    known, unknown = cost("root"), cost("ghost")
    assert 0.5 < unknown / known < 2.0  # both run scrypt; without the dummy hash unknown would be ~0
