"""The incident page's 通知记录 / Notices block and the family block's 已短信通知家属 line, in-process
against the real app (``httpx.ASGITransport``) with the notifier sending SMS to the local Aliyun fake
(tests/fakes/), which checks each request's signature as Aliyun does.

A wristband fall case (wearer 张秀英, emergency contact sealed) is paged to the family (SMS template
``SMS_FAMILY``) and to the dispatcher ``disp`` (in-app); the page must say who (a name, never ``user:7``),
the channel in Chinese, delivered / failed / pending, and in the family block 已短信通知家属 HH:MM (the time
in Asia/Shanghai), or 失败 when the provider refused every try. A viewer sees the block (the log API
admits every user role) but no wearer's name.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from cloud.loop.models import Incident
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import Cloud, make_settings, start_cloud
from tests.cloud.notify.kit import page
from tests.cloud.notify.test_family_and_desks import CONTACT
from tests.cloud.notify.test_family_follow import family_page, wearer_case, write_family_config
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.wecom import FakeWeCom

SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def fake_aliyun() -> Iterator[FakeAliyun]:
    with FakeAliyun() as fake:
        fake.hang_s = 1.0
        yield fake


@pytest.fixture
async def family_cloud(tmp_path: Path, sqlite_url: str, fake_aliyun: FakeAliyun) -> AsyncIterator[Cloud]:
    with FakeWeCom() as wecom:
        config = write_family_config(tmp_path / "notify.toml", wecom, fake_aliyun)
        settings = make_settings(tmp_path, sqlite_url, notify_config_file=config, run_jobs=False)
        async with start_cloud(settings) as c:
            yield c


async def _page(cloud: Cloud, incident_id: int, token_of: str = "dispatcher") -> str:
    headers: dict[str, str] = getattr(cloud, token_of)
    token = headers["Authorization"].removeprefix("Bearer ")
    transport = httpx.ASGITransport(app=cloud.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as browser:
        browser.cookies.set("vigil_session", token)
        r = await browser.get(f"/console/incidents/{incident_id}")
    assert r.status_code == 200, r.text[:500]
    return r.text


def _block(html: str, section_id: str) -> str:
    m = re.search(rf'<section class="card[^"]*" id="{section_id}".*?</section>', html, re.S)
    assert m is not None, f"no #{section_id} block"
    return m.group(0)


def _text(fragment: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment))


async def _send_all(cloud: Cloud) -> None:
    while await cloud.app.state.notify.worker.send_once():
        pass


async def test_notices_say_who_how_and_whether_the_family_was_reached(
    family_cloud: Cloud, fake_aliyun: FakeAliyun
) -> None:
    cloud = family_cloud
    notify = cloud.app.state.notify
    incident_id = wearer_case(cloud)
    notices = _text(_block(await _page(cloud, incident_id), "notices"))
    assert "通知记录" in notices and "本案还没有发出通知" in notices
    family = _text(_block(await _page(cloud, incident_id), "family"))
    assert "未通知家属" in family

    await notify.worker.submit([family_page(incident_id), page(str(incident_id), target="disp")])
    html = await _page(cloud, incident_id)
    assert "正在" in _text(_block(html, "family"))  # pending: written, not yet sent
    assert "待发送" in _text(_block(html, "notices"))

    cloud.clock.advance(42)
    await _send_all(cloud)
    assert [m["PhoneNumbers"] for m in fake_aliyun.sms] == [CONTACT]
    html = await _page(cloud, incident_id)
    # "today" is the cloud's (X-Vigil-Now), not the wall clock's: sent just now, so shown without a date
    sent_at = datetime.fromtimestamp(cloud.clock.now(), SHANGHAI).strftime("%H:%M")
    family = _text(_block(html, "family"))
    assert f"已短信通知家属 {sent_at}" in family, family
    block = _block(html, "notices")
    rows = re.findall(r'<tr class="notice[^"]*".*?</tr>', block, re.S)
    texts = [_text(r) for r in rows]
    sms = [r for r in texts if "短信（家属）" in r]
    assert len(sms) == 1 and "张**的家属" in sms[0] and "已送达" in sms[0] and sent_at in sms[0], texts
    assert any("请致电家属任务" in r and "张**的家属" in r for r in texts)  # the desk's call task
    assert any(" disp " in r and "站内消息" in r and "已送达" in r for r in texts)  # the dispatcher's page
    assert not re.search(r"\buser:\d+", _text(block))  # a person, never a database id
    assert CONTACT not in html and "张秀英" not in html  # no number, no unmasked name on the page

    # a viewer: the block is there (the log API admits every role), the wearer's name is not
    viewer = await _page(cloud, incident_id, "viewer")
    vblock = _text(_block(viewer, "notices"))
    assert "已送达" in vblock and "张**" not in viewer and "家属（手环" in vblock
    assert 'id="family"' not in viewer


async def test_a_family_text_refused_on_every_try_reads_failed(
    family_cloud: Cloud, fake_aliyun: FakeAliyun
) -> None:
    cloud = family_cloud
    notify = cloud.app.state.notify
    incident_id = wearer_case(cloud)
    await notify.worker.submit([family_page(incident_id)])
    for _ in range(4):  # SMS, then the voice call that follows a life-safety case: both refused
        fake_aliyun.fail_next("500")
        cloud.clock.advance(5)
        await notify.worker.send_once()
    html = await _page(cloud, incident_id)
    family = _text(_block(html, "family"))
    assert "失败" in family and "请致电" in family, family
    notices = _text(_block(html, "notices"))
    assert "失败" in notices and "张**的家属" in notices
    assert 'class="family-reached st bad"' in html


async def test_the_family_block_follows_the_route(family_cloud: Cloud) -> None:
    """A wristband case routed to the family (fall: 家属、社区医生) has the block; one whose route pages no
    family (a site's routing sends a silent band to device maintenance only) has none."""
    cloud = family_cloud
    incident_id = wearer_case(cloud)
    routes = {
        "family": [{"department": "health", "roles": ["family_contact", "community_doctor"]}],
        "none": [{"department": "operations", "roles": ["maintenance"]}],
    }
    for which, receivers in routes.items():
        with cloud.state.db.write() as s:
            row = s.get(Incident, incident_id)
            assert row is not None
            row.receivers = receivers
        html = await _page(cloud, incident_id)
        assert ('id="family"' in html) is (which == "family"), which
