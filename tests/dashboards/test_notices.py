"""dashboards.notices: who a delivery was for (from its key, the roster, the family list), the family block's
line from ``family_reached``, read / acted, and the timeline's words; no browser, no cloud.

The delivery keys are the cloud's own forms: a loop intent's ``incident:version:step:loop:kind:target``
(``alerts.loop.intents.dedup_key``) + ``/recipient/channel`` (``cloud.notify.planner``), checked against
``dedup_key`` itself below so a change of that form fails here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from alerts.loop.intents import dedup_key
from alerts.loop.routing import family_target
from dashboards import notices
from dashboards.i18n import Translator

T = Translator("zh", ZoneInfo("Asia/Shanghai"))
EN = Translator("en", ZoneInfo("Asia/Shanghai"))
AT = datetime(2026, 11, 27, 2, 42, tzinfo=UTC).timestamp()  # 10:42 in Asia/Shanghai
ROSTER = {"r-0007": "王网格"}
WEARERS = {"dev-1234": "张**"}


def clock(ts: float | None) -> str:
    return T.clock(ts, now=ts)  # "today" for the test: HH:MM


def _who(key: str, recipient: str = "user:18", t: Translator = T, **more: str) -> tuple[str, str]:
    d = {"dedup_key": key, "recipient": recipient, **more}
    return notices.who_of(d, t=t, lang=t.lang, roster=ROSTER, wearers=WEARERS)


def test_who_a_delivery_was_for_comes_from_its_key_and_the_roster() -> None:
    person = dedup_key(12, 1, 0, 0, "user", "r-0007")
    assert notices.intent_target(f"{person}/user:18/inapp") == ("user", "r-0007")
    assert _who(f"{person}/user:18/inapp") == ("王网格", "user")
    duty = dedup_key(12, 1, 1, 0, "role", "grid_worker")
    assert _who(f"{duty}/user:18/sms") == ("网格员（值班）", "role")
    assert _who(f"{duty}/user:18/sms", t=EN) == ("grid worker (on duty)", "role")
    desk = dedup_key(12, 1, 1, 0, "group", "desk_120")
    # the group by its label, not its machine name (a desk_120 member read "desk_120 组成员" before)
    assert _who(f"{desk}/user:23/inapp") == ("120 急救中心 组成员", "group")
    assert "desk_120" not in _who(f"{desk}/user:23/inapp", t=EN)[0]
    fam = dedup_key(12, 1, 0, 0, "role", family_target("dev-1234"))
    assert _who(f"{fam}/family:dev-1234/sms_family", "family:dev-1234") == ("张**的家属", "family")
    assert _who(f"{fam}/family:dev-9876/sms_family", "family:dev-9876") == ("家属（手环 …9876）", "family")
    assert _who(f"{fam}/family:dev-1234/call/user:25/inapp", "user:25") == (
        "值班接警员（请致电家属任务）",
        "call_task",
    )
    assert _who("12/0/user:disp/disp/inapp") == ("disp", "user")  # a manual send
    # the loop's reminders to the desk (cloud.loop.service._desk_intent's key)
    overdue = _who("12:3:overdue:accept,arrive:desk/user:23/inapp")
    assert overdue == ("值班接警员（超时提醒：接单、到场）", "desk")
    assert T.overdue(["accept"]) == "接单超时" and T.overdue(["dispatch", "case"]) == "派遣、全案超时"
    assert EN.overdue(["accept"]) == "acceptance overdue" and T.overdue(True) == "超时"
    assert _who("12:4:returned:desk/user:23/inapp") == ("值班接警员（退回提醒）", "desk")
    # the intents, when the caller may read them, say who a page was for whatever the key's form
    odd = {"dedup_key": "x-y-z/user:18/inapp", "recipient": "user:18"}
    known = {"x-y-z": ("user", "r-0007")}
    got = notices.who_of(odd, t=T, lang="zh", roster=ROSTER, wearers={}, intents=known)
    assert got == ("王网格", "user")
    # the cloud's own name for the person wins when it gives one
    assert _who(f"{duty}/user:18/sms", recipient_name="李医生") == ("李医生 · 网格员", "role")
    assert _who("something-else", "user:18") == ("user:18", "")


def test_family_reached_in_words_and_nothing_when_the_field_is_absent() -> None:
    def line(v: object) -> tuple[str, str] | None:
        return notices.family_reached(v, t=T, clock=clock)

    assert line(None) is None  # an older cloud: the block says nothing about it
    assert line({"status": "maybe"}) is None
    assert line({"status": "sent", "at": AT, "channel": "sms"}) == ("已短信通知家属 10:42", "ok")
    assert line({"status": "sent", "at": AT, "channel": "voice"}) == ("已电话通知家属 10:42", "ok")
    assert line({"status": "failed", "at": AT, "channel": "sms"}) == ("短信通知家属失败 10:42，请致电", "bad")
    assert line({"status": "pending", "at": None, "channel": None}) == ("正在短信/电话通知家属…", "wait")
    assert line({"status": "none", "at": None, "channel": None}) == ("未通知家属（请致电）", "muted")
    en = notices.family_reached({"status": "sent", "at": AT, "channel": "sms"}, t=EN, clock=clock)
    assert en == ("family told by SMS 10:42", "ok")


def test_rows_read_acted_failed_and_pages_that_reached_nobody() -> None:
    person = dedup_key(12, 1, 0, 0, "user", "r-0007")
    duty = dedup_key(12, 1, 1, 0, "role", "grid_worker")
    nobody = dedup_key(12, 1, 1, 0, "role", "volunteer")
    deliveries = [
        {"dedup_key": f"{person}/user:18/sms", "recipient": "user:18", "channel": "sms",
         "status": "delivered", "attempts": [{}], "created_at": AT, "finished_at": AT + 5, "step": 0},
        {"dedup_key": f"{duty}/user:19/inapp", "recipient": "user:19", "channel": "inapp",
         "status": "delivered", "attempts": [{}], "created_at": AT + 60, "finished_at": AT + 61,
         "step": 1, "read_at": None},
        {"dedup_key": f"{duty}/user:20/wecom", "recipient": "user:20", "channel": "wecom",
         "status": "failed", "attempts": [{}, {}, {}], "created_at": AT + 60, "finished_at": AT + 90,
         "step": 1, "last_error": "errcode 60020"},
    ]  # fmt: skip
    log = {"deliveries": deliveries, "actions": [{"action": "accept", "actor": "user:18", "at": AT + 120}]}
    intents = [
        {"dedup_key": person, "target_kind": "user", "target_id": "r-0007", "state": "sent", "step": 0},
        {"dedup_key": nobody, "target_kind": "role", "target_id": "volunteer", "state": "failed", "step": 1,
         "created_at": "2026-11-27T10:43:00+08:00"},
    ]  # fmt: skip
    rows = notices.rows(log, intents, t=T, lang="zh", clock=clock, roster=ROSTER, wearers=WEARERS)
    got = [(r.who, r.channel, r.status_text, r.read, r.attempts) for r in rows]
    assert got == [
        ("王网格", "短信", "已送达", "已接单 10:44", 1),
        ("网格员（值班）", "站内消息", "已送达", "未读", 1),
        ("网格员（值班）", "企业微信", "失败", "", 3),
        ("志愿者（值班）", "—", "无人可通知", "", 0),
    ]
    assert rows[2].error == "errcode 60020" and rows[2].status_class == "bad"
    assert notices.rows(None, [], t=T, lang="zh", clock=clock, roster={}, wearers={}) == []


def test_timeline_lines_name_people_and_translate_the_machines_words() -> None:
    events = [
        {"action": "notified", "actor": "notify", "channel": "notify", "reason": "inapp → user:18"},
        {"action": "notify_failed", "actor": "notify", "channel": "notify",
         "reason": "nobody to notify (user:r-0007)"},
        {"action": "accept", "actor": "r-0007", "channel": "link", "reason": ""},
        {"action": "create", "actor": "system", "channel": "gateway", "reason": "grouped by per_device"},
    ]  # fmt: skip
    out = notices.timeline(events, t=T, lang="zh", roster=ROSTER, recipients={"user:18": "李医生"})
    assert [(e["actor_label"], e["via_label"], e["reason_label"]) for e in out] == [
        ("通知服务", "", "站内消息 → 李医生"),
        ("通知服务", "", "无人可通知：王网格没有可用的通知方式或不在值班"),
        ("王网格", "手机链接", ""),
        ("系统", "网关", "grouped by per_device"),
    ]


def test_a_run_of_the_same_event_is_one_line_with_a_count() -> None:
    merged = {"action": "alert_merged", "actor": "system", "to_stage": "dispatched", "reason_label": ""}
    events = [
        {"action": "create", "actor": "system", "to_stage": "registered", "reason_label": "", "at": "a"},
        *({**merged, "at": f"m{i}"} for i in range(34)),
        {"action": "accept", "actor": "r-1", "to_stage": "accepted", "reason_label": "", "at": "b"},
        {**merged, "at": "m99"},
    ]
    out = notices.fold(events)
    assert [(e["action"], e["count"], e["until"]) for e in out] == [
        ("create", 1, None),
        ("alert_merged", 34, "m33"),
        ("accept", 1, None),
        ("alert_merged", 1, None),  # not folded across another event: the order stays readable
    ]
    assert T.clock("2026-11-27T10:42:00+08:00", now=AT) == "10:42"


def test_the_same_page_to_three_call_takers_in_one_minute_is_one_row() -> None:
    deliveries = [
        {"dedup_key": f"12:3:overdue:accept:desk/user:{u}/inapp", "recipient": f"user:{u}",
         "channel": "inapp", "status": "delivered", "attempts": [{}], "created_at": AT + u, "step": -1}
        for u in (23, 24, 25)
    ] + [
        {"dedup_key": "12:4:overdue:accept:desk/user:23/inapp", "recipient": "user:23", "channel": "inapp",
         "status": "failed", "attempts": [{}], "created_at": AT + 30, "step": -1},
    ]  # fmt: skip
    rows = notices.rows({"deliveries": deliveries}, [], t=T, lang="zh", clock=clock, roster={}, wearers={})
    assert [(r.who, r.status, r.count) for r in rows] == [
        ("值班接警员（超时提醒：接单）", "delivered", 3),
        ("值班接警员（超时提醒：接单）", "failed", 1),  # a different outcome stays its own row
    ]
