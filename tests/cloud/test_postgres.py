"""Database behaviour that only a real server shows: migrations match the models, concurrent deliveries.

``db_url`` runs each test on SQLite and on the PostgreSQL started by ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from cloud.db import Base, upgrade_head
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import GW1, MANHOLE_1, T0, Cloud, batch, readings


def test_migrations_match_the_models(db_url: str) -> None:
    upgrade_head(db_url)
    upgrade_head(db_url)  # idempotent
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


async def test_concurrent_deliveries_of_one_batch_store_it_once(cloud: Cloud) -> None:
    b = batch("batch-race-01", readings(DeviceKind.MANHOLE, MANHOLE_1, [1, 2, 3]))
    acks = await asyncio.gather(*(cloud.state.ingest.ingest(b, gateway_id=GW1) for _ in range(4)))
    assert sorted(a.duplicate for a in acks) == [False, True, True, True]
    dev = cloud.state.registry.get(MANHOLE_1, "admin")
    assert dev.readings_total == 3 and dev.last_seq == 3


async def test_concurrent_batches_of_one_device_keep_every_count(cloud: Cloud) -> None:
    bs = [
        batch(
            f"batch-par-{i:02d}",
            readings(DeviceKind.MANHOLE, MANHOLE_1, [i * 10 + j for j in range(5)], t0=T0 + i * 1000),
        )
        for i in range(6)
    ]
    await asyncio.gather(*(cloud.state.ingest.ingest(b, gateway_id=GW1) for b in bs))
    dev = cloud.state.registry.get(MANHOLE_1, "admin")
    assert dev.readings_total == 30 and dev.last_seq == 54


async def test_unstorable_text_is_a_400_not_a_500(cloud: Cloud) -> None:
    # PostgreSQL text cannot hold NUL (documented: "Character Types", chars with code zero are not allowed)
    dev = {"device_id": "70B3D57ED0000301", "kind": "manhole", "name": "cover\u0000one"}
    r = await cloud.client.post("/api/v1/devices", json=dev, headers=cloud.admin)
    if "postgresql" in cloud.settings.database_url:
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
    else:  # SQLite stores it
        assert r.status_code == 201 and r.json()["name"] == "cover\u0000one"


async def test_same_alert_from_two_concurrent_batches_is_one_step(cloud: Cloud) -> None:
    # e.g. a gateway re-sending its outbox after a lost ack while the first delivery is still in flight
    from firmware_bridge.kernel.events import AlertPhase, EventType
    from tests.cloud.cloudkit import SMOKE_1, T0, alert_step

    step = alert_step(SMOKE_1, DeviceKind.SMOKE_ALARM, EventType.FIRE, AlertPhase.RAISED, T0)
    bs = [batch(f"batch-fire-{i:02d}", alerts=[step]) for i in range(4)]
    acks = await asyncio.gather(*(cloud.state.ingest.ingest(b, gateway_id=GW1) for b in bs))
    assert sum(a.alerts_stored for a in acks) == 1 and not any(a.duplicate for a in acks)
    detail = (await cloud.client.get(f"/api/v1/alerts/{step.alert_id}", headers=cloud.viewer)).json()
    assert [s["phase"] for s in detail["steps"]] == ["raised"]
