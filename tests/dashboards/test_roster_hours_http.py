"""A rotation's daily window (``hours``) on ``/console/config/roster``, over HTTP (no browser): the page's
"next hand-over" is the next change of who is on call from that rotation, as the loop's own
``Rotation.on_call_at`` answers it: the window opening (「由…接班」), the window closing (「… 起本轮值无人」),
a hand-over inside a window that wraps midnight, in Asia/Shanghai local time; a rotation without a window
still hands over by shift arithmetic alone.

The cloud's clock starts at T0, Monday 2026-09-21 22:13:20 in Shanghai."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from alerts.loop.rosters import Rotation, roster_from_dict
from dashboards.admin import next_change
from tests.cloud.cloudkit import *  # noqa: F403 (sqlite_url)
from tests.cloud.cloudkit import T0, Cloud
from tests.dashboards.consolekit import page_text, roster_console

SH = ZoneInfo("Asia/Shanghai")


def at(day: int, hour: int, minute: int = 0) -> float:
    """September ``day`` 2026, ``hour``:``minute`` in Shanghai, as epoch seconds."""
    return datetime(2026, 9, day, hour, minute, tzinfo=SH).timestamp()


ROSTER: dict[str, Any] = {
    "zone": "Asia/Shanghai",
    "responders": [
        {"id": "pm-a", "name": "物业甲", "roles": ["property_management"]},
        {"id": "pm-b", "name": "物业乙", "roles": ["property_management"]},
        {"id": "gw-c", "name": "夜班丙", "roles": ["grid_worker"]},
        {"id": "gw-d", "name": "夜班丁", "roles": ["grid_worker"]},
        {"id": "md-e", "name": "抢修戊", "roles": ["municipal_crew"]},
        {"id": "md-f", "name": "抢修己", "roles": ["municipal_crew"]},
        {"id": "ct-1", "name": "接警员1", "roles": ["call_taker"]},
        {"id": "ct-2", "name": "接警员2", "roles": ["call_taker"]},
    ],
    "rotations": [
        # the property office: one person a day, only 09:00-17:00
        {
            "id": "office",
            "role": "property_management",
            "participants": ["pm-a", "pm-b"],
            "start": at(21, 0),
            "shift_s": 86400,
            "hours": "09:00-17:00",
        },
        # night grid workers, 22:00-06:00 (wraps midnight), 7-hour shifts from 20:00 (not a day's divisor)
        {
            "id": "night",
            "role": "grid_worker",
            "participants": ["gw-c", "gw-d"],
            "start": at(21, 20),
            "shift_s": 7 * 3600,
            "hours": "22:00-06:00",
        },
        # no window: hands over every 12 hours from 08:00, as before
        {
            "id": "crew",
            "role": "municipal_crew",
            "participants": ["md-e", "md-f"],
            "start": at(21, 8),
            "shift_s": 12 * 3600,
        },
        {"id": "desk", "role": "call_taker", "participants": ["ct-1", "ct-2"], "shift_s": 0},
    ],
}


@pytest.fixture
async def console(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    async with roster_console(tmp_path, sqlite_url, ROSTER) as pair:
        yield pair


def _row(page: str, rotation: str) -> str:
    """The rotation's row on the page, in words."""
    start = page.index(">", page.index(f'data-rotation="{rotation}"')) + 1
    return page_text(page[start : page.index("</tr>", start)])


def _duty(page: str) -> str:
    start = page.index('id="on-duty"')
    return page_text(page[start : page.index("</table>", start)])


async def _page(c: Cloud, browser: httpx.AsyncClient, when: float) -> str:
    c.clock.advance(when - c.clock.now())
    r = await browser.get("/console/config/roster")
    assert r.status_code == 200, r.text
    return r.text


async def test_the_window_opens_and_closes(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    # 22:13 Monday: the office is shut; it opens at 09:00 with Tuesday's person (not "00:00" by shift alone)
    page = await _page(c, browser, T0)
    assert "物业 全部片区 无人值班" in _duty(page)
    office = _row(page, "office")
    assert "仅每天 09:00-17:00 值班" in office
    assert "下次交班：2026-09-22 09:00，由物业乙接班" in office, office
    # 10:00 Tuesday: 乙 is in the office; the next change is the office closing at 17:00, to nobody
    page = await _page(c, browser, at(22, 10))
    assert "物业 全部片区 物业乙" in _duty(page)
    office = _row(page, "office")
    assert "下次交班：2026-09-22 17:00 起本轮值无人" in office, office
    assert "2026-09-23 00:00" not in office
    # 17:00 sharp: closed; Wednesday's person at 09:00
    page = await _page(c, browser, at(22, 17))
    assert "物业 全部片区 无人值班" in _duty(page)
    assert "下次交班：2026-09-23 09:00，由物业甲接班" in _row(page, "office")


async def test_a_window_over_midnight(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    # 22:13: 丙's shift (20:00-03:00) inside the 22:00-06:00 window; 丁 takes over at 03:00, after midnight
    page = await _page(c, browser, T0)
    assert "网格员 全部片区 夜班丙" in _duty(page)
    assert "下次交班：2026-09-22 03:00，由夜班丁接班" in _row(page, "night")
    # 04:00: 丁 until the window closes at 06:00 (the shift runs to 10:00, outside the window)
    page = await _page(c, browser, at(22, 4))
    assert "网格员 全部片区 夜班丁" in _duty(page)
    assert "下次交班：2026-09-22 06:00 起本轮值无人" in _row(page, "night")
    # 10:00: nobody; at 22:00 the window opens in the shift 17:00-24:00, 丁's (not 丙 at 17:00)
    page = await _page(c, browser, at(22, 10))
    assert "网格员 全部片区 无人值班" in _duty(page)
    assert "下次交班：2026-09-22 22:00，由夜班丁接班" in _row(page, "night")


async def test_without_a_window_as_before(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    page = await _page(c, browser, T0)
    crew = _row(page, "crew")
    assert "每 12 小时交班，按顺序轮换（自 08:00 起算）" in crew
    assert "下次交班：2026-09-22 08:00，由抢修戊接班" in crew  # 抢修己 since 20:00
    assert "下次交班" not in _row(page, "desk")  # everyone together, all day: no change to announce
    page = await _page(c, browser, at(22, 8))
    assert "下次交班：2026-09-22 20:00，由抢修己接班" in _row(page, "crew")


async def test_english(console: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, browser = console
    browser.cookies.set("vigil_lang", "en")
    page = await _page(c, browser, at(22, 10))
    assert "next hand-over: 2026-09-22 17:00, then nobody on call from this rotation" in _row(page, "office")
    assert "next hand-over: 2026-09-22 22:00, to 夜班丁" in _row(page, "night")


def _rotations() -> list[Rotation]:
    rots = list(roster_from_dict(ROSTER).rotations)
    office, night = rots[0], rots[1]
    return [
        *rots,
        Rotation("together-9-17", "call_taker", "*", ("ct-1", "ct-2"), at(21, 0), 0.0, (9 * 60, 17 * 60)),
        Rotation("later", "grid_worker", "*", ("gw-c", "gw-d"), at(23, 21), 5400.0, night.hours),
        Rotation("alone", "grid_worker", "*", ("gw-c",), at(21, 0), 86400.0, office.hours),
    ]


@pytest.mark.parametrize("rot", _rotations(), ids=lambda r: r.id)
def test_next_change_is_the_rotations_own(rot: Rotation) -> None:
    """For every ``now`` over two and a half days (every 17 minutes): at the instant the page names, the
    rotation (the loop's ``on_call_at``) answers whom the page names, and nothing changes before it
    (sampled each 5 minutes, and one second before)."""
    now = at(21, 21, 3)
    while now < at(24, 9):
        found = next_change(rot, now, SH)
        before = rot.on_call_at(now, SH)
        if rot.id == "desk":
            assert found is None
        else:
            assert found is not None, (rot.id, now)
            when, who = found
            assert when > now and rot.on_call_at(when, SH) == who != before, (rot.id, now)
            samples = [*range(int(now), int(when), 300), when - 1]
            assert all(rot.on_call_at(s, SH) == before for s in samples), (rot.id, now)
        now += 17 * 60


#: the same roster with a swap and a leave on the crew: 戊's Tuesday day shift covered by 庚, and 己 on
#: leave for Tuesday's night shift
WITH_OVERRIDES: dict[str, Any] = {
    **ROSTER,
    "responders": [*ROSTER["responders"], {"id": "md-g", "name": "抢修庚", "roles": ["municipal_crew"]}],
    "overrides": [
        {"responder": "md-e", "by": "md-g", "start": at(22, 0), "end": at(23, 0), "reason": "调班"},
        {"responder": "md-f", "start": at(22, 19), "end": at(23, 9), "reason": "病假"},
    ],
}


async def test_the_next_hand_over_counts_swaps_and_leave(tmp_path: Path, sqlite_url: str) -> None:
    """The page's next hand-over is the loop's answer with overrides applied: not 「由抢修戊接班」 when 戊's
    shift is covered by 庚, and 「起本轮值无人」 when the next person is on leave (the on-duty table above
    it counted overrides already; the hand-over line did not)."""
    async with roster_console(tmp_path, sqlite_url, WITH_OVERRIDES) as (c, browser):
        page = await _page(c, browser, T0)
        assert "下次交班：2026-09-22 08:00，由抢修庚接班" in _row(page, "crew"), _row(page, "crew")
        page = await _page(c, browser, at(22, 10))
        # 庚 covers until 20:00, 己's shift; 己 is on leave (from 19:00): nobody, not 「由抢修己接班」
        assert "下次交班：2026-09-22 20:00 起本轮值无人" in _row(page, "crew"), _row(page, "crew")


def test_next_change_with_overrides_is_the_loops_on_call() -> None:
    """Every 17 minutes over two days: at the instant the page names, the loop's ``Roster.on_call`` (overrides
    applied) answers whom the page names, and nothing changes before it (sampled each 5 minutes)."""
    roster = roster_from_dict(WITH_OVERRIDES)
    crew = roster.rotations[2]

    def on_call(t: float) -> tuple[str, ...]:
        return tuple(r.id for r in roster.on_call("municipal_crew", "*", t))

    now = at(21, 21, 3)
    while now < at(23, 20):
        found = next_change(crew, now, SH, roster.overrides, roster.responders)
        assert found is not None, now
        when, who = found
        before = on_call(now)
        assert when > now and on_call(when) == who != before, now
        assert all(on_call(s) == before for s in [*range(int(now), int(when), 300), when - 1]), now
        now += 17 * 60
