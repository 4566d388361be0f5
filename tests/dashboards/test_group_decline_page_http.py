"""A chat group's shared decline link, pressed on the phone page by one member: the page says it is
recorded for them and that the order stays open to the group (not 「系统将另行派遣」, which a person's
own decline says), shows no second form to that member, and the same link still opens for the next
member. A person's own decline keeps its wording. Real app, in-process HTTP, the console's pages.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cloud.notify.links import Purpose
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import Cloud, make_settings, start_cloud
from tests.cloud.notify.test_link_owner import new_case, order
from tests.dashboards.consolekit import BASE_URL

ZH = {"Accept-Language": "zh-CN"}


@pytest.fixture
async def phone(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Cloud, httpx.AsyncClient]]:
    async with (
        start_cloud(make_settings(tmp_path, sqlite_url, run_jobs=False)) as c,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=c.app), base_url=BASE_URL, headers=ZH) as p,
    ):
        yield c, p


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def _decline_link(c: Cloud, owner: str) -> tuple[int, str]:
    """A new case dispatched by the loop and its decline link for ``owner`` (a chat group or a person)."""
    incident_id = await new_case(c)
    links = c.app.state.notify.links
    return incident_id, links.token(Purpose.DECLINE, str(incident_id), owner, now=c.clock.now())


async def _decline(p: httpx.AsyncClient, token: str, note: str) -> httpx.Response:
    r = await p.post(f"/console/l/{token}/act", data={"note": note}, headers={"Origin": BASE_URL})
    assert r.status_code == 303, r.text
    return await p.get(r.headers["location"])


async def test_a_group_members_decline_says_the_order_stays_open(
    phone: tuple[Cloud, httpx.AsyncClient],
) -> None:
    c, p = phone
    incident_id, token = await _decline_link(c, "group:g02")
    assert 'id="act-form"' in (await p.get(f"/console/l/{token}")).text

    page = await _decline(p, token, "我在外地")
    text = _text(page.text)
    assert "已记录：您无法处理。" in text and "仍向群内其他成员开放" in text, text
    assert "另行派遣" not in text
    assert 'id="act-form"' not in page.text  # no second decline from this member's page
    assert order(c, incident_id)[:2] == ("dispatched", None)  # the order was not handed back

    fresh = await p.get(f"/console/l/{token}")  # the next member opens the same link
    assert 'id="act-form"' in fresh.text and "已记录" not in _text(fresh.text)


async def test_a_persons_own_decline_keeps_its_wording(phone: tuple[Cloud, httpx.AsyncClient]) -> None:
    c, p = phone
    _, token = await _decline_link(c, "user:7")
    text = _text((await _decline(p, token, "车坏了")).text)
    assert "系统将另行派遣" in text and "仍向群内其他成员开放" not in text, text


async def test_a_hand_made_member_declined_url_on_a_persons_link_says_nothing(
    phone: tuple[Cloud, httpx.AsyncClient],
) -> None:
    c, p = phone
    _, token = await _decline_link(c, "user:7")
    page = await p.get(f"/console/l/{token}?done=member_declined")
    assert 'id="act-form"' in page.text and "已记录" not in _text(page.text)
