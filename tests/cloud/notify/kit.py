"""Builders shared by the notification tests: a migrated database, a service wired to fake providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from cloud.auth import Credentials
from cloud.db import Database, upgrade_head
from cloud.notify.config import NotifyConfig
from cloud.notify.planner import NotifyRequest
from cloud.notify.render import IncidentFacts
from cloud.notify.service import NotifyService
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.wecom import FakeWeCom

T0 = 1_790_000_000.0  # 2026-09-21 UTC, as in tests/cloud/cloudkit.py


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(min(seconds, 0.01))

    def real_seconds(self, seconds: float) -> float:
        return seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds


def fake_config(
    *,
    wecom: FakeWeCom | None = None,
    aliyun: FakeAliyun | None = None,
    dingtalk: FakeDingTalk | None = None,
    **extra: Any,
) -> NotifyConfig:
    raw: dict[str, Any] = {
        "public_base_url": "https://vigil.test",
        "http_timeout_s": 0.5,
        "backoff_initial_s": 2.0,
        "backoff_max_s": 60.0,
        "sms_inbound_token": "inbound-token",
        **extra,
    }
    if wecom is not None:
        raw["wecom"] = {
            "corp_id": wecom.corp_id,
            "corp_secret": wecom.corp_secret,
            "agent_id": wecom.agent_id,
            "api_url": wecom.api_url,
        }
    if aliyun is not None:
        raw["aliyun_sms"] = {
            "access_key_id": aliyun.key_id,
            "access_key_secret": aliyun.secret,
            "sign_name": "平安社区",
            "template_code": "SMS_1",
            "endpoint": aliyun.url + "/",
        }
        raw["aliyun_voice"] = {
            "access_key_id": aliyun.key_id,
            "access_key_secret": aliyun.secret,
            "tts_code": "TTS_1",
            "endpoint": aliyun.url + "/",
        }
    if dingtalk is not None:
        raw.setdefault("robots", {})["g01"] = {
            "kind": "dingtalk_robot",
            "url": dingtalk.robot_url,
            "secret": dingtalk.secret,
            "per_minute": extra.get("per_minute", 20),
        }
    raw.pop("per_minute", None)
    return NotifyConfig.from_mapping(raw)


@dataclass
class Kit:
    db: Database
    service: NotifyService
    clock: ManualClock
    users: dict[str, int]


def _setup(db_url: str) -> Database:
    if not db_url.startswith("sqlite"):  # SQLite tests start from a migrated copy (conftest)
        upgrade_head(db_url)
    db = Database(db_url)
    creds = Credentials(db, rotation_grace_s=0)
    for name, role in (("grid1", "operator"), ("grid2", "operator"), ("ops", "dispatcher")):
        creds.add_user(name, role, now=T0)
    return db


@asynccontextmanager
async def notify_kit(
    tmp_path: Path, db_url: str, config: NotifyConfig, *, worker_id: str = "w1", migrate: bool = True
) -> AsyncIterator[Kit]:
    db = await asyncio.to_thread(_setup, db_url) if migrate else Database(db_url)
    clock = ManualClock(T0)
    service = NotifyService.build(
        db=db,
        key_file=tmp_path / "secret.key",
        clock=clock,
        registry=CollectorRegistry(),
        config=config,
        worker_id=worker_id,
    )
    users = {n: service.contacts.user_id(n) for n in ("grid1", "grid2", "ops")}
    try:
        yield Kit(db, service, clock, users)
    finally:
        await service.http.aclose()
        db.close()


def page(
    incident_id: str = "37",
    *,
    target: str = "grid1",
    kind: str = "user",
    severity: int = 3,
    step: int = 0,
    channels: tuple[str, ...] = (),
) -> NotifyRequest:
    return NotifyRequest(
        facts=IncidentFacts(
            incident_id=incident_id,
            opened_at=T0,
            severity=severity,
            event_type="fire",
            place="3号楼201",
            department="fire",
        ),
        target_kind=kind,
        target_id=target,
        step=step,
        channel_hint=channels,
    )
