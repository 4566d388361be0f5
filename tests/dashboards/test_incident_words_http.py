"""The incident page's header in an operator's words, over HTTP (no browser): the routing rule and the
escalation policy as Chinese labels (the machine ids only in ``title`` / ``data-``), the next level
counted from 1 with whom it pages, 「电话确认，立即升级」 only where the policy waits for the desk's
confirmation, the forward action (not 退回) as the blue button, and every action that takes a case away or
stops it carrying its 「确认…？」 question (console.js asks it); Chinese and English."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cloud.notify.links import Purpose
from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403 (sqlite_url)
from tests.cloud.cloudkit import (
    MANHOLE_1,
    SMOKE_1,
    Cloud,
)
from tests.dashboards.consolekit import dispatcher_console, open_incident


@pytest.fixture
async def console(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    async with dispatcher_console(tmp_path, sqlite_url) as cb:
        yield cb


def _text(html: str) -> str:
    """What a reader sees: tags (and so their attributes) dropped, spaces folded."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _dd(html: str, dd_id: str) -> str:
    m = re.search(rf'<dd id="{dd_id}"[^>]*>(.*?)</dd>', html, re.S)
    assert m, f"no #{dd_id}"
    return m.group(1)


async def test_header_words_and_confirm_button(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    roster = {
        "zone": "Asia/Shanghai",
        "responders": [
            {"id": "r-wang", "name": "网格员王建国", "roles": ["grid_worker"], "lat": 39.98, "lon": 116.31}
        ],
        "rotations": [],
    }
    r = await c.client.put("/api/v1/loop/config/roster", json=roster, headers=c.admin)
    assert r.status_code == 200, r.text
    cover = await open_incident(c, MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, 1.0)
    api = (await c.client.get(f"/api/v1/incidents/{cover}", headers=c.dispatcher)).json()["incident"]
    rule, policy = api["route_rule"], api["escalation"]["policy"]
    assert rule.startswith("root/manhole/") and policy == "manhole"  # the machine words this page hides

    page = (await browser.get(f"/console/incidents/{cover}")).text
    route, esc = _dd(page, "route"), _dd(page, "escalation")
    assert f'title="{MANHOLE_1}" id="device">智能井盖 井盖1</a>' in page  # the device by name, not its id
    assert "井盖 › " in _text(route) and "root" not in _text(route) and "/" not in _text(route)
    assert f'title="配置编号：{rule}"' in route and f'data-rule="{rule}"' in route
    assert _text(esc).strip().startswith("井盖升级流程") and "manhole" not in _text(esc)
    assert 'data-policy="manhole"' in esc and 'title="配置编号：manhole"' in esc
    # step 1 (every role routed) ran at once; the next is level 2: grid worker and municipal crew
    assert "下一级：第 2 级（网格员、市政抢修）" in _text(esc)
    # 其他人员: the roster by name in a datalist (the form still sends the id)
    datalist = re.search(r'<datalist id="roster-people">(.*?)</datalist>', page, re.S)
    assert datalist and '<option value="r-wang" label="网格员王建国 · 网格员">' in datalist.group(1)
    assert 'list="roster-people"' in page and "人员编号" not in page
    # the manhole policy has no step waiting for the desk: the confirm button would do nothing
    assert 'value="confirm"' not in page
    buttons = re.findall(r'<button type="submit" name="action" value="(\w+)" class="([^"]*)"', page)
    assert buttons and next(a for a, cls in buttons if cls == "primary") not in ("return", "park")
    for action, _ in buttons:
        if action in ("return", "park", "dismiss", "reject"):
            assert re.search(rf'value="{action}"[^>]*data-confirm="确认[^"]+？', page), action

    # accepted from the responder's link: the line says why the escalation stopped, in the timeline's words
    act = {"action": "dispatch", "assignee": "r-wang", "idempotency_key": "k-dispatch"}
    r = await c.client.post(f"/api/v1/incidents/{cover}/actions", json=act, headers=c.dispatcher)
    assert r.status_code == 200, r.text
    token = c.app.state.notify.links.token(Purpose.ACCEPT, str(cover), "r-wang", now=c.clock.now())
    assert (await c.client.post(f"/api/v1/links/{token}", json={})).status_code == 200
    esc = _dd((await browser.get(f"/console/incidents/{cover}")).text, "escalation")
    assert "已接单，停止升级" in _text(esc) and "下一级" not in _text(esc), _text(esc)

    fire = await open_incident(c, SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, 0.4)
    page = (await browser.get(f"/console/incidents/{fire}")).text
    assert _text(_dd(page, "escalation")).strip().startswith("火情升级流程")
    m = re.search(r'value="confirm" data-action="confirm" class="danger" data-confirm="([^"]+)"', page)
    assert m and m.group(1).startswith("确认现场确有险情"), "the fire policy waits for the desk"
    assert re.search(r'data-action="rule_out" class="warn" data-confirm="确认排除', page)
    assert 'src="/console/static/app/console.js"' in page  # the script that asks

    browser.cookies.set("vigil_lang", "en")
    page = (await browser.get(f"/console/incidents/{cover}")).text
    assert "manhole › cover" in _text(_dd(page, "route"))
    assert (
        _text(_dd(page, "escalation"))
        .strip()
        .startswith("manhole escalation · acknowledged: escalation stopped")
    )
