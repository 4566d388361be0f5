"""The roster, time-limit and desk documents in words on ``/console/config/{name}``, over HTTP (no browser):
who is on duty now per role and zone (the cloud's answer at the cloud's clock, changing at a hand-over),
each rotation, the overrides (who covers whom, when, in force or over), the responders by name, roles and
zones without their base positions; each urgency's limits (「接单 ≤ 3 分钟」「全案：办结 ≤ 3 个工作日」); the
desk's reminder; the same in English. The raw JSON stays below the words."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from alerts.loop.rosters import roster_from_dict
from dashboards.admin import next_change
from tests.cloud.cloudkit import *  # noqa: F403 (sqlite_url)
from tests.cloud.cloudkit import T0, Cloud
from tests.cloud.loop.conftest import ROSTER as LOOP_ROSTER
from tests.dashboards.consolekit import page_text, roster_console

SH = ZoneInfo("Asia/Shanghai")
#: T0 is 2026-09-21 22:13:20 in Shanghai; the grid workers hand over every 4 hours from 20:00
EVENING = datetime(2026, 9, 21, 20, 0, tzinfo=SH).timestamp()
MIDNIGHT = datetime(2026, 9, 22, 0, 0, tzinfo=SH).timestamp()

#: the loop's responders (王网格, 李网格, 社区医生刘, ...), one more doctor and two call takers; rotations
#: and overrides of its own
ROSTER: dict[str, Any] = {
    **LOOP_ROSTER,
    "responders": [
        *LOOP_ROSTER["responders"],
        {"id": "doc-2", "name": "社区医生周", "roles": ["community_doctor"], "zones": ["G02"]},
        {"id": "ct-1", "name": "值班接警员1", "roles": ["call_taker"]},
        {"id": "ct-2", "name": "值班接警员2", "roles": ["call_taker"]},
    ],
    "rotations": [
        {
            "id": "grid-G01",
            "role": "grid_worker",
            "zone": "G01",
            "participants": ["gw-wang", "gw-li"],
            "start": EVENING,
            "shift_s": 4 * 3600,
        },
        {"id": "doc", "role": "community_doctor", "zone": "G02", "participants": ["doc-1"], "start": EVENING},
        {"id": "desk", "role": "call_taker", "zone": "*", "participants": ["ct-1", "ct-2"], "shift_s": 0},
    ],
    "overrides": [
        # 刘 is off sick until 23:00; 周 covers
        {"responder": "doc-1", "by": "doc-2", "start": T0 - 600, "end": T0 + 2800, "reason": "病假"},
        {"responder": "ct-2", "by": None, "start": T0 + 86400, "end": T0 + 2 * 86400},
    ],
}


@pytest.fixture
async def console(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    async with roster_console(tmp_path, sqlite_url, ROSTER) as pair:
        yield pair


def _table(html: str, table_id: str) -> str:
    start = html.index(">", html.index(f'id="{table_id}"'))
    return page_text(html[start : html.index("</table>", start)])


async def _same_as_the_cloud(c: Cloud, page: str) -> None:
    """Each on-duty row names whom the cloud's ``/api/v1/loop/oncall`` names for that role and zone."""
    table = page[page.index('id="on-duty"') : page.index("</table>", page.index('id="on-duty"'))]
    rows = [page_text(row).split() for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[1:]]
    assert len(rows) == 3
    for role, zone in (("grid_worker", "G01"), ("community_doctor", "G02"), ("call_taker", "*")):
        r = await c.client.get(
            "/api/v1/loop/oncall", params={"role": role, "zone": zone}, headers=c.dispatcher
        )
        names = "、".join(p["name"] for p in r.json()["on_call"])
        assert names and names in [row[-1] for row in rows], (role, zone, names, rows)


def _words(html: str) -> str:
    """The page above the JSON: what a dispatcher reads."""
    return page_text(html[: html.index("<details")])


async def test_roster_on_duty_now_changes_at_the_hand_over(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    r = await browser.get("/console/config/roster")
    assert r.status_code == 200
    duty = _table(r.text, "on-duty")
    assert "当前值班（2026-09-21 22:13）" in page_text(r.text)
    assert "网格员 G01 王网格" in duty and "李网格" not in duty  # the first shift: 20:00-24:00
    assert "社区医生 G02 社区医生周" in duty and "社区医生刘" not in duty  # 周 covers for 刘
    assert "值班接警员 全部片区 值班接警员1、值班接警员2" in duty  # everyone together
    await _same_as_the_cloud(c, r.text)
    rotations = _table(r.text, "rotations")
    assert "王网格 → 李网格" in rotations
    assert "每 4 小时交班，按顺序轮换（自 20:00 起算）" in rotations
    assert "下次交班：2026-09-22 00:00，由李网格接班" in rotations
    assert "全体同时值班" in rotations and "一人常值" in rotations
    overrides = _table(r.text, "overrides")
    assert "社区医生周替社区医生刘值班 原因：病假 2026-09-21 22:03 至 2026-09-21 23:00 生效中" in overrides
    assert "值班接警员2请假（无人替班） 2026-09-22 22:13 至 2026-09-23 22:13 未开始" in overrides

    # the cloud's clock passes midnight: 李 takes over, 刘 is back, the swap is over
    c.clock.advance(MIDNIGHT - T0 + 60)
    r = await browser.get("/console/config/roster")
    duty = _table(r.text, "on-duty")
    assert "当前值班（2026-09-22 00:01）" in page_text(r.text)
    assert "网格员 G01 李网格" in duty and "王网格" not in duty
    assert "社区医生 G02 社区医生刘" in duty and "社区医生周" not in duty
    await _same_as_the_cloud(c, r.text)
    assert "下次交班：2026-09-22 04:00，由王网格接班" in _table(r.text, "rotations")
    assert "社区医生周替社区医生刘值班 原因：病假 2026-09-21 22:03 至 2026-09-21 23:00 已结束" in _table(
        r.text, "overrides"
    )


async def test_roster_responders_without_positions(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    _, browser = console
    r = await browser.get("/console/config/roster")
    responders = _table(r.text, "responders")
    assert "王网格 网格员 G01" in responders and "值班接警员1 值班接警员 全部片区" in responders
    words = _words(r.text)
    assert "39.981" not in words and "116.311" not in words  # base positions stay in the JSON only
    assert "grid_worker" not in words and "shift_s" not in words  # no machine words above the JSON
    assert '"shift_s"' in html.unescape(r.text)  # the document itself is still on the page


async def test_sla_in_words(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    r = await browser.get("/console/config/sla")
    assert r.status_code == 200
    sla = _table(r.text, "sla")
    assert "非常紧急 风险等级 高" in sla
    assert "立案 ≤ 2 分钟，派遣 ≤ 1 分钟，接单 ≤ 3 分钟，到场 ≤ 15 分钟，处置 ≤ 1 小时，核查 ≤ 30 分钟" in sla
    assert "办结 ≤ 2 小时 按自然时间计" in sla
    # ordinary cases count working time: 24 working hours are three working days, not "1 天"
    assert "办结 ≤ 3 个工作日 按工作时间计" in sla and "到场 ≤ 1 个工作日" in sla
    doc = (await c.client.get("/api/v1/loop/config/sla", headers=c.admin)).json()["body"]
    doc["critical"]["stages"]["accept"] = 120
    r = await c.client.put("/api/v1/loop/config/sla", json=doc, headers=c.admin)
    assert r.status_code == 200, r.text
    page = (await browser.get("/console/config/sla")).text
    critical = page_text(page[page.index('data-urgency="critical"') : page.index('data-urgency="urgent"')])
    assert "接单 ≤ 2 分钟" in critical and "接单 ≤ 3 分钟" not in critical


async def test_desk_in_words(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    r = await browser.get("/console/config/desk")
    assert "手环佩戴者家属电话未接通时，10 分钟后提醒接警员再次拨打" in _words(r.text)
    r = await c.client.put("/api/v1/loop/config/desk", json={"family_call_retry_s": 300}, headers=c.admin)
    assert r.status_code == 200, r.text
    r = await browser.get("/console/config/desk")
    assert "5 分钟后提醒接警员再次拨打" in _words(r.text)
    assert "family_call_retry_s" not in _words(r.text) and "family_call_retry_s" in r.text


async def test_english(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    _, browser = console
    browser.cookies.set("vigil_lang", "en")
    r = await browser.get("/console/config/roster")
    duty = _table(r.text, "on-duty")
    assert "On duty now (2026-09-21 22:13)" in page_text(r.text)
    assert "grid worker G01 王网格" in duty and "call taker all zones 值班接警员1, 值班接警员2" in duty
    rotations = _table(r.text, "rotations")
    assert "hands over every 4 h, in turn (counted from 20:00)" in rotations
    assert "next hand-over: 2026-09-22 00:00, to 李网格" in rotations
    assert "社区医生周 covers for 社区医生刘 reason: 病假" in _table(r.text, "overrides")
    sla = _table((await browser.get("/console/config/sla")).text, "sla")
    assert "critical risk grade high" in sla and "arrival ≤ 15 min" in sla
    assert "closed ≤ 3 working days working time" in sla and "arrival ≤ 1 working day," in sla
    desk = _words((await browser.get("/console/config/desk")).text)
    assert "the desk is reminded to call again after 10 min" in desk
    # no Chinese words in English but the people's names and the override's reason
    roster_page = (await browser.get("/console/config/roster")).text
    shown = " ".join(_table(roster_page, i) for i in ("on-duty", "rotations", "overrides", "responders"))
    for who in [p["name"] for p in ROSTER["responders"]] + ["病假"]:
        shown = shown.replace(who, "")
    assert not re.search(r"[\u4e00-\u9fff]", shown + sla + desk[desk.index("In words") :]), shown


def test_next_hand_over_matches_the_clouds_rotation() -> None:
    """The page's "next hand-over" is the instant the cloud's own rotation changes hands (no window: by
    shift arithmetic; the daily windows: tests/dashboards/test_roster_hours_http.py)."""
    rots = {r.id: r for r in roster_from_dict(ROSTER).rotations}
    rot = rots["grid-G01"]
    parts = ROSTER["rotations"][0]["participants"]
    for now in (EVENING - 5000, EVENING, T0, MIDNIGHT - 1, MIDNIGHT, MIDNIGHT + 7 * 3600 + 59 * 60):
        found = next_change(rot, now, SH)
        assert found is not None
        at, who = found
        assert at > now or (now < EVENING and at == EVENING)
        assert len(who) == 1 and who[0] in parts
        assert rot.on_call_at(at, SH) == who
        assert rot.on_call_at(at - 1, SH) != who
        # nothing changes between now and the hand-over
        assert rot.on_call_at(max(now, EVENING), SH) == rot.on_call_at(at - 1, SH) or now < EVENING
    assert next_change(rots["desk"], T0, SH) is None  # everyone together
    assert next_change(rots["doc"], T0, SH) is None  # one person
