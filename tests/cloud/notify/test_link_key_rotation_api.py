"""A responder's link through a key rotation, on the real app (docs/privacy.md "Key management").

A dispatcher pages a responder (fake WeCom) and the link arrives; the operator runs ``vigil cloud key add``
and ``rotate`` and restarts the cloud: the link sent before still opens and acts, new links are signed with
the new key. After ``retire`` and a restart, the old link is refused (``link_forged``) and the new one
works. A link in the format issued before key ids (no ``k`` claim) follows the first key the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

import vigil_cli
from cloud.app import create_app
from cloud.crypto import load_or_create_key
from cloud.settings import CloudSettings
from tests.cloud.cloudkit import ManualClock, RecordingSink, make_settings, start_cloud
from tests.cloud.notify.test_api import bind, links_in, run_worker, send, write_config
from tests.cloud.test_link_key_rotation import claims_of, legacy_token
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.wecom import FakeWeCom


@asynccontextmanager
async def restarted(settings: CloudSettings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The cloud started again on the same database and key file (no provisioning: it is all there)."""
    app = await asyncio.to_thread(create_app, settings, sink=RecordingSink(), clock=ManualClock())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as client:
            yield client, app


def key(settings: CloudSettings, *argv: str) -> None:
    code = vigil_cli.main(
        ["cloud", "key", *argv, "--database-url", settings.database_url,
         "--secret-key-file", str(settings.secret_key_file)]
    )  # fmt: skip
    assert code == 0


async def test_a_responder_link_survives_rotation_until_retire(
    tmp_path: Path, sqlite_url: str, fake_wecom: FakeWeCom, fake_aliyun: FakeAliyun
) -> None:
    config = write_config(tmp_path / "notify.toml", fake_wecom, fake_aliyun)
    settings = make_settings(tmp_path, sqlite_url, notify_config_file=config, run_jobs=False)
    async with start_cloud(settings) as cloud:
        await bind(cloud, "disp", wecom_userid="zhangsan")
        await send(cloud, "T-1")
        await run_worker(cloud)
        old = links_in(fake_wecom.messages[0]["text"]["content"])
        first = load_or_create_key(settings.secret_key_file)
        legacy = legacy_token(first.primary, "T-1", now=cloud.clock.now())
        assert (await cloud.client.get(f"/api/v1/links/{legacy}")).json()["usable"] is True
        dispatcher = cloud.dispatcher

    key(settings, "add")
    key(settings, "rotate")
    async with restarted(settings) as (client, app):
        # sent before the rotation: still opens, and acts
        assert (await client.get(f"/api/v1/links/{old['接单']}")).json()["usable"] is True
        r = await client.post(f"/api/v1/links/{old['接单']}", json={})
        assert r.status_code == 200 and r.json()["action"] == "accept"
        assert (await client.get(f"/api/v1/links/{legacy}")).json()["usable"] is True  # its key is "old"
        body = {"incident_id": "T-2", "target_kind": "user", "target_id": "disp", "place": "5号楼",
                "event_type": "fire"}  # fmt: skip
        r = await client.post("/api/v1/notify/send", json=body, headers=dispatcher)
        assert r.status_code == 200, r.text
        await app.state.notify.worker.run_once()
        new = links_in(fake_wecom.messages[-1]["text"]["content"])
        assert claims_of(new["接单"])["k"] != claims_of(old["接单"])["k"]

    key(settings, "retire", "--void-links")  # at once: voiding the old key's links is what is tested
    async with restarted(settings) as (client, app):
        for token in (old["出发"], legacy):
            r = await client.get(f"/api/v1/links/{token}")
            assert r.status_code == 403 and r.json()["error"] == "link_forged", r.text
        r = await client.post(f"/api/v1/links/{new['接单']}", json={})
        assert r.status_code == 200 and r.json()["action"] == "accept"
