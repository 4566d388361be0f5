"""The demo's closed loop: the community's people on call, and the dispatch story read back from the cloud.

**People** (:func:`demo_people`): a small roster for the simulated community, built from the fleet's
own ``responders.csv`` (``simulators/neighbourhood.py``: 网格员1, 市政抢修1队, 交警1组, 物业1处, 王医生,
志愿者1 and their bases) and ``devices.csv`` (the grid cells). For every role the shipped routing tree
pages, two or three people hand over in 12-hour shifts (call takers: 8-hour), so someone is on call around
the clock; each grid cell has its two nearest grid workers. Everyone is a console user bound to the
in-app channel, the one channel that needs no external service; every notice also carries the
responder's signed links (accept, decline, arrived, resolved). The 119 / 120 desks are groups whose
members are the call takers: no robot is configured in the demo, so a desk's page reaches the call
takers in-app and they relay it by phone.

Not in the roster: the wearer's family (``family_contact``), which the loop pages per device from the
registry's sealed emergency contact (no SMS provider in the demo, so each becomes a 请致电家属 call task in
the operators' in-app queue), and the flat's resident (``resident``), not seeded: those pages stay
"nobody to notify" and reach the operators in-app (``docs/demo.md``).

**Story** (:class:`DispatchStory`): one line per incident once its first page is settled (who, by which
channel), and a closing summary, all read from the cloud's API (incidents, their intents, the delivery
log), not from counters in this process.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from alerts.loop.rosters import distance_m
from alerts.loop.routing import ROLES
from simulators.demo_actors import verdict_of_note
from simulators.neighbourhood import SURNAMES, fake_phone

ZONE = "Asia/Shanghai"
SHIFT_S = 12 * 3600.0
DESK_SHIFT_S = 8 * 3600.0
#: roles a person in the community holds around the clock, two per role; the name of the n-th person
STAFF: tuple[tuple[str, Callable[[int], str]], ...] = (
    ("municipal_crew", lambda n: f"市政抢修{n}队"),
    ("traffic_police", lambda n: f"交警{n}组"),
    ("property_management", lambda n: f"物业{n}处"),
    ("community_doctor", lambda n: f"{SURNAMES[(n - 1) % len(SURNAMES)]}医生"),
    ("volunteer", lambda n: f"志愿者{n}"),
    ("maintenance", lambda n: f"设备运维{n}"),
)
CALL_TAKERS = 3
#: the desks' group titles (no robot in the demo: the call takers relay by phone)
DESKS = {
    "desk_119": "119 消防指挥中心（演示未接入：值班接警员电话转达）",
    "desk_120": "120 急救中心（演示未接入：值班接警员电话转达）",
}
#: roles the demo leaves unseeded on purpose (module docstring)
NOT_SEEDED = ("family_contact", "resident")
CHANNEL_LABELS = {
    "inapp": ("站内信", "in-app"),
    "inapp_ops": ("值班员站内信", "operators' in-app"),
    "call_task": ("值班员致电任务", "call task for the operators"),
    "sms": ("短信", "SMS"),
    "sms_family": ("家属短信", "SMS to the family"),
    "voice_family": ("家属语音电话", "voice call to the family"),
    "voice": ("语音电话", "voice call"),
    "wecom": ("企业微信", "WeCom"),
    "email": ("邮件", "e-mail"),
    "dingtalk_robot": ("钉钉群", "DingTalk group"),
    "wecom_robot": ("企业微信群", "WeCom group"),
    "webhook": ("Webhook", "webhook"),
}


@dataclass(frozen=True, slots=True)
class Person:
    """One responder: a console user (``username`` = responder id) bound to the in-app channel."""

    username: str
    name: str
    roles: tuple[str, ...]
    phone: str
    console_role: str  # operator (field staff) or dispatcher (call takers)
    zones: tuple[str, ...] = ("*",)
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True, slots=True)
class DemoPeople:
    roster: dict[str, Any]  # the loop's roster document (alerts/loop/rosters.py)
    people: list[Person]
    groups: dict[str, tuple[str, list[str]]]  # desk group -> (title, member usernames)


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v else None
    except ValueError:
        return None


def shift_anchor(start: float, zone: str = ZONE) -> float:
    """08:00 local on the day before ``start``: shifts hand over at 08:00 and 20:00 (16:00, 00:00 for the
    desk's 8-hour shifts), as a community's duty plan does."""
    local = datetime.fromtimestamp(start, ZoneInfo(zone))
    return (local.replace(hour=8, minute=0, second=0, microsecond=0) - timedelta(days=1)).timestamp()


def demo_people(responders_csv: str, devices_csv: str, *, start: float) -> DemoPeople:
    """The demo community's roster, people and desk groups (pure: the two CSV texts and an instant)."""
    anchor = shift_anchor(start)
    fleet = _rows(responders_csv)
    people: list[Person] = []
    rotations: list[dict[str, Any]] = []

    def rotate(rid: str, role: str, zone: str, who: Sequence[Person], shift_s: float) -> None:
        rotations.append(
            {
                "id": rid,
                "role": role,
                "zone": zone,
                "participants": [p.username for p in who],
                "start": anchor,
                "shift_s": shift_s if len(who) > 1 else 0,
            }
        )

    # grid workers: every grid cell of the fleet's devices, its two nearest workers day and night
    workers = [r for r in fleet if r["role"] == "grid_worker"]
    cells: dict[str, list[tuple[float, float]]] = {}
    for d in _rows(devices_csv):
        lat, lon = _float(d.get("lat")), _float(d.get("lon"))
        if d.get("grid") and lat is not None and lon is not None:
            cells.setdefault(d["grid"], []).append((lat, lon))
    duty: dict[str, list[str]] = {}  # worker id -> grid cells
    plan: dict[str, list[str]] = {}
    for grid, pts in sorted(cells.items()):
        clat, clon = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
        near = sorted(
            workers,
            key=lambda r: distance_m(clat, clon, _float(r["lat"]) or clat, _float(r["lon"]) or clon),
        )[:2]
        plan[grid] = [r["responder_id"] for r in near]
        for r in near:
            duty.setdefault(r["responder_id"], []).append(grid)
    by_id: dict[str, Person] = {}
    for r in workers:
        if r["responder_id"] in duty:
            p = Person(
                r["responder_id"], r["name"], ("grid_worker",), r["phone"], "operator",
                tuple(duty[r["responder_id"]]), _float(r["lat"]), _float(r["lon"]),
            )  # fmt: skip
            by_id[p.username] = p
            people.append(p)
    for grid, ids in plan.items():
        rotate(f"grid-{grid}", "grid_worker", grid, [by_id[i] for i in ids], SHIFT_S)

    # the other field roles: the fleet's responder of the role and a partner at the same base
    extra = 0
    for role, name in STAFF:
        have = [r for r in fleet if r["role"] == role]
        team: list[Person] = []
        for n in range(1, 3):
            if n <= len(have):
                r = have[n - 1]
                rid, who, phone, lat, lon = (
                    r["responder_id"], r["name"], r["phone"], _float(r["lat"]), _float(r["lon"])
                )  # fmt: skip
            else:
                extra += 1
                base = team[0] if team else None
                rid, who, phone = f"d-{role}-{n}", name(n), fake_phone(9000 + extra)
                lat, lon = (base.lat, base.lon) if base else (None, None)
            team.append(Person(rid, who, (role,), phone, "operator", ("*",), lat, lon))
        people.extend(team)
        rotate(role, role, "*", team, SHIFT_S)

    # the community's duty desk: call takers in three 8-hour shifts; the 119 / 120 desks relay through them
    desk = [
        Person(f"d-call_taker-{n}", f"值班接警员{n}", ("call_taker",), fake_phone(9100 + n), "dispatcher")
        for n in range(1, CALL_TAKERS + 1)
    ]
    people.extend(desk)
    rotate("call_taker", "call_taker", "*", desk, DESK_SHIFT_S)
    groups = {name: (title, [p.username for p in desk]) for name, title in DESKS.items()}

    roster = {
        "zone": ZONE,
        "responders": [
            {
                "id": p.username,
                "name": p.name,
                "roles": list(p.roles),
                "zones": list(p.zones),
                **({"lat": p.lat, "lon": p.lon} if p.lat is not None and p.lon is not None else {}),
                "channels": ["inapp"],
            }
            for p in people
        ],
        "rotations": rotations,
        "overrides": [],
    }
    return DemoPeople(roster, people, groups)


def seeded_roles(people: DemoPeople) -> set[str]:
    return {r["role"] for r in people.roster["rotations"]} | set(people.groups)


# -- the story, read back from the cloud's API -----------------------------------------------------------
@dataclass
class LoopSummary:
    """What the closed loop did, from the cloud's API at the end of the run."""

    incidents: int = 0
    paged: int = 0
    acknowledged: int = 0
    on_site: int = 0
    handled: int = 0
    closed: int = 0
    rated: int = 0
    ratings: list[int] = field(default_factory=list)
    verdicts: Counter[str] = field(default_factory=Counter)  # real / nuisance / false_alarm (the notes)
    declined: int = 0  # returns from a responder's decline (the loop re-dispatches)
    escalations: int = 0  # escalation steps after the first (nobody acknowledged in time)
    reopened: int = 0
    kpi: dict[str, Any] = field(default_factory=dict)  # GET /api/v1/kpi, the one "all" row
    pages: int = 0  # notification intents
    pages_sent: int = 0
    pages_failed: int = 0
    pages_pending: int = 0
    failed_by_target: Counter[str] = field(default_factory=Counter)
    delivered_by_channel: Counter[str] = field(default_factory=Counter)


class DispatchStory:
    """Tells each incident's first page once it is settled, and the summary; ``t(zh, en)`` picks the
    language, ``when(epoch)`` formats a time, ``get`` is an authenticated ``httpx.AsyncClient.get``."""

    def __init__(
        self,
        get: Callable[..., Any] | None,
        *,
        t: Callable[[str, str], str],
        when: Callable[[float], str],
        parse_time: Callable[[str], float],
    ) -> None:
        self._get = get
        self._t = t
        self._when = when
        self._parse = parse_time
        self.names: dict[str, str] = {}
        self.told: set[int] = set()
        self.only: set[int] | None = None  # after freeze(): the incidents of the run
        self.lines: list[str] = []  # the "paged" lines, one per incident
        self.progress: list[str] = []  # what happened next: accepted, declined, on site, handled, rated ...
        self._seen: dict[int, dict[str, Any]] = {}  # per incident, the progress already told

    def bind(self, get: Callable[..., Any]) -> None:
        self._get = get

    async def _fetch(self, path: str, **kw: Any) -> Any:
        if self._get is None:
            raise RuntimeError("DispatchStory.bind(client.get) first")
        r = await self._get(path, **kw)
        r.raise_for_status()
        return r.json()

    async def load_names(self) -> None:
        body = await self._fetch("/api/v1/loop/config/roster")
        self.names = {str(x["id"]): str(x.get("name") or x["id"]) for x in body["body"]["responders"]}

    def _role(self, role: str) -> str:
        zh, en = ROLES.get(role, (role, role))
        return self._t(zh, en)

    def _who(self, kind: str, target: str) -> str:
        if kind == "user":
            return self.names.get(target, target)
        role, _, device = target.partition("/")
        if role == "family_contact" and device:  # one wearer's registered family (docs/notifications.md)
            tail = device[-4:]
            return self._t(f"{tail} 号手环家属", f"family of band …{tail}")
        return self._role(target)

    async def _incidents(self) -> list[dict[str, Any]]:
        found = (await self._fetch("/api/v1/incidents", params={"limit": 1000}))["incidents"]
        return [i for i in found if self.only is None or int(i["id"]) in self.only]

    async def freeze(self) -> None:
        """From now on tell and count only the incidents that exist now (the end of the run)."""
        self.only = {int(i["id"]) for i in await self._incidents()}

    async def _intents(self, incident_id: int) -> list[dict[str, Any]]:
        return list((await self._fetch(f"/api/v1/incidents/{incident_id}/intents"))["intents"])

    async def _timeline(self, incident_id: int) -> list[dict[str, Any]]:
        return list((await self._fetch(f"/api/v1/incidents/{incident_id}"))["timeline"])

    async def _deliveries(self, incident_id: int) -> list[dict[str, Any]]:
        return list((await self._fetch(f"/api/v1/notify/incidents/{incident_id}/log"))["deliveries"])

    async def untold(self) -> int:
        """Incidents paged but not told yet (their first page still in flight)."""
        n = 0
        for inc in await self._incidents():
            if int(inc["id"]) not in self.told and await self._intents(int(inc["id"])):
                n += 1
        return n

    def _channel(self, channel: str) -> str:
        zh, en = CHANNEL_LABELS.get(channel, (channel, channel))
        return self._t(zh, en)

    def _span(self, seconds: float) -> str:
        m, s = divmod(round(max(seconds, 0.0)), 60)
        if m >= 60:
            h, m = divmod(m, 60)
            return self._t(f"{h}小时{m:02d}分", f"{h}h{m:02d}m")
        return self._t(f"{m}分{s:02d}秒", f"{m}m{s:02d}s")

    async def _progress_lines(self, inc: dict[str, Any]) -> list[tuple[float, str]]:
        """What happened to a told incident since the last look, from its fields (and, for a decline or a
        resolution, its timeline): 接单, 退回, 到场, 办结 (with the responder's verdict), 结案, 评价, 重开."""
        iid = int(inc["id"])
        seen = self._seen.setdefault(iid, {"returns": 0, "reopens": 0})
        t = self._t
        label = inc.get("event_label") or inc.get("event_type", "")
        who = inc.get("owner_name") or inc.get("owner") or ""
        raised = self._parse(inc["alert_time"]) if inc.get("alert_time") else None
        out: list[tuple[float, str]] = []

        def line(at: float, zh: str, en: str) -> None:
            out.append((at + 2e-3, t(f"  [{self._when(at)}] {zh}", f"  [{self._when(at)}] {en}")))

        timeline: list[dict[str, Any]] | None = None
        returns = len(inc.get("returned_reasons") or [])
        if returns > seen["returns"]:
            timeline = await self._timeline(iid)
            for ev in [e for e in timeline if e["action"] == "return"][seen["returns"] :]:
                name = self.names.get(str(ev["actor"]), str(ev["actor"]))
                to = inc.get("assignee_name") or inc.get("assignee")
                to_zh, to_en = (f"改派 {to}", f"re-dispatched to {to}") if to else ("转值班台", "to the desk")
                line(
                    self._parse(ev["at"]),
                    f"退回 #{iid} {name} 拒绝：{ev['reason']} → {to_zh}",
                    f"declined #{iid} {name}: {ev['reason']} -> {to_en}",
                )
            seen["returns"] = returns
        if (inc.get("reopen_count") or 0) > seen["reopens"]:
            at = self._parse(inc["registered_at"]) if inc.get("registered_at") else 0.0
            line(
                at,
                f"重开 #{iid} {label}：住户反映问题未解决",
                f"reopened #{iid} {label}: the resident says not solved",
            )
            seen["reopens"] = inc["reopen_count"]
            seen.pop("handled_at", None)
            seen.pop("closed_at", None)
        for key in ("accepted_at", "arrived_at", "handled_at", "closed_at", "rated_at"):
            value = inc.get(key)
            if not value or seen.get(key) == value:
                continue
            seen[key] = value
            at = self._parse(value)
            span = "" if raised is None else self._span(at - raised)
            zh_after, en_after = (f"（报警后 {span}）", f" ({span} after the alarm)") if span else ("", "")
            if key in ("accepted_at", "arrived_at", "handled_at"):
                # who did it, from the timeline: the owner may have changed since (a decline, a reopen)
                if timeline is None:
                    timeline = await self._timeline(iid)
                action = {"accepted_at": "accept", "arrived_at": "arrive", "handled_at": "handle"}[key]
                done = [e for e in timeline if e["action"] == action]
                if done:
                    who = self.names.get(str(done[-1]["actor"]), str(done[-1]["actor"]))
            if key == "accepted_at":
                line(
                    at,
                    f"接单 #{iid} {label} ← {who}{zh_after}",
                    f"accepted #{iid} {label} by {who}{en_after}",
                )
            elif key == "arrived_at":
                line(at, f"到场 #{iid} {who}{zh_after}", f"on site #{iid} {who}{en_after}")
            elif key == "handled_at":
                note = str(done[-1]["reason"]) if done else ""
                line(at, f"办结 #{iid} {who}：{note}", f"handled #{iid} by {who}: {note}")
            elif key == "closed_at":
                line(at, f"结案 #{iid} {label}{zh_after}", f"closed #{iid} {label}{en_after}")
            elif key == "rated_at" and inc.get("rating"):
                n = int(inc["rating"])
                line(at, f"评价 #{iid} {'★' * n}{'☆' * (5 - n)} {n} 分", f"rated #{iid} {n}/5")
        return out

    def _page_parts(self, intents: list[dict[str, Any]], deliveries: list[dict[str, Any]]) -> list[str]:
        """Whom a step's pages reached and by which channel, one part per page."""
        parts = []
        for it in intents:
            who = self._who(it["target_kind"], it["target_id"])
            mine = [d for d in deliveries if str(d["dedup_key"]).startswith(it["dedup_key"] + "/")]
            if it["state"] == "failed" and not mine:
                parts.append(self._t(f"{who}（无人可通知）", f"{who} (nobody to notify)"))
            elif mine:
                chans = list(dict.fromkeys(self._channel(d["channel"]) for d in mine))
                n = len({d["recipient"] for d in mine})  # a role's or a desk's members
                zh, en = (f"{who} {n} 人", f"{who} ×{n}") if n > 1 else (who, who)
                parts.append(self._t(f"{zh}（{'、'.join(chans)}）", f"{en} ({', '.join(chans)})"))
            else:
                parts.append(self._t(f"{who}（发送中）", f"{who} (sending)"))
        return parts

    async def new_lines(self, *, final: bool = False) -> list[tuple[float, str]]:
        """(time, line): the first page of incidents whose first page is settled (``final``: also those
        still in flight), each incident once; then what happened to the incidents already told."""
        out: list[tuple[float, str]] = []
        progress: list[tuple[float, str]] = []
        for inc in sorted(await self._incidents(), key=lambda i: int(i["id"])):
            iid = int(inc["id"])
            if iid in self.told:
                progress += await self._progress_lines(inc)
                continue
            intents = await self._intents(iid)
            if not intents:
                continue
            first_at = min(i["created_at"] for i in intents)
            step = min(int(i.get("step", 0)) for i in intents if i["created_at"] == first_at)
            # the first step's pages (a step brought forward at once may share their clock instant)
            first = [i for i in intents if i["created_at"] == first_at and int(i.get("step", 0)) == step]
            if not final and any(i["state"] in ("pending", "claimed") for i in first):
                continue
            deliveries = await self._deliveries(iid)
            parts = self._page_parts(first, deliveries)
            # nobody could be paged at the first step: the loop pages the next one at once (escalate_now);
            # when its pages are out too, the line says so instead of ending at "nobody to notify"
            later = sorted({i["created_at"] for i in intents if i.get("step") == step + 1})
            if all(i["state"] == "failed" for i in first) and later:
                nxt = [i for i in intents if i["created_at"] == later[0] and i.get("step") == step + 1]
                if all(i["state"] not in ("pending", "claimed") for i in nxt):
                    more = self._page_parts(nxt, deliveries)
                    parts = [
                        self._t(
                            "、".join(parts) + " → 立即升级：" + "、".join(more),
                            ", ".join(parts) + " -> next step at once: " + ", ".join(more),
                        )
                    ]
            self.told.add(iid)
            label = inc.get("event_label") or inc.get("event_type", "")
            when = self._parse(first_at)
            at = self._when(when)
            # told after the alert step that opened the incident, even when the page's time is earlier
            # (the alert's time is the gateway's; the page's the cloud's)
            order = max(when, self._parse(inc["alert_time"]) if inc.get("alert_time") else when)
            line = self._t(
                f"  [{at}] 派单 #{iid} {label} → " + "、".join(parts),
                f"  [{at}] paged  #{iid} {label} → " + ", ".join(parts),
            )
            out.append((order + 1e-3, line))
        self.lines.extend(line for _, line in out)
        self.progress.extend(line for _, line in sorted(progress, key=lambda tl: tl[0]))
        return out + progress

    async def summary(self) -> LoopSummary:
        s = LoopSummary()
        for inc in await self._incidents():
            iid = int(inc["id"])
            s.incidents += 1
            if inc.get("accepted_at"):
                s.acknowledged += 1
            s.on_site += 1 if inc.get("arrived_at") else 0
            s.handled += 1 if inc.get("handled_at") else 0
            s.closed += 1 if inc.get("closed_at") else 0
            if inc.get("rating"):
                s.rated += 1
                s.ratings.append(int(inc["rating"]))
            s.reopened += int(inc.get("reopen_count") or 0)
            timeline = await self._timeline(iid)
            s.declined += sum(1 for ev in timeline if ev["action"] == "return")
            s.escalations += sum(1 for ev in timeline if ev["action"] == "escalate")
            notes = [str(ev.get("reason") or "") for ev in timeline if ev["action"] == "handle"]
            if notes and inc.get("handled_at"):  # the latest resolution (a reopened case has two)
                s.verdicts[verdict_of_note(notes[-1]) or "other"] += 1
            intents = await self._intents(iid)
            if intents:
                s.paged += 1
            for it in intents:
                s.pages += 1
                state = it["state"]
                if state == "sent":
                    s.pages_sent += 1
                elif state == "failed":
                    s.pages_failed += 1
                    s.failed_by_target[f"{it['target_kind']}:{it['target_id']}"] += 1
                else:
                    s.pages_pending += 1
            for d in await self._deliveries(iid):
                if d["status"] == "delivered":
                    s.delivered_by_channel[d["channel"]] += 1
        try:  # the KPIs are a line of the summary; without them the rest still stands
            rows = (await self._fetch("/api/v1/kpi", params={"by": "all"}))["rows"]
        except httpx.HTTPError:
            rows = []
        s.kpi = dict(rows[0]) if rows else {}
        return s

    def summary_lines(self, s: LoopSummary) -> list[str]:
        t = self._t
        delivered = sum(s.delivered_by_channel.values())
        chans = "、".join(f"{self._channel(c)} {n}" for c, n in s.delivered_by_channel.most_common())
        chans_en = ", ".join(f"{self._channel(c)} {n}" for c, n in s.delivered_by_channel.most_common())
        lines = [
            t(
                f"闭环：开立事件 {s.incidents} 起，已通知 {s.paged} 起，已接单 {s.acknowledged} 起；"
                f"通知 {s.pages} 次：送达 {s.pages_sent}，失败 {s.pages_failed}，处理中 {s.pages_pending}；"
                f"投递 {delivered} 条（{chans or '无'}）",
                f"closed loop: {s.incidents} incidents opened, {s.paged} paged, "
                f"{s.acknowledged} acknowledged; {s.pages} pages: {s.pages_sent} sent, "
                f"{s.pages_failed} failed, {s.pages_pending} in flight; "
                f"{delivered} deliveries ({chans_en or 'none'})",
            )
        ]
        if s.failed_by_target:
            roles = Counter[str]()
            for target, n in s.failed_by_target.items():
                kind, _, who = target.partition(":")
                roles[self._who(kind, who)] += n
            zh = "、".join(f"{k} {n}" for k, n in roles.most_common())
            en = ", ".join(f"{k} {n}" for k, n in roles.most_common())
            known = all(t.partition(":")[2] in NOT_SEEDED for t in s.failed_by_target)
            why = ("", "")
            if known:
                why = (
                    "家属和住户因人而异，演示未配置；",
                    "a wearer's family and a flat's resident are per person, not configured in the demo; ",
                )
            lines.append(
                t(
                    f"  无人可收的通知：{zh}（{why[0]}已转值班员站内信，见 docs/demo.md）",
                    f"  pages nobody could receive: {en} ({why[1]}raised to the operators in-app; "
                    "see docs/demo.md)",
                )
            )
        v = s.verdicts
        mean = sum(s.ratings) / len(s.ratings) if s.ratings else None
        mean_zh = f"（平均 {mean:.1f} 分）" if mean is not None else ""
        mean_en = f" (mean {mean:.1f}/5)" if mean is not None else ""
        lines.append(
            t(
                f"  处置：已到场 {s.on_site} 起，已办结 {s.handled} 起（真实事件 {v['real']}、"
                f"干扰 {v['nuisance']}、误报 {v['false_alarm']}），已结案 {s.closed} 起，"
                f"已评价 {s.rated} 起{mean_zh}；"
                f"拒绝改派 {s.declined} 次，无人应答升级 {s.escalations} 次，重开 {s.reopened} 次",
                f"  handling: {s.on_site} on site, {s.handled} handled ({v['real']} real, {v['nuisance']} "
                f"nuisance, {v['false_alarm']} false alarm), {s.closed} closed, {s.rated} rated{mean_en}; "
                f"{s.declined} declined and re-dispatched, {s.escalations} escalations for want of an "
                f"answer, {s.reopened} reopened",
            )
        )
        k = s.kpi

        def pair(name: str) -> tuple[str, str]:
            p50, p95 = k.get(f"{name}_p50_s"), k.get(f"{name}_p95_s")
            if p50 is None or p95 is None:
                return "—", "-"
            return (
                f"p50 {self._span(p50)}、p95 {self._span(p95)}",
                f"p50 {self._span(p50)}, p95 {self._span(p95)}",
            )

        if k:
            ack, arrive, case = pair("ack"), pair("arrive"), pair("case")
            rate = k.get("closure_rate")
            sat = k.get("satisfaction")
            far, nur, judged = k.get("false_alarm_rate"), k.get("nuisance_rate"), k.get("judged")
            lines.append(
                t(
                    f"  云端 KPI（/api/v1/kpi）：报警到接单 {ack[0]}；报警到场 {arrive[0]}；"
                    f"立案到结案 {case[0]}；"
                    f"结案率 {'—' if rate is None else f'{rate:.0%}'}；"
                    f"满意度 {'—' if sat is None else f'{sat:.1f}'}；"
                    f"误报率 {'—' if far is None else f'{far:.0%}'}、"
                    f"扰动率 {'—' if nur is None else f'{nur:.0%}'}（核实 {judged or 0} 起）",
                    f"  cloud KPIs (/api/v1/kpi): alarm to accepted {ack[1]}; alarm to on site "
                    f"{arrive[1]}; registered to closed {case[1]}; "
                    f"closure rate {'-' if rate is None else f'{rate:.0%}'}; "
                    f"satisfaction {'-' if sat is None else f'{sat:.1f}'}; "
                    f"false-alarm rate {'-' if far is None else f'{far:.0%}'}, "
                    f"nuisance rate {'-' if nur is None else f'{nur:.0%}'} ({judged or 0} judged)",
                )
            )
        return lines


async def seed_people(put: Callable[..., Any], people: DemoPeople) -> None:
    """Load the people the way an administrator does, through the API (validated and audited): the roster
    document, each person's contact binding (in-app; the phone for the dispatcher to call), the desk groups.
    ``put`` is an admin's ``httpx.AsyncClient.put``; the users exist already (``Credentials.add_user``)."""
    r = await put("/api/v1/loop/config/roster", json=people.roster)
    r.raise_for_status()
    for p in people.people:
        body = {
            "display_name": p.name,
            "responder_id": p.username,
            "phone": p.phone,
            "channels": ["inapp"],
            "duty_roles": list(p.roles),
        }
        r = await put(f"/api/v1/notify/contacts/{p.username}", json=body)
        r.raise_for_status()
    for name, (title, members) in people.groups.items():
        r = await put(f"/api/v1/notify/groups/{name}", json={"title": title, "members": members})
        r.raise_for_status()


__all__ = [
    "DemoPeople",
    "DispatchStory",
    "LoopSummary",
    "Person",
    "demo_people",
    "seed_people",
    "seeded_roles",
]
