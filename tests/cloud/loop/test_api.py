"""The loop's API: manual reports and photos, configuration with validation and audit, on-call and
coverage, role checks and masking, the intents outbox. Bad input gets a 4xx that names the problem and
changes nothing."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import update

from cloud.loop.models import NotificationIntentRow
from tests.cloud.cloudkit import T0, Cloud
from tests.cloud.loop.conftest import ROSTER
from tests.cloud.loop.test_end_to_end import act, detail

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
REPORT: dict[str, Any] = {
    "type": "井盖破损",
    "description": "人行道井盖裂开，有行人绊倒风险",
    "lat": 39.981,
    "lon": 116.311,
    "grid": "G01",
    "street": "中关村大街",
    "contact": "13800001111",
}


async def test_manual_report_waits_for_registration_then_dispatches(lc: Cloud) -> None:
    c = lc
    c.clock.t = T0
    r = await c.client.post(
        "/api/v1/loop/reports", json={**REPORT, "lat": None, "lon": None, "grid": ""}, headers=c.dispatcher
    )
    assert r.status_code == 400 and "needs a location" in r.json()["detail"], r.text
    r = await c.client.post("/api/v1/loop/reports", json=REPORT, headers=c.viewer)
    assert r.status_code == 403
    r = await c.client.post("/api/v1/loop/reports", json=REPORT, headers=c.dispatcher)
    assert r.status_code == 201, r.text
    inc = r.json()["incident"]
    assert (
        inc["stage"] == "reported" and inc["source"] == "manual" and inc["reporter_contact"] == "13800001111"
    )
    iid = inc["id"]
    # roles see what they need: the viewer sees neither the reporter nor the phone
    seen = (await detail(c, iid, c.viewer))["incident"]
    assert "reporter_contact" not in seen and seen["reporter"] == "***"
    r = await act(c, iid, action="dispatch", assignee="gw-wang")
    assert r.status_code == 400 and "cannot dispatch an order that is reported" in r.json()["detail"]
    r = await act(c, iid, action="register")
    assert r.status_code == 200, r.text
    got = r.json()["incident"]
    assert got["stage"] == "dispatched" and got["assignee"] == "gw-wang" and got["route_rule"] == "root"
    # the person, not only the roster id, for the console's queue and incident page
    assert got["assignee_name"] == "王网格" and got["owner_name"] is None
    listed = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
    assert [i["assignee_name"] for i in listed if i["id"] == iid] == ["王网格"]


async def test_photos_are_typed_and_bounded(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    iid = (await c.client.post("/api/v1/loop/reports", json=REPORT, headers=c.dispatcher)).json()["incident"][
        "id"
    ]
    url = f"/api/v1/incidents/{iid}/photos"
    r = await c.client.post(url, content=PNG, headers={**c.dispatcher, "Content-Type": "image/png"})
    assert r.status_code == 201
    pid = r.json()["photo_id"]
    again = await c.client.post(url, content=PNG, headers={**c.dispatcher, "Content-Type": "image/png"})
    assert again.json()["photo_id"] == pid  # the same photo twice is stored once
    r = await c.client.post(url, content=b"GIF89a....", headers={**c.dispatcher, "Content-Type": "image/gif"})
    assert r.status_code == 400 and "image/jpeg" in r.json()["detail"]
    r = await c.client.post(url, content=b"not a png", headers={**c.dispatcher, "Content-Type": "image/png"})
    assert r.status_code == 400 and "not a image/png" in r.json()["detail"]
    big = PNG + b"\x00" * (5 * 1024 * 1024)
    r = await c.client.post(url, content=big, headers={**c.dispatcher, "Content-Type": "image/png"})
    assert r.status_code == 400 and "at most 5 MB" in r.json()["detail"]
    r = await c.client.get(f"{url}/{pid}", headers=c.viewer)
    assert r.status_code == 200 and r.content == PNG and r.headers["content-type"] == "image/png"
    assert (await detail(c, iid))["photos"] == [pid]


async def test_configuration_is_validated_audited_and_versioned(lc: Cloud) -> None:
    c = lc
    r = await c.client.get("/api/v1/loop/config/routing", headers=c.viewer)
    assert r.status_code == 200 and r.json()["version"] == 0  # the shipped default
    tree = copy.deepcopy(r.json()["body"])
    tree["routes"][1]["routes"][0]["receivers"][0] = {"department": "street_office", "roles": ["grid_wroker"]}
    r = await c.client.put("/api/v1/loop/config/routing", json=tree, headers=c.admin)
    assert r.status_code == 422 and "routes[1](manhole).routes[0](cover_on_road)" in r.json()["detail"]
    assert "unknown role 'grid_wroker'" in r.json()["detail"]
    r = await c.client.put("/api/v1/loop/config/routing", json=r.json(), headers=c.dispatcher)
    assert r.status_code == 403
    assert (await c.client.get("/api/v1/loop/config/routing", headers=c.viewer)).json()["version"] == 0
    bad = copy.deepcopy(ROSTER)
    bad["rotations"][0]["participants"] = ["nobody"]
    r = await c.client.put("/api/v1/loop/config/roster", json=bad, headers=c.admin)
    assert r.status_code == 422 and "unknown responder 'nobody'" in r.json()["detail"]
    esc = (await c.client.get("/api/v1/loop/config/escalation", headers=c.viewer)).json()["body"]
    esc["medical"]["steps"][0]["wait_s"] = 120
    r = await c.client.put("/api/v1/loop/config/escalation", json=esc, headers=c.admin)
    assert r.status_code == 200 and r.json()["version"] == 1
    entries = (await c.client.get("/api/v1/loop/audit", headers=c.admin)).json()["entries"]
    assert [e["action"] for e in entries[:2]] == ["escalation.update", "roster.update"]
    assert (await c.client.get("/api/v1/loop/audit", headers=c.viewer)).status_code == 403


async def test_on_call_overrides_and_coverage_gaps(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    r = await c.client.get(
        "/api/v1/loop/oncall", params={"role": "grid_worker", "zone": "G01"}, headers=c.viewer
    )
    assert [p["id"] for p in r.json()["on_call"]] == ["gw-wang", "gw-li"]
    assert r.json()["at"].endswith("+08:00")
    r = await c.client.get("/api/v1/loop/oncall", params={"role": "chef"}, headers=c.viewer)
    assert r.status_code == 400 and "unknown role 'chef'" in r.json()["detail"]
    leave = {"responder": "gw-zhao", "by": None, "start": "2026-09-22T08:00:00+08:00",
             "end": "2026-09-22T20:00:00+08:00", "reason": "年假"}  # fmt: skip
    r = await c.client.post("/api/v1/loop/overrides", json=leave, headers=c.dispatcher)
    assert r.status_code == 201, r.text
    r = await c.client.post("/api/v1/loop/overrides", json={**leave, "by": "ghost"}, headers=c.dispatcher)
    assert r.status_code == 422 and "unknown responder 'ghost'" in r.json()["detail"]
    gaps = (await c.client.get("/api/v1/loop/coverage", headers=c.viewer)).json()["gaps"]
    assert {"role": "grid_worker", "zone": "G02", "start": "2026-09-22T08:00:00+08:00",
            "end": "2026-09-22T20:00:00+08:00"} in gaps  # fmt: skip


async def test_dispatch_time_counts_from_the_first_delivered_notification(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    r = await c.client.post("/api/v1/loop/reports", json={**REPORT, "register": True}, headers=c.dispatcher)
    iid = r.json()["incident"]["id"]
    intents = (await c.client.get(f"/api/v1/incidents/{iid}/intents", headers=c.dispatcher)).json()["intents"]
    assert [i["target_id"] for i in intents] == ["gw-wang"]  # the dispatched worker first
    with (
        c.state.db.write() as s
    ):  # what the notifier does when a page is delivered (cloud/notify/loopbridge.py)
        s.execute(
            update(NotificationIntentRow)
            .where(NotificationIntentRow.incident_id == iid)
            .values(state="sent", updated_at=T0 + 201)
        )
    kpi = (await c.client.get("/api/v1/kpi", headers=c.viewer)).json()["rows"][0]
    assert kpi["dispatch_p50_s"] == 201.0  # registered at T0, first notification delivered at T0 + 201
    assert (await c.client.get(f"/api/v1/incidents/{iid}/intents", headers=c.viewer)).status_code == 403
