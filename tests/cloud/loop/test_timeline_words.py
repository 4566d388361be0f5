"""The timeline says why in the reader's language: each system entry carries a reason code and its
parameters (alerts.loop.reasons), the console puts Chinese words on it (English in the en locale), the API
gives the code and a text, and an old row's English sentence is still read, mapped where it is known.

Before the codes, the console showed the loop's English sentences to a Chinese control room
("grouped by per_device", "no acknowledgement within the step's wait", "on call for grid_worker in G02,
nearest available")."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import httpx

from alerts.loop import reasons
from cloud.loop.models import Incident, IncidentEvent
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import T0, Cloud, alert_step
from tests.cloud.loop.test_end_to_end import detail, ingest, loop, only_incident
from tests.cloud.loop.test_timers import BAND_1

#: a word of English (two letters or more); grid cells like G02 and numbers are not words
ENGLISH = re.compile(r"\b[A-Za-z]{2,}\b")


async def _console(c: Cloud, incident_id: int, lang: str = "zh") -> str:
    token = c.dispatcher["Authorization"].removeprefix("Bearer ")
    transport = httpx.ASGITransport(app=c.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as browser:
        browser.cookies.set("vigil_session", token)
        browser.cookies.set("vigil_lang", lang)
        r = await browser.get(f"/console/incidents/{incident_id}")
    assert r.status_code == 200, r.text[:500]
    return r.text


def _timeline_text(html: str) -> str:
    m = re.search(r'<ol class="timeline" id="timeline">(.*?)</ol>', html, re.S)
    assert m is not None, "no timeline"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", m.group(1)))


def _reasons(html: str) -> list[str]:
    return [
        re.sub(r"\s+", " ", r).strip() for r in re.findall(r'<div class="reason">(.*?)</div>', html, re.S)
    ]


async def _grouped_and_escalated(c: Cloud) -> int:
    c.clock.t = T0
    # the doctor is a console user (in-app): the medical step reaches someone and waits its 3 minutes (a
    # step nobody could be paged at would escalate at once: test_escalation_unreachable.py)
    c.app.state.notify.contacts.bind("disp", now=T0, responder_id="doc-1")
    await ingest(c, alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, T0 - 2))
    iid = int((await only_incident(c))["id"])
    c.clock.advance(181)  # the medical step waits 3 minutes for the family or the doctor: nobody accepted
    assert loop(c).run_due() >= 1
    return iid


async def test_a_grouped_and_escalated_case_reads_in_chinese(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    iid = await _grouped_and_escalated(c)
    html = await _console(c, iid)
    said = _reasons(html)
    assert "按设备合并" in said
    assert any(r.startswith("超时未接单，已升级") for r in said), said
    assert any("社区医生值班" in r and "距离最近且空闲" in r for r in said), said
    timeline = _timeline_text(html)
    assert not ENGLISH.findall(timeline), ENGLISH.findall(timeline)

    body = await detail(c, iid)
    by_action = {e["action"]: e for e in body["timeline"]}
    assert by_action["opened"]["reason_code"] == "grouped"
    assert by_action["opened"]["reason_params"] == {"rule": "per_device"}
    assert by_action["opened"]["reason_text"] == "按设备合并"
    assert by_action["escalate"]["reason_code"] == "escalated"
    assert by_action["escalate"]["reason_params"] == {"step": 1, "loop": 0}
    assert by_action["escalate"]["reason_text"] == "超时未接单，已升级（第 2 级）"
    assert by_action["escalate"]["reason"]  # the English sentence is still there for old clients


async def test_the_english_console_says_it_in_english(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    iid = await _grouped_and_escalated(c)
    said = _reasons(await _console(c, iid, lang="en"))
    assert "grouped per device" in said
    assert "no acknowledgement in time: escalated (step 2)" in said
    assert not any(re.search(r"[\u4e00-\u9fff]", r) for r in said if "doctor" in r), said


async def test_rows_written_before_the_codes_still_read_in_chinese(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    iid = await _grouped_and_escalated(c)
    with c.state.db.write() as s:  # what the loop wrote before 0021: English sentences, no code
        row = s.get(Incident, iid)
        assert row is not None
        for action, reason in (
            ("opened", "grouped by per_device"),
            ("escalate", "no acknowledgement within the step's wait"),
            ("dispatch", "on call for community_doctor in G02, nearest available"),
            ("escalation_stopped", "acknowledged"),
            ("return", "不归我们管，请转物业"),  # a person's own words stay as written
        ):
            s.add(
                IncidentEvent(
                    incident_id=iid, at=T0 + 200, actor="system", channel="system", action=action,
                    from_stage="", to_stage=row.stage, reason=reason, detail={},
                )
            )  # fmt: skip
    said = _reasons(await _console(c, iid))
    # the five rows written above, found by the person's own words (unique), not by being the last five:
    # under load the live loop may add its own escalation after them (a CI run at load 11 did)
    end = said.index("不归我们管，请转物业")
    tail = said[end - 4 : end + 1]
    assert tail[0] == "按设备合并"
    assert tail[1].startswith("超时未接单，已升级")
    assert tail[2] == "社区医生值班（网格 G02），距离最近且空闲，已派单"
    assert tail[3] == "已接单，停止升级"
    assert tail[4] == "不归我们管，请转物业"
    body = await detail(c, iid)
    old = [e for e in body["timeline"] if e["reason"] == "grouped by per_device"][-1]  # the old row
    assert (old["reason_code"], old["reason_params"], old["reason"]) == (
        "grouped",
        {"rule": "per_device"},
        "grouped by per_device",
    )


def test_every_code_has_words_in_both_console_catalogs() -> None:
    for name in ("zh-CN.json", "en.json"):
        catalog: dict[str, Any] = json.loads(
            resources.files("dashboards").joinpath("locales", name).read_text("utf-8")
        )
        missing = [code for code in reasons.TEMPLATES if "reason." + code not in catalog]
        assert not missing, (name, missing)


def test_unknown_codes_and_sentences_fall_back_to_the_stored_text() -> None:
    assert reasons.text("opened", "", None, "something new", "zh") == "something new"
    assert reasons.text("opened", "grouped", {"rule": "by_lamp_post"}, "", "zh") == "按规则“by_lamp_post”合并"
    assert reasons.text("x", "no_such_code", {}, "kept", "zh") == "kept"
    assert reasons.resolve("routed", "", None, "root/manhole/cover_on_road") == (
        "routed",
        {"rule": "root/manhole/cover_on_road"},
    )
    assert reasons.text("routed", "", None, "root/manhole/cover_on_road", "zh") == (
        "分派至：无（规则：井盖 › 机动车道井盖）"
    )


def test_the_desks_reminders_say_why_in_chinese() -> None:
    """Before: the call takers' notice read "井盖移位 @ 中关村大街 (overdue:accept,case)" / "(returned)"."""
    title = "井盖移位 @ 中关村大街"
    assert reasons.desk_summary(title, "returned") == "井盖移位 @ 中关村大街（已退回，待改派）"
    assert reasons.desk_summary(title, "overdue:accept,case") == "井盖移位 @ 中关村大街（超时：接单、全案）"
    for why in ("returned", "overdue:register", "overdue:dispatch,arrive,handle,verify"):
        assert not ENGLISH.findall(reasons.desk_summary(title, why)), why


def test_a_coverage_gap_says_who_was_missing() -> None:
    said = reasons.text(
        "coverage_gap", "nobody_on_call", {"role": "community_doctor", "zone": "G02"}, "", "zh"
    )
    assert said == "社区医生（网格 G02）无人值班，未能派单"
    assert reasons.text("coverage_gap", "", None, "nobody on call for grid_worker in *", "zh") == (
        "网格员（全部网格）无人值班，未能派单"
    )
