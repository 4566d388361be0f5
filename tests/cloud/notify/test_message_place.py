"""The place a message names (docs/notifications.md, "The place a message names"): where to go, not the grid.

Through the real app: devices registered over HTTP, their alarms ingested over HTTP, the loop opens the
cases, the notifier's worker plans the pages (one person bound in-app on every responder duty: the
words every channel gets). A manhole's message names its road position, a smoke alarm's the
building and unit (never the flat: an SMS passes through a provider, a group chat has many readers; the
signed link's page names the flat), a wristband's the street (never any part of the wearer's home, which
only the personal link's page shows while the case is open). The SMS template parameters (Chinese first,
then English) carry the same place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from alerts.contract import HTTP_PATH
from alerts.loop.routing import ROLES
from cloud.db import Device
from cloud.loop.models import Incident
from cloud.loop.wiring import LoopSink
from cloud.notify.links import Purpose
from cloud.notify.loopbridge import building_of, facts_of
from cloud.notify.render import render, sms_place
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import (
    BAND_1,
    GW1,
    MANHOLE_1,
    T0,
    Cloud,
    alert_step,
    batch,
    body,
    make_settings,
    start_cloud,
)

SMOKE = "70b3d57ed0009102"
FLAT = "科学院南路9号3号楼2单元1203室"
STAIRWELL = "科学院南路9号3号楼2单元"
ROAD = "海淀区中关村大街1号"  # MANHOLE_1's registered address (tests/cloud/cloudkit.py)
HOME = "5号楼101"  # BAND_1's registered home (sealed)
DUTIES = [r for r in ROLES if r != "family_contact"]  # a smoke alarm first pages the flat's resident


@pytest.fixture
async def cloud(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Cloud]:
    async with start_cloud(make_settings(tmp_path, sqlite_url, run_jobs=False)) as c:
        smoke = {
            "device_id": SMOKE, "kind": "smoke_alarm", "name": "烟感 3-2-1203", "lat": 39.972,
            "lon": 116.306, "address": FLAT, "grid": "G02", "community": "中关村",
            "street": "科学院南路", "gateway_id": GW1,
        }  # fmt: skip
        r = await c.client.post("/api/v1/devices", json=smoke, headers=c.admin)
        assert r.status_code == 201, r.text
        # one person on every duty, in-app: every kind's page reaches someone
        bind = {"channels": ["inapp"], "duty_roles": DUTIES}
        r = await c.client.put("/api/v1/notify/contacts/disp", json=bind, headers=c.admin)
        assert r.status_code == 204, r.text
        yield c


async def alarms(c: Cloud) -> dict[str, int]:
    """One alarm of each kind over the HTTP ingest; the incidents' ids by device."""
    steps = [
        alert_step(str(MANHOLE_1), DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0 + 10),
        alert_step(SMOKE, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 + 11),
        alert_step(str(BAND_1), DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, T0 + 12),
    ]
    content = body(batch("batch-place-0001", alerts=steps))
    r = await c.client.post(HTTP_PATH, content=content, headers={**c.gw1, "content-type": "application/json"})
    assert r.status_code == 200, r.text
    sink: LoopSink = c.app.state.loop_sink
    await sink.drained()
    incidents = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"]
    return {str(i["device_id"]).lower(): int(i["id"]) for i in incidents}


async def inapp_titles(c: Cloud, incident_id: int) -> list[str]:
    r = await c.client.get(
        "/api/v1/notify/inapp", params={"incident_id": str(incident_id)}, headers=c.dispatcher
    )
    assert r.status_code == 200, r.text
    return [str(n["title"]) for n in r.json()]


def sms_params(c: Cloud, incident_id: int) -> dict[str, dict[str, Any]]:
    """The SMS template parameters and title of a page about the incident, as the planner renders them."""
    with c.state.db.read() as s:
        row = s.get(Incident, incident_id)
        assert row is not None
        device = s.get(Device, row.device_id) if row.device_id else None
        facts = facts_of(row, device=device)
    return {
        lang: {"title": n.title, **n.params}
        for lang in ("zh", "en")
        for n in [render(facts, lang=lang, reply_ref=str(incident_id))]
    }


async def test_each_kinds_message_names_where_to_go_at_the_level_a_message_may_carry(cloud: Cloud) -> None:
    c = cloud
    ids = await alarms(c)
    manhole, smoke, band = ids[str(MANHOLE_1).lower()], ids[SMOKE], ids[str(BAND_1).lower()]
    await c.app.state.notify.worker.run_once()

    expect = {manhole: ROAD, smoke: STAIRWELL, band: "科学院南路"}
    for incident_id, place in expect.items():
        titles = await inapp_titles(c, incident_id)
        pages = [t for t in titles if not t.startswith("无人可通知")]
        assert pages, titles  # paged in-app, the words every channel gets
        for title in pages:
            assert f" · {place}" in title, title
            assert "G01" not in title and "G02" not in title, title  # the grid sends nobody
        params = sms_params(c, incident_id)
        assert params["zh"]["place"] == params["en"]["place"] == place
        assert params["zh"]["title"].startswith("【紧急】") and params["zh"]["title"].endswith(f" · {place}")
        assert params["en"]["title"].endswith(f" · {place}"), params["en"]

    for text in (*await inapp_titles(c, smoke), str(sms_params(c, smoke))):
        assert "1203" not in text  # the flat: the signed link's page only
    for text in (*await inapp_titles(c, band), str(sms_params(c, band))):
        assert HOME not in text and "5号楼" not in text  # no part of the wearer's home

    # the signed link's page still names the flat (test_decline_link_privacy.py: every role working it)
    links = c.app.state.notify.links
    token = links.token(Purpose.ACCEPT, str(smoke), "group:g02", now=c.clock.now())
    assert (await c.client.get(f"/api/v1/links/{token}")).json()["incident"]["place"] == FLAT


def test_building_of_drops_the_flat_only() -> None:
    assert building_of("中关村大街27号3号楼2单元1203室") == "中关村大街27号3号楼2单元"
    assert building_of("科学院南路9号楼201室") == "科学院南路9号楼"
    assert building_of("7号楼302") == "7号楼"
    assert building_of("中关村大街27号3号楼2单元楼道") == "中关村大街27号3号楼2单元楼道"  # a stairwell: whole
    assert building_of("中关村大街27号附近机动车道") == "中关村大街27号附近机动车道"  # a road: whole
    assert building_of("中关村大街27号1203") == "中关村大街27号"


def test_sms_place_keeps_the_building_and_unit_within_twenty_characters() -> None:
    """An SMS parameter holds 20 characters; a cut used to keep the head (the city) and lose the
    building and unit the crew walks to."""
    assert sms_place("科学院南路9号3号楼2单元") == "科学院南路9号3号楼2单元"  # fits: whole
    long = "北京市海淀区中关村街道科学院南路9号3号楼2单元"  # 24: the divisions go first
    assert sms_place(long) == "科学院南路9号3号楼2单元"
    assert (
        sms_place("广东省深圳市南山区粤海街道科技南十二路28号康佳研发大厦A座")
        == "科技南十二路28号康佳研发大厦A座"
    )
    # a 小区 is no district: nothing to drop, so the tail is kept behind an ellipsis
    got = sms_place("幸福里小区东门往北第二条路32号楼2单元楼道口西侧")
    assert got == "…" + "幸福里小区东门往北第二条路32号楼2单元楼道口西侧"[-19:] and len(got) == 20
    assert got.endswith("2单元楼道口西侧")
    for place in ("北京市海淀区中关村大街27号附近机动车道东侧第三个井盖旁", "x" * 50):
        assert len(sms_place(place)) <= 20
