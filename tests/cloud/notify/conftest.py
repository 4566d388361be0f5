"""Fixtures of the notification tests: one fake provider per test, an httpx client with a short timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.fakes.aliyun import FakeAliyun
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.smtp import FakeSmtp
from tests.fakes.tencent import FakeTencent
from tests.fakes.webhook import FakeWebhookReceiver
from tests.fakes.wecom import FakeWeCom

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
        yield fake  # type: ignore[misc]


@pytest.fixture
def fake_dingtalk() -> Iterator[FakeDingTalk]:
    with FakeDingTalk() as fake:
        fake.hang_s = 1.0
        yield fake  # type: ignore[misc]


@pytest.fixture
def fake_aliyun() -> Iterator[FakeAliyun]:
    with FakeAliyun() as fake:
        fake.hang_s = 1.0
        yield fake  # type: ignore[misc]


@pytest.fixture
def fake_tencent() -> Iterator[FakeTencent]:
    with FakeTencent() as fake:
        fake.hang_s = 1.0
        yield fake  # type: ignore[misc]


@pytest.fixture
def fake_webhook() -> Iterator[FakeWebhookReceiver]:
    with FakeWebhookReceiver() as fake:
        fake.hang_s = 1.0
        yield fake  # type: ignore[misc]


@pytest.fixture
def fake_smtp() -> Iterator[FakeSmtp]:
    with FakeSmtp() as fake:
        yield fake
