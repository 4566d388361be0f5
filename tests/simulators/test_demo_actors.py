"""The demo's simulated people (``simulators/demo_actors.py``) against the real app on SQLite, on an
accelerated clock: they read their in-app pages with their own credentials and press the signed links in
them, so incidents are accepted, reached, resolved with the ground truth's verdict and rated by the
resident; a declined page is re-dispatched by the loop and a page nobody answers escalates. Everything
asserted here is read back through the cloud's API (or the story built on it)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.app import create_app
from firmware_bridge.kernel.clock import AcceleratedClock
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.locale import parse_iso
from firmware_bridge.kernel.records import DeviceKind
from simulators.config import parse_config
from simulators.demo import DEMO_FLEET, _one_gateway_csv
from simulators.demo_actors import (
    HABITS,
    VERDICT_TAGS,
    Community,
    GroundTruth,
    Habit,
    Phone,
    phones_for,
    travel_s,
    verdict_of_note,
)
from simulators.demo_loop import DemoPeople, DispatchStory, demo_people, seed_people
from simulators.fleet import Fleet
from simulators.truth import TruthRecord
from tests.cloud.cloudkit import alert_step, batch, make_settings

GW = "gw-demo"
SPEEDUP = 300.0  # one simulated minute in 0.2 real seconds
#: quick, certain people: everyone answers within 1-2 minutes and nobody declines
SURE = Habit(1.0, 0.0, (60, 120), 0.0, 5.0, (30, 60), (120, 240), (120, 240))
SILENT = dataclasses.replace(SURE, answer=0.0, answer_again=0.0)


@dataclass
class Demo:
    client: httpx.AsyncClient  # no credential: what the phones and residents start from
    dispatcher: dict[str, str]
    clock: AcceleratedClock
    people: DemoPeople
    tokens: dict[str, str]
    devices: dict[str, list[dict[str, str]]]  # kind -> rows of devices.csv
    ingest: Callable[..., Any]


@asynccontextmanager
async def demo_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Demo]:
    """The demo's cloud, roster and devices (as ``vigil demo`` sets them up), without the radio."""
    import csv
    import io

    monkeypatch.setenv("VIGIL_CLOUD_LOOP_TICK_S", "20")  # the loop's timers every 20 simulated seconds
    start = time.time()
    cfg = parse_config(tomllib.loads(DEMO_FLEET), source="test", start=start)
    fleet = Fleet.from_config(cfg)
    fleet.write_manifest(tmp_path / "sim")
    devices_csv = (tmp_path / "sim" / "devices.csv").read_text(encoding="utf-8")
    (tmp_path / "notify.toml").write_text('public_base_url = "http://demo.test"\n', encoding="utf-8")
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path}/vigil.db", notify_config_file=tmp_path / "notify.toml"
    )
    clock = AcceleratedClock.starting_now(start, SPEEDUP)
    app = await asyncio.to_thread(create_app, settings, clock=clock)
    async with app.router.lifespan_context(app):
        st = app.state.vigil
        now = clock.now()
        await asyncio.to_thread(st.credentials.add_gateway, GW, now=now)
        admin = await asyncio.to_thread(st.credentials.add_user, "demo-admin", "admin", now=now)
        disp = await asyncio.to_thread(st.credentials.add_user, "demo-dispatcher", "dispatcher", now=now)
        people = demo_people(
            (tmp_path / "sim" / "responders.csv").read_text(encoding="utf-8"), devices_csv, start=now
        )
        tokens = {}
        for p in people.people:
            tokens[p.username] = await asyncio.to_thread(
                st.credentials.add_user, p.username, p.console_role, now=now
            )
        await asyncio.to_thread(st.registry.import_csv, _one_gateway_csv(devices_csv), now=now)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo.test", timeout=10) as client:
            await seed_people(
                functools.partial(client.put, headers={"Authorization": f"Bearer {admin}"}), people
            )
            rows: dict[str, list[dict[str, str]]] = {}
            for row in csv.DictReader(io.StringIO(devices_csv)):
                rows.setdefault(row["kind"], []).append(row)
            n = iter(range(1, 1000))

            async def ingest(*steps: Any) -> None:
                await st.ingest.ingest(
                    batch(f"batch-actors-{next(n):04d}", alerts=list(steps), gateway_id=GW), gateway_id=GW
                )
                await app.state.loop_sink.drained()

            yield Demo(client, {"Authorization": f"Bearer {disp}"}, clock, people, tokens, rows, ingest)


async def incident_of(demo: Demo, device_id: str) -> dict[str, Any]:
    r = await demo.client.get("/api/v1/incidents", params={"limit": 100}, headers=demo.dispatcher)
    assert r.status_code == 200, r.text
    (inc,) = [i for i in r.json()["incidents"] if i["device_id"] == device_id]
    return inc  # type: ignore[no-any-return]


async def timeline(demo: Demo, incident_id: int) -> list[dict[str, Any]]:
    r = await demo.client.get(f"/api/v1/incidents/{incident_id}", headers=demo.dispatcher)
    assert r.status_code == 200, r.text
    return list(r.json()["timeline"])


async def brief(demo: Demo, incident_id: int) -> list[tuple[str, str, str, str, Any]]:
    """The timeline in short, for a failure message."""
    return [
        (e["at"][11:19], e["action"], e["actor"], e["reason"][:24], e["detail"])
        for e in await timeline(demo, incident_id)
    ]


async def wait_for(what: Callable[[], Any], timeout_s: float, describe: Callable[[], Any]) -> None:
    deadline = time.monotonic() + timeout_s
    while not await what():
        assert time.monotonic() < deadline, await describe()
        await asyncio.sleep(0.2)


def habits(phones: list[Phone], by_role: dict[str, Habit], people: DemoPeople) -> list[Phone]:
    role = {p.username: p.roles[0] for p in people.people}
    return [dataclasses.replace(ph, habit=by_role.get(role[ph.username], ph.habit)) for ph in phones]


def raise_and_clear(device: dict[str, str], kind: DeviceKind, event: EventType, t: float) -> list[Any]:
    """A raised alert and, a moment later, its clear (the device quiet again), as the gateway sends them."""
    d = device["device_id"]
    return [
        alert_step(d, kind, event, AlertPhase.RAISED, t, severity=Severity.HIGH),
        alert_step(d, kind, event, AlertPhase.CLEARED, t + 30, episode_t=t, severity=Severity.HIGH),
    ]


async def test_responders_accept_arrive_resolve_with_the_truth_and_residents_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with demo_cloud(tmp_path, monkeypatch) as demo:
        t0 = demo.clock.now()
        real, nothing = demo.devices["manhole"][0], demo.devices["manhole"][1]
        smoke = demo.devices["smoke_alarm"][0]
        # the simulator's ground truth: a real displaced cover, cooking smoke, and nothing at all
        truth = GroundTruth(
            [
                TruthRecord(real["device_id"], DeviceKind.MANHOLE, EventType.COVER_DISPLACED, t0 - 20,
                            t0 + 300, Severity.MEDIUM),
                TruthRecord(smoke["device_id"], DeviceKind.SMOKE_ALARM, EventType.NUISANCE_COOKING, t0 - 60,
                            t0 + 200, Severity.NONE),
            ]
        )  # fmt: skip
        phones = habits(phones_for(demo.people.people, demo.tokens), dict.fromkeys(HABITS, SURE), demo.people)
        community = Community(
            demo.client, phones, truth, demo.clock, seed=7, poll_s=30, min_poll_real_s=0.1,
            reopen_share=0.0, rate_share=1.0,
        )  # fmt: skip
        stop = asyncio.Event()
        people = asyncio.create_task(community.run(stop))
        await demo.ingest(
            *raise_and_clear(real, DeviceKind.MANHOLE, EventType.COVER_DISPLACED, t0),
            *raise_and_clear(smoke, DeviceKind.SMOKE_ALARM, EventType.FIRE, t0),
            *raise_and_clear(nothing, DeviceKind.MANHOLE, EventType.COVER_OPEN, t0),
        )
        story = DispatchStory(demo.client.get, t=lambda zh, en: zh, when=str, parse_time=parse_iso)
        story.bind(functools.partial(demo.client.get, headers=demo.dispatcher))
        await story.load_names()

        async def all_rated() -> bool:
            await story.new_lines()
            return all([(await incident_of(demo, d["device_id"]))["rating"] for d in (real, smoke, nothing)])

        async def state() -> Any:
            return [await incident_of(demo, d["device_id"]) for d in (real, smoke, nothing)], community.counts

        try:
            await wait_for(all_rated, 60, state)
        finally:
            stop.set()
            await people
        assert community.failures == []

        by_id = {p.username: p for p in demo.people.people}
        expected = {
            real["device_id"]: "real",
            smoke["device_id"]: "nuisance",
            nothing["device_id"]: "false_alarm",
        }
        for device_id, verdict in expected.items():
            inc = await incident_of(demo, device_id)
            events = await timeline(demo, inc["id"])
            done = [e for e in events if e["action"] in ("accept", "arrive", "handle", "rate")]
            # every step of the work order came through a signed link (the phone); the rating too (the
            # resident's case link)
            assert [(e["action"], e["channel"]) for e in done] == [
                ("accept", "notify"), ("arrive", "notify"), ("handle", "notify"), ("rate", "notify"),
            ], events  # fmt: skip
            owner = inc["owner"]
            assert done[0]["actor"] == done[1]["actor"] == done[2]["actor"] == owner
            assert done[3]["actor"] == "resident" and 1 <= inc["rating"] <= 5
            assert verdict_of_note(done[2]["reason"]) == verdict, done[2]["reason"]
            assert inc["outcome"] == verdict  # the structured verdict, sent with the resolved link
            assert done[2]["reason"].startswith(VERDICT_TAGS[verdict])
            # accepted 1-2 minutes after the page reached the phone (plus at most a round of the phones'
            # polling); then travelled from the base to the site
            accepted, arrived = parse_iso(inc["accepted_at"]), parse_iso(inc["arrived_at"])
            paged = min(
                parse_iso(e["at"])
                for e in events
                if e["action"] == "notified" and e["detail"].get("target") == f"user:{inc['owner']}"
            )
            # Lower bounds are exact (an actor sleeps until its moment); upper bounds allow 3 real seconds
            # of HTTP and SQLite latency on a loaded machine (900 simulated seconds at 300x). The notice is
            # stored a moment before its delivery is settled and written to the timeline.
            assert accepted - parse_iso(inc["dispatched_at"]) >= 59 and accepted - paged <= 120 + 900, events
            person = by_id[owner]
            base = (person.lat, person.lon) if person.lat is not None and person.lon is not None else None
            road = travel_s(SURE, base, (inc["lat"], inc["lon"]))
            assert road + 30 - 1 <= arrived - accepted <= road + 60 + 900, (arrived - accepted, road)
            # the case closed itself after the handling (alerts quiet for 5 minutes: telemetry)
            assert any(e["action"] == "close" and e["channel"] == "telemetry" for e in events)
        # the real cover kept the responder on site until the episode was over (the ground truth's end)
        inc = await incident_of(demo, real["device_id"])
        assert parse_iso(inc["handled_at"]) >= t0 + 300 + 60 - 5

        # the story tells each step, and the summary reads the cloud's KPIs
        await story.new_lines()  # what happened since its last look
        text = "\n".join(story.progress)
        for word in ("接单 #", "到场 #", "办结 #", "结案 #", "评价 #"):
            assert text.count(word) == 3, text
        assert VERDICT_TAGS["nuisance"] in text and VERDICT_TAGS["false_alarm"] in text
        summary = await story.summary()
        assert (summary.acknowledged, summary.on_site, summary.handled, summary.closed, summary.rated) == (
            3,
        ) * 5
        assert summary.verdicts == {"real": 1, "nuisance": 1, "false_alarm": 1}
        assert summary.kpi["ack_p50_s"] is not None and summary.kpi["arrive_p95_s"] is not None
        assert summary.kpi["satisfaction"] == pytest.approx(sum(summary.ratings) / 3)
        lines = story.summary_lines(summary)
        assert any("已评价 3 起" in ln for ln in lines) and any("报警到接单 p50" in ln for ln in lines), lines


async def test_a_declined_page_is_redispatched_and_an_unanswered_one_escalates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with demo_cloud(tmp_path, monkeypatch) as demo:
        t0 = demo.clock.now()
        # the grid worker the order is dispatched to declines it; the crews and police never answer
        decline = dataclasses.replace(SURE, decline=1.0)
        roles = {**dict.fromkeys(HABITS, SILENT), "grid_worker": decline}
        phones = habits(phones_for(demo.people.people, demo.tokens), roles, demo.people)
        community = Community(demo.client, phones, GroundTruth([]), demo.clock, seed=7, poll_s=30,
                              min_poll_real_s=0.1)  # fmt: skip
        stop = asyncio.Event()
        people = asyncio.create_task(community.run(stop))
        cover = next(d for d in demo.devices["manhole"] if d.get("on_road") in ("1", "true", "True"))
        await demo.ingest(alert_step(cover["device_id"], DeviceKind.MANHOLE, EventType.COVER_OPEN,
                                     AlertPhase.RAISED, t0, severity=Severity.HIGH))  # fmt: skip
        inc = await incident_of(demo, cover["device_id"])
        first = inc["assignee"]
        assert inc["stage"] == "dispatched" and first and first.startswith("r-")  # a grid worker of the fleet

        async def escalated() -> bool:  # after the decline: the re-dispatched crew did not answer either
            actions = [e["action"] for e in await timeline(demo, inc["id"])]
            return "return" in actions and "escalate" in actions[actions.index("return") :]

        try:
            await wait_for(escalated, 60, lambda: brief(demo, inc["id"]))
        finally:
            stop.set()
            await people
        assert community.failures == []
        events = await timeline(demo, inc["id"])
        actions = [e["action"] for e in events]
        ret = actions.index("return")
        declined = events[ret]
        assert declined["actor"] == first and declined["channel"] == "notify" and declined["reason"]
        # re-dispatched at once to the next department's nearest on-call person, who then never answers
        again = next(e for e in events[ret:] if e["action"] == "dispatch")
        assert again["detail"]["assignee"] != first
        assert "accept" not in actions and "escalate" in actions[ret:]
        # the silent crew never opened its pages: all still unread in its console; the decliner opened the
        # page it declined (a page that came after the phone's last look may still be unread)
        crew = again["detail"]["assignee"]
        for who, unread in ((crew, True), (first, False)):
            r = await demo.client.get(
                "/api/v1/notify/inapp", headers={"Authorization": f"Bearer {demo.tokens[who]}"}
            )
            mine = [n for n in r.json() if n["incident_id"] == str(inc["id"]) and not n["for_all_operators"]]
            states = [n["read_at"] is None for n in mine]
            assert mine and (all(states) if unread else not all(states)), (who, mine)
        assert community.counts["decline"] == 1 and community.counts["silent"] >= 1

        story = DispatchStory(None, t=lambda zh, en: zh, when=str, parse_time=parse_iso)
        story.bind(functools.partial(demo.client.get, headers=demo.dispatcher))
        await story.load_names()
        await story.new_lines()
        await story.new_lines()
        assert any("退回 #" in ln and "拒绝" in ln and "改派" in ln for ln in story.progress), story.progress
        summary = await story.summary()
        assert summary.declined == 1 and summary.escalations >= 1 and summary.acknowledged == 0


async def test_a_resident_reopens_the_case_and_rates_it_once_it_is_closed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with demo_cloud(tmp_path, monkeypatch) as demo:
        t0 = demo.clock.now()
        cover = demo.devices["manhole"][2]
        phones = habits(phones_for(demo.people.people, demo.tokens), dict.fromkeys(HABITS, SURE), demo.people)
        community = Community(
            demo.client, phones, GroundTruth([]), demo.clock, seed=7, poll_s=30, min_poll_real_s=0.1,
            reopen_share=1.0, rate_share=1.0,
        )  # fmt: skip
        stop = asyncio.Event()
        people = asyncio.create_task(community.run(stop))
        await demo.ingest(*raise_and_clear(cover, DeviceKind.MANHOLE, EventType.COVER_DISPLACED, t0))
        iid = (await incident_of(demo, cover["device_id"]))["id"]

        async def rated() -> bool:
            return bool((await incident_of(demo, cover["device_id"]))["rating"])

        try:
            await wait_for(rated, 90, lambda: brief(demo, iid))
        finally:
            stop.set()
            await people
        assert community.failures == []
        inc = await incident_of(demo, cover["device_id"])
        assert inc["reopen_count"] == 1 and inc["rework"] and inc["stage"] == "rated"
        steps = [(e["action"], e["actor"] if e["action"] in ("reopen", "rate") else "")
                 for e in await timeline(demo, iid)
                 if e["action"] in ("accept", "handle", "close", "reopen", "rate")]  # fmt: skip
        assert steps == [
            ("accept", ""), ("handle", ""), ("close", ""), ("reopen", "resident"),
            ("accept", ""), ("handle", ""), ("close", ""), ("rate", "resident"),
        ], steps  # fmt: skip
        assert community.counts["reopen"] == 1 and community.counts["rating"] == 1
        story = DispatchStory(None, t=lambda zh, en: zh, when=str, parse_time=parse_iso)
        story.bind(functools.partial(demo.client.get, headers=demo.dispatcher))
        await story.load_names()
        await story.new_lines()
        await story.new_lines()
        assert any(ln.strip().startswith("[") and "重开 #" in ln for ln in story.progress), story.progress
        assert (await story.summary()).reopened == 1


def test_the_verdict_comes_from_the_ground_truth() -> None:
    t = 1_790_000_000.0
    truth = GroundTruth(
        [
            TruthRecord("a", DeviceKind.SMOKE_ALARM, EventType.FIRE, t, t + 600, Severity.HIGH),
            TruthRecord("b", DeviceKind.SMOKE_ALARM, EventType.NUISANCE_COOKING, t, t + 600, Severity.NONE),
        ]
    )
    assert truth.verdict("a", "fire", t + 30).kind == "real"
    assert truth.verdict("a", "fire", t + 30).end == t + 600
    assert truth.verdict("b", "fire", t + 30).kind == "nuisance"
    assert truth.verdict("a", "fire", t + 7200).kind == "false_alarm"  # long over: nothing on site
    assert truth.verdict("c", "fire", t).kind == "false_alarm"


async def test_a_response_cancelled_before_it_ran_leaves_no_unawaited_coroutine() -> None:
    """The run ends (``close``) right after a page was taken: the response's task is cancelled before it
    ever ran. Its coroutine must not be left "never awaited" (a RuntimeWarning at garbage collection, an
    error under pytest: ``tests/cloud/test_demo.py`` failed 1 run in 4 on it, 2026-11-27)."""
    import gc
    import warnings

    from simulators.demo_actors import Community, GroundTruth

    ran: list[int] = []

    async def respond() -> None:
        ran.append(1)

    async with httpx.AsyncClient(base_url="http://127.0.0.1:9") as client:
        community = Community(client, [], GroundTruth([]), AcceleratedClock.starting_now(time.time(), 60.0))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            community._spawn(respond(), "r-1#7")
            await community.close()
            gc.collect()
    assert ran == []
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]
