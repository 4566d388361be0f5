"""The responder's and the resident's phone pages as the people who open them would, in a real browser
(Debian chromium, 360x640 and 390x844, touch): what an expired or broken link says, what a refused action
says, that a done action survives a reload, that the decline page asks first and shows nothing of the
wearer, that a case is rated once and only when closed, that a report hands back its follow link, and
that every control is a thumb's size with no sideways scrolling (docs/phone-pages.md).

Links are minted as the notifier mints them; the ``guarded`` fixture fails a test on any request off the
cloud's origin.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
import uuid
from typing import Any

import httpx
from playwright.sync_api import expect

from alerts.loop.stages import Action, Command
from cloud.notify.links import Purpose
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import BAND_1, GW1, alert_step, batch, body
from tests.dashboards.conftest import LiveCloud
from tests.dashboards.test_responder_browser import _fall, _incident_of

SMALL = {"viewport": {"width": 360, "height": 640}, "is_mobile": True, "has_touch": True}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
#: a run of Latin letters in a Chinese message: the cloud's English detail leaking through
ENGLISH = re.compile(r"[A-Za-z]{3,}")


def _token(
    cloud: LiveCloud, incident_id: int, actor: str, purpose: Purpose, *, now: float | None = None
) -> str:
    token: str = cloud.app.state.notify.links.token(
        purpose, str(incident_id), actor, now=time.time() if now is None else now
    )
    return token


_BUILDINGS = itertools.count(60)


def _smoke_case(cloud: LiveCloud) -> int:
    """A fire alarm of a smoke alarm of this test's own (a new device: no other test's incident)."""
    device = uuid.uuid4().hex[:16]
    n = next(_BUILDINGS)  # a building and grid of its own: alarms of one building are one case
    cloud.api(
        "POST", "/api/v1/devices", json={
            "device_id": device, "kind": "smoke_alarm", "name": f"烟感 {n}-101", "lat": 39.97, "lon": 116.30,
            "address": f"{n}号楼101", "grid": f"G{n}", "community": "中关村", "street": "科学院南路",
            "gateway_id": GW1,
        },
    )  # fmt: skip
    step = alert_step(device, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, time.time())
    cloud.ingest(body(batch(f"b-{uuid.uuid4().hex[:16]}", alerts=[step])))
    return _incident_of(cloud, device)


def _use(cloud: LiveCloud, token: str, note: str = "") -> None:
    r = httpx.post(f"{cloud.url}/api/v1/links/{token}", json={"note": note}, timeout=10)
    assert r.status_code == 200, r.text


def _close(cloud: LiveCloud, incident_id: int) -> None:
    """Dispatched, accepted, on site and resolved by user:7's links, verified and closed by the desk."""
    loop = cloud.app.state.loop
    stage = cloud.api("GET", f"/api/v1/incidents/{incident_id}", user="disp")["incident"]["stage"]
    if stage == "reported":
        loop.act(incident_id, Command(Action.REGISTER, "admin"))
    loop.act(incident_id, Command(Action.DISPATCH, "admin", assignee="worker-7"))
    for purpose in (Purpose.ACCEPT, Purpose.ARRIVED, Purpose.RESOLVED):
        _use(cloud, _token(cloud, incident_id, "user:7", purpose), note="已处理")
    for action in (Action.VERIFY, Action.CLOSE):
        loop.act(incident_id, Command(action, "admin", reason="ok"))


def test_an_expired_or_broken_link_says_so_in_words(contexts: Any, guarded: LiveCloud) -> None:
    """Before: both read 您的角色无权执行此操作 (your role may not do this) under the title "Vigil"."""
    incident_id = _smoke_case(guarded)
    phone = contexts(**SMALL).new_page()
    old = _token(guarded, incident_id, "user:7", Purpose.ACCEPT, now=time.time() - 3 * 86400)
    r = phone.goto(f"/l/{old}")
    assert r is not None and r.status == 403
    said = phone.inner_text("#link-error")
    assert "已过期" in said and "重新发送" in said and "无权" not in said
    assert phone.title().startswith("链接无法打开")

    good = _token(guarded, incident_id, "user:7", Purpose.ACCEPT)
    phone.goto(f"/l/{good[:-6]}")  # a link cut short by a copy
    said = phone.inner_text("#link-error")
    assert "不完整或无效" in said and "无权" not in said
    assert phone.evaluate("document.scrollingElement.scrollWidth") <= 360


def test_a_refused_accept_says_why_in_chinese_and_a_done_one_survives_a_reload(
    contexts: Any, guarded: LiveCloud
) -> None:
    """Before: 输入有误：cannot accept an order that is registered (立案); allowed: dispatch, park; and the
    accepted page's URL was the form's (…/act), so a reload posted the form again."""
    incident_id = _smoke_case(guarded)
    phone = contexts(**PHONE).new_page()
    phone.goto(f"/l/{_token(guarded, incident_id, 'user:7', Purpose.ACCEPT)}")  # not dispatched yet
    phone.click("#act")
    said = phone.inner_text("#link-error")
    assert "「立案」" in said and "「接单」" in said and "没有生效" in said
    assert not ENGLISH.search(said), said

    guarded.app.state.loop.act(incident_id, Command(Action.DISPATCH, "admin", assignee="worker-7"))
    token = _token(guarded, incident_id, "user:7", Purpose.ACCEPT)
    phone.goto(f"/console/l/{token}?done=accept")  # a hand-made or forwarded URL: thanks for nothing
    assert phone.locator("#flash").count() == 0 and phone.locator("#act").count() == 1
    phone.click("#act")
    phone.wait_for_url(re.compile(r"\?done=accept$"))
    assert phone.inner_text("#flash") == "已接单，谢谢！"
    assert "接报时间" in phone.inner_text(".facts")  # when the alarm came in (was the bare 时间)
    assert "已于 20" in phone.inner_text("#used")  # when it was used, in Asia/Shanghai
    assert "已到场" in phone.inner_text("#next")  # what to do next
    posts: list[str] = []
    phone.on("request", lambda req: posts.append(req.url) if req.method == "POST" else None)
    phone.reload()
    assert posts == []  # a reload reads the page; it does not send the form again
    assert phone.locator("#used").count() == 1 and phone.locator("#act").count() == 0

    other = contexts(**PHONE).new_page()  # a colleague paged for the same case, a moment later
    other.goto(f"/l/{_token(guarded, incident_id, 'user:8', Purpose.ACCEPT)}")
    other.click("#act")
    said = other.inner_text("#link-error")
    assert "已经有人接了" in said and not ENGLISH.search(said), said


def test_the_decline_page_asks_first_and_shows_nothing_of_the_wearer(
    contexts: Any, guarded: LiveCloud
) -> None:
    """Before: a big red 无法处理 with the wearer's home, exact position and live refresh, for the person
    who is about to say they will not go; and nothing said that a decline cannot be taken back."""
    guarded.ingest(_fall(time.time()))
    incident_id = _incident_of(guarded, str(BAND_1))
    phone = contexts(**SMALL).new_page()
    asked: list[str] = []
    phone.on("request", lambda req: asked.append(req.url) if "/position" in req.url else None)
    phone.goto(f"/l/{_token(guarded, incident_id, 'user:7', Purpose.DECLINE)}")
    html = phone.content()
    assert "5号楼101" not in html and "39.982345" not in html and "/position" not in html
    assert phone.locator("#home, #position, #coords, #live-position, #map-amap").count() == 0
    ask = phone.inner_text("#decline-ask")
    assert "不能撤销" in ask and "「接单」" in ask
    assert phone.inner_text("#act") == "确认无法处理"

    guarded.app.state.loop.act(incident_id, Command(Action.DISPATCH, "admin", assignee="worker-7"))
    phone.click("#act")
    phone.wait_for_url(re.compile(r"\?done=decline$"))
    assert "系统将另行派遣" in phone.inner_text("#flash")
    assert "调度台" in phone.inner_text("#next")  # a mis-tap: whom to call
    assert "5号楼101" not in phone.content()
    assert asked == []  # the page never asked where the wearer is


def _case_token(follow_url: str) -> tuple[str, int]:
    token = follow_url.rsplit("/l/", 1)[1]
    head = token.split(".", 1)[0]
    claims = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return token, int(claims["i"])


def test_a_case_is_rated_once_and_only_when_closed(contexts: Any, guarded: LiveCloud) -> None:
    """Before: the rating form stood on an open case (and answered 操作冲突：the case is still 'reported'…),
    the reopen form on a case not yet closed, a second phone's rating got English, the title read
    'manhole'."""
    r = httpx.post(
        f"{guarded.url}/api/v1/reports",
        json={"category": "manhole", "description": "井盖松动，走上去会响", "lat": 39.98, "lon": 116.31},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    token, incident_id = _case_token(r.json()["follow_url"])
    resident = contexts(**SMALL).new_page()
    resident.goto(f"/l/{token}")
    assert resident.inner_text("#what").startswith("井盖问题")
    assert resident.locator("#rate-form, #reopen-form").count() == 0
    assert "办结后" in resident.inner_text("#rate-later")

    _close(guarded, incident_id)
    family = contexts(**SMALL).new_page()  # the same link, opened on a second phone
    resident.goto(f"/l/{token}")
    family.goto(f"/l/{token}")
    resident.click("label[for=star4]")
    assert "满意" in resident.inner_text("#star-says")  # the stars in words
    resident.click("#rate")
    resident.wait_for_url(re.compile(r"\?done=rated$"))
    assert "感谢您的评价" in resident.inner_text("#flash")
    assert resident.inner_text("#rating") == "★★★★☆ 满意"
    assert resident.locator("#rate-form").count() == 0

    family.click("label[for=star1]")
    family.click("#rate")
    said = family.inner_text("#link-error")
    assert "已经评价过了" in said and not ENGLISH.search(said), said
    assert family.inner_text("#rating") == "★★★★☆ 满意"  # the first rating stands
    assert family.locator("#reopen-form").count() == 1  # closed: the resident may still reopen


def test_a_report_finds_the_location_itself_and_hands_back_its_follow_link(
    contexts: Any, guarded: LiveCloud
) -> None:
    """Before: 提交 without first tapping 获取我的位置 answered 请先获取位置, and the answer gave only a case
    number: the resident could never follow or rate the case."""
    ctx = contexts(**SMALL, permissions=["geolocation"], geolocation={"latitude": 39.98, "longitude": 116.31})
    page = ctx.new_page()
    page.goto("/report")
    page.select_option("select[name=category]", "manhole")
    page.fill("textarea[name=description]", "井盖松动，走上去会响")
    page.click("#send")  # no 获取我的位置 first
    page.wait_for_selector("#flash")
    assert "案件编号 R" in page.inner_text("#flash")
    assert "承诺" in page.inner_text("#promised")
    assert "收藏" in page.inner_text("#follow-hint")
    page.click("#follow")
    assert page.inner_text("#what").startswith("井盖问题")
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 360


TOO_SMALL = """() => [...document.querySelectorAll('a, button, select, textarea, label, input')]
    .filter(e => !['hidden', 'radio', 'file'].includes(e.type || '') && e.offsetParent !== null)
    .map(e => [e.id || e.tagName, e.getBoundingClientRect()])
    .filter(([id, r]) => r.height < 44 || r.width < 44)
    .map(([id, r]) => id + ' ' + Math.round(r.width) + 'x' + Math.round(r.height))"""


def test_every_control_is_a_thumb_s_size_without_sideways_scrolling(
    contexts: Any, guarded: LiveCloud
) -> None:
    """Before: the language switch 58x25, the map links 102x25, the browser's own file control 25 high
    (with its English "Choose File"), and each outcome's radio stacked above its words."""
    guarded.ingest(_fall(time.time()))
    band_case = _incident_of(guarded, str(BAND_1))
    smoke_case = _smoke_case(guarded)
    for size in (SMALL, PHONE):
        width = size["viewport"]["width"]  # type: ignore[index]
        page = contexts(**size).new_page()
        for path in (
            f"/l/{_token(guarded, band_case, 'user:7', Purpose.ARRIVED)}",
            "/report",
            f"/l/{_token(guarded, smoke_case, 'user:7', Purpose.RESOLVED)}",  # last: its outcomes below
        ):
            page.goto(path)
            assert page.evaluate(TOO_SMALL) == [], path
            assert page.evaluate("document.scrollingElement.scrollWidth") <= width, path
            pick = page.locator("label.photo").bounding_box()
            assert pick is not None and pick["height"] >= 44  # the label is the button
            shown = page.locator("input[type=file]").bounding_box()
            assert shown is None or shown["height"] <= 1  # the browser's own control is not shown
        for value in ("real", "nuisance", "false_alarm"):  # the radio beside its words, one row each
            radio = page.locator(f"input[name=outcome][value={value}]").bounding_box()
            row = page.locator(f"label:has(input[value={value}])").bounding_box()
            assert radio is not None and row is not None
            assert row["height"] < 2 * 44 and radio["x"] - row["x"] < 20


def test_a_family_reads_whose_case_it_is_and_when_they_can_rate(contexts: Any, guarded: LiveCloud) -> None:
    """Before: the family's page was titled 我的报事 (my report: they reported nothing) and said nothing
    about the rating until the case closed."""
    guarded.ingest(_fall(time.time()))
    incident_id = _incident_of(guarded, str(BAND_1))
    token = guarded.app.state.notify.links.family_token(str(incident_id), now=time.time())
    family = contexts(**SMALL).new_page()
    family.goto(f"/l/{token}")
    assert family.title().startswith("家人求助进度")
    assert family.inner_text("#what").startswith("跌倒")
    assert family.inner_text("#status") == "已派单"
    assert "办结后" in family.inner_text("#rate-later")
    assert family.locator("#rate-form, #reopen-form").count() == 0
    assert "5号楼101" not in family.content()  # the family's link: progress only


def test_a_group_s_link_used_by_one_member_does_not_tell_the_others_they_did_it(
    contexts: Any, guarded: LiveCloud
) -> None:
    """A chat group's message holds one link for all its members; the first tap uses it. Before: the
    others read 此链接已于 … 使用 and 到场后请点「已到场」, as if they had accepted."""
    incident_id = _smoke_case(guarded)
    guarded.app.state.loop.act(incident_id, Command(Action.DISPATCH, "admin", assignee="worker-7"))
    token = _token(guarded, incident_id, "group:g02", Purpose.ACCEPT)
    first = contexts(**SMALL).new_page()
    first.goto(f"/l/{token}")
    first.click("#act")
    first.wait_for_url(re.compile(r"\?done=accept$"))
    assert "已到场" in first.inner_text("#next")  # the one who tapped: what next
    second = contexts(**SMALL).new_page()
    second.goto(f"/l/{token}")  # another member, later, from the same message
    assert second.inner_text("#used") == "此链接已用过：群里已有同事点过，您不需要再点。"
    assert second.locator("#next").count() == 0


def test_a_refused_photo_keeps_the_note_and_says_what_to_do(contexts: Any, guarded: LiveCloud) -> None:
    """Before: 输入有误：photo is not an image (JPEG, PNG or WebP expected), and the note typed on site and
    the verdict were gone."""
    incident_id = _smoke_case(guarded)
    phone = contexts(**SMALL).new_page()
    phone.goto(f"/l/{_token(guarded, incident_id, 'user:7', Purpose.RESOLVED)}")
    phone.fill("textarea[name=note]", "厨房油烟，已开窗通风，报警器已复位")
    phone.check("input[name=outcome][value=nuisance]")
    not_an_image = base64.b64encode(b"GIF89a" + b"x" * 100).decode()  # a JPEG by name only
    phone.evaluate(f"document.getElementById('photo_b64').value = 'data:image/jpeg;base64,{not_an_image}'")
    phone.click("#act")
    said = phone.inner_text("#link-error")
    assert "照片无法使用" in said and "不附照片" in said and "not an image" not in said, said
    assert phone.input_value("textarea[name=note]") == "厨房油烟，已开窗通风，报警器已复位"
    assert phone.is_checked("input[name=outcome][value=nuisance]")
    assert phone.input_value("#photo_b64") == ""  # the refused photo is not sent again


def test_a_tap_on_a_slow_network_shows_it_is_sending_and_cannot_be_doubled(
    contexts: Any, guarded: LiveCloud
) -> None:
    """On a slow network the button goes grey and says 正在提交… until the answer comes: the worker sees the
    tap was taken and a second tap sends nothing. (The answer that never comes is the test's own submit
    listener holding the form back, after the page's; a held request would also hold Playwright.)"""
    incident_id = _smoke_case(guarded)
    guarded.app.state.loop.act(incident_id, Command(Action.DISPATCH, "admin", assignee="worker-7"))
    phone = contexts(**SMALL).new_page()
    phone.goto(f"/l/{_token(guarded, incident_id, 'user:7', Purpose.ACCEPT)}")
    phone.evaluate(
        """() => { window.sent = 0; document.getElementById('act-form').addEventListener('submit',
        e => { window.sent += 1; e.preventDefault(); }); }"""
    )
    phone.click("#act")
    button = phone.locator("#act")
    expect(button).to_be_disabled()
    expect(button).to_have_text("正在提交…")
    button.click(force=True)  # a second, impatient tap
    assert phone.evaluate("window.sent") == 1
