"""Why the loop did something: stable reason codes for the incident timeline, and their words.

The loop writes each system timeline entry with a **code** and its **parameters** (``reason_code``,
``reason_params`` of ``loop_incident_events``), never a sentence a reader has to parse: the console and
the API put the words on it in the reader's language, Chinese first (:func:`text`). The stored
``reason`` column keeps the English sentence as before (logs, old clients), and a person's own reason (a
return, a park, a reopen) stays their own words with no code.

Rows written before the codes existed have an English ``reason`` and no code: :func:`resolve` maps the
sentences the loop used to write (``grouped by per_device``, ``no acknowledgement within the step's wait``,
...) to their code, so an old timeline reads in Chinese too; a sentence it does not know is shown as
written.

Codes (``docs/loop.md``, "Timeline reasons"):

===================== ========================================== ======================================
code                  parameters                                 zh (en)
===================== ========================================== ======================================
``grouped``           ``rule`` (grouping rule name)              按设备合并 (grouped per device)
``routed``            ``rule`` (route path), ``departments``     分派至：市政、交警 (routed to ...)
``dispatch_nearest``  ``role``, ``zone``                         网格员值班（网格 G3），距离最近且空闲
``escalated``         ``step`` (0-based), ``loop``               超时未接单，已升级（第 2 级）
``escalated_unreachable`` ``step`` (0-based), ``loop``          上一级无人可通知，已升级（第 2 级）
``esc_acknowledged``                                             已接单，停止升级
``esc_resolved``                                                 已办结，停止升级
``esc_parked``                                                   已挂账，暂停升级
``esc_exhausted``                                                升级步骤已用完，仍无人接单
``esc_steps_done``                                               升级步骤已全部执行（已有人接单）
``step_unreachable``  ``step`` (0-based)                         第 1 级无人可通知，立即升级下一级
``alerts_quiet``                                                 办结后设备告警已平息，自动核查结案
``declined_by_link``                                             通过通知链接拒单
``esc_ruled_out``                                                接警员核实非火情，已停止升级
``ruled_out_nuisance`` ``external``, ``note``, ``stand_down``    接警员核实：烹饪油烟、水蒸气等扰动，
                                                                 非火情，已取消 119 升级
``ruled_out_false_alarm`` (same)                                 接警员核实：设备误报，非火情，已取消 119 升级
``rule_out_lifted``   ``device_id``                              排除后又有新报警，已重新升级
``rule_out_withdrawn``                                           接警员撤销排除，确认火情，立即升级
``ok_key_cleared``                                               佩戴者按下"我没事"键，请回拨确认
``call_task_handover`` ``to``, ``from`` (user names)             请致电家属任务已交接给下一班：...
===================== ========================================== ======================================

The desk's call to a wristband wearer's family (``POST /api/v1/incidents/{id}/family-call``):
``family_call_reached`` (``attempt``, ``note``) 致电家属：已接通（第 1 次）;
``family_call_not_reached`` (``attempt``, ``minutes``, ``note``)
致电家属：未接通（第 1 次），10 分钟后提醒再拨;
``family_call_wrong_number`` (``attempt``, ``note``)
致电家属：号码有误（第 1 次），请核实联系方式或派网格员上门;
``family_call_due`` (``attempts``, ``minutes``) 家属未接通已 10 分钟（已拨 1 次），请再次致电或派网格员上门.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alerts.loop.routing import DEPARTMENTS, ROLES

#: the timeline code of a wristband alert cleared by the wearer's "I'm OK" key (``alert_cleared`` entry)
OK_KEY_CLEARED = "ok_key_cleared"
#: what detection puts in a ``cleared`` step's message when the wearer's "I'm OK" key cleared it (the
#: step's only free field; detection does not write it yet: docs/loop.md, the "I'm OK" key)
OK_KEY_MARK = "[ok_key]"


def cleared_by_ok_key(kind: str, phase: str, message: str | None) -> bool:
    """Whether a step is a wristband alert's clear by the wearer's "I'm OK" key (the mark in its message)."""
    return kind == "wristband" and phase == "cleared" and OK_KEY_MARK in (message or "")


#: code -> (zh, en) template; parameters are filled in by :func:`labelled` first
TEMPLATES: dict[str, tuple[str, str]] = {
    "grouped": ("{rule}", "{rule}"),
    "routed": ("分派至：{departments}（规则：{rule}）", "routed to {departments} (rule {rule})"),
    "dispatch_nearest": (
        "{role}值班（{zone}），距离最近且空闲，已派单",
        "on call for {role} in {zone}, nearest available",
    ),
    "nobody_on_call": (
        "{role}（{zone}）无人值班，未能派单",
        "nobody on call for {role} in {zone}: not dispatched",
    ),
    "escalated": (
        "超时未接单，已升级（第 {level} 级）",
        "no acknowledgement in time: escalated (step {level})",
    ),
    "escalated_unreachable": (
        "上一级无人可通知，已升级（第 {level} 级）",
        "nobody could be paged at the previous step: escalated (step {level})",
    ),
    "esc_acknowledged": ("已接单，停止升级", "acknowledged: escalation stopped"),
    "esc_resolved": ("已办结，停止升级", "resolved: escalation stopped"),
    "esc_parked": ("已挂账，暂停升级", "parked: escalation paused"),
    "esc_exhausted": ("升级步骤已用完，仍无人接单", "every escalation step tried: nobody acknowledged"),
    "esc_steps_done": (
        "升级步骤已全部执行（已有人接单）",
        "every escalation step run (the case had been accepted)",
    ),
    "step_unreachable": (
        "第 {level} 级无人可通知，立即升级下一级",
        "nobody could be paged at step {level}: the next step now",
    ),
    "alerts_quiet": (
        "办结后设备告警已平息，自动核查结案",
        "alerts quiet since handling: verified and closed",
    ),
    "declined_by_link": ("通过通知链接拒单", "declined from a notification"),
    "esc_ruled_out": ("接警员核实非火情，已停止升级", "ruled out by the desk: escalation stopped"),
    # the desk's rule-out after calling the site (核警; cloud.loop.service.LoopService.rule_out)
    "ruled_out_nuisance": (
        "接警员核实：烹饪油烟、水蒸气等扰动，非火情，已取消{external}升级{stand_down}{note}",
        "desk verified with the site: nuisance (cooking, steam), no fire: {external} escalation "
        "cancelled{stand_down}{note}",
    ),
    "ruled_out_false_alarm": (
        "接警员核实：设备误报，非火情，已取消{external}升级{stand_down}{note}",
        "desk verified with the site: false alarm, no fire: {external} escalation "
        "cancelled{stand_down}{note}",
    ),
    "rule_out_withdrawn": (
        "接警员撤销排除，确认火情，立即升级",
        "the desk withdrew its rule-out and confirmed a fire: escalating now",
    ),
    "rule_out_lifted": (
        "排除后又有新报警（设备 {device_id}），已重新升级",
        "a new alarm after the rule-out (device {device_id}): escalation started again",
    ),
    # a wristband fall cleared by the wearer's "I'm OK" key (bit 8, fw >= 1.7): the clear changes nothing
    # else (dispatch and escalation carry on); the centre calls back (回拨确认) before standing down
    OK_KEY_CLEARED: (
        '佩戴者按下"我没事"键，请回拨确认',
        'the wearer pressed "I\'m OK": call back to confirm (dispatch and escalation carry on)',
    ),
    "call_task_handover": (
        "请致电家属任务未完成，已交接给下一班：{to}",
        "call-the-family task not done: handed to the next shift: {to}",
    ),
    # the desk's call to a wristband wearer's family (cloud.loop.service.LoopService.record_call); ``note``
    # is the call taker's own words, labelled to "：..." / ": ..." (nothing when there is none)
    "family_call_reached": (
        "致电家属：已接通（第 {attempt} 次）{note}",
        "family called: reached (call {attempt}){note}",
    ),
    "family_call_not_reached": (
        "致电家属：未接通（第 {attempt} 次）{retry}{note}",
        "family called: not reached (call {attempt}){retry}{note}",
    ),
    "family_call_wrong_number": (
        "致电家属：号码有误（第 {attempt} 次），请核实联系方式或派网格员上门{note}",
        "family called: wrong number (call {attempt}): check the contact or send the grid worker{note}",
    ),
    "family_call_due": (
        "家属未接通已 {minutes} 分钟（已拨 {attempts} 次），请再次致电或派网格员上门",
        "family not reached for {minutes} min ({attempts} calls): call again or send the grid worker",
    ),
}
#: the desk's outcomes of a call to the family (``POST /api/v1/incidents/{id}/family-call``): (zh, en)
FAMILY_CALL_OUTCOMES: dict[str, tuple[str, str]] = {
    "reached": ("已接通", "reached"),
    "not_reached": ("未接通", "not reached"),
    "wrong_number": ("号码有误", "wrong number"),
}

#: the shipped grouping rules (alerts.loop.incidents.default_grouping) in words: (zh, en)
GROUP_RULES: dict[str, tuple[str, str]] = {
    "per_device": ("按设备合并", "grouped per device"),
    "fire_in_building": ("同一网格火情合并", "fire alarms in one grid cell grouped"),
    "flooded_street": ("同一街道积水合并", "overflows on one street grouped"),
    "low_battery": ("同一网格低电量合并", "low batteries in one grid cell grouped"),
    "silent_devices": ("同一网关、网格离线设备合并", "silent devices of one gateway and cell grouped"),
}
#: the shipped routing tree's rule names (alerts.loop.routing.default_tree) in words: (zh, en)
ROUTE_RULES: dict[str, tuple[str, str]] = {
    "root": ("", ""),
    "maintenance": ("设备维护", "maintenance"),
    "manhole": ("井盖", "manhole"),
    "cover_on_road": ("机动车道井盖", "cover on a road"),
    "cover": ("井盖移位", "cover"),
    "well": ("井内异常", "well"),
    "smoke": ("烟感", "smoke"),
    "fire": ("火情", "fire"),
    "device": ("设备故障", "device fault"),
    "wristband": ("手环", "wristband"),
    "medical": ("紧急医疗", "medical"),
    "wellbeing": ("关爱", "wellbeing"),
    "infrastructure": ("基础设施", "infrastructure"),
}
_STOPS = {"acknowledged", "resolved", "parked", "exhausted", "steps_done", "ruled_out"}
#: the SLA clocks (alerts.loop.sla) in words, as the console's ``clock.*`` says them: (zh, en)
CLOCKS: dict[str, tuple[str, str]] = {
    "register": ("立案", "registration"),
    "dispatch": ("派遣", "dispatch"),
    "accept": ("接单", "acceptance"),
    "arrive": ("到场", "arrival"),
    "handle": ("处置", "handling"),
    "verify": ("核查", "verification"),
    "case": ("全案", "whole case"),
}


def desk_summary(title: str, why: str) -> str:
    """The one line of a reminder to the call takers' desk (their in-app notice, a phone's list): the case
    and why in Chinese (``returned`` 已退回，待改派; ``overdue:accept,case`` 超时：接单、全案), never the
    machine word (that stays in the intent's dedup key, where the console reads it)."""
    if why == "returned":
        return f"{title}（已退回，待改派）"
    if why.startswith("overdue:"):
        clocks = [c for c in why.removeprefix("overdue:").split(",") if c]
        return f"{title}（超时：{'、'.join(CLOCKS[c][0] if c in CLOCKS else c for c in clocks)}）"
    if why.startswith("family_call"):
        return f"{title}（家属未接通，请再次致电或派网格员）"
    return f"{title}（{why}）"


#: the English sentences the loop wrote before the codes (old rows), and the code each one is
_LEGACY: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[str, dict[str, Any]]]]] = [
    (re.compile(r"^grouped by (?P<rule>\S+)$"), lambda m: ("grouped", {"rule": m["rule"]})),
    (
        re.compile(r"^on call for (?P<role>\S+) in (?P<zone>\S+), nearest available$"),
        lambda m: ("dispatch_nearest", {"role": m["role"], "zone": "" if m["zone"] == "*" else m["zone"]}),
    ),
    (
        re.compile(r"^nobody on call for (?P<role>\S+) in (?P<zone>\S+)$"),
        lambda m: ("nobody_on_call", {"role": m["role"], "zone": "" if m["zone"] == "*" else m["zone"]}),
    ),
    (re.compile(r"^no acknowledgement within the step's wait$"), lambda m: ("escalated", {})),
    (re.compile(r"^alerts quiet since handling$"), lambda m: ("alerts_quiet", {})),
    (re.compile(r"^declined from a notification$"), lambda m: ("declined_by_link", {})),
    (re.compile(r"^(?P<why>acknowledged|resolved|parked|exhausted)$"), lambda m: ("esc_" + m["why"], {})),
]
#: the old ``routed`` rows' reason was the route path alone (``root/manhole/cover_on_road``)
_ROUTE_PATH = re.compile(r"^[\w-]+(/[\w-]+)*( \+ [\w-]+(/[\w-]+)*)*$")


def stop_code(reason: str) -> str:
    """The code of an escalation stop (``escalation.stop``'s reason: acknowledged, resolved, ...)."""
    return "esc_" + reason if reason in _STOPS else ""


def resolve(
    action: str, code: str, params: Mapping[str, Any] | None, reason: str
) -> tuple[str, dict[str, Any]]:
    """A timeline entry's code and parameters: as stored, or for an old row the code its English
    ``reason`` stood for (``("", {})`` when it is a person's own words or unknown)."""
    if code:
        return code, dict(params or {})
    text_ = reason.strip()
    if not text_:
        return "", {}
    for pattern, make in _LEGACY:
        m = pattern.match(text_)
        if m:
            return make(m)
    if action == "routed" and _ROUTE_PATH.match(text_):
        return "routed", {"rule": text_}
    return "", {}


def _pick(pair: tuple[str, str], lang: str) -> str:
    return pair[1] if lang == "en" else pair[0]


def rule_words(rule: str, lang: str) -> str:
    """A grouping rule in words (an administrator's own rule name is shown as written)."""
    if rule in GROUP_RULES:
        return _pick(GROUP_RULES[rule], lang)
    return f"grouped by {rule}" if lang == "en" else f"按规则“{rule}”合并"


def route_words(path: str, lang: str) -> str:
    """A route path (``root/manhole/cover_on_road``, several joined by `` + ``) in words."""
    out = []
    for one in path.split(" + "):
        parts = [_pick(ROUTE_RULES[p], lang) if p in ROUTE_RULES else p for p in one.split("/")]
        out.append(" › ".join(p for p in parts if p))
    return "；".join(out) if lang != "en" else "; ".join(out)


def labelled(
    code: str, params: Mapping[str, Any], lang: str, names: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The template's parameters in words: roles, departments and rules labelled, people by name."""
    names = names or {}
    sep = ", " if lang == "en" else "、"
    out: dict[str, str] = {k: str(v) for k, v in params.items()}
    if code == "grouped":
        out["rule"] = rule_words(str(params.get("rule", "")), lang)
    if code == "routed":
        out["rule"] = route_words(str(params.get("rule", "")), lang)
        deps = params.get("departments") or []
        out["departments"] = sep.join(
            _pick(DEPARTMENTS[d], lang) if d in DEPARTMENTS else str(d) for d in _seq(deps)
        ) or ("-" if lang == "en" else "无")
    if code in ("dispatch_nearest", "nobody_on_call"):
        role = str(params.get("role", ""))
        out["role"] = _pick(ROLES[role], lang) if role in ROLES else role
        zone = str(params.get("zone", ""))
        if lang == "en":
            out["zone"] = f"cell {zone}" if zone else "every cell"
        else:
            out["zone"] = f"网格 {zone}" if zone else "全部网格"
    if code in ("escalated", "escalated_unreachable", "step_unreachable"):
        out["level"] = str(int(params.get("step", 0) or 0) + 1)
    if code == "call_task_handover":
        for k in ("to", "from"):
            out[k] = sep.join(names.get(str(x), str(x)) for x in _seq(params.get(k) or []))
    if code.startswith("ruled_out_"):
        note = str(params.get("note") or "").strip()
        out["note"] = (f": {note}" if lang == "en" else f"：{note}") if note else ""
        ext = [str(r) for r in _seq(params.get("external") or [])]
        words = [{"desk_119": "119", "desk_120": "120"}.get(r, r) for r in ext]
        other = " external " if lang == "en" else "外部"
        out["external"] = (" " + "/".join(words) + " ") if words else other
        if lang == "en":
            out["external"] = out["external"].strip()
            out["stand_down"] = "; local responder stood down" if params.get("stand_down") else ""
        else:
            out["stand_down"] = "，已通知现场人员无需前往" if params.get("stand_down") else ""
    if code.startswith("family_call_"):
        note = str(params.get("note") or "").strip()
        out["note"] = (f": {note}" if lang == "en" else f"：{note}") if note else ""
        minutes = params.get("minutes")
        if lang == "en":
            out["retry"] = f", reminder to call again in {minutes} min" if minutes else ""
        else:
            out["retry"] = f"，{minutes} 分钟后提醒再拨" if minutes else ""
    return out


def _seq(v: Any) -> Sequence[Any]:
    return v if isinstance(v, list | tuple) else [v]


def text(
    action: str,
    code: str,
    params: Mapping[str, Any] | None,
    reason: str,
    lang: str = "zh",
    names: Mapping[str, str] | None = None,
) -> str:
    """The words for a timeline entry's reason in ``lang`` (``zh`` unless ``en``): the code's template,
    or the stored text when there is no code (a person's words, an unknown old sentence)."""
    code, p = resolve(action, code, params, reason)
    template = TEMPLATES.get(code)
    if template is None:
        return reason
    try:
        return _pick(template, lang).format(**labelled(code, p, lang, names))
    except (KeyError, ValueError, IndexError):
        return reason


__all__ = [
    "CLOCKS",
    "FAMILY_CALL_OUTCOMES",
    "GROUP_RULES",
    "ROUTE_RULES",
    "TEMPLATES",
    "desk_summary",
    "labelled",
    "resolve",
    "stop_code",
    "text",
]
