"""Fixtures and builders shared by the cloud-core tests (app, registry, ingest, alerts ...).

Import with ``from tests.cloud.cloudkit import *`` in a test module. Every test gets its own temporary
directory, database (SQLite file, or a fresh PostgreSQL database from the shared ``pg_url`` fixture), key
file and time-series file, so tests can run in parallel.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from alerts.contract import AlertEvent, TelemetryBlock, UplinkBatch
from cloud.app import create_app
from cloud.db import upgrade_head
from cloud.settings import CloudSettings
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from firmware_bridge.operator_push import vigil_device_id
from firmware_bridge.registry import spec

T0 = 1_790_000_000.0  # 2026-09-21 UTC: a fixed, realistic epoch
GW1, GW2 = "gw-community-1", "gw-community-2"
MANHOLE_1 = "70b3d57ed0000001"  # DevEUI-style ids (16 hex digits; canonical spelling: lower case)
MANHOLE_2 = "70b3d57ed0000002"
SMOKE_1 = "70b3d57ed0000101"
BAND_1_IMEI = "861234567890123"
_band_1 = vigil_device_id(BAND_1_IMEI)  # an IMEI becomes the canonical 16-hex id (docs/formats.md)
assert _band_1 is not None
BAND_1: str = _band_1

CSV_HEADER = (
    "device_id,kind,name,lat,lon,address,grid,community,street,on_road,gateway_id,profile,dev_addr,"
    "nwk_skey,app_skey,wearer_name,wearer_phone,emergency_contact_phone"
)
CSV_ROWS = [
    # upper-case DevEUIs, as printed on labels: the registry stores them in the canonical spelling
    f"{MANHOLE_1.upper()},manhole,井盖1,39.98,116.31,海淀区中关村大街1号,G01,中关村,中关村大街,true,{GW1},road,26011BDA,"
    "2B7E151628AED2A6ABF7158809CF4F3C,3C4FCF098815F7ABA6D2AE2816157E2B,,,",
    f"{MANHOLE_2},manhole,井盖2,39.99,116.32,海淀区中关村大街2号,G01,中关村,中关村大街,false,{GW2},,,,,,,",
    f"{SMOKE_1.upper()},smoke_alarm,烟感 3-201,39.97,116.30,3号楼201,G02,中关村,科学院南路,0,{GW1},,,,,,,",
    f"{BAND_1},wristband,手环 5-101,39.97,116.30,5号楼101,G02,中关村,科学院南路,0,{GW1},,,,,"
    "张三丰,13812341234,13987654321",
]


class ManualClock:
    """A clock the test moves by hand (no sleeps as synchronisation)."""

    def __init__(self, now: float = T0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        # time only moves when the test says so; yield briefly so a background loop never spins hot
        await asyncio.sleep(min(seconds, 0.01))

    def real_seconds(self, seconds: float) -> float:
        return seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds


class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[AlertEvent]]] = []
        self.called = asyncio.Event()

    async def alerts_committed(self, steps: Sequence[AlertEvent], *, source: str) -> None:
        self.calls.append((source, list(steps)))
        self.called.set()


@dataclass
class Cloud:
    app: FastAPI
    client: httpx.AsyncClient
    clock: ManualClock
    sink: RecordingSink
    settings: CloudSettings
    admin: dict[str, str]
    viewer: dict[str, str]
    dispatcher: dict[str, str]
    gw1: dict[str, str]
    gw2: dict[str, str]
    gw1_token: str

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.app.state.vigil


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session; tests get a copy (migrating costs ~0.5 s)."""
    path = tmp_path_factory.mktemp("template") / "vigil.db"
    upgrade_head(f"sqlite:///{path}")
    return path


def _sqlite_copy(template: Path, tmp_path: Path) -> str:
    shutil.copyfile(template, tmp_path / "vigil.db")
    return f"sqlite:///{tmp_path}/vigil.db"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, migrated_sqlite: Path) -> str:
    """Parametrises a test over the embedded SQLite database and a real PostgreSQL."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return _sqlite_copy(migrated_sqlite, tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path, migrated_sqlite: Path) -> str:
    """A fresh SQLite database at schema head (the app's start-up migration then finds nothing to do)."""
    return _sqlite_copy(migrated_sqlite, tmp_path)


def make_settings(tmp_path: Path, database_url: str, **kw: object) -> CloudSettings:
    values: dict[str, object] = dict(
        database_url=database_url,
        timeseries_url=f"sqlite:///{tmp_path}/vigil-ts.db",
        secret_key_file=tmp_path / "keys" / "vigil-secret.key",
        migrate_on_start=True,
        connectivity_check_s=0,
        json_logs=False,
        ctwing_token="ctwing-secret-token",
        onenet_token="onenet-secret-token",
    )
    values.update(kw)
    return CloudSettings.model_validate(values)


@asynccontextmanager
async def start_cloud(settings: CloudSettings) -> AsyncIterator[Cloud]:
    clock, sink = ManualClock(), RecordingSink()
    app = await asyncio.to_thread(create_app, settings, sink=sink, clock=clock)
    async with app.router.lifespan_context(app):
        st = app.state.vigil
        # Test data runs up to weeks ahead of the ManualClock, which tests move by hand; the real bound
        # (IngestLimits.max_future_s, 300 s) is exercised in tests/cloud/test_hostile_ingest.py.
        st.ingest.limits = replace(st.ingest.limits, max_future_s=60 * 86400.0)
        admin_token = await asyncio.to_thread(st.credentials.add_user, "admin", "admin", now=clock.now())
        viewer_token = await asyncio.to_thread(st.credentials.add_user, "viewer", "viewer", now=clock.now())
        disp_token = await asyncio.to_thread(st.credentials.add_user, "disp", "dispatcher", now=clock.now())
        gw1 = await asyncio.to_thread(st.credentials.add_gateway, GW1, now=clock.now())
        gw2 = await asyncio.to_thread(st.credentials.add_gateway, GW2, now=clock.now())
        await asyncio.to_thread(
            st.registry.import_csv, "\n".join([CSV_HEADER, *CSV_ROWS]) + "\n", now=clock.now()
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as client:
            yield Cloud(
                app=app,
                client=client,
                clock=clock,
                sink=sink,
                settings=settings,
                admin=bearer(admin_token),
                viewer=bearer(viewer_token),
                dispatcher=bearer(disp_token),
                gw1=bearer(gw1),
                gw2=bearer(gw2),
                gw1_token=gw1,
            )


@pytest.fixture
async def cloud(tmp_path: Path, db_url: str) -> AsyncIterator[Cloud]:
    """A provisioned cloud (users, two gateways, four devices) on SQLite and on PostgreSQL."""
    async with start_cloud(make_settings(tmp_path, db_url)) as c:
        yield c


@pytest.fixture
async def cloud_sqlite(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Cloud]:
    """The same, SQLite only (tests whose behaviour does not depend on the database)."""
    async with start_cloud(make_settings(tmp_path, sqlite_url)) as c:
        yield c


@asynccontextmanager
async def another_worker(c: Cloud) -> AsyncIterator[httpx.AsyncClient]:
    """A second app on ``c``'s database and clock: another worker process (or the same one restarted) as
    far as memory goes."""
    app = await asyncio.to_thread(create_app, c.settings, clock=c.clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as client:
            yield client


# -- builders --------------------------------------------------------------------------------------------
def readings(
    kind: DeviceKind, device_id: str, seqs: Sequence[int], t0: float = T0, step: float = 60.0
) -> ReadingBatch:
    n_ch = len(spec(kind).channels)
    rs = [
        Reading(
            kind=kind,
            device_id=device_id,
            seq=s,
            time=t0 + i * step,
            battery_pct=90.0,
            flags=0,
            values=tuple(float(j + 1) for j in range(n_ch)),
            fw_version=0x0102,
        )
        for i, s in enumerate(seqs)
    ]
    return ReadingBatch.from_readings(kind, rs)


def batch(
    batch_id: str,
    *blocks: ReadingBatch,
    alerts: Sequence[AlertEvent] = (),
    gateway_id: str = GW1,
    sent_at: float = T0,
) -> UplinkBatch:
    return UplinkBatch(
        batch_id=batch_id,
        gateway_id=gateway_id,
        sent_at=sent_at,
        telemetry=[TelemetryBlock.from_batch(b) for b in blocks],
        alerts=list(alerts),
    )


def alert_step(
    device_id: str,
    kind: DeviceKind,
    etype: EventType,
    phase: AlertPhase,
    t: float,
    episode_t: float | None = None,
    severity: Severity = Severity.HIGH,
    value: float | None = None,
) -> AlertEvent:
    ep = round((episode_t if episode_t is not None else t) * 1000)
    return AlertEvent(
        alert_id=alert_id(device_id, etype, ep),
        device_id=device_id,
        kind=kind,
        event_type=etype,
        severity=severity,
        phase=phase,
        episode_ms=ep,
        time=t,
        frame_time=t - 0.5,
        value=value,
        message=f"{etype.value} {phase.value}",
    )


def body(b: UplinkBatch) -> bytes:
    return b.model_dump_json().encode()


__all__ = [
    "BAND_1",
    "CSV_HEADER",
    "CSV_ROWS",
    "GW1",
    "GW2",
    "MANHOLE_1",
    "MANHOLE_2",
    "SMOKE_1",
    "T0",
    "Cloud",
    "ManualClock",
    "RecordingSink",
    "alert_step",
    "another_worker",
    "batch",
    "bearer",
    "body",
    "cloud",
    "cloud_sqlite",
    "db_url",
    "make_settings",
    "migrated_sqlite",
    "readings",
    "sqlite_url",
    "start_cloud",
]
