"""A responder's link acts for that responder only (docs/loop.md, "Responders' links").

Through the real app over HTTP, with links minted as the notifier mints them: once someone has accepted an
order, another responder's decline, arrived or resolved link is refused with 409 (Chinese first) and
changes nothing; the owner's own decline hands it back; a page nobody accepted is still declined by its
recipient. Found by the demo's simulated responders (simulators/demo_actors.py): a decline pressed after a
colleague's accept used to hand the colleague's order back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from alerts.loop.stages import Action, Command
from cloud.loop.models import Incident, IncidentEvent
from cloud.loop.service import Report as LoopReport
from cloud.notify.links import Purpose
from tests.cloud.cloudkit import Cloud, make_settings, start_cloud


@pytest.fixture
async def cloud(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Cloud]:
    async with start_cloud(make_settings(tmp_path, sqlite_url, run_jobs=False)) as c:
        yield c


async def new_case(c: Cloud) -> int:
    loop = c.app.state.loop
    rep = LoopReport(
        type="fire", description="楼道冒烟", reporter="disp", lat=39.98, lon=116.31, register=True
    )
    incident_id = int(await asyncio.to_thread(loop.report, rep, role="dispatcher"))
    # paged to several (parallel paging): the first accept owns it
    await asyncio.to_thread(loop.act, incident_id, Command(Action.DISPATCH, "disp", assignee="wang"))
    return incident_id


async def press(c: Cloud, incident_id: int, purpose: Purpose, actor: str, note: str = "") -> Any:
    token = c.app.state.notify.links.token(purpose, str(incident_id), actor, now=c.clock.now())
    return await c.client.post(f"/api/v1/links/{token}", json={"note": note})


def order(c: Cloud, incident_id: int) -> tuple[str, str | None, list[tuple[str, str, str]]]:
    with c.state.db.read() as s:
        row = s.get(Incident, incident_id)
        assert row is not None
        events = s.query(IncidentEvent).filter(IncidentEvent.incident_id == incident_id).all()
        return row.stage, row.owner, [(e.action, e.actor, e.channel) for e in events]


async def test_another_responders_links_cannot_move_an_accepted_order(cloud: Cloud) -> None:
    c = cloud
    incident_id = await new_case(c)
    r = await press(c, incident_id, Purpose.ACCEPT, "li")
    assert r.status_code == 200, r.text
    before = order(c, incident_id)
    assert before[:2] == ("accepted", "li")

    for purpose, note in ((Purpose.DECLINE, ""), (Purpose.ARRIVED, ""), (Purpose.RESOLVED, "已处理")):
        r = await press(c, incident_id, purpose, "wang", note)
        assert r.status_code == 409, (purpose, r.text)
        detail = r.json()["detail"]
        assert detail.startswith("此工单已由 li 接单") and "only they may" in detail, detail
        assert order(c, incident_id) == before  # nothing changed, no timeline row

    r = await press(c, incident_id, Purpose.DECLINE, "li", "在外地")  # the owner hands it back
    assert r.status_code == 200, r.text
    _, owner, events = order(c, incident_id)
    assert owner is None and ("return", "li", "notify") in events


async def test_a_page_nobody_accepted_is_declined_by_its_recipient(cloud: Cloud) -> None:
    c = cloud
    incident_id = await new_case(c)
    assert order(c, incident_id)[1] is None
    r = await press(c, incident_id, Purpose.DECLINE, "wang")
    assert r.status_code == 200, r.text
    assert ("return", "wang", "notify") in order(c, incident_id)[2]


async def test_the_owners_own_links_still_move_the_order(cloud: Cloud) -> None:
    c = cloud
    incident_id = await new_case(c)
    assert (await press(c, incident_id, Purpose.ACCEPT, "li")).status_code == 200
    assert (await press(c, incident_id, Purpose.ARRIVED, "li")).status_code == 200
    r = await press(c, incident_id, Purpose.RESOLVED, "li", "已扑灭")
    assert r.status_code == 200, r.text
    assert order(c, incident_id)[:2] == ("handled", "li")


async def test_a_residents_rating_and_reopen_through_the_case_link_read_notify_in_the_timeline(
    cloud: Cloud,
) -> None:
    c = cloud
    incident_id = await new_case(c)
    loop = c.app.state.loop
    for cmd in (
        Command(Action.ACCEPT, "wang"),
        Command(Action.HANDLE, "wang", reason="已扑灭"),
        Command(Action.VERIFY, "disp"),
        Command(Action.CLOSE, "disp"),
    ):
        await asyncio.to_thread(loop.act, incident_id, cmd)
    token = c.app.state.notify.links.token(Purpose.CASE, str(incident_id), "case", now=c.clock.now())
    r = await c.client.post(f"/api/v1/links/{token}/rating", json={"score": 2, "comment": "来得慢"})
    assert r.status_code == 200, r.text
    r = await c.client.post(f"/api/v1/links/{token}/reopen", json={"reason": "又冒烟了"})
    assert r.status_code == 200, r.text
    events = order(c, incident_id)[2]
    assert [e for e in events if e[0] in ("rate", "reopen")] == [
        ("rate", "resident", "notify"),
        ("reopen", "resident", "notify"),
    ]
