"""The device page's 「当前事件」 / 「历史事件」 over HTTP, in-process against the real app: a device's open
incident (title, stage label, opened time in Asia/Shanghai, a link to the incident page), its closed one
under 「历史事件」, another device's incident nowhere, the empty state for a device with none, and the
same in English. Incidents come from gateway alert steps through ingest and the loop."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import httpx

from alerts.contract import HTTP_PATH
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.locale import parse_iso
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import (
    MANHOLE_1,
    SMOKE_1,
    T0,
    Cloud,
    alert_step,
    batch,
    body,
)
from tests.cloud.test_incidents_by_device import close

SHANGHAI = ZoneInfo("Asia/Shanghai")


async def raise_alert(c: Cloud, batch_id: str, device_id: str, kind: DeviceKind, etype: EventType) -> int:
    step = alert_step(device_id, kind, etype, AlertPhase.RAISED, c.clock.now() - 5)
    r = await c.client.post(
        HTTP_PATH,
        content=body(batch(batch_id, alerts=[step])),
        headers={**c.gw1, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    await c.app.state.loop_sink.drained()  # the loop takes committed alerts off the ack path
    r = await c.client.get("/api/v1/incidents", params={"open": True}, headers=c.viewer)
    return max(int(i["id"]) for i in r.json()["incidents"] if i["device_id"] == device_id)


def section(page: str, element_id: str) -> str:
    """The text of the element ``id=element_id`` up to its closing tag (the device page's lists)."""
    start = page.index(f'id="{element_id}"')
    return page[start : page.index("</ul>", start)]


async def test_device_page_links_its_current_and_past_incidents(
    loop_console: tuple[Cloud, httpx.AsyncClient],
) -> None:
    c, browser = loop_console
    c.clock.t = T0
    # a device with no incident yet: the empty state, no history heading
    page = await browser.get(f"/console/devices/{SMOKE_1}")
    assert page.status_code == 200, page.text
    assert "当前事件" in page.text and "该设备目前没有进行中的事件" in page.text
    assert "历史事件" not in page.text

    old = await raise_alert(c, "batch-dev-inc-01", MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN)
    await close(c, old)
    c.clock.advance(3600)
    new = await raise_alert(c, "batch-dev-inc-02", MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN)
    other = await raise_alert(c, "batch-dev-inc-03", SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE)
    inc = (await c.client.get(f"/api/v1/incidents/{new}", headers=c.viewer)).json()["incident"]
    opened = datetime.fromtimestamp(parse_iso(inc["created_at"]), SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
    assert opened.startswith("2026-09-21 ")  # T0 + 1 h is 2026-09-21 in Shanghai too

    page = await browser.get(f"/console/devices/{MANHOLE_1}")
    assert page.status_code == 200, page.text
    text = page.text
    assert "该设备目前没有进行中的事件" not in text
    current, past = section(text, "incidents-current"), section(text, "incidents-past")
    assert f'href="/console/incidents/{new}"' in current and inc["title"] in current
    assert "派遣" in current and opened in current  # the stage label and the opened time, Asia/Shanghai
    assert f'href="/console/incidents/{old}"' in past and "结案" in past
    assert f"/incidents/{old}" not in current and f"/incidents/{new}" not in past
    assert f"/incidents/{other}" not in text  # the smoke alarm's case is not this manhole's

    # the smoke alarm's page has its own case, and no history
    text = (await browser.get(f"/console/devices/{SMOKE_1}")).text
    assert (
        f'href="/console/incidents/{other}"' in section(text, "incidents-current") and "历史事件" not in text
    )

    # English mode: the same lists in English (the event's English label stands in for the Chinese title)
    browser.cookies.set("vigil_lang", "en")
    text = (await browser.get(f"/console/devices/{MANHOLE_1}")).text
    current, past = section(text, "incidents-current"), section(text, "incidents-past")
    assert "Current incidents" in text and "Past incidents" in text and "当前事件" not in text
    assert "dispatched" in current and "cover" in current.lower() and opened in current
    assert "closed" in past
    text = (await browser.get("/console/devices/70b3d57ed0000002")).text
    assert "This device has no incident in progress" in text
