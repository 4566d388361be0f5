"""The demo's people (``simulators/demo_loop.py``): every role the shipped routing tree pages is on call
around the clock, or is one of the two the demo leaves out on purpose (and says so)."""

from __future__ import annotations

import asyncio
import functools
import time
import tomllib
from pathlib import Path
from typing import Any

from alerts.loop.rosters import coverage_gaps, roster_from_dict
from alerts.loop.routing import default_routes
from simulators.config import parse_config
from simulators.demo import DEMO_FLEET
from simulators.demo_loop import NOT_SEEDED, demo_people, seed_people, seeded_roles, shift_anchor
from simulators.fleet import Fleet
from tests.cloud.cloudkit import make_settings, start_cloud

START = 1_790_000_000.0  # 2026-09-21 22:13 in Asia/Shanghai


def routed_roles(node: dict[str, Any]) -> set[str]:
    roles = {r for rc in node.get("receivers", []) for r in rc["roles"]}
    for child in node.get("routes", []):
        roles |= routed_roles(child)
    return roles


def the_demo_fleet(tmp_path: Path) -> tuple[str, str]:
    cfg = parse_config(tomllib.loads(DEMO_FLEET), source="test", start=START)
    Fleet.from_config(cfg).write_manifest(tmp_path)
    return (tmp_path / "responders.csv").read_text(encoding="utf-8"), (tmp_path / "devices.csv").read_text(
        encoding="utf-8"
    )


def test_every_routed_role_is_on_call_around_the_clock_for_a_week(tmp_path: Path) -> None:
    responders, devices = the_demo_fleet(tmp_path)
    people = demo_people(responders, devices, start=START)
    roster = roster_from_dict(people.roster)  # the loop's own validation (as the PUT does)

    routed = routed_roles(default_routes())
    assert routed - seeded_roles(people) == set(NOT_SEEDED)  # the two per-person roles, documented
    assert {"desk_119", "desk_120"} <= set(people.groups)

    grids = {line.split(",")[6] for line in devices.splitlines()[1:]}
    assert len(grids) > 3
    needs = [("grid_worker", g) for g in sorted(grids)]
    needs += [(r, g) for r in sorted(routed - set(NOT_SEEDED)) if not r.startswith("desk_") for g in grids]
    assert coverage_gaps(roster, needs, START, 7 * 86400.0) == []
    # 12-hour hand-overs at 08:00 and 20:00 local: two grid workers share a cell, never both on at once
    for at in (START, START + 6 * 3600, START + 12 * 3600):
        assert all(len(roster.on_call("grid_worker", g, at)) == 1 for g in grids)
    assert time.strftime("%H:%M", time.gmtime(shift_anchor(START))) == "00:00"  # 08:00 +08:00

    # the fleet's own responders (simulators/neighbourhood.py naming) and their partners
    names = {p.name for p in people.people}
    assert {"市政抢修1队", "市政抢修2队", "交警1组", "物业1处", "王医生", "值班接警员1"} <= names
    assert any(n.startswith("网格员") for n in names)
    users = {p.username for p in people.people}
    for _, members in people.groups.values():
        assert members and set(members) <= users  # the desks relay through people who exist
    assert all(r["channels"] == ["inapp"] for r in people.roster["responders"])


async def test_the_seeded_people_and_desks_receive_pages_in_app(tmp_path: Path) -> None:
    """Loaded through the API as the demo does, a responder (by responder id) and the 120 desk group are
    paged in-app; before the demo created the desk groups, ``group:desk_120`` was "nobody to notify"."""
    responders, devices = the_demo_fleet(tmp_path / "fleet")
    people = demo_people(responders, devices, start=START)
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path}/vigil.db")
    async with start_cloud(settings) as c:
        c.clock.t = START
        for p in people.people:
            await asyncio.to_thread(c.state.credentials.add_user, p.username, p.console_role, now=START)
        await seed_people(functools.partial(c.client.put, headers=c.admin), people)

        worker = c.app.state.notify.worker
        for kind, target in (("group", "desk_120"), ("user", "r-0010")):
            body = {"incident_id": f"T-{target}", "target_kind": kind, "target_id": target, "severity": 3}
            r = await c.client.post("/api/v1/notify/send", json=body, headers=c.dispatcher)
            assert r.status_code == 200, r.text
        await worker.run_once()
        r = await c.client.get("/api/v1/notify/incidents/T-desk_120/log", headers=c.dispatcher)
        desk = r.json()["deliveries"]
        assert [(d["channel"], d["status"]) for d in desk] == [("inapp", "delivered")] * 3  # 3 call takers
        r = await c.client.get("/api/v1/notify/incidents/T-r-0010/log", headers=c.dispatcher)
        assert [(d["channel"], d["status"]) for d in r.json()["deliveries"]] == [("inapp", "delivered")]
        r = await c.client.get("/api/v1/loop/oncall", params={"role": "municipal_crew"}, headers=c.dispatcher)
        assert r.status_code == 200 and "市政抢修" in r.text, r.text
