"""A wearer's family is paged through the device, not the roster: ``family_contact`` of a wristband case
becomes ``role:family_contact/<device>`` once per incident (the roster's G02 ``family_contact`` on call,
fam-1, is somebody else's relative and is never paged for it)."""

from __future__ import annotations

import asyncio

from cloud.loop.models import AlertLink
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import BAND_1 as _BAND_1
from tests.cloud.cloudkit import SMOKE_1, T0, Cloud, alert_step
from tests.cloud.loop.test_end_to_end import ingest, intents, loop

assert _BAND_1 is not None
BAND_1: str = _BAND_1


async def test_a_fall_pages_the_devices_family_once_and_never_the_rosters(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    await ingest(c, alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, T0 - 2))
    iid = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"][0]["id"]
    family = ("role", f"family_contact/{BAND_1}")
    assert (0, *family) in intents(c, iid)
    assert all(t != "fam-1" for _, _, t in intents(c, iid))
    # a second device grouped into the case: its family is paged at the next step, the first one's not again
    with c.state.db.write() as s:
        s.add(AlertLink(alert_id="other-band", incident_id=iid, verdict="attach", event="fall",
                        group_key="x", labels={"device_id": "a1b2c3d4e5f60002"}, phase="raised",
                        first_seen=T0, updated_at=T0))  # fmt: skip
    for _ in range(3):  # the medical policy's later steps and repeats
        c.clock.advance(3600)
        await asyncio.to_thread(loop(c).run_due)
    pages = [(k, t) for _, k, t in intents(c, iid) if t.startswith("family_contact")]
    assert sorted(pages) == [family, ("role", "family_contact/a1b2c3d4e5f60002")]


async def test_a_fire_keeps_its_roles(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    await ingest(c, alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0 - 2))
    iid = (await c.client.get("/api/v1/incidents", headers=c.dispatcher)).json()["incidents"][0]["id"]
    assert not any(t.startswith("family_contact/") for _, _, t in intents(c, iid))
    assert intents(c, iid) == [(0, "role", "resident")]
