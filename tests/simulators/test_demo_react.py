"""The demo's world reacts to the people in it (``Fleet.handle``, ``simulators/demo_actors.py``):

- a responder on site ends a real episode after the handling time: the device's own frames then show it
  over (cover reseated, smoke gone, the wearer up and walking), the detection engine clears the alert from
  those frames, and the ground truth records the end (``handled``) so the scorer's clear delay is honest;
- the nuisances the demo adds (a cover rocked askew by a truck, a pot boiled dry, a band left on the
  table) are ones the detector pages, so the responders' verdicts show 扰动 and the KPIs a nuisance rate;
- the call takers take the 请致电家属 call tasks through their own console session and mark them done.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np
import pytest

from alerts.detection.engine import DetectionEngine
from edge.offline import run_fleet
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.locale import parse_iso
from firmware_bridge.kernel.records import DeviceKind as K
from firmware_bridge.registry import spec
from simulators.demo_actors import (
    HABITS,
    HANDLING_S,
    Community,
    GroundTruth,
    desk_for,
    phones_for,
)
from simulators.fleet import Fleet
from simulators.scorer import score
from simulators.truth import TruthRecord, load_truth, write_truth
from simulators.wristband import HELPED_WALK_S
from tests.cloud.cloudkit import alert_step
from tests.simulators.test_demo_actors import SURE, brief, demo_cloud, habits, incident_of, timeline, wait_for

T0 = 1_780_272_000.0  # 2026-06-01 08:00 in Beijing
COUNTS = {K.MANHOLE: 40, K.SMOKE_ALARM: 40, K.WRISTBAND: 40}
REAL = {K.MANHOLE: {"cover_displaced": 3.0}, K.SMOKE_ALARM: {"fire": 3.0}, K.WRISTBAND: {"fall": 3.0}}


class _Responders(Fleet):
    """A fleet whose responders arrive ``after_s`` into each long real episode and take ``work_s``."""

    after_s = 300.0
    work_s = 600.0
    events: tuple[EventType, ...] = (EventType.COVER_DISPLACED, EventType.FIRE, EventType.FALL)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handled: dict[tuple[str, str], tuple[float, float]] = {}  # (device, event) -> (on site, end)

    def run_ticks(self, start: float, duration_s: float) -> Any:
        for tick_end, frames in super().run_ticks(start, duration_s):
            yield tick_end, frames
            for r in self.truth:
                key = (r.device_id, r.event_type.value)
                long = r.end - r.start > self.after_s + self.work_s + min(600.0, self.work_s)
                wanted = r.event_type in self.events and long
                if (
                    wanted
                    and key not in self.handled
                    and r.start + self.after_s <= tick_end
                    and not r.handled
                ):
                    end = self.handle(*key, on_site=tick_end, done=tick_end + self.work_s)
                    assert end == tick_end + self.work_s
                    self.handled[key] = (tick_end, end)


def _run(fleet: Fleet, hours: float = 3.0) -> list[Any]:
    return [f for _, frames in fleet.run_ticks(T0, hours * 3600.0) for f in frames]


def _decoded(frames: list[Any], device_id: str) -> list[Any]:
    return [
        spec(f.kind).codec.decode(f.payload, device_id=f.device_id, time=f.time)
        for f in frames
        if f.device_id == device_id
    ]


def test_a_responder_ends_the_episode_and_the_devices_frames_show_it() -> None:
    fleet = _Responders(COUNTS, seed=3, rates=REAL, step_s=60.0)
    frames = _run(fleet)
    handled = fleet.handled
    kinds = {k for (_, k) in handled}
    assert kinds == {"cover_displaced", "fire", "fall"}, handled
    for (device, event), (_, end) in handled.items():
        (rec,) = [r for r in fleet.truth if r.device_id == device and r.event_type.value == event]
        # the ground truth ends when the responder ended it, and says so
        assert rec.end == end and rec.handled, rec
        after = [r for r in _decoded(frames, device) if r.time > end]
        # the device's state-change uplink within two seconds of the end (a wearer helped up: of the walk
        # to a chair after it, HELPED_WALK_S), and no alarm repeat after it
        walk = HELPED_WALK_S if event == "fall" else 0.0
        assert after and after[0].time - end - walk < 2.0, (event, [r.time - end for r in after[:3]])
        first = after[0]
        fl = spec(first.kind).flag
        if event == "cover_displaced":
            tilt, ref = first.values[0], first.values[1]
            assert abs(tilt - ref) < 2.0 and not first.flags & fl("alarm").mask
        elif event == "fire":
            assert first.values[0] < 0.1 and not first.flags & fl("smoke_alarm").mask
        else:  # helped up: the fall state over, the walk's steps, a stillness that restarted after it
            assert not first.flags & fl("fall").mask
            assert first.values[5] >= 10 and first.values[3] <= max(first.time - end - walk, 0.0) + 1, (
                first.values
            )
    # nothing before the first responder arrived changed: the frames already out are the same as a run
    # without responders (after it, the extra uplinks shift the kind's noise draws: same seed, same
    # handling, same frames; see the determinism test)
    first_on_site = min(on for on, _ in handled.values())
    plain = _run(Fleet(COUNTS, seed=3, rates=REAL, step_s=60.0))
    same = [(f.time, f.device_id, f.payload) for f in frames if f.time < first_on_site]
    assert same == [(f.time, f.device_id, f.payload) for f in plain if f.time < first_on_site]


def test_the_detection_engine_clears_the_alert_from_the_devices_own_frames() -> None:
    fleet = _Responders(COUNTS, seed=3, rates=REAL, step_s=60.0)
    alerts = run_fleet(fleet, T0, 3 * 3600.0, DetectionEngine()).alerts
    assert fleet.handled
    for (device, event), (on_site, end) in fleet.handled.items():
        mine = [a for a in alerts if a.device_id == device and a.event_type.value == event]
        assert any(a.phase is AlertPhase.RAISED for a in mine), (device, event)
        cleared = [a.time for a in mine if a.phase is AlertPhase.CLEARED and a.time >= on_site]
        # before the change the alert stayed up until the episode's own (later) end
        assert cleared and end <= min(cleared) <= end + 120, (event, end, [c - end for c in cleared])
    # and the scorer measures the clear delay from the responder's end
    rep = score(fleet.truth, alerts, devices=120, duration_s=3 * 3600.0, end=T0 + 3 * 3600.0)
    handled_types = {e for (_, e) in fleet.handled}
    for row in rep.rows:
        if row.event_type in handled_types:
            assert row.cleared >= 1 and row.clear_delay_p95_s is not None and row.clear_delay_p95_s <= 120


class _SosResponders(_Responders):
    after_s = 240.0  # an SOS alert stays open 5 minutes at least (the rule's min_open_s)
    work_s = 120.0
    events = (EventType.SOS,)


def test_an_sos_seen_to_clears_on_the_wearers_steps() -> None:
    # the wristband rules clear an SOS only on evidence of recovery (walking): the wearer seen to by the
    # responder walks a few steps, and the band's next uplink shows them
    fleet = _SosResponders({K.WRISTBAND: 60}, seed=4, rates={K.WRISTBAND: {"sos": 6.0}}, step_s=60.0)
    alerts = run_fleet(fleet, T0, 4 * 3600.0, DetectionEngine()).alerts
    assert len(fleet.handled) >= 2, fleet.handled
    for (device, event), (on_site, end) in fleet.handled.items():
        mine = [a for a in alerts if a.device_id == device and a.event_type.value == event]
        cleared = [a.time for a in mine if a.phase is AlertPhase.CLEARED and a.time >= on_site]
        assert cleared and end <= min(cleared) <= end + 120, (device, end, [a.phase for a in mine])


def test_handling_is_deterministic_and_ends_only_what_the_responder_came_for() -> None:
    a, b = (_Responders(COUNTS, seed=5, rates=REAL, step_s=60.0) for _ in range(2))
    fa, fb = _run(a), _run(b)
    assert a.handled and a.handled == b.handled
    assert [(f.time, f.device_id, f.payload) for f in fa] == [(f.time, f.device_id, f.payload) for f in fb]
    assert a.truth == b.truth
    # rain, a walk, a nuisance or a device without that episode: nothing reacts
    plain = Fleet(COUNTS, seed=5, rates=REAL, step_s=60.0)
    plain.plan(T0, 3600.0)
    dev = plain.neighbourhood.sites[K.MANHOLE].device_id[0]
    assert plain.handle(dev, "overflow", on_site=T0 + 60, done=T0 + 600) is None
    assert plain.handle(dev, "nuisance_traffic", on_site=T0 + 60, done=T0 + 600) is None
    assert plain.handle("no-such-device", "fire", on_site=T0, done=T0 + 60) is None
    assert plain.handle(dev, "not-an-event", on_site=T0, done=T0 + 60) is None


def test_a_handled_truth_record_round_trips(tmp_path: Any) -> None:
    rec = TruthRecord("d1", K.MANHOLE, EventType.COVER_DISPLACED, T0, T0 + 600, Severity.HIGH, handled=True)
    plain = dataclasses.replace(rec, device_id="d2", handled=False)
    write_truth([rec, plain], tmp_path / "truth.jsonl")
    text = (tmp_path / "truth.jsonl").read_text()
    assert text.count('"handled":true') == 1  # absent when false: older files and readers unchanged
    assert load_truth(tmp_path / "truth.jsonl") == [rec, plain]


def test_the_demos_nuisances_are_paged_and_found_out_on_site() -> None:
    rates = {
        K.MANHOLE: {"cover_rocked": 3.0, "truck": 0.0},
        K.SMOKE_ALARM: {"scorched_pot": 3.0, "cooking": 0.0},
        K.WRISTBAND: {"band_off_table": 3.0, "charging": 0.0, "bump": 0.0},
    }
    fleet = Fleet(COUNTS, seed=11, rates=rates, step_s=60.0)
    alerts = run_fleet(fleet, T0, 12 * 3600.0, DetectionEngine()).alerts
    rep = score(fleet.truth, alerts, devices=120, duration_s=12 * 3600.0, end=T0 + 12 * 3600.0)
    causes = rep.false_alarms_by_cause
    # each nuisance fools the detector now and then (a pot's smoke pages as a fire, a cover left askew as
    # displaced, a band on the table as removed), and every false alarm is one of them
    assert causes.get("nuisance_traffic", 0) >= 1, causes
    assert causes.get("nuisance_cooking", 0) >= 1, causes
    assert causes.get("band_removed (no alarm expected)", 0) >= 1, causes
    assert "unexplained" not in causes, causes
    # what the responder on site reports for those pages: a nuisance, from the ground truth
    truth = GroundTruth(fleet.truth)
    raised = [a for a in alerts if a.phase is AlertPhase.RAISED]
    verdicts = {truth.verdict(a.device_id, a.event_type.value, a.time).kind for a in raised}
    assert verdicts == {"nuisance"}, verdicts
    # rate 0 by default: a stock fleet plans none of them
    stock = Fleet(COUNTS, seed=11, step_s=60.0)
    stock.plan(T0, 86400.0)
    names = {m.EFFECTS[int(e)].name for m in stock.models.values() for e in m.schedule.eff.tolist()}
    assert not names & {"cover_rocked", "scorched_pot", "band_off_table"}


async def test_the_responder_on_site_ends_the_event_then_resolves(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, float, float]] = []

    def world(device_id: str, event_type: str, *, on_site: float, done: float) -> float | None:
        calls.append((device_id, event_type, on_site, done))
        return done

    async with demo_cloud(tmp_path, monkeypatch) as demo:
        t0 = demo.clock.now()
        cover = demo.devices["manhole"][0]
        device = cover["device_id"]
        truth = GroundTruth(
            [TruthRecord(device, K.MANHOLE, EventType.COVER_DISPLACED, t0 - 20, t0 + 7200, Severity.HIGH)]
        )
        phones = habits(phones_for(demo.people.people, demo.tokens), dict.fromkeys(HABITS, SURE), demo.people)
        community = Community(
            demo.client, phones, truth, demo.clock, seed=7, poll_s=30, min_poll_real_s=0.1,
            reopen_share=0.0, rate_share=0.0, world=world,
        )  # fmt: skip
        stop = asyncio.Event()
        people = asyncio.create_task(community.run(stop))
        await demo.ingest(
            alert_step(
                device, K.MANHOLE, EventType.COVER_DISPLACED, AlertPhase.RAISED, t0, severity=Severity.HIGH
            )
        )
        iid = (await incident_of(demo, device))["id"]

        async def handled() -> bool:
            return bool((await incident_of(demo, device))["handled_at"])

        try:
            await wait_for(handled, 60, lambda: timeline(demo, iid))
        finally:
            stop.set()
            await people
        assert community.failures == []
        # the world was asked once, on arrival, to end the displaced cover after a reseating time
        ((dev, event, on_site, done),) = calls
        inc = await incident_of(demo, device)
        assert (dev, event) == (device, "cover_displaced")
        # asked on arrival: after the cloud stamped 到场 (whole seconds), before the case was handled (no
        # bound in clock seconds: at 300x one real second of a slow request is 300 of them; CI once saw 134)
        assert parse_iso(inc["arrived_at"]) <= on_site + 1 and on_site <= parse_iso(inc["handled_at"])
        lo, hi = HANDLING_S["cover_displaced"]
        assert lo <= done - on_site <= hi
        # resolved once the cover was back (then tidying up), long before the episode's natural end
        assert done + 60 - 1 <= parse_iso(inc["handled_at"]) <= done + 180 + 900
        assert community.counts["ended_on_site"] == 1


async def test_call_takers_take_the_family_call_tasks(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async with demo_cloud(tmp_path, monkeypatch) as demo:
        t0 = demo.clock.now()
        band = demo.devices["wristband"][0]
        device = band["device_id"]
        truth = GroundTruth(
            [TruthRecord(device, K.WRISTBAND, EventType.FALL, t0 - 30, t0 + 3600, Severity.HIGH)]
        )
        desk = desk_for(demo.people.people, demo.tokens)
        assert len(desk) == 3 and all(p.username.startswith("d-call_taker") for p in desk)
        community = Community(
            demo.client, [], truth, demo.clock, seed=7, poll_s=30, min_poll_real_s=0.1, desk=desk,
        )  # fmt: skip
        stop = asyncio.Event()
        people = asyncio.create_task(community.run(stop))
        await demo.ingest(
            alert_step(device, K.WRISTBAND, EventType.FALL, AlertPhase.RAISED, t0, severity=Severity.HIGH)
        )
        iid = (await incident_of(demo, device))["id"]

        async def tasks() -> list[dict[str, Any]]:
            """The call task as the call takers' consoles list it (each on duty got their own row)."""
            found = []
            for taker in desk:
                r = await demo.client.get(
                    "/api/v1/notify/inapp",
                    params={"incident_id": str(iid), "mine": "true"},
                    headers={"Authorization": f"Bearer {taker.token}"},
                )
                assert r.status_code == 200, r.text
                found += [n for n in r.json() if str(n.get("title", "")).startswith("请致电家属")]
            return found

        async def done() -> bool:
            found = await tasks()
            return bool(found) and all(n["read_at"] for n in found) and sum(community.calls.values()) >= 1

        try:
            await wait_for(done, 60, tasks)
        finally:
            stop.set()
            await people
        assert community.failures == []
        assert sum(community.calls.values()) == 1  # one call per task, whoever of the shift saw it
        (task,) = await tasks()
        # taken 1-10 minutes after it arrived, the call made: read in the console then
        assert 60 - 1 <= task["read_at"] - task["created_at"] <= 600 + 180 + 300 + 180 + 900, task
        # the family's number was revealed to the call taker, audited
        import sqlite3

        with sqlite3.connect(tmp_path / "vigil.db") as db:
            who = db.execute("SELECT actor FROM loop_audit WHERE action = 'notify.family.reveal'").fetchall()
        assert who and all(str(a).startswith("d-call_taker") for (a,) in who), who
        # the outcome, on the case's timeline where the cloud records it (POST .../family-call)
        calls = [e for e in await timeline(demo, iid) if e["action"] == "family_call"]
        assert len(calls) in (0, 1) and all(e["actor"].startswith("d-call_taker") for e in calls), calls
        assert np.isfinite(task["read_at"])


async def test_the_desk_calls_the_site_of_a_fire_and_confirms_only_a_real_one(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with demo_cloud(tmp_path, monkeypatch) as demo:
        t0 = demo.clock.now()
        fire = demo.devices["smoke_alarm"][0]
        # in another grid cell: fire alarms of one cell are grouped into one case (a spreading fire)
        pot = next(d for d in demo.devices["smoke_alarm"] if d["grid"] != fire["grid"])
        truth = GroundTruth(
            [
                TruthRecord(
                    fire["device_id"], K.SMOKE_ALARM, EventType.FIRE, t0 - 60, t0 + 3600, Severity.HIGH
                ),
                TruthRecord(
                    pot["device_id"],
                    K.SMOKE_ALARM,
                    EventType.NUISANCE_COOKING,
                    t0 - 60,
                    t0 + 900,
                    Severity.NONE,
                ),
            ]
        )
        desk = desk_for(demo.people.people, demo.tokens)
        community = Community(
            demo.client, [], truth, demo.clock, seed=7, poll_s=30, min_poll_real_s=0.1, desk=desk
        )
        stop = asyncio.Event()
        people = asyncio.create_task(community.run(stop))
        await demo.ingest(
            *(
                alert_step(
                    d["device_id"],
                    K.SMOKE_ALARM,
                    EventType.FIRE,
                    AlertPhase.RAISED,
                    t0,
                    severity=Severity.HIGH,
                )
                for d in (fire, pot)
            )
        )
        real = (await incident_of(demo, fire["device_id"]))["id"]

        async def judged() -> bool:  # both calls finished: the confirm, and the rule-out answered
            c = community.counts
            return c["confirm"] + c["ruled_out"] + c["rule_out_refused"] >= 2

        try:
            await wait_for(judged, 60, lambda: _state(demo, community, fire, pot))
        finally:
            stop.set()
            await people
        assert community.failures == []
        assert (community.counts["confirm"], community.counts["not_confirmed"]) == (1, 1), community.counts
        # the real fire: confirmed by a call taker (the loop pages 119 at once); the pot: not
        inc = await incident_of(demo, fire["device_id"])
        events = await timeline(demo, real)
        (confirm,) = [e for e in events if e["action"] == "confirm"]
        assert confirm["actor"].startswith("d-call_taker") and confirm["channel"] == "api"
        other = await incident_of(demo, pot["device_id"])
        assert not any(e["action"] == "confirm" for e in await timeline(demo, other["id"]))
        assert inc["id"] != other["id"]
        # the pot: ruled out by the desk (核警：非火情), 119 cancelled, the responder still goes
        assert community.counts["ruled_out"] == 1, community.counts
        (ruled,) = [e for e in await timeline(demo, other["id"]) if e["action"] == "rule_out"]
        assert ruled["actor"].startswith("d-call_taker") and ruled["reason_code"] == "ruled_out_nuisance"
        assert other["outcome"] == "nuisance" and other["escalation"]["reason"] == "ruled_out"
        assert inc["outcome"] != "nuisance" and not any(
            e["action"] == "rule_out" for e in await timeline(demo, real)
        )


async def _state(demo: Any, community: Community, *devices: dict[str, str]) -> Any:
    """For a failure message: what the desk did, and each case's timeline in short."""
    cases = [await incident_of(demo, d["device_id"]) for d in devices]
    return community.counts, community.failures, [await brief(demo, c["id"]) for c in cases]
