"""What a link's answer holds for the phone pages: what the role needs and no more (docs/phone-pages.md):
a decline link (the person does not go) gets neither the wearer's home nor a position, its page cannot
poll one, and nothing is audited as viewed; once someone accepted, only they follow the wearer; a smoke
alarm's link names the flat; a resident's case link offers the rating only once the case is closed (as
``rate`` decides)."""

from __future__ import annotations

import asyncio

from alerts.contract import HTTP_PATH
from alerts.loop.stages import Action, Command
from cloud.loop.wiring import LoopSink
from cloud.notify.links import Purpose
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import GW1, T0, Cloud, alert_step, batch, body
from tests.cloud.notify.test_responder_position import (
    FLAG,
    HOME,
    PARK,
    WORN_FIX,
    band,
    cloud,  # noqa: F401 (the fixture)
    no_whereabouts,
    open_case,
    position_views,
)


async def test_a_decline_link_gets_no_home_and_no_position(cloud: Cloud) -> None:  # noqa: F811
    c = cloud
    incident_id = await open_case(c, band((1, T0 + 9.0, *PARK, WORN_FIX | FLAG["fall"])))
    links = c.app.state.notify.links
    decline = links.token(Purpose.DECLINE, str(incident_id), "user:7", now=c.clock.now())
    r = await c.client.get(f"/api/v1/links/{decline}")
    assert r.status_code == 200, r.text
    inc = r.json()["incident"]
    assert "home" not in inc and "position" not in inc and "position_refresh_s" not in inc
    assert inc.get("place") != HOME
    no_whereabouts(r.text)
    r = await c.client.get(f"/api/v1/links/{decline}/position")
    assert r.status_code == 400, r.text
    no_whereabouts(r.text)
    assert await position_views(c) == []  # nothing of the wearer was shown to anyone
    accept = links.token(Purpose.ACCEPT, str(incident_id), "user:7", now=c.clock.now())
    r = await c.client.get(f"/api/v1/links/{accept}")  # the same person's accept link still does
    assert r.json()["incident"]["home"] == HOME and "position" in r.json()["incident"]


async def test_a_case_link_offers_the_rating_only_once_the_case_is_closed(cloud: Cloud) -> None:  # noqa: F811
    c = cloud
    r = await c.client.post(
        "/api/v1/reports",
        json={"category": "manhole", "description": "井盖松动", "lat": 39.975, "lon": 116.305},
    )
    assert r.status_code == 201, r.text
    token = r.json()["follow_url"].rsplit("/l/", 1)[1]
    case = (await c.client.get(f"/api/v1/links/{token}")).json()
    assert case["status"] not in ("closed", "rated") and case["can_rate"] is False
    r = await c.client.post(f"/api/v1/links/{token}/rating", json={"score": 5})
    assert r.status_code == 409  # as the answer said: not yet


async def test_only_the_person_on_the_case_follows_the_wearer(cloud: Cloud) -> None:  # noqa: F811
    """Once user:7 accepted, user:8 (paged with them) no longer gets the home or the position; after user:7
    hands the order back, user:7 no longer does and the others (nobody holds it) do again."""
    c = cloud
    incident_id = await open_case(c, band((1, T0 + 9.0, *PARK, WORN_FIX | FLAG["fall"])))
    links = c.app.state.notify.links
    loop = c.app.state.loop
    await asyncio.to_thread(loop.act, incident_id, Command(Action.DISPATCH, "admin", assignee="worker-7"))

    def link(purpose: Purpose, actor: str) -> str:
        return str(links.token(purpose, str(incident_id), actor, now=c.clock.now()))

    async def sees(actor: str) -> bool:
        token = link(Purpose.ARRIVED, actor)
        inc = (await c.client.get(f"/api/v1/links/{token}")).json()["incident"]
        live = (await c.client.get(f"/api/v1/links/{token}/position")).json()
        assert ("home" in inc) == ("position" in inc) == live["live"], (inc, live)
        return bool(live["live"])

    assert await sees("user:7") and await sees("user:8")  # paged, nobody holds it yet
    r = await c.client.post(f"/api/v1/links/{link(Purpose.ACCEPT, 'user:7')}", json={})
    assert r.status_code == 200, r.text
    assert await sees("user:7") and not await sees("user:8")
    r = await c.client.post(f"/api/v1/links/{link(Purpose.DECLINE, 'user:7')}", json={"note": "车坏了"})
    assert r.status_code == 200, r.text
    assert not await sees("user:7") and await sees("user:8")


SMOKE_ID = "70b3d57ed0009101"


async def test_a_smoke_alarm_link_says_which_flat(cloud: Cloud) -> None:  # noqa: F811
    """A fixed installation's address is where the crew goes: the link page gave the grid (G02) alone."""
    c = cloud
    smoke = {
        "device_id": SMOKE_ID, "kind": "smoke_alarm", "name": "烟感 9-201", "lat": 39.972,
        "lon": 116.306, "address": "科学院南路9号楼201室", "grid": "G02", "community": "中关村",
        "street": "科学院南路", "gateway_id": GW1,
    }  # fmt: skip
    r = await c.client.post("/api/v1/devices", json=smoke, headers=c.admin)
    assert r.status_code == 201, r.text
    step = alert_step(SMOKE_ID, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 + 10)
    content = body(batch("batch-smoke-0001", alerts=[step]))
    r = await c.client.post(HTTP_PATH, content=content, headers={**c.gw1, "content-type": "application/json"})
    assert r.status_code == 200, r.text
    sink: LoopSink = c.app.state.loop_sink
    await sink.drained()
    (inc,) = [
        i
        for i in (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
        if i.get("device_id") == SMOKE_ID
    ]
    links = c.app.state.notify.links
    for actor in ("user:7", "group:g02"):
        token = links.token(Purpose.ACCEPT, str(inc["id"]), actor, now=c.clock.now())
        got = (await c.client.get(f"/api/v1/links/{token}")).json()["incident"]
        assert got["place"] == "科学院南路9号楼201室", got
