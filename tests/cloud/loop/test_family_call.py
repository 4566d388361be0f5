"""The desk's call to a wristband wearer's family (``POST /api/v1/incidents/{id}/family-call``).

The whole way on the real roster, notifier and hand-over: a fall opens a case, the call task reaches 甲;
甲 calls, nobody answers (未接通) and marks the notice read: the task stays open (before, read was done and
the next shift never got it), the desk is reminded after ``family_retry_s``, the next shift's 乙 gets the
task and reaches the family (已接通): the task is done, 丙's shift does not get it. Each call is on the
timeline in Chinese with its attempt number and audited; refusals: 403 viewer / field responder, 404,
422, 409.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from cloud.loop.models import AuditEntry, NotificationIntentRow
from tests.cloud.cloudkit import T0, Cloud
from tests.cloud.loop.conftest import band_fall_delivered as _fall
from tests.cloud.loop.test_api import REPORT
from tests.cloud.loop.test_call_task_handover import (
    SHIFT_S,
    _handover,
    _inbox,
    _register_wearer,
    _seal,
    _setup,
    desk,  # noqa: F401 (the fixture)
)
from tests.cloud.loop.test_end_to_end import detail, loop


async def _call(c: Cloud, iid: int, who: dict[str, str], outcome: str, note: str = "") -> Any:
    return await c.client.post(
        f"/api/v1/incidents/{iid}/family-call?language=zh",
        json={"outcome": outcome, "note": note},
        headers=who,
    )


def _desk_reminders(c: Cloud, iid: int) -> list[tuple[str, str]]:
    with c.state.db.read() as s:
        q = select(NotificationIntentRow).where(NotificationIntentRow.incident_id == iid)
        return [
            (i.target_id, i.summary[i.summary.index("（") :])
            for i in s.scalars(q)
            if ":family_call:" in i.dedup_key
        ]


def _calls_in_timeline(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (e["action"], e["actor"], e["reason_text"])
        for e in d["timeline"]
        if e["action"] in ("family_call", "family_call_due")
    ]


async def test_not_reached_keeps_the_task_open_reminds_and_hands_over_reached_closes_it(desk: Cloud) -> None:  # noqa: F811
    c = desk
    who = await _setup(c)
    _register_wearer(c)
    iid = await _fall(c)
    (task,) = await _inbox(c, who["ct-jia"], iid)
    h = _handover(c)
    assert h.run() == []
    state = (await c.client.get(f"/api/v1/incidents/{iid}/family-call", headers=who["ct-jia"])).json()
    assert state["holders"] == ["ct-jia"] and state["attempts"] == 0 and state["last"] is None

    # 甲 calls: nobody answers; the desk's note is kept; the task read (as the demo's desk does)
    c.clock.advance(120)
    r = await _call(c, iid, who["ct-jia"], "not_reached", "无人接听")
    assert r.status_code == 200, r.text
    fc = r.json()["family_call"]
    assert fc["attempts"] == 1 and fc["last"]["outcome"] == "not_reached" and not fc["reached"]
    assert fc["last"]["by"] == "ct-jia" and fc["last"]["note"] == "无人接听"
    retry_s = loop(c).family_retry_s
    mins = round(retry_s / 60)
    assert fc["next_reminder_at"] == c.clock.now() + retry_s
    assert _calls_in_timeline(r.json()) == [
        ("family_call", "ct-jia", f"致电家属：未接通（第 1 次），{mins} 分钟后提醒再拨：无人接听")
    ]
    r = await c.client.post(f"/api/v1/notify/inapp/{task['id']}/read", headers=who["ct-jia"])
    assert r.status_code == 204

    # the reminder: once, on the timeline, and a page to the desk
    c.clock.advance(retry_s + 1)
    assert await asyncio.to_thread(loop(c).run_due) >= 1
    assert await asyncio.to_thread(loop(c).run_due) == 0
    due = [x for x in _calls_in_timeline(await detail(c, iid)) if x[0] == "family_call_due"]
    assert due == [
        ("family_call_due", "system", f"家属未接通已 {mins} 分钟（已拨 1 次），请再次致电或派网格员上门")
    ]
    # to the task's holder by name (甲, on duty), not to the whole desk
    assert _desk_reminders(c, iid) == [("ct-jia", "（家属未接通，请再次致电或派网格员）")]

    # 乙's shift: the task read but not reached is still open, so 乙 gets it
    c.clock.t = T0 + 3601
    assert h.due(c.clock.now())
    (done,) = h.run()
    assert done.to == ("ct-yi",)
    assert len(await _inbox(c, who["ct-yi"], iid)) == 1
    state = (await c.client.get(f"/api/v1/incidents/{iid}/family-call", headers=who["ct-yi"])).json()
    assert state["holders"] == ["ct-yi"] and state["handed_over_at"] == c.clock.now()
    assert state["read_by"] == "ct-jia"

    r = await _call(c, iid, who["ct-yi"], "reached")
    assert r.status_code == 200, r.text
    fc = r.json()["family_call"]
    assert fc["attempts"] == 2 and fc["reached"] and fc["next_reminder_at"] is None
    assert _calls_in_timeline(r.json())[-1] == ("family_call", "ct-yi", "致电家属：已接通（第 2 次）")
    en = (await c.client.get(f"/api/v1/incidents/{iid}?language=en", headers=c.dispatcher)).json()
    assert _calls_in_timeline(en)[-1][2] == "family called: reached (call 2)"

    # reached: done, even unread: 丙's shift does not get it
    c.clock.advance(SHIFT_S)
    assert h.due(c.clock.now()) and h.run() == []
    assert await _inbox(c, who["ct-bing"], iid) == []
    with c.state.db.read() as s:
        audits = s.scalars(select(AuditEntry).where(AuditEntry.action == "incident.family_call")).all()
    assert [(a.actor, a.role, a.target, a.detail) for a in audits] == [
        ("ct-jia", "operator", f"incident:{iid}", {"outcome": "not_reached", "attempt": 1}),
        ("ct-yi", "operator", f"incident:{iid}", {"outcome": "reached", "attempt": 2}),
    ]
    assert "无人接听" not in str([a.detail for a in audits])  # the note is not copied into the audit


async def test_refusals_name_the_problem_and_change_nothing(desk: Cloud) -> None:  # noqa: F811
    c = desk
    who = await _setup(c)
    iid = await _fall(c)
    _seal(c, {"wearer_name": "张秀英"})  # the registry's record without an emergency contact
    # a wristband with no family contact registered: 409
    r = await _call(c, iid, c.dispatcher, "reached")
    assert r.status_code == 409 and "家属联系方式" in r.json()["detail"], r.text
    _register_wearer(c)
    assert (await _call(c, iid, c.viewer, "reached")).status_code == 403
    # a field responder (an operator the roster knows as a grid worker) is not the desk
    token = await asyncio.to_thread(c.state.credentials.add_user, "gw-wang", "operator", now=T0)
    r = await _call(c, iid, {"Authorization": f"Bearer {token}"}, "reached")
    assert r.status_code == 403 and "接警员" in r.json()["detail"], r.text
    assert (await _call(c, 999_999, c.dispatcher, "reached")).status_code == 404
    assert (await _call(c, iid, c.dispatcher, "answered")).status_code == 422
    assert (await _call(c, iid, c.dispatcher, "reached", "x" * 201)).status_code == 422
    r = await c.client.post(f"/api/v1/incidents/{iid}/family-call", json={}, headers=c.dispatcher)
    assert r.status_code == 422
    assert (await c.client.get(f"/api/v1/incidents/{iid}/family-call", headers=c.viewer)).status_code == 403
    # a case that is not a wristband's: 409
    rep = await c.client.post("/api/v1/loop/reports", json=REPORT, headers=c.dispatcher)
    other = rep.json()["incident"]["id"]
    r = await _call(c, other, c.dispatcher, "reached")
    assert r.status_code == 409 and "不是手环事件" in r.json()["detail"]
    state = (await c.client.get(f"/api/v1/incidents/{iid}/family-call", headers=c.dispatcher)).json()
    assert state["attempts"] == 0 and state["last"] is None  # nothing of the refused calls was kept
    # the holder (an operator call taker) and the admin may
    assert (await _call(c, iid, who["ct-jia"], "wrong_number", "空号")).status_code == 200
    r = await _call(c, iid, c.admin, "reached")
    assert r.status_code == 200 and r.json()["family_call"]["attempts"] == 2
    texts = [x[2] for x in _calls_in_timeline(r.json())]
    assert texts[0] == "致电家属：号码有误（第 1 次），请核实联系方式或派网格员上门：空号"


async def test_the_family_endpoint_says_the_desks_call(desk: Cloud) -> None:  # noqa: F811
    """``GET /api/v1/notify/incidents/{id}/family``: each device's ``family_reached`` carries ``call``
    (the desk's newest outcome, when, how many calls), None before the first; no note, no number."""
    c = desk
    await _setup(c)
    _register_wearer(c)
    iid = await _fall(c)

    async def reached() -> dict[str, Any]:
        r = await c.client.get(f"/api/v1/notify/incidents/{iid}/family", headers=c.dispatcher)
        assert r.status_code == 200, r.text
        (entry,) = r.json()
        return dict(entry["family_reached"])

    assert (await reached())["call"] is None
    assert (await _call(c, iid, c.dispatcher, "not_reached", "无人接听")).status_code == 200
    c.clock.advance(60)
    assert (await _call(c, iid, c.dispatcher, "reached")).status_code == 200
    got = await reached()
    assert got["call"] == {"outcome": "reached", "at": c.clock.now(), "attempts": 2}
    assert "无人接听" not in str(got) and "13900001111" not in str(got)
