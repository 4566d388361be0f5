"""``kill -9`` of the cloud under heavy write load: every acknowledged batch stored exactly once (issue 11).

The cloud runs as deployed, ``vigil cloud`` in a subprocess (uvicorn, the app's lifespan, its periodic jobs),
on the embedded SQLite default and on a real PostgreSQL. Several concurrent posters, each a gateway with
its own token, send batches of readings and alert steps over HTTP with unique batch ids, while the test
SIGKILLs the cloud at seeded random moments and starts it again. A poster resends every batch whose ack it
did not receive, with the same batch id, as the gateway's outbox does.

At the end, read from the stores directly:

- every reading and alert step of every acknowledged batch is stored, none twice (the ledger);
- every batch sent was eventually acknowledged, and ``ingested_batches`` holds each exactly once;
- the databases are consistent: SQLite ``PRAGMA integrity_check`` = ok and ``foreign_key_check`` empty
  after every kill; on PostgreSQL no orphan rows, counters that match the rows, and amcheck's
  ``bt_index_check`` on every B-tree index;
- the loop: every alert acknowledged before a kill is linked to an incident after the restart (the
  reconcile pass), and no alert opened two incidents.

The helpers here (provisioning a fleet, running ``vigil cloud`` as a process, posters) are shared by the
other ``tests/faults/test_cloud_*.py`` scenarios.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from alerts.contract import HTTP_PATH, AlertEvent, TelemetryBlock, UplinkAck, UplinkBatch
from cloud.db import Database
from cloud.settings import CloudSettings
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from firmware_bridge.registry import spec
from tests.faults.ledger import Ledger, long_run, scale
from tests.servers import PostgresServer, free_port

ROOT = Path(__file__).resolve().parents[2]
CSV_HEADER = "device_id,kind,name,lat,lon,address,grid,community,street,on_road,gateway_id"


# --- the fleet ------------------------------------------------------------------------------------------
@dataclass
class Fleet:
    """Gateways (id -> token) and their devices, provisioned in the cloud's database."""

    tokens: dict[str, str]
    devices: dict[str, list[str]]


def device_ids(g: int, n: int) -> list[str]:
    return [f"70b3d57e{g:02x}{d:06x}" for d in range(n)]


def cloud_env(tmp_path: Path, database_url: str, timeseries_url: str, **extra: str) -> dict[str, str]:
    """``VIGIL_CLOUD_*`` for a test deployment: short job leases (a killed holder's lease lapses in 2 s),
    no connectivity job (its silent-device alerts are not this test's), plain-text logs."""
    env = {
        "VIGIL_CLOUD_DATABASE_URL": database_url,
        "VIGIL_CLOUD_TIMESERIES_URL": timeseries_url,
        "VIGIL_CLOUD_SECRET_KEY_FILE": str(tmp_path / "keys" / "vigil-secret.key"),
        "VIGIL_CLOUD_MIGRATE_ON_START": "true",
        "VIGIL_CLOUD_CONNECTIVITY_CHECK_S": "0",
        "VIGIL_CLOUD_JOB_LEASE_TTL_S": "2",
        "VIGIL_CLOUD_JSON_LOGS": "false",
    }
    env.update(extra)
    return env


def provision(
    env: dict[str, str], gateways: int, devices_per_gateway: int, prefix: str = "gw-fault"
) -> Fleet:
    """Migrate, add gateways and their devices, as an operator does with ``vigil cloud gateway add`` and
    ``import-devices`` (in-process: the same code, without paying a Python start per command)."""
    from cloud.api.state import CloudState

    settings = CloudSettings.from_env({k: v for k, v in env.items() if k.startswith("VIGIL_CLOUD_")})
    state = CloudState.build(settings)
    fleet = Fleet({}, {})
    try:
        now = time.time()
        for g in range(gateways):
            gw = f"{prefix}-{g:02d}"
            fleet.tokens[gw] = state.credentials.add_gateway(gw, now=now)
            ids = device_ids(g, devices_per_gateway)
            rows = [
                f"{d},manhole,井盖{d[-4:]},39.98,116.31,海淀区{g}号,G{g:02d},中关村,中关村大街,0,{gw}"
                for d in ids
            ]
            state.registry.import_csv("\n".join([CSV_HEADER, *rows]) + "\n", now=now)
            fleet.devices[gw] = ids
    finally:
        state.close()
    return fleet


# --- batches --------------------------------------------------------------------------------------------
def make_batch(
    gateway_id: str, devices: list[str], k: int, t0: float, *, alert_every: int = 3
) -> UplinkBatch:
    """Batch ``k`` of a gateway: one reading per device (seq ``k``, time ``t0 + k``), and on every
    ``alert_every``-th batch a new alert (cover open) raised on one of its devices."""
    n_ch = len(spec(DeviceKind.MANHOLE).channels)
    t = float(int(t0) + k)
    rs = [
        Reading(
            kind=DeviceKind.MANHOLE,
            device_id=d,
            seq=k,
            time=t,
            battery_pct=90.0,
            flags=0,
            values=tuple(float(j + k % 7) for j in range(n_ch)),
            fw_version=0x0102,
        )
        for d in devices
    ]
    steps: list[AlertEvent] = []
    if alert_every and k % alert_every == 0:
        dev = devices[(k // alert_every) % len(devices)]
        ep = round(t * 1000)
        steps.append(
            AlertEvent(
                alert_id=alert_id(dev, EventType.COVER_OPEN, ep),
                device_id=dev,
                kind=DeviceKind.MANHOLE,
                event_type=EventType.COVER_OPEN,
                severity=Severity.HIGH,
                phase=AlertPhase.RAISED,
                episode_ms=ep,
                time=t,
                frame_time=t - 0.5,
                value=1.0,
                message="cover_open raised",
            )
        )
    return UplinkBatch(
        batch_id=f"{gateway_id}-{k:06d}",
        gateway_id=gateway_id,
        sent_at=t,
        telemetry=[TelemetryBlock.from_batch(ReadingBatch.from_readings(DeviceKind.MANHOLE, rs))],
        alerts=steps,
    )


def reading_keys(b: UplinkBatch) -> Iterator[tuple[str, ...]]:
    for block in b.telemetry:
        for d, t, s in zip(block.device_id, block.time, block.seq, strict=True):
            yield ("reading", str(d), str(round(float(t) * 1000)), str(int(s)))


def step_keys(b: UplinkBatch) -> Iterator[tuple[str, ...]]:
    for a in b.alerts:
        yield ("step", a.alert_id, a.phase.value, str(round(a.time * 1000)))


# --- the cloud as a process -----------------------------------------------------------------------------
@dataclass
class CloudProcess:
    """``vigil cloud`` as deployed (uvicorn, lifespan, jobs), started and SIGKILLed by the test."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as fh:
            return subprocess.Popen(
                [sys.executable, "vigil_cli.py", "cloud", *args], cwd=ROOT, stdout=fh, stderr=fh, env=env
            )

    async def start(self, timeout: float = 60.0) -> None:
        self.proc = self.spawn("--host", "127.0.0.1", "--port", str(self.port))
        self.starts += 1
        async with httpx.AsyncClient() as client, asyncio.timeout(timeout):
            while True:  # an external process: poll its health endpoint until it serves
                assert self.proc.poll() is None, self.tail()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/healthz", timeout=2)).status_code == 200:
                        return
                await asyncio.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.tail()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> int:
        """SIGTERM (systemd's stop); returns the exit code (uvicorn re-raises the signal after a clean
        shutdown, so a clean stop is ``0`` or ``-SIGTERM``)."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = -9
        self.proc = None
        return code

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


# --- posters --------------------------------------------------------------------------------------------
@dataclass
class Poster:
    """One gateway posting batches one after the other; a batch is resent (same id) until acknowledged."""

    gateway_id: str
    token: str
    devices: list[str]
    t0: float
    sent: list[UplinkBatch] = field(default_factory=list)
    acks: dict[str, UplinkAck] = field(default_factory=dict)
    resends: int = 0
    duplicate_acks: int = 0

    async def run(self, url: str, stop: asyncio.Event, extra_after_stop: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        left_after_stop = extra_after_stop
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            k = 0
            while not stop.is_set() or left_after_stop > 0:
                if stop.is_set():
                    left_after_stop -= 1
                k += 1
                b = make_batch(self.gateway_id, self.devices, k, self.t0)
                self.sent.append(b)
                body = b.model_dump_json()
                tries = 0
                while True:
                    tries += 1
                    try:
                        r = await client.post(HTTP_PATH, content=body)
                    except httpx.TransportError:  # the cloud died mid-request: the ack is lost, resend
                        r = None
                    if r is not None and r.status_code == 200:
                        ack = UplinkAck.model_validate_json(r.content)
                        assert ack.batch_id == b.batch_id
                        self.duplicate_acks += ack.duplicate
                        self.acks[b.batch_id] = ack
                        break
                    if r is not None and r.status_code not in (429, 503):
                        raise AssertionError(f"{b.batch_id}: HTTP {r.status_code} {r.text[:300]}")
                    self.resends += 1
                    await asyncio.sleep(0.05)  # the cloud is restarting: retry soon, as a gateway would
                if tries > 1:
                    await asyncio.sleep(0)


# --- reading the stores ---------------------------------------------------------------------------------
def stored_readings_sqlite(ts_path: Path) -> list[tuple[str, ...]]:
    with contextlib.closing(sqlite3.connect(ts_path)) as conn:
        return [
            ("reading", d, str(t), str(s))
            for d, t, s in conn.execute("SELECT device_id, time_ms, seq FROM ts_manhole")
        ]


def stored_readings_pg(db: Database) -> list[tuple[str, ...]]:
    with db.read() as s:
        rows = s.execute(text("SELECT device_id, time_ms, seq FROM ts_manhole")).all()
    return [("reading", d, str(t), str(s_)) for d, t, s_ in rows]


def stored_steps(db: Database) -> list[tuple[str, ...]]:
    with db.read() as s:
        rows = s.execute(text("SELECT alert_id, phase, time FROM alert_events")).all()
    return [("step", a, p, str(round(t * 1000))) for a, p, t in rows]


def sqlite_integrity(path: Path) -> None:
    """``integrity_check`` = ok and no foreign-key violation (opening also recovers the WAL)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], path
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == [], path


def pg_consistency(db: Database) -> dict[str, int]:
    """No orphan rows, counters that match rows, every B-tree index valid (amcheck)."""
    with db.write() as s:
        s.execute(text("CREATE EXTENSION IF NOT EXISTS amcheck"))
    with db.read() as s:
        orphans = {
            "alert_events without alert": "SELECT count(*) FROM alert_events e "
            "LEFT JOIN alerts a ON a.alert_id = e.alert_id WHERE a.alert_id IS NULL",
            "alerts without step": "SELECT count(*) FROM alerts a "
            "WHERE NOT EXISTS (SELECT 1 FROM alert_events e WHERE e.alert_id = a.alert_id)",
            "links to a missing incident": "SELECT count(*) FROM loop_alert_links l "
            "WHERE l.incident_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM loop_incidents i WHERE i.id = l.incident_id)",
            "incident events of a missing incident": "SELECT count(*) FROM loop_incident_events e "
            "WHERE NOT EXISTS (SELECT 1 FROM loop_incidents i WHERE i.id = e.incident_id)",
            "readings of an unknown device": "SELECT count(*) FROM ts_manhole r "
            "WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.device_id = r.device_id)",
        }
        for what, sql in orphans.items():
            assert s.execute(text(sql)).scalar_one() == 0, what
        fk = s.execute(
            text(
                "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'f' "
                "AND connamespace = 'public'::regnamespace"
            )
        ).all()
        indexes = s.execute(
            text(
                "SELECT c.oid, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_am am ON am.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE am.amname = 'btree' AND n.nspname = 'public'"
            )
        ).all()
        for oid, _name in indexes:  # raises on a corrupt index
            s.execute(text("SELECT bt_index_check(CAST(:oid AS regclass), true)"), {"oid": oid})
    return {"btree_indexes_checked": len(indexes), "foreign_keys": len(fk)}


def batches_and_counters(db: Database) -> tuple[dict[tuple[str, str], int], int]:
    """(ingested batch rows per (gateway, batch id), sum of the devices' readings_total)."""
    with db.read() as s:
        rows = s.execute(
            text("SELECT gateway_id, batch_id, count(*) FROM ingested_batches GROUP BY gateway_id, batch_id")
        ).all()
        total = s.execute(text("SELECT coalesce(sum(readings_total), 0) FROM devices")).scalar_one()
    return {(g, b): int(n) for g, b, n in rows}, int(total)


def loop_links(db: Database) -> tuple[dict[str, tuple[int | None, str, str]], dict[int, int]]:
    """(alert id -> (incident id, verdict, phase handled), incident id -> alerts linked to it)."""
    with db.read() as s:
        links = s.execute(text("SELECT alert_id, incident_id, verdict, phase FROM loop_alert_links")).all()
        incidents = s.execute(
            text(
                "SELECT i.id, count(l.alert_id) FROM loop_incidents i "
                "LEFT JOIN loop_alert_links l ON l.incident_id = i.id GROUP BY i.id"
            )
        ).all()
    return {a: (i, v, p) for a, i, v, p in links}, {int(i): int(n) for i, n in incidents}


def reconciled_by_restarts(log: Path) -> int:
    """Alerts the loop's reconcile pass picked up (committed by ingest, never routed by a killed process)."""
    n = 0
    for line in log.read_text(errors="replace").splitlines():
        if "loop reconciled alerts the sink had not handled" in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                n += int(json.loads(line)["count"])
    return n


async def wait_for(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(cond):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, f"not reached within {timeout} s: {what}"
        await asyncio.sleep(0.2)


# --- the scenario ---------------------------------------------------------------------------------------
async def kill9_under_load(
    tmp_path: Path, database_url: str, timeseries_url: str, scenario: str, seed: int
) -> None:
    rng = random.Random(seed)
    n_gw, n_dev = scale(4, 8), scale(40, 100)
    kills = scale(2 if database_url.startswith("sqlite") else 1, 25)
    env = cloud_env(tmp_path, database_url, timeseries_url)
    fleet = await asyncio.to_thread(provision, env, n_gw, n_dev)
    db = Database(database_url)
    ts_sqlite = (
        Path(timeseries_url.removeprefix("sqlite:///")) if timeseries_url.startswith("sqlite") else None
    )
    main_sqlite = Path(database_url.removeprefix("sqlite:///")) if db.is_sqlite else None
    cloud = CloudProcess(env, tmp_path / "cloud.log")
    ledger = Ledger(scenario)
    t0 = time.time() - 6 * 3600  # readings of the last hours: inside the cloud's time bounds
    posters = [Poster(gw, tok, fleet.devices[gw], t0) for gw, tok in fleet.tokens.items()]
    acked_before_kill: set[str] = set()
    stop = asyncio.Event()
    try:
        await cloud.start()
        tasks = [
            asyncio.create_task(p.run(cloud.url, stop, scale(5, 20)), name=f"poster[{p.gateway_id}]")
            for p in posters
        ]
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.3, 1.5))  # a random moment under load
            for t in tasks:
                if t.done():
                    t.result()  # a poster failed: show why
            for p in posters:
                acked_before_kill |= {a.alert_id for b in p.sent if b.batch_id in p.acks for a in b.alerts}
            cloud.kill9()
            ledger.kills += 1
            for path in (main_sqlite, ts_sqlite):  # a crashed database must be consistent as found
                if path is not None:
                    await asyncio.to_thread(sqlite_integrity, path)
            await cloud.start()
            ledger.restarts += 1
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        sent = [b for p in posters for b in p.sent]
        acked = {bid for p in posters for bid in p.acks}
        assert {b.batch_id for b in sent} == acked, "a batch was never acknowledged"
        alerts = {a.alert_id for b in sent for a in b.alerts}

        def all_linked() -> bool:
            links, _ = loop_links(db)
            return alerts <= set(links)

        # the reconcile pass of the restarted cloud hands the loop what the killed one never routed
        await wait_for(all_linked, 90, "every acknowledged alert linked to the loop")
        links, incidents = loop_links(db)
        assert acked_before_kill <= set(links)
        unrouted = {a: links[a] for a in alerts if links[a][0] is None}
        assert not unrouted, f"alerts without an incident: {list(unrouted.items())[:5]}"
        assert all(n >= 1 for n in incidents.values()), "an incident no alert belongs to (opened twice?)"
        assert cloud.stop() in (0, -signal.SIGTERM), cloud.tail()  # uvicorn re-raises SIGTERM when done

        stored = stored_steps(db)
        stored += stored_readings_sqlite(ts_sqlite) if ts_sqlite else stored_readings_pg(db)
        accepted = [k for b in sent for k in (*reading_keys(b), *step_keys(b))]
        ledger.sent = len(accepted)
        ledger.reconcile(accepted, stored)
        batches, readings_total = batches_and_counters(db)
        assert set(batches) == {(b.gateway_id, b.batch_id) for b in sent} and set(batches.values()) == {1}
        n_readings = sum(len(blk) for b in sent for blk in b.telemetry)
        assert readings_total == n_readings, "devices.readings_total differs from the readings stored"
        if main_sqlite is not None:
            for path in (main_sqlite, ts_sqlite):
                assert path is not None
                sqlite_integrity(path)
            ledger.extra["integrity"] = (
                "sqlite integrity_check ok, foreign_key_check empty (after every kill)"
            )
        else:
            ledger.extra.update(pg_consistency(db))
            ledger.extra["integrity"] = "no orphan rows, counters match, amcheck bt_index_check ok"
        ledger.extra.update(
            batches_sent=len(sent),
            batches_acked=len(acked),
            resends=sum(p.resends for p in posters),
            duplicate_acks=sum(p.duplicate_acks for p in posters),
            readings=n_readings,
            alert_steps=len(alerts),
            alerts_acked_before_a_kill=len(acked_before_kill),
            alerts_routed_by_the_reconcile_pass=reconciled_by_restarts(cloud.log),
            incidents=len(incidents),
            gateways=n_gw,
            seed=seed,
        )
        print(ledger.summary(), ledger.extra)
        ledger.check()
    finally:
        stop.set()
        cloud.ensure_dead()
        db.close()


@pytest.mark.parametrize("seed", [11])
async def test_kill9_under_write_load_sqlite(tmp_path: Path, seed: int) -> None:
    url = f"sqlite:///{tmp_path}/vigil.db"
    await kill9_under_load(tmp_path, url, f"sqlite:///{tmp_path}/vigil-ts.db", "cloud_kill9_sqlite", seed)


@pytest.mark.parametrize("seed", [12])
async def test_kill9_under_write_load_postgres(tmp_path: Path, pg_server: PostgresServer, seed: int) -> None:
    url = pg_server.create_database("vigil_kill9")
    await kill9_under_load(tmp_path, url, url, "cloud_kill9_postgres", seed)


__all__ = ["CloudProcess", "Fleet", "Poster", "cloud_env", "long_run", "make_batch", "provision"]
