"""Logins (issue 11): audited in the existing audit log, failed logins back off, no username oracle."""

from __future__ import annotations

import contextlib
import hashlib

import pytest

from cloud.auth import LoginThrottle
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


def test_login_does_the_same_work_whether_the_user_exists_or_not(
    cloud_sqlite: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing-safe by construction, checked without a stopwatch (a timed assertion flickers on a loaded
    machine): a wrong password for a known user and any password for an unknown user each run exactly one
    scrypt with the same cost parameters, so neither answer is faster."""
    creds = cloud_sqlite.state.credentials
    creds.add_user("root", "admin", password="correct horse", now=0)
    calls: list[tuple[int, int, int, int]] = []
    real = hashlib.scrypt

    def counting(
        password: bytes, *, salt: bytes, n: int, r: int, p: int, dklen: int = 64, **kw: int
    ) -> bytes:
        calls.append((n, r, p, dklen))
        return real(password, salt=salt, n=n, r=r, p=p, dklen=dklen, **kw)

    monkeypatch.setattr(hashlib, "scrypt", counting)

    def work(user: str) -> list[tuple[int, int, int, int]]:
        calls.clear()
        with contextlib.suppress(AuthenticationError):
            creds.login(user, "wrong password", now=0)
        return list(calls)

    work("ghost")  # the dummy hash is built once, on the first unknown user
    known, unknown = work("root"), work("ghost")
    assert len(known) == 1 and known == unknown  # one scrypt each, same n / r / p / length


def test_a_flood_of_failures_caps_the_lock_instead_of_overflowing() -> None:
    """2.0 ** (failures - 1) overflowed past ~1,030 failures: every later login of that user was a 500."""
    throttle = LoginThrottle(max_s=900.0)
    assert throttle.lock_s(5) == 0.0 and throttle.lock_s(6) == 1.0 and throttle.lock_s(8) == 4.0
    assert throttle.lock_s(1_100) == throttle.lock_s(10**9) == 900.0
