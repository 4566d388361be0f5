"""A decline through a group's shared link (a WeCom / DingTalk robot message every member of the chat reads)
is one member's "I cannot take it", not the group's: it is on the timeline, the order stays open to the
group's other members (same stage, nobody holds it, the escalation still running), the same link takes
another member's decline, the group's accept link still works; once someone holds the order, 409 and
nothing changes. A person's own decline still hands the order back (test_link_owner.py). Real app, HTTP.
"""

from __future__ import annotations

from typing import Any

from cloud.loop.models import Incident, IncidentEvent
from cloud.notify.actions import GROUP_DECLINES_MAX
from cloud.notify.links import Purpose
from tests.cloud.cloudkit import Cloud
from tests.cloud.notify.test_link_owner import cloud, new_case, order, press  # noqa: F401 (the fixture)

GROUP = "group:g02"


def escalation(c: Cloud, incident_id: int) -> tuple[Any, ...]:
    with c.state.db.read() as s:
        row = s.get(Incident, incident_id)
        assert row is not None
        return row.stage, row.owner, row.esc_step, row.esc_loop, row.esc_done, row.esc_reason


def member_rows(c: Cloud, incident_id: int) -> list[tuple[str, str, str]]:
    with c.state.db.read() as s:
        events = s.query(IncidentEvent).filter(IncidentEvent.incident_id == incident_id).all()
        return [(e.actor, e.channel, e.reason) for e in events if e.action == "member_declined"]


async def test_a_groups_decline_leaves_the_order_open_to_the_other_members(cloud: Cloud) -> None:  # noqa: F811
    c = cloud
    incident_id = await new_case(c)
    before = escalation(c, incident_id)
    assert before[:2] == ("dispatched", None)
    token = c.app.state.notify.links.token(Purpose.DECLINE, str(incident_id), GROUP, now=c.clock.now())

    r = await c.client.post(f"/api/v1/links/{token}", json={"note": "我在外地"})
    assert r.status_code == 200, r.text
    assert r.json()["member_only"] is True and r.json()["action"] == "decline"
    assert escalation(c, incident_id) == before  # not handed back; the escalation runs on
    assert "return" not in [e[0] for e in order(c, incident_id)[2]]
    ((actor, channel, reason),) = member_rows(c, incident_id)
    assert (actor, channel) == (GROUP, "notify")
    assert reason.startswith("群内一名成员无法处理") and reason.endswith("我在外地"), reason
    page = (await c.client.get(f"/api/v1/links/{token}")).json()
    assert page["usable"] is True  # another member may say so too

    r = await c.client.post(f"/api/v1/links/{token}", json={})  # a second member, same shared link
    assert r.status_code == 200, r.text
    assert len(member_rows(c, incident_id)) == 2 and escalation(c, incident_id) == before

    r = await press(c, incident_id, Purpose.ACCEPT, GROUP)  # a third member takes it
    assert r.status_code == 200, r.text
    stage, owner, events = order(c, incident_id)
    assert (stage, owner) == ("accepted", GROUP)

    r = await c.client.post(f"/api/v1/links/{token}", json={"note": "也不行"})
    assert r.status_code == 409, r.text
    assert r.json()["detail"].startswith("此工单已由 group:g02 接单"), r.text
    assert order(c, incident_id) == (stage, owner, events)  # nothing changed
    assert len(member_rows(c, incident_id)) == 2


async def test_a_groups_decline_link_is_bounded_and_takes_no_photo(cloud: Cloud) -> None:  # noqa: F811
    c = cloud
    incident_id = await new_case(c)
    token = c.app.state.notify.links.token(Purpose.DECLINE, str(incident_id), GROUP, now=c.clock.now())
    r = await c.client.post(f"/api/v1/links/{token}", json={"photo_b64": "aGVsbG8="})
    assert r.status_code == 400, r.text
    for _ in range(GROUP_DECLINES_MAX):
        assert (await c.client.post(f"/api/v1/links/{token}", json={})).status_code == 200
    r = await c.client.post(f"/api/v1/links/{token}", json={})
    assert r.status_code in (403, 409) and "link_used" in r.text, r.text
    assert len(member_rows(c, incident_id)) == GROUP_DECLINES_MAX
    assert order(c, incident_id)[:2] == ("dispatched", None)
