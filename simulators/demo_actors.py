"""The demo's people acting: responders answer their pages, travel, handle and report; residents rate.

Everything they do goes through the cloud's public interfaces, exactly what a phone would send:

- a responder's phone reads its in-app notices with the responder's own credential
  (``GET /api/v1/notify/inapp?unread=true``, ``POST /api/v1/notify/inapp/{id}/read``), opens the case
  (``GET /api/v1/incidents/{id}``, as the console's incident page does for any user) and presses the
  signed links the notice carries (``POST /api/v1/links/{token}``: 接单 accept, 拒绝 decline, 已到场
  arrived, 处置完成 resolved with a note);
- after resolving, the responder asks for the resident's case link (``POST
  /api/v1/notify/incidents/{id}/case-link``, which an operator may do) and leaves it with the resident,
  or with the wearer's family for a wristband;
- the resident follows that link (``GET /api/v1/links/{token}``) and, once the case is closed, rates it
  (``POST /api/v1/links/{token}/rating``) or, now and then, reopens it (``POST .../reopen``).

No database writes, no calls into the cloud's objects. Behaviour is seeded per (seed, person, incident,
page): the same run makes the same choices. Each role has a :class:`Habit`: how often a page is answered
at all (the rest never answer, so the escalation shows), how often the person the order was dispatched
to declines it (the loop re-dispatches), how fast they react, travel (straight-line distance from their
base x 1.3 for the streets, at the role's speed, plus getting ready) and work on site.

What the responder reports is the simulator's ground truth (:class:`GroundTruth`, ``simulators/truth.py``):
a real event, a nuisance (cooking smoke, a test) or nothing found (a false alarm). The verdict opens the
resolution note with a fixed tag (:data:`VERDICT_TAGS`) that the story reads back from the incident's
timeline. On a real event the responder stays until the episode is over (the cover reseated, the fire
out; at most :data:`MAX_STAY_S`), so the loop's verification by telemetry (alerts quiet for 5 minutes)
can close the case.

Times follow the shared accelerated clock (``Clock.sleep`` takes simulated seconds). A failing action is
counted and remembered (:attr:`Community.failures`), never raised: the demo carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from alerts.loop.rosters import roster_from_dict
from cloud.notify.links import Purpose
from cloud.notify.render import PURPOSE_LABELS
from firmware_bridge.kernel.clock import Clock
from firmware_bridge.kernel.locale import parse_iso
from simulators.truth import TruthRecord

log = logging.getLogger(__name__)

#: the tag that opens a resolution note: what the responder found on site (read back by the story)
VERDICT_TAGS = {
    "real": "【核实：真实事件】",
    "nuisance": "【核实：干扰，非险情】",
    "false_alarm": "【核实：误报，现场无异常】",
}
#: a responder on a real event nothing they do ends (vital signs when not a doctor) stays until it is over,
#: but not longer than this after arriving
MAX_STAY_S = 45 * 60.0
#: on site, how long it takes to end a real event the world reacts to (``Fleet.handle``; simulated
#: seconds, seeded per incident): then the device's own frames show it over and its alert clears
HANDLING_S: dict[str, tuple[float, float]] = {
    "cover_displaced": (300.0, 900.0),  # lift the cover back into its frame, lock it
    "cover_open": (180.0, 600.0),  # put the lid back, set up the barrier
    "tamper": (120.0, 300.0),
    "gas_combustible": (900.0, 1800.0),  # ventilate until the meter reads clear
    "gas_toxic": (900.0, 1800.0),
    "oxygen_abnormal": (600.0, 1500.0),
    "fire": (600.0, 1500.0),  # put out, the smoke cleared, the alarm reset
    "co": (600.0, 1200.0),  # windows open, the heater off, the alarm reset
    "overflow": (900.0, 1800.0),  # the blocked drain cleared, the well pumped down: the water falls
    "geofence_exit": (300.0, 1200.0),  # searching until found; then walked home at the wearer's pace
    "heart_rate_high": (600.0, 1500.0),  # treated (rest, the usual medicine): back to normal after it
    "heart_rate_low": (600.0, 1500.0),
    "spo2_low": (600.0, 1500.0),  # oxygen, sat upright: SpO2 back above 94 %
    "fall": (180.0, 600.0),  # checked over and helped up: the band sees steps and an upright wearer
    "sos": (60.0, 300.0),  # seen to, the alarm reset on the band
    "band_removed": (60.0, 180.0),  # the band back on the wrist
    "inactivity": (60.0, 180.0),
    "low_battery": (300.0, 900.0),
    "sensor_fault": (600.0, 1200.0),
    "device_silent": (600.0, 1800.0),
}
#: events only a medical responder ends on site (the others stay with the wearer until it is over)
MEDICAL_EVENTS = frozenset({"heart_rate_high", "heart_rate_low", "spo2_low"})
MEDICAL_ROLES = frozenset({"community_doctor"})
#: after the event is over the responder watches the device settle, tidies up, then presses 处置完成
AFTER_S = (60.0, 180.0)
#: streets are not straight lines
DETOUR = 1.3
#: the label on a notice's button -> what it does (a phone reads the button, zh or en)
_BY_LABEL = {label: p for p, labels in PURPOSE_LABELS.items() for label in labels}
#: stages in which an order still waits for someone to take it
_WAITING = ("dispatched",)
#: stages of a case nobody acts on any more
_SHUT = ("closed", "rated", "dismissed", "verified")


@dataclass(frozen=True, slots=True)
class Habit:
    """How one role answers a page and works a case (times in simulated seconds)."""

    answer: float  # share of pages answered at all; the rest are never answered
    decline: float  # of the orders dispatched to this person and answered, the share declined
    react_s: tuple[float, float]  # most answers come this long after the page
    late_share: float  # the rest come up to 12 minutes after it
    speed_mps: float
    setout_s: tuple[float, float]  # getting ready before leaving
    work_s: tuple[float, float]  # on site, for a real event
    check_s: tuple[float, float] = (180.0, 480.0)  # on site, when nothing is wrong
    #: share of a later page (the escalation's next step or repeat) answered by someone who let the first
    #: one go; default: half of those who did not answer the first
    answer_again: float | None = None


HABITS: dict[str, Habit] = {
    "grid_worker": Habit(0.9, 0.1, (60, 300), 0.1, 4.0, (30, 120), (300, 900)),  # e-bike
    "municipal_crew": Habit(0.9, 0.1, (60, 300), 0.15, 7.0, (300, 600), (900, 2400)),  # the truck
    "traffic_police": Habit(0.9, 0.15, (60, 240), 0.1, 8.0, (60, 180), (600, 1200)),  # motorbike
    "property_management": Habit(0.9, 0.1, (60, 300), 0.1, 1.4, (60, 120), (300, 900)),  # on foot
    "community_doctor": Habit(0.92, 0.05, (60, 180), 0.05, 3.0, (120, 240), (600, 1500)),
    "volunteer": Habit(0.8, 0.1, (60, 300), 0.2, 1.3, (120, 300), (300, 900)),
    "maintenance": Habit(0.85, 0.1, (120, 300), 0.2, 5.0, (600, 1200), (600, 1800)),
}
DEFAULT_HABIT = Habit(0.85, 0.1, (60, 300), 0.15, 3.0, (120, 300), (300, 900))
#: the call takers: every task is taken (a desk has a queue, not a pocket), most within 1-4 minutes of
#: arriving, a fifth within 10 (the desk is on another call); a call lasts work_s
DESK_HABIT = Habit(1.0, 0.0, (60, 240), 0.2, 0.0, (0, 0), (60, 180))
#: a family answers the desk's call this often; the desk tries once more after CALL_RETRY_S
FAMILY_ANSWERS = 0.8
CALL_RETRY_S = 300.0
#: the start of a call task's title (cloud.notify.planner: 请致电家属 / call the family: ...)
CALL_TASK_TITLE = "请致电家属"

_DECLINE_REASONS = (
    "正在处理另一起事件，无法前往，请改派",
    "不在辖区，请改派",
    "车辆故障，暂时无法出发，请改派",
)
_COMMENTS = {5: "处理很及时，谢谢！", 4: "处理及时", 3: "还可以", 2: "来得太慢了", 1: "很不满意"}
_REOPEN_REASONS = ("问题没有解决，又报警了", "处理后还是有异响，请再来看看")
_WORK_NOTES = {
    "cover_displaced": "井盖已复位并加固，现场设置警示",
    "cover_open": "井盖已盖回并设围挡，已通知市政检修",
    "overflow": "已疏通排水口，设置警示牌，积水消退",
    "gas_combustible": "已通风并检测，浓度恢复正常，已通知燃气公司",
    "gas_toxic": "已通风并检测，浓度恢复正常，井下作业已暂停",
    "oxygen_abnormal": "已通风，含氧量恢复正常",
    "fire": "火情已扑灭，人员安全，已配合消防处置",
    "co": "已开窗通风并关闭燃气，住户安全",
    "fall": "老人已扶起，无明显外伤，已联系家属",
    "sos": "已上门查看，老人身体不适，已陪同就医并通知家属",
    "heart_rate_high": "已上门测量，建议就医，家属已到场",
    "heart_rate_low": "已上门测量，建议就医，家属已到场",
    "spo2_low": "已上门测量血氧，已陪同就医",
    "inactivity": "已上门查看，老人安好",
    "geofence_exit": "已找到老人并送回家中",
    "band_removed": "老人在家，手环未佩戴，已提醒佩戴",
    "device_silent": "设备已检修，恢复上报",
    "low_battery": "已更换电池",
    "gateway_offline": "网关已重启，恢复联网",
}
_NUISANCE_NOTES = {
    "nuisance_cooking": "做饭油烟（烧干锅）触发报警，已关火并提醒住户通风",
    "band_removed": "手环摘下放在桌上，老人在家安好，已提醒佩戴",
    "fall": "老人跌倒后已自行起身，无外伤",
    "nuisance_test": "住户测试报警器，已说明使用方法",
    "nuisance_hush": "住户已消音，现场无险情",
    "nuisance_traffic": "车辆碾压井盖引起，井盖完好",
}


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # "real" | "nuisance" | "false_alarm"
    event_type: str = ""
    end: float | None = None  # when the real episode is over (ground truth)


class GroundTruth:
    """What really happened at a device, from the simulator's ground truth (``Fleet.truth``)."""

    def __init__(self, records: Iterable[TruthRecord], *, slack_s: float = 900.0) -> None:
        self.by_device: dict[str, list[TruthRecord]] = {}
        for r in records:
            self.by_device.setdefault(r.device_id, []).append(r)
        self.slack_s = slack_s

    def verdict(self, device_id: str, event_type: str, at: float) -> Verdict:
        """What a responder finds for an incident of ``event_type`` at ``device_id`` raised at ``at``."""
        near = [
            r
            for r in self.by_device.get(device_id, [])
            if r.start - self.slack_s <= at <= r.end + self.slack_s
        ]
        if not near:
            return Verdict("false_alarm", event_type)
        same = [r for r in near if r.event_type.value == event_type] or near
        best = min(same, key=lambda r: (r.must_not_alert, abs(r.start - at)))
        if best.must_not_alert:
            return Verdict("nuisance", best.event_type.value, best.end)
        return Verdict("real", best.event_type.value, best.end)


def resolution_note(v: Verdict) -> str:
    if v.kind == "real":
        what = _WORK_NOTES.get(v.event_type, "现场已处置完毕")
    elif v.kind == "nuisance":
        what = _NUISANCE_NOTES.get(v.event_type, "现场为干扰，无险情")
    else:
        what = "现场核查设备及周边未见异常，判定为误报"
    return VERDICT_TAGS[v.kind] + what


def verdict_of_note(note: str) -> str | None:
    """The verdict a resolution note starts with (``real`` / ``nuisance`` / ``false_alarm``), if any."""
    for kind, tag in VERDICT_TAGS.items():
        if note.startswith(tag):
            return kind
    return None


def travel_s(habit: Habit, base: tuple[float, float] | None, site: tuple[float, float] | None) -> float:
    """Door to door: straight line x :data:`DETOUR` at the role's speed; 10 minutes when a place is
    unknown (a gateway cabinet without coordinates)."""
    if base is None or site is None:
        return 600.0
    lat1, lon1, lat2, lon2 = map(math.radians, (*base, *site))
    a = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    metres = 2 * 6_371_000.0 * math.asin(math.sqrt(a))
    return max(60.0, metres * DETOUR / habit.speed_mps)


@dataclass(frozen=True, slots=True)
class Phone:
    """One responder's phone: who, their credential, where they start from, how they behave."""

    username: str
    name: str
    token: str
    habit: Habit
    base: tuple[float, float] | None = None
    role: str = ""  # the roster role (a doctor treats vital signs: MEDICAL_ROLES)


def phones_for(people: Iterable[Any], tokens: Mapping[str, str]) -> list[Phone]:
    """Phones of the field staff (``simulators.demo_loop.Person`` rows with a token); the call takers
    relay the desks' pages by phone and are not simulated."""
    out = []
    for p in people:
        role = p.roles[0] if p.roles else ""
        if role == "call_taker" or p.username not in tokens:
            continue
        base = (p.lat, p.lon) if p.lat is not None and p.lon is not None else None
        out.append(Phone(p.username, p.name, tokens[p.username], HABITS.get(role, DEFAULT_HABIT), base, role))
    return out


def desk_for(people: Iterable[Any], tokens: Mapping[str, str]) -> list[Phone]:
    """The call takers at the desk (their console sessions: the users' own credentials, role dispatcher):
    they take the 请致电家属 call tasks, call the site to confirm a fire and relay the 119 / 120 pages."""
    return [
        Phone(p.username, p.name, tokens[p.username], DESK_HABIT)
        for p in people
        if p.roles and p.roles[0] == "call_taker" and p.username in tokens
    ]


def duty_plan(people: Iterable[Any], roster: Mapping[str, Any]) -> Callable[[str, float], bool]:
    """``(username, t) -> on call``: each person's own duty plan, from the roster document the demo loaded
    (``simulators.demo_loop.DemoPeople``); pure, no call to the cloud."""
    plan = roster_from_dict(roster)
    duties = {p.username: [(r, z) for r in p.roles for z in p.zones] for p in people}

    def on_duty(username: str, t: float) -> bool:
        return any(
            any(x.id == username for x in plan.on_call(role, zone, t))
            for role, zone in duties.get(username, ())
        )

    return on_duty


class World(Protocol):
    """What a responder on site can change: ``Fleet.handle`` (the end applied, or None: nothing reacts)."""

    def __call__(self, device_id: str, event_type: str, *, on_site: float, done: float) -> float | None: ...


@dataclass
class _Case:
    """What one phone decided about one incident."""

    pages: int = 0
    state: str = "new"  # new | silent | pending | declined | working | done


class Community:
    """Runs the phones and the residents until ``stop``; ``client`` talks to the cloud (any base URL)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        phones: Sequence[Phone],
        truth: GroundTruth,
        clock: Clock,
        *,
        seed: int = 0,
        poll_s: float = 60.0,
        min_poll_real_s: float = 2.5,
        reopen_share: float = 0.05,
        rate_share: float = 0.85,
        on_duty: Callable[[str, float], bool] | None = None,
        off_duty_factor: float = 10.0,
        world: World | None = None,
        desk: Sequence[Phone] = (),
    ) -> None:
        self.client = client
        self.desk = list(desk)  # the call takers (desk_for)
        self.calls: Counter[str] = Counter()  # the desk's calls to families: reached / not_reached
        #: the same calls as the cloud recorded them (the family-call answer's last outcome); empty when the
        #: cloud has no endpoint for it
        self.cloud_calls: Counter[str] = Counter()
        self._taken: set[tuple[str, str]] = set()  # (incident, task) the desk took: one call, not one each
        self._called_site: set[str] = set()  # fire cases whose site the desk called
        self._call_outcome_api = True  # until the cloud says it has no endpoint for a call's outcome
        self._calling: dict[str, tuple[str, str]] = {}  # incident -> the call task the desk is on
        self.world = world  # the simulated world a responder on site changes (Fleet.handle)
        self.phones = list(phones)
        self.truth = truth
        self.clock = clock
        self.seed = seed
        self.poll_s = poll_s
        self.min_poll_real_s = min_poll_real_s
        self.reopen_share = reopen_share
        self.rate_share = rate_share
        self.on_duty = on_duty  # (username, t) -> on call now (each person knows their duty plan)
        self.off_duty_factor = off_duty_factor  # off duty, a phone is looked at this much less often
        self.counts: Counter[str] = Counter()  # what the people did (accept, decline, silent, ...)
        self.failures: list[str] = []  # actions the cloud refused or that did not reach it
        self._cases: dict[tuple[str, str], _Case] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._residents: set[str] = set()  # incidents whose resident has a case link
        self._seen: set[tuple[str, int]] = set()  # (phone, notice id) already looked at

    # -- plumbing ------------------------------------------------------------------------------------------
    def _rng(self, *parts: object) -> random.Random:
        return random.Random("/".join(str(p) for p in (self.seed, *parts)))

    async def _until(self, t: float) -> None:
        while (left := t - self.clock.now()) > 0:
            await self.clock.sleep(left)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # a task cancelled at the end of the run before it first ran never awaited ``coro``: close it, or
        # its garbage collection warns "coroutine ... was never awaited" (an error under pytest: the demo's
        # test failed 1 run in 4 when a page came in the last moment). A finished coroutine ignores close()
        task.add_done_callback(lambda _t: coro.close())

    async def _guard(self, coro: Any, name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an actor's bug or a dropped connection must not stop the demo
            self._fail(f"{name}: {type(exc).__name__}: {exc}")

    def _fail(self, what: str) -> None:
        self.counts["failed"] += 1
        if len(self.failures) < 50:
            self.failures.append(what)
        log.debug("demo actor action failed: %s", what)

    async def _call(self, what: str, method: str, url: str, **kw: Any) -> httpx.Response | None:
        for attempt in (1, 2):
            try:
                return await self.client.request(method, url, **kw)
            except httpx.TransportError as exc:
                # a phone reloads a page whose connection dropped; a button is not pressed twice
                if method == "GET" and attempt == 1:
                    continue
                self._fail(f"{what}: {type(exc).__name__}")
            except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: the client is closed (shutdown)
                self._fail(f"{what}: {type(exc).__name__}")
            return None
        return None

    @staticmethod
    def _auth(phone: Phone) -> dict[str, str]:
        return {"Authorization": f"Bearer {phone.token}"}

    # -- the run -------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Every phone checks its notices on its own (staggered) until ``stop``; then what is still under
        way is cancelled."""
        wait = max(self.clock.real_seconds(self.poll_s), self.min_poll_real_s)

        async def phone_loop(phone: Phone, offset: float) -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(offset):
                    await stop.wait()
            while not stop.is_set():
                await self._read_notices(phone)
                off = self.on_duty is not None and not self.on_duty(phone.username, self.clock.now())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait * self.off_duty_factor if off else wait):
                        await stop.wait()

        async def desk_loop(taker: Phone, offset: float) -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(offset):
                    await stop.wait()
            while not stop.is_set():
                off = self.on_duty is not None and not self.on_duty(taker.username, self.clock.now())
                if not off:  # off shift, a call taker is not at the console
                    await self._read_desk(taker)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await stop.wait()

        try:
            n = max(len(self.phones), 1)
            for i, phone in enumerate(self.phones):
                self._spawn(phone_loop(phone, wait * (1 + i / n)), f"phone {phone.username}")
            for i, taker in enumerate(self.desk):
                self._spawn(desk_loop(taker, wait * (1 + (i + 0.5) / n)), f"desk {taker.username}")
            await stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read_notices(self, phone: Phone) -> None:
        r = await self._call(
            "inapp", "GET", "/api/v1/notify/inapp", params={"unread": "true"}, headers=self._auth(phone)
        )
        if r is None or r.status_code != 200:
            if r is not None:
                self._fail(f"{phone.name} inapp: HTTP {r.status_code}")
            return
        for notice in sorted(r.json(), key=lambda n: n["id"]):
            if notice.get("for_all_operators") or (phone.username, notice["id"]) in self._seen:
                continue  # the operators' shared queue (call tasks): not this phone's to answer
            self._seen.add((phone.username, notice["id"]))
            links = {}
            for a in notice.get("actions") or ():
                purpose = _BY_LABEL.get(str(a.get("label", "")))
                if purpose is not None and "/l/" in str(a.get("url", "")):
                    links[purpose] = str(a["url"]).rsplit("/l/", 1)[1]
            incident = str(notice.get("incident_id") or "")
            if not (incident.isdigit() and Purpose.ACCEPT in links):
                continue
            if self._page(phone, incident, float(notice["created_at"]), links):
                # opened on the phone: read in the console too (a page never answered stays unread)
                path = f"/api/v1/notify/inapp/{notice['id']}/read"
                r = await self._call("read", "POST", path, headers=self._auth(phone))
                if r is not None and r.status_code != 204:
                    self._fail(f"{phone.name} read: HTTP {r.status_code}")

    def _page(self, phone: Phone, incident: str, paged_at: float, links: dict[Purpose, str]) -> bool:
        """Decide what to do about a page; true if the person looks at it."""
        case = self._cases.setdefault((phone.username, incident), _Case())
        if case.state not in ("new", "silent"):
            return True  # already answering, declined, or on it: this page is glanced at and set aside
        case.pages += 1
        rng = self._rng(phone.username, incident, case.pages)
        # a page repeated by the escalation (another message, a louder channel) is more often answered
        again = phone.habit.answer_again
        answer = phone.habit.answer if case.pages == 1 else again if again is not None else 0.5
        if rng.random() >= answer:
            if case.state == "new":
                self.counts["silent"] += 1
            case.state = "silent"
            return False
        lo, hi = phone.habit.react_s
        delay = rng.uniform(300, 720) if rng.random() < phone.habit.late_share else rng.uniform(lo, hi)
        case.state = "pending"
        self._spawn(
            self._respond(phone, incident, paged_at + delay, links, rng), f"{phone.username}#{incident}"
        )
        return True

    async def _incident(self, phone: Phone, incident: str) -> dict[str, Any] | None:
        r = await self._call("incident", "GET", f"/api/v1/incidents/{incident}", headers=self._auth(phone))
        if r is None or r.status_code != 200:
            if r is not None:
                self._fail(f"{phone.name} #{incident}: HTTP {r.status_code}")
            return None
        body: dict[str, Any] = r.json()["incident"]
        return body

    async def _press(
        self, phone: Phone, incident: str, purpose: Purpose, token: str, note: str = "", outcome: str = ""
    ) -> bool:
        body = {"note": note, **({"outcome": outcome} if outcome else {})}  # outcome: resolved links only
        r = await self._call(purpose.value, "POST", f"/api/v1/links/{token}", json=body)
        if r is None:
            return False
        if r.status_code == 200:
            self.counts[purpose.value] += 1
            return True
        if purpose in (Purpose.ACCEPT, Purpose.DECLINE) and r.status_code in (400, 409):
            # someone else took it a moment earlier: stand down (a decline of an order another
            # responder accepted is refused with 409 since the loop's link-owner check)
            self.counts["too_late"] += 1
            return False
        self._fail(f"{phone.name} {purpose.value} #{incident}: HTTP {r.status_code} {r.text[:120]}")
        return False

    async def _respond(
        self, phone: Phone, incident: str, at: float, links: dict[Purpose, str], rng: random.Random
    ) -> None:
        key = (phone.username, incident)
        await self._until(at)
        inc = await self._incident(phone, incident)  # what the phone shows before a button is pressed
        if inc is None or inc["stage"] not in _WAITING:
            self._cases[key].state = "done"  # taken by someone else, or closed meanwhile
            self.counts["stood_down"] += 1
            return
        mine = inc.get("assignee") == phone.username  # dispatched to this person: theirs to decline
        if mine and Purpose.DECLINE in links and rng.random() < phone.habit.decline:
            reason = rng.choice(_DECLINE_REASONS)
            ok = await self._press(phone, incident, Purpose.DECLINE, links[Purpose.DECLINE], reason)
            self._cases[key].state = "declined" if ok else "done"
            return
        if Purpose.ACCEPT not in links or not await self._press(
            phone, incident, Purpose.ACCEPT, links[Purpose.ACCEPT]
        ):
            self._cases[key].state = "done"
            return
        self._cases[key].state = "working"
        accepted = self.clock.now()
        site = (inc["lat"], inc["lon"]) if inc.get("lat") is not None and inc.get("lon") is not None else None
        arrive = accepted + rng.uniform(*phone.habit.setout_s) + travel_s(phone.habit, phone.base, site)
        await self._until(arrive)
        if Purpose.ARRIVED in links:
            await self._press(phone, incident, Purpose.ARRIVED, links[Purpose.ARRIVED])
        raised = parse_iso(inc["alert_time"]) if inc.get("alert_time") else accepted
        device, event = str(inc.get("device_id") or ""), str(inc.get("event_type") or "")
        verdict = self.truth.verdict(device, event, raised)
        now = self.clock.now()
        ended = None
        treats = verdict.event_type not in MEDICAL_EVENTS or phone.role in MEDICAL_ROLES
        if verdict.kind == "real" and self.world is not None and verdict.event_type in HANDLING_S and treats:
            # the world reacts: the episode ends after the handling time, the device's frames show it
            work = self._rng("handling", incident, device).uniform(*HANDLING_S[verdict.event_type])
            ended = self.world(device, verdict.event_type, on_site=now, done=now + work)
        if ended is not None:
            self.counts["ended_on_site"] += 1
            done = ended + rng.uniform(*AFTER_S)
        elif verdict.kind == "real":
            done = now + rng.uniform(*phone.habit.work_s)
            if verdict.end is not None:  # stay until it is over (cover reseated, fire out), within reason
                done = max(done, min(verdict.end + rng.uniform(60, 180), now + MAX_STAY_S))
        else:
            done = now + rng.uniform(*phone.habit.check_s)
        await self._until(done)
        resolved = Purpose.RESOLVED in links and await self._press(
            phone, incident, Purpose.RESOLVED, links[Purpose.RESOLVED], resolution_note(verdict), verdict.kind
        )
        self._cases[key].state = "done"
        if not resolved:
            return
        self._cases.pop(key, None)  # a reopened case pages again: a new decision
        if incident in self._residents:
            return  # a reopened case: the resident still follows the link they have
        self._residents.add(incident)
        r = await self._call(
            "case-link", "POST", f"/api/v1/notify/incidents/{incident}/case-link", headers=self._auth(phone)
        )
        if r is None or r.status_code != 200:
            if r is not None:
                self._fail(f"{phone.name} case-link #{incident}: HTTP {r.status_code}")
            return
        case_token = str(r.json()["url"]).rsplit("/l/", 1)[1]
        waited = self.clock.now() - raised
        self._spawn(self._resident(incident, case_token, waited), f"resident#{incident}")

    # -- the desk: call takers at the console ------------------------------------------------------------
    async def _read_desk(self, taker: Phone) -> None:
        """A call taker's own unread notices (``mine=true``: the tasks addressed to them, as the console's
        list shows them): call tasks, a fire's confirmation page, the 119 / 120 desks' pages."""
        r = await self._call(
            "desk inapp", "GET", "/api/v1/notify/inapp",
            params={"unread": "true", "mine": "true"}, headers=self._auth(taker),
        )  # fmt: skip
        if r is None or r.status_code != 200:
            if r is not None:
                self._fail(f"{taker.name} inapp: HTTP {r.status_code}")
            return
        for notice in sorted(r.json(), key=lambda n: n["id"]):
            if (taker.username, notice["id"]) in self._seen:
                continue
            self._seen.add((taker.username, notice["id"]))
            incident = str(notice.get("incident_id") or "")
            if not incident.isdigit():
                continue
            is_call = str(notice.get("title") or "").startswith(CALL_TASK_TITLE)
            task = (incident, f"call:{notice.get('title')}" if is_call else f"page:{notice['id']}")
            mine = task not in self._taken
            self._taken.add(task)
            if is_call and mine:
                self._calling[incident] = task
            rng = self._rng("desk", taker.username, notice["id"])
            lo, hi = taker.habit.react_s
            delay = rng.uniform(300, 600) if rng.random() < taker.habit.late_share else rng.uniform(lo, hi)
            at = float(notice["created_at"]) + delay
            if is_call:
                job = self._family_call(taker, incident, int(notice["id"]), at, mine, rng)
            else:
                job = self._desk_page(taker, incident, int(notice["id"]), at, rng)
            self._spawn(job, f"{taker.username}#{incident}")

    async def _done(self, taker: Phone, notice_id: int) -> None:
        """The task is done: read in the console (its 通知记录 shows 已读 and when)."""
        r = await self._call(
            "desk read", "POST", f"/api/v1/notify/inapp/{notice_id}/read", headers=self._auth(taker)
        )
        if r is not None and r.status_code != 204:
            self._fail(f"{taker.name} read: HTTP {r.status_code}")

    async def _family_call(
        self, taker: Phone, incident: str, notice_id: int, at: float, mine: bool, rng: random.Random
    ) -> None:
        """请致电家属: the number (revealed to a dispatcher, audited), a call, once more if nobody answers."""
        await self._until(at)
        if not mine:  # a colleague on the same shift took it: seen, nothing to do
            await self._done(taker, notice_id)
            return
        r = await self._call(
            "family", "GET", f"/api/v1/notify/incidents/{incident}/family",
            params={"reveal": "true"}, headers=self._auth(taker),
        )  # fmt: skip
        if r is None or r.status_code != 200:
            if r is not None:
                self._fail(f"{taker.name} family #{incident}: HTTP {r.status_code}")
            return
        reached = False
        for attempt in (1, 2):
            await self.clock.sleep(rng.uniform(*taker.habit.work_s))
            if rng.random() < FAMILY_ANSWERS:
                reached = True
                break
            if attempt == 1:
                await self.clock.sleep(CALL_RETRY_S)
        outcome = "reached" if reached else "not_reached"
        self.calls[outcome] += 1
        if not reached and incident in self._calling:  # the cloud's reminder to call again is taken anew
            self._taken.discard(self._calling.pop(incident))
        if self._call_outcome_api:  # a cloud that records it (proposal: /tmp/demo-react/call-outcome.md)
            note = "已接通" if reached else "两次未接通"
            r = await self._call(
                "family-call", "POST", f"/api/v1/incidents/{incident}/family-call",
                json={"outcome": outcome, "note": note}, headers=self._auth(taker),
            )  # fmt: skip
            if r is not None and r.status_code in (404, 405):  # the case exists: the endpoint does not
                self._call_outcome_api = False  # not in this cloud: the summary counts it
            elif r is not None and r.status_code == 200:
                last = (r.json().get("family_call") or {}).get("last") or {}
                self.cloud_calls[str(last.get("outcome") or "unknown")] += 1
            elif r is not None:
                self._fail(f"{taker.name} family-call #{incident}: HTTP {r.status_code} {r.text[:120]}")
        await self._done(taker, notice_id)

    async def _desk_page(
        self, taker: Phone, incident: str, notice_id: int, at: float, rng: random.Random
    ) -> None:
        """A page to the desk: a fire's confirmation step (call the site; a real fire is confirmed, which
        pages 119 at once), or the 119 / 120 desks' page, relayed by telephone."""
        await self._until(at)
        inc = await self._incident(taker, incident)
        if inc is None:
            return
        await self.clock.sleep(rng.uniform(*taker.habit.work_s))  # the call to the site or the desk
        fire = inc.get("event_type") == "fire" and not inc.get("confirmed") and inc.get("stage") not in _SHUT
        if fire and incident not in self._called_site:  # one call to the site per case, whoever takes it
            self._called_site.add(incident)
            raised = parse_iso(inc["alert_time"]) if inc.get("alert_time") else self.clock.now()
            verdict = self.truth.verdict(str(inc.get("device_id") or ""), "fire", raised)
            if verdict.kind == "real":
                r = await self._call(
                    "confirm", "POST", f"/api/v1/incidents/{incident}/confirm", headers=self._auth(taker)
                )
                if r is not None and r.status_code == 200:
                    self.counts["confirm"] += 1
                elif r is not None and r.status_code != 400:  # 400: closed meanwhile
                    self._fail(f"{taker.name} confirm #{incident}: HTTP {r.status_code} {r.text[:120]}")
            else:  # the resident says it was the cooking / the shower: the desk rules it out (no 119)
                self.counts["not_confirmed"] += 1
                reason = "nuisance" if verdict.kind == "nuisance" else "false_alarm"
                note = (
                    "住户称做饭油烟或洗澡水汽，现场无明火"
                    if reason == "nuisance"
                    else "住户称无异常，疑似设备误报"
                )
                r = await self._call(
                    "rule_out", "POST", f"/api/v1/incidents/{incident}/rule-out",
                    json={"reason": reason, "note": note}, headers=self._auth(taker),
                )  # fmt: skip
                if r is not None and r.status_code == 200:
                    self.counts["ruled_out"] += 1
                elif r is not None and r.status_code == 409:
                    # refused by the cloud (CO, dense smoke, a second alarm in the building, closed
                    # meanwhile): the escalation goes on, as it should
                    self.counts["rule_out_refused"] += 1
                elif r is not None and r.status_code not in (404, 405):  # 404/405: an older cloud
                    self._fail(f"{taker.name} rule-out #{incident}: HTTP {r.status_code} {r.text[:120]}")
        else:
            self.counts["relayed"] += 1
        await self._done(taker, notice_id)

    # -- the resident (or the family) ----------------------------------------------------------------------
    async def _resident(self, incident: str, token: str, waited_s: float) -> None:
        """Follows the case link until the case is closed, then rates it (or now and then reopens it)."""
        rng = self._rng("resident", incident)
        if rng.random() >= self.rate_share:
            self.counts["never_rated"] += 1
            return
        reopened = False
        while True:
            await self.clock.sleep(max(self.poll_s * 4, self.clock_s(self.min_poll_real_s)))
            r = await self._call("case", "GET", f"/api/v1/links/{token}")
            if r is None or r.status_code != 200:
                if r is not None:
                    self._fail(f"resident #{incident} case: HTTP {r.status_code}")
                return
            case = r.json()
            if case.get("status") not in ("closed", "rated"):
                continue  # can_rate is false until the case is closed: keep following
            if not case.get("can_rate", True):
                return  # closed and already rated (by this link or another)
            await self.clock.sleep(rng.uniform(300, 1800))  # reads the message later
            if not reopened and rng.random() < self.reopen_share:
                reopened = True
                r = await self._call(
                    "reopen",
                    "POST",
                    f"/api/v1/links/{token}/reopen",
                    json={"reason": rng.choice(_REOPEN_REASONS)},
                )
                if r is not None and r.status_code == 200:
                    self.counts["reopen"] += 1
                elif r is not None:
                    self._fail(f"resident #{incident} reopen: HTTP {r.status_code} {r.text[:120]}")
                continue
            score = _score(waited_s, rng)
            comment = _COMMENTS[score]
            r = await self._call(
                "rating", "POST", f"/api/v1/links/{token}/rating", json={"score": score, "comment": comment}
            )
            if r is not None and r.status_code == 200:
                self.counts["rating"] += 1
            elif r is not None:
                self._fail(f"resident #{incident} rating: HTTP {r.status_code} {r.text[:120]}")
            return

    def clock_s(self, real_s: float) -> float:
        """Simulated seconds in ``real_s`` real seconds."""
        per = self.clock.real_seconds(1.0)
        return real_s / per if per > 0 else real_s


def _score(waited_s: float, rng: random.Random) -> int:
    """A resident's rating: handled within 30 minutes of the alarm pleases, an hour or more does not."""
    base = 5 if waited_s <= 1800 else 4 if waited_s <= 3600 else 3
    return max(1, min(5, base - (1 if rng.random() < 0.2 else 0)))


__all__ = [
    "DEFAULT_HABIT",
    "HABITS",
    "VERDICT_TAGS",
    "Community",
    "GroundTruth",
    "Habit",
    "Phone",
    "Verdict",
    "World",
    "desk_for",
    "duty_plan",
    "phones_for",
    "resolution_note",
    "travel_s",
    "verdict_of_note",
]
