"""Fixtures of the notification tests: one fake provider per test, an httpx client with a short timeout."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.aliyun import FakeAliyun
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.smtp import FakeSmtp
from tests.fakes.tencent import FakeTencent
from tests.fakes.webhook import FakeWebhookReceiver
from tests.fakes.wecom import FakeWeCom


@pytest.fixture(scope="session")
def notify_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to all heads once per session; tests get a copy."""
    from cloud.db import upgrade_head

    path = tmp_path_factory.mktemp("notify-template") / "n.db"
    upgrade_head(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, notify_template: Path) -> str:
    shutil.copyfile(notify_template, tmp_path / "n.db")
    return f"sqlite:///{tmp_path}/n.db"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """SQLite and a fresh PostgreSQL database (migrated by the kit)."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return sqlite_url


#: client timeout in the tests; the fakes' "timeout" fault holds a request longer than this
CLIENT_TIMEOUT_S = 0.5


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        yield client


@pytest.fixture
def fake_wecom() -> Iterator[FakeWeCom]:
    with FakeWeCom() as fake:
        fake.hang_s = 1.0
        yield fake


@pytest.fixture
def fake_dingtalk() -> Iterator[FakeDingTalk]:
    with FakeDingTalk() as fake:
        fake.hang_s = 1.0
        yield fake


@pytest.fixture
def fake_aliyun() -> Iterator[FakeAliyun]:
    with FakeAliyun() as fake:
        fake.hang_s = 1.0
        yield fake


@pytest.fixture
def fake_tencent() -> Iterator[FakeTencent]:
    with FakeTencent() as fake:
        fake.hang_s = 1.0
        yield fake


@pytest.fixture
def fake_webhook() -> Iterator[FakeWebhookReceiver]:
    with FakeWebhookReceiver() as fake:
        fake.hang_s = 1.0
        yield fake


@pytest.fixture
def fake_smtp() -> Iterator[FakeSmtp]:
    with FakeSmtp() as fake:
        yield fake
