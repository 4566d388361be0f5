"""The KPI tiles above the console's queue count the same rows the queue shows, after every refresh.

The queue is redrawn from ``/console/fragments/queue`` (every 30 s and on each live event); the tiles
were drawn once with the page, so a case closed since left them one ahead of the rows (a demo's console
read 7 open over 6 rows). The fragment now carries the tiles out of band (``hx-swap-oob``), counted
from its own rows. In-process HTTP against the real app; incidents from gateway alert steps.
"""

from __future__ import annotations

import re

import httpx

from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import MANHOLE_1, SMOKE_1, T0, Cloud
from tests.cloud.test_incidents_by_device import close
from tests.dashboards.test_device_incidents_http import raise_alert


def tiles(html: str) -> tuple[int, bool]:
    """(the open-incidents tile's number, whether the tiles block is marked for an out-of-band swap)."""
    block = re.search(r'<div class="kpis" id="kpis"([^>]*)>(.*?)</div>\s*$', html, re.S | re.M)
    assert block is not None, html[-2000:]
    n = re.search(r'id="kpi-incidents">(\d+)<', html)
    assert n is not None
    return int(n.group(1)), 'hx-swap-oob="true"' in block.group(1)


def rows(html: str) -> int:
    return len(re.findall(r"<tr class=\"sev-\d", html))


async def test_the_tiles_follow_the_queue_when_a_case_closes(
    loop_console: tuple[Cloud, httpx.AsyncClient],
) -> None:
    c, browser = loop_console
    c.clock.t = T0
    first = await raise_alert(c, "batch-kpi-01", MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN)
    await raise_alert(c, "batch-kpi-02", SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE)

    page = (await browser.get("/console/")).text
    assert tiles(page) == (2, False) and rows(page) == 2

    await close(c, first)
    fragment = (await browser.get("/console/fragments/queue")).text
    assert rows(fragment) == 1
    assert tiles(fragment) == (1, True)  # swapped in place of the page's tiles, now 1 like the rows
