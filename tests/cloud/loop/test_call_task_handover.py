"""A 请致电家属 call task not done by the end of a shift goes to the next shift's call takers.

The whole way, on the real roster code and the in-app API: a wristband fall opens a case, the loop pages
the wearer's family, the notifier delivers the call task to the call taker on duty (甲, 8-hour rotation),
甲's shift ends with the task not done; at the shift change the task appears in 乙's in-app list
(``GET /api/v1/notify/inapp``) marked 【交接】, audited, on the incident's timeline (the console shows whose
it is now); a second look at the same shift change hands nothing again; once 乙 marks it read (done),
the next shift (丙) does not get it.

Before the hand-over existed, 乙 never saw the task: it was addressed to the shift on duty when delivered.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from alerts.loop.rosters import Roster
from cloud.db import Device
from cloud.loop.models import AuditEntry
from cloud.notify.family import CallTaskHandover
from cloud.notify.models import InApp
from tests.cloud.cloudkit import T0, Cloud, make_settings, start_cloud
from tests.cloud.loop.conftest import ROSTER, band_fall_delivered
from tests.cloud.loop.test_timers import BAND_1

SHIFT_S = 8 * 3600.0
#: 甲's shift ends one hour after T0, then 乙's, then 丙's
START = T0 + 3600.0 - SHIFT_S
TAKERS = {"ct-jia": "接警员甲", "ct-yi": "接警员乙", "ct-bing": "接警员丙"}


async def _setup(c: Cloud) -> dict[str, dict[str, str]]:
    roster: dict[str, Any] = copy.deepcopy(ROSTER)
    roster["responders"] += [{"id": k, "name": v, "roles": ["call_taker"]} for k, v in TAKERS.items()]
    roster["rotations"].append(
        {"id": "desk", "role": "call_taker", "zone": "*", "participants": list(TAKERS), "start": START,
         "shift_s": SHIFT_S}
    )  # fmt: skip
    r = await c.client.put("/api/v1/loop/config/roster", json=roster, headers=c.admin)
    assert r.status_code == 200, r.text
    headers = {}
    for name in TAKERS:  # platform users named as the roster names them
        token = await asyncio.to_thread(c.state.credentials.add_user, name, "operator", now=T0)
        headers[name] = {"Authorization": f"Bearer {token}"}
    return headers


@pytest.fixture
async def desk(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cloud]:
    """The cloud with no background jobs or worker: the test drives the notifier and the hand-over."""
    monkeypatch.setenv("VIGIL_CLOUD_HANDOVER_TICK_S", "0")
    async with start_cloud(make_settings(tmp_path, sqlite_url, run_jobs=False)) as c:
        yield c


def _seal(c: Cloud, private: dict[str, str]) -> None:
    """Store ``private`` on the band sealed, as the registry stores it."""
    with c.state.db.write() as s:
        dev = s.get(Device, BAND_1)
        assert dev is not None
        dev.private_enc = c.app.state.notify.contacts.box.seal(private)


def _register_wearer(c: Cloud) -> None:
    """The band's wearer and emergency contact, sealed as the registry stores them."""
    _seal(c, {"wearer_name": "张秀英", "emergency_contact_phone": "13900001111"})


async def _inbox(
    c: Cloud, who: dict[str, str], incident_id: int, *, mine: bool = True
) -> list[dict[str, Any]]:
    """The call tasks in ``who``'s in-app list (``mine``: their own, without the operators' queue)."""
    params = {"incident_id": str(incident_id), "mine": str(mine).lower()}
    r = await c.client.get("/api/v1/notify/inapp", params=params, headers=who)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()
    return [i for i in items if str(i.get("title", "")).startswith(("请致电家属", "【交接】请致电家属"))]


def _handover(c: Cloud) -> CallTaskHandover:
    h: CallTaskHandover = c.app.state.call_task_handover
    return h


async def _console_timeline(c: Cloud, incident_id: int) -> str:
    token = c.dispatcher["Authorization"].removeprefix("Bearer ")
    transport = httpx.ASGITransport(app=c.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as browser:
        browser.cookies.set("vigil_session", token)
        r = await browser.get(f"/console/incidents/{incident_id}")
    assert r.status_code == 200, r.text[:300]
    m = re.search(r'<ol class="timeline" id="timeline">(.*?)</ol>', r.text, re.S)
    assert m is not None
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", m.group(1)))


async def test_an_open_call_task_is_handed_to_the_next_shift_once(desk: Cloud) -> None:
    c = desk
    who = await _setup(c)
    _register_wearer(c)
    iid = await band_fall_delivered(c)
    (task,) = await _inbox(c, who["ct-jia"], iid)  # delivered to the call taker on duty
    assert task["title"].startswith("请致电家属") and not task["for_all_operators"]
    assert await _inbox(c, who["ct-yi"], iid) == []
    h = _handover(c)
    assert h.due(c.clock.now())  # the first look always runs (a change missed while down)
    assert h.run() == []  # 甲 is on duty and has it: nothing to hand over

    c.clock.advance(1800)
    assert not h.due(c.clock.now())  # no shift change in this half hour
    c.clock.advance(1801)  # 乙's shift began at T0 + 3600
    assert h.due(c.clock.now())
    (done,) = h.run()
    assert done.to == ("ct-yi",) and done.holders_before == ("ct-jia",)
    (mine,) = await _inbox(c, who["ct-yi"], iid)
    assert mine["title"].startswith("【交接】请致电家属") and not mine["for_all_operators"]
    assert any("上一班未完成" in line for line in mine["lines"])
    assert len(await _inbox(c, who["ct-jia"], iid)) == 1  # 甲 keeps the row: whoever calls first
    assert h.run() == []  # a second look (another process, a restart) hands nothing again
    assert len(await _inbox(c, who["ct-yi"], iid)) == 1

    with c.state.db.read() as s:
        audits = s.scalars(select(AuditEntry).where(AuditEntry.action == "call_task.handover")).all()
    assert [(a.target, a.detail["to"], a.detail["from"]) for a in audits] == [
        (f"incident:{iid}", ["ct-yi"], ["ct-jia"])
    ]
    timeline = await _console_timeline(c, iid)
    assert "请致电家属任务交接" in timeline and "已交接给下一班：接警员乙" in timeline, timeline

    # 乙 calls the family and marks it done: 丙's shift does not get it
    r = await c.client.post(f"/api/v1/notify/inapp/{mine['id']}/read", headers=who["ct-yi"])
    assert r.status_code == 204, r.text
    c.clock.advance(SHIFT_S)
    assert h.due(c.clock.now())
    assert h.run() == []
    assert await _inbox(c, who["ct-bing"], iid) == []


async def test_a_task_nobody_was_on_duty_for_goes_to_the_shift_that_comes_on(desk: Cloud) -> None:
    """Delivered into every operator's queue (no call taker on duty), then a shift begins: the incoming
    call taker gets it in their own list."""
    c = desk
    roster: dict[str, Any] = copy.deepcopy(ROSTER)
    roster["responders"].append({"id": "ct-jia", "name": "接警员甲", "roles": ["call_taker"]})
    roster["rotations"].append(
        {"id": "desk", "role": "call_taker", "zone": "*", "participants": ["ct-jia"], "start": T0 + 3600,
         "shift_s": 0}
    )  # fmt: skip
    r = await c.client.put("/api/v1/loop/config/roster", json=roster, headers=c.admin)
    assert r.status_code == 200, r.text
    token = await asyncio.to_thread(c.state.credentials.add_user, "ct-jia", "operator", now=T0)
    jia = {"Authorization": f"Bearer {token}"}
    _register_wearer(c)
    iid = await band_fall_delivered(c)
    assert await _inbox(c, jia, iid) == []  # not in 甲's own list
    (queued,) = await _inbox(c, jia, iid, mine=False)
    assert queued["for_all_operators"]  # nobody on duty: the operators' queue
    h = _handover(c)
    assert h.due(c.clock.now()) and h.run() == []
    c.clock.advance(3600)
    assert h.due(c.clock.now())
    (done,) = h.run()
    assert done.to == ("ct-jia",) and done.holders_before == ("值班台",)
    (mine,) = await _inbox(c, jia, iid)
    assert mine["title"].startswith("【交接】") and not mine["for_all_operators"]


async def test_a_failed_hand_over_is_tried_again_at_the_next_tick(desk: Cloud) -> None:
    c = desk
    h = _handover(c)
    await h.job(None)  # the first look: nothing open
    c.clock.advance(3600.0)  # 乙's shift begins in the roster below
    h._roster = _roster_with_desk
    calls: list[float] = []

    def broken(now: float | None = None) -> list[Any]:
        calls.append(c.clock.now())
        raise RuntimeError("database went away")

    real = h.run
    h.run = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await h.job(None)
    h.run = real  # type: ignore[method-assign]
    assert h.due(c.clock.now())  # the shift change is still pending
    assert calls == [c.clock.now()]


def _roster_with_desk() -> Roster:
    from alerts.loop.rosters import Responder, Rotation

    people = {k: Responder(k, v, frozenset({"call_taker"})) for k, v in TAKERS.items()}
    return Roster(people, (Rotation("desk", "call_taker", "*", tuple(TAKERS), START, SHIFT_S),))


async def test_a_task_is_handed_over_for_two_days_not_forever(desk: Cloud) -> None:
    """Each hand-over writes a new row, but the task keeps its age: a call taker who lacks it gets it while
    the task is under 48 h old, not after (before, the newest hand-over row kept it young forever)."""
    c = desk
    who = await _setup(c)
    _register_wearer(c)
    iid = await band_fall_delivered(c)
    h = _handover(c)
    yi = await asyncio.to_thread(c.app.state.notify.contacts.user_id, "ct-yi")

    def forget_yi() -> None:  # 乙's rows gone (say the account was re-created): 乙 lacks the task
        with c.state.db.write() as s:
            for i in s.scalars(select(InApp).where(InApp.incident_id == str(iid), InApp.user_id == yi)):
                s.delete(i)

    def run_at(hours: float) -> list[str]:
        return [x for d in h.run(T0 + hours * 3600.0) for x in d.to]

    assert run_at(1) == ["ct-yi"]
    assert run_at(9) == ["ct-bing"]
    forget_yi()
    assert run_at(25) == ["ct-yi"]  # 乙's shift again, the task 25 h old
    forget_yi()
    assert run_at(49) == []  # 乙's shift again, the task 49 h old: the supervisor's, not the next shift's
    assert await _inbox(c, who["ct-yi"], iid) == []
