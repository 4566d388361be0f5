"""An escalation step nobody could be paged at runs the next step at once, and a policy that runs until
resolved says so when its steps end after an acceptance.

Found in ``vigil demo``: a kitchen fire alarm in a flat with no registered resident paged ``role:resident``
(the fire policy's 60 s callback), which failed at once with "nobody to notify", and the property, the grid
worker and the call taker were paged only when the 60 s ran out; a fall with no family registered would
have waited the family's 180 s before the 120 desk. And when the 119 step's wait ended after a grid worker
had accepted the case, the timeline said 升级步骤已用完，仍无人接单 (nobody acknowledged).
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime

from sqlalchemy import select

from cloud.loop.models import NotificationIntentRow, Timer
from tests.cloud.cloudkit import SMOKE_1, T0, Cloud
from tests.cloud.loop.test_end_to_end import act, detail, intents, loop
from tests.cloud.loop.test_rule_out import _fire


async def _settled(c: Cloud, iid: int, step: int) -> list[str]:
    """The states of a step's pages once the app's notify worker (running in the background) settled
    them all (bounded: 10 s)."""
    async with asyncio.timeout(10):
        while True:
            with c.state.db.read() as s:
                q = select(NotificationIntentRow.state).where(
                    NotificationIntentRow.incident_id == iid, NotificationIntentRow.step == step
                )
                states = list(s.scalars(q))
            if states and not {"pending", "claimed"} & set(states):
                return states
            await asyncio.sleep(0.02)


def _escalation_timers(c: Cloud, iid: int) -> list[tuple[int, float, str]]:
    with c.state.db.read() as s:
        q = select(Timer).where(Timer.incident_id == iid, Timer.purpose == "escalation").order_by(Timer.id)
        return [(t.step, t.due_at, t.state) for t in s.scalars(q)]


async def test_a_step_nobody_can_be_paged_at_runs_the_next_step_at_once(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    # the property manager of step 1 is a console user (in-app); the grid worker and the desk are not
    c.app.state.notify.contacts.bind("disp", now=T0, responder_id="prop-1")
    iid = await _fire(c, SMOKE_1, T0 - 1)
    assert [(s, t) for s, _, t in intents(c, iid)] == [(0, "resident")]
    assert _escalation_timers(c, iid) == [(1, T0 + 60, "pending")]  # the resident's 60 s callback
    # the flat has no registered resident: nobody to notify, and the next step is due now, not at T0 + 60
    assert await _settled(c, iid, 0) == ["failed"]
    assert _escalation_timers(c, iid)[0][:2] == (1, T0)
    loop(c).run_due()
    assert {t for s, _, t in intents(c, iid) if s == 1} == {"prop-1", "gw-zhao", "call_taker"}
    d = await detail(c, iid)
    now = [e for e in d["timeline"] if e["action"] == "escalate_now"]
    assert [(e["reason_code"], e["reason_text"]) for e in now] == [
        ("step_unreachable", "第 1 级无人可通知，立即升级下一级")
    ]
    # the step it brought forward says why it came early, not "no acknowledgement in time"
    esc = [e for e in d["timeline"] if e["action"] == "escalate"]
    assert [(e["reason_code"], e["reason_text"]) for e in esc] == [
        ("escalated_unreachable", "上一级无人可通知，已升级（第 2 级）")
    ]
    # step 1 reached someone: its 120 s wait stands (the 119 desk is not paged early)
    assert sorted(await _settled(c, iid, 1)) == ["failed", "failed", "sent"]
    c.clock.advance(5)
    loop(c).run_due()
    assert [t for s, _, t in intents(c, iid) if s == 2] == []
    assert [(st, due) for st, due, state in _escalation_timers(c, iid) if state == "pending"] == [
        (2, T0 + 120)
    ]


async def test_the_steps_of_a_fire_ending_after_an_acceptance_do_not_say_nobody_acknowledged(
    lc_sqlite: Cloud,
) -> None:
    c = lc_sqlite
    c.clock.t = T0
    iid = await _fire(c, SMOKE_1, T0 - 1)
    c.clock.advance(61)
    loop(c).run_due()  # step 1
    c.clock.advance(121)
    loop(c).run_due()  # step 2: the 119 desk
    assert [t for s, _, t in intents(c, iid) if s == 2] == ["desk_119"]
    d = await detail(c, iid)
    esc = [e["reason_code"] for e in d["timeline"] if e["action"] == "escalate"]
    assert esc[-1] == "escalated"  # waited its full 120 s (whether or not step 1 reached anyone)
    r = await act(c, iid, action="accept", actor="gw-zhao")
    assert r.status_code == 200, r.text
    c.clock.advance(301)
    loop(c).run_due()  # the fire policy runs until resolved: its steps end, the case is being worked on
    d = await detail(c, iid)
    stopped = [e for e in d["timeline"] if e["action"] == "escalation_stopped"]
    assert [(e["reason_code"], e["reason_text"]) for e in stopped] == [
        ("esc_steps_done", "升级步骤已全部执行（已有人接单）")
    ]
    assert d["incident"]["escalation"]["reason"] == "steps_done"


async def test_when_no_page_of_a_step_reaches_anyone_the_119_desk_is_paged_without_the_wait(
    lc_sqlite: Cloud,
) -> None:
    """Nobody of the resident, the property, the grid worker or the call taker can be reached (no contact
    bound, no console user): the 119 desk's step comes as soon as each step's pages failed, not after
    60 + 120 s."""
    c = lc_sqlite
    c.clock.t = T0
    iid = await _fire(c, SMOKE_1, T0 - 1)
    assert await _settled(c, iid, 0) == ["failed"]
    loop(c).run_due()
    assert await _settled(c, iid, 1) == ["failed", "failed", "failed"]
    loop(c).run_due()
    assert [t for s, _, t in intents(c, iid) if s == 2] == ["desk_119"]
    d = await detail(c, iid)
    levels = [e["reason_params"]["step"] for e in d["timeline"] if e["action"] == "escalate_now"]
    assert levels == [0, 1]


async def test_the_demo_story_tells_the_next_step_that_came_at_once(lc_sqlite: Cloud) -> None:
    """``vigil demo``'s story printed 「派单 #4 火警 → 住户（无人可通知）」 and nothing more about who was
    paged: the line now goes on to the step that came at once, read from the cloud's API like the rest."""
    from simulators.demo_loop import DispatchStory

    c = lc_sqlite
    c.clock.t = T0
    c.app.state.notify.contacts.bind("disp", now=T0, responder_id="prop-1")
    iid = await _fire(c, SMOKE_1, T0 - 1)
    assert await _settled(c, iid, 0) == ["failed"]
    loop(c).run_due()
    await _settled(c, iid, 1)
    story = DispatchStory(
        functools.partial(c.client.get, headers=c.dispatcher),
        t=lambda zh, en: zh,
        when=lambda epoch: "T",
        parse_time=lambda s: datetime.fromisoformat(s).timestamp(),
    )
    await story.load_names()
    (line,) = [text for _, text in await story.new_lines(final=True)]
    assert line.startswith(f"  [T] 派单 #{iid} ") and "住户（无人可通知） → 立即升级：" in line, line
    assert "物业张（站内信）" in line, line
