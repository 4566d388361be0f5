"""A phone polls its person's in-app notices cheaply (docs/notifications.md, "In-app list"): ``mine=true``
leaves out the operators' shared queue an operator-role caller otherwise gets, ``since_id`` answers only
rows newer than the last one the phone has, and bad values are 422."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud.notify.models import InApp
from tests.cloud.cloudkit import T0, Cloud, make_settings, start_cloud


@pytest.fixture
async def cloud(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Cloud]:
    async with start_cloud(make_settings(tmp_path, sqlite_url, run_jobs=False)) as c:
        yield c


async def test_mine_and_since_id_filter_the_in_app_list(cloud: Cloud) -> None:
    c = cloud
    uid = c.app.state.notify.contacts.user_id("disp")
    viewer = c.app.state.notify.contacts.user_id("viewer")
    with c.state.db.write() as s:
        for i, who in enumerate([uid, None, viewer, uid, None, uid]):
            s.add(InApp(user_id=who, incident_id="7", kind="notice", notice={"title": f"n{i}"},
                        created_at=T0 + i))  # fmt: skip

    async def titles(query: str) -> list[str]:
        r = await c.client.get(f"/api/v1/notify/inapp{query}", headers=c.dispatcher)
        assert r.status_code == 200, r.text
        return [n["title"] for n in r.json()]

    assert await titles("") == ["n5", "n4", "n3", "n1", "n0"]  # own + the operators' queue
    assert await titles("?mine=true") == ["n5", "n3", "n0"]
    everything = (await c.client.get("/api/v1/notify/inapp?mine=true", headers=c.dispatcher)).json()
    ids = {n["title"]: n["id"] for n in everything}
    assert await titles(f"?mine=true&since_id={ids['n3']}") == ["n5"]
    assert await titles(f"?mine=true&since_id={ids['n5']}") == []  # nothing new: an empty answer
    assert await titles(f"?since_id={ids['n0']}") == ["n5", "n4", "n3", "n1"]
    for bad in ("?since_id=-1", "?since_id=abc", "?mine=perhaps"):
        r = await c.client.get(f"/api/v1/notify/inapp{bad}", headers=c.dispatcher)
        assert r.status_code == 422, (bad, r.text)
