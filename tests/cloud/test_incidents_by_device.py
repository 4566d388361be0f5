"""``GET /api/v1/incidents?device_id=...``: the incidents any of a device's alerts is linked to, over HTTP.

Incidents come from real gateway alert steps through ingest and the loop (no rows written by hand);
one is closed through the work-order actions. The filter is checked for: only that device's incidents,
newest first, ``open`` combined, ``limit`` with ``total``, the id's spelling (a DevEUI in upper case),
a bad id (422 naming ``device_id``), the roles of the list (any user; a gateway 403, nobody 401), and on
SQLite that the one query reads the indexes (no table scan).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event, text

from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import GW2, MANHOLE_1, MANHOLE_2, SMOKE_1, T0, Cloud, alert_step, batch, bearer
from tests.cloud.loop.conftest import *  # noqa: F403  (the loop's fixtures: lc, lc_sqlite, db_url, ...)
from tests.cloud.loop.test_end_to_end import act, drained, ingest

URL = "/api/v1/incidents"


def ids(r: Any) -> list[int]:
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["incidents"]]


async def by_device(c: Cloud, device_id: str, **params: Any) -> list[int]:
    return ids(await c.client.get(URL, params={"device_id": device_id, **params}, headers=c.viewer))


async def close(c: Cloud, iid: int) -> None:
    got = (await c.client.get(f"{URL}/{iid}", headers=c.dispatcher)).json()["incident"]
    who = got["assignee"]
    assert who, got
    for action in ("accept", "handle"):
        r = await act(c, iid, action=action, on_behalf_of=who, outcome="real" if action == "handle" else None)
        assert r.status_code == 200, r.text
    for action in ("verify", "close"):
        r = await act(c, iid, action=action)
        assert r.status_code == 200, r.text
    assert r.json()["incident"]["is_open"] is False


async def incidents_of(c: Cloud) -> dict[str, list[int]]:
    r = await c.client.get(URL, params={"limit": 1000}, headers=c.dispatcher)
    out: dict[str, list[int]] = {}
    for i in r.json()["incidents"]:
        out.setdefault(i["device_id"], []).append(i["id"])
    return out


async def test_a_devices_incidents_newest_first_open_combined(lc: Cloud) -> None:
    c = lc
    c.clock.t = T0
    # manhole 1: an episode, closed; then a second episode, open. Manhole 2 and a smoke alarm: one each.
    first = alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0 - 5)
    await ingest(c, first)
    (old,) = (await incidents_of(c))[MANHOLE_1]
    await close(c, old)
    c.clock.advance(3600)
    second = alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, c.clock.t - 5)
    await ingest(c, second)
    m2 = alert_step(MANHOLE_2, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, c.clock.t)
    await c.state.ingest.ingest(batch("batch-by-device-m2", alerts=[m2], gateway_id=GW2), gateway_id=GW2)
    await drained(c)
    await ingest(c, alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, c.clock.t))
    mine = await incidents_of(c)
    (new,) = [i for i in mine[MANHOLE_1] if i != old]
    assert new > old and mine[MANHOLE_2] and mine[SMOKE_1]

    assert await by_device(c, MANHOLE_1) == [new, old]  # newest first, both
    assert await by_device(c, MANHOLE_1, open="true") == [new]
    assert await by_device(c, MANHOLE_1, open="false") == [old]
    assert await by_device(c, MANHOLE_2) == mine[MANHOLE_2]
    assert await by_device(c, SMOKE_1, open="false") == []
    # the registry's spelling: a DevEUI in upper case names the same device
    assert await by_device(c, MANHOLE_1.upper()) == [new, old]
    # a well-formed id with no alerts: nothing, not an error
    assert await by_device(c, "70b3d57ed0000999") == []
    r = await c.client.get(URL, params={"device_id": MANHOLE_1, "limit": 1}, headers=c.viewer)
    assert ids(r) == [new] and r.json()["total"] == 2
    # without the filter: every device's incidents (the list is unchanged)
    everything = ids(await c.client.get(URL, headers=c.viewer))
    assert set(everything) >= {new, old, *mine[MANHOLE_2], *mine[SMOKE_1]}


async def test_bad_device_id_and_roles(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    for bad in ("not-a-device", "70b3d57ed000000", "x" * 65, "1' OR '1'='1"):
        r = await c.client.get(URL, params={"device_id": bad}, headers=c.viewer)
        assert r.status_code == 422, (bad, r.text)
        assert "device_id" in r.text, r.text
    op = await asyncio.to_thread(c.state.credentials.add_user, "op", "operator", now=c.clock.now())
    for who in (c.viewer, bearer(op), c.dispatcher, c.admin):
        assert (await c.client.get(URL, params={"device_id": MANHOLE_1}, headers=who)).status_code == 200
    r = await c.client.get(URL, params={"device_id": MANHOLE_1})
    assert r.status_code == 401
    r = await c.client.get(URL, params={"device_id": MANHOLE_1}, headers=c.gw1)
    assert r.status_code == 403


async def test_the_query_reads_the_indexes(lc_sqlite: Cloud) -> None:
    """One statement for the rows, one for ``total``; SQLite's plan for each searches ``alerts`` by
    ``ix_alerts_device_id`` and ``loop_alert_links`` by its primary key: no full scan of either."""
    c = lc_sqlite
    c.clock.t = T0
    await ingest(c, alert_step(MANHOLE_1, DeviceKind.MANHOLE, EventType.COVER_OPEN, AlertPhase.RAISED, T0))
    seen: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "loop_alert_links" in statement:
            seen.append((statement, parameters))

    engine = c.state.db.engine
    event.listen(engine, "before_cursor_execute", grab)
    try:
        assert len(await by_device(c, MANHOLE_1)) == 1
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    assert len(seen) == 2, seen  # the page and its total
    with engine.connect() as conn:
        for statement, parameters in seen:
            plan = [
                str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            ]
            joined = " | ".join(plan)
            assert "ix_alerts_device_id" in joined, joined
            assert not any(
                p.startswith("SCAN alerts") or p.startswith("SCAN loop_alert_links") for p in plan
            ), joined
        conn.execute(text("SELECT 1"))
