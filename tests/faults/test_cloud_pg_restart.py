"""PostgreSQL restarts under load: the cloud's processes wait and resume, lose nothing acknowledged, and do
not exit (issues 11 and 12).

A district deployment as ``docs/deploy-district.md`` describes it: PostgreSQL for the database, the time
series in VictoriaMetrics (its documented default) or in PostgreSQL's wide tables, the HTTP API
(``vigil cloud``) and ``vigil cloud mqtt-ingest`` workers as processes. HTTP gateways post batches and
MQTT gateways publish QoS 1 batches continuously while PostgreSQL is restarted (fast shutdown, then
start, as ``systemctl restart postgresql`` does). While it is down, the API answers 503 (the gateway
resends the same batch) and the workers keep their batches un-acknowledged and retry. After each restart
both must resume on their own; at the end every acknowledged reading and alert step is stored once, and no
process has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from cloud.db import Database
from tests.faults.ledger import Ledger, long_run, scale
from tests.faults.test_cloud_kill9 import (
    CloudProcess,
    Poster,
    batches_and_counters,
    reading_keys,
    step_keys,
    stored_readings_pg,
    stored_steps,
)
from tests.faults.test_cloud_mqtt_worker_kill9 import (
    MqttGateway,
    WorkerProcess,
    ingested,
    mqtt_env,
    provision_fleet,
)
from tests.servers import (
    MosquittoServer,
    PostgresServer,
    VictoriaServer,
    free_port,
    start_postgres,
    wait_for_port,
)

#: how long the processes may take to resume after PostgreSQL is back (their backoff is at most a few s)
RESUME_S = 20.0


def restart_postgres(pg: PostgresServer, down_s: float) -> float:
    """Fast shutdown (SIGINT: abort transactions, disconnect clients), ``down_s`` seconds down, then start
    the same cluster again; returns the seconds PostgreSQL was unavailable."""
    assert pg.proc is not None
    args, t0 = pg.proc.args, time.monotonic()
    pg.proc.send_signal(signal.SIGINT)
    pg.proc.wait(60)
    time.sleep(down_s)  # the outage itself (a package upgrade, a failover), not synchronisation
    run_as: dict[str, int] = {}
    if os.geteuid() == 0:  # as start_postgres: the server runs as the postgres user
        pw = pwd.getpwnam("postgres")
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid}
    with open(pg.directory / "postgres.log", "ab") as log:
        pg.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=pg.directory, **run_as)  # type: ignore[call-overload]
    deadline = time.monotonic() + 60
    while True:
        assert pg.proc.poll() is None, (pg.directory / "postgres.log").read_text()[-2000:]
        try:
            with psycopg.connect(pg.dsn(), connect_timeout=2):
                return time.monotonic() - t0
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            time.sleep(0.1)


def start_victoria_dedup(directory: Path) -> VictoriaServer:
    """VictoriaMetrics as a district should run it: ``-dedup.minScrapeInterval=1ms`` keeps one sample per
    series and millisecond. Without it a batch written to the store and then retried (its database commit
    failed: PostgreSQL restarting) leaves every reading twice in VictoriaMetrics: the long run measured 900
    readings stored twice across 6 restarts."""
    port = free_port()
    with open(directory / "vm.log", "wb") as log:
        proc = subprocess.Popen(
            [
                "victoria-metrics",
                f"-storageDataPath={directory / 'data'}",
                f"-httpListenAddr=127.0.0.1:{port}",
                "-retentionPeriod=100y",
                "-dedup.minScrapeInterval=1ms",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-loggerLevel=ERROR",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = VictoriaServer("127.0.0.1", port, directory, proc=proc)
    try:
        wait_for_port(port, proc, log=directory / "vm.log")
    except BaseException:
        server.stop()
        raise
    return server


def victoria_readings(url: str) -> list[tuple[str, ...]]:
    """Every raw sample of the readings' ``seq`` field, read back with VictoriaMetrics' export API."""
    httpx.get(f"{url}/internal/force_flush", timeout=10)
    r = httpx.get(f"{url}/api/v1/export", params={"match[]": "vigil_manhole_seq"}, timeout=30)
    r.raise_for_status()
    out: list[tuple[str, ...]] = []
    for line in r.text.splitlines():
        doc = json.loads(line)
        dev = doc["metric"]["device_id"]
        out += [
            ("reading", dev, str(t), str(int(v)))
            for v, t in zip(doc["values"], doc["timestamps"], strict=True)
        ]
    return out


async def pg_restart_under_load(
    tmp_path: Path, mosquitto: MosquittoServer, *, timeseries: str, scenario: str
) -> None:
    rng = random.Random(41)
    group = f"faults{uuid.uuid4().hex[:6]}"
    pg = start_postgres()  # its own cluster, to restart (a temp dir the postgres user can reach)
    vm: VictoriaServer | None = None
    db: Database | None = None
    api: CloudProcess | None = None
    worker: WorkerProcess | None = None
    ledger = Ledger(scenario)
    stop_http, stop_mqtt = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        if timeseries == "victoria":
            (tmp_path / "vm").mkdir()
            vm = start_victoria_dedup(tmp_path / "vm")
        url = pg.create_database("vigil_pg_restart")
        ts_url = f"victoria://{vm.host}:{vm.port}" if vm else url
        env = mqtt_env(tmp_path, url, mosquitto, group, VIGIL_CLOUD_TIMESERIES_URL=ts_url)
        db = Database(url)
        api = CloudProcess(env, tmp_path / "api.log")
        worker = WorkerProcess(env, tmp_path / "worker.log", client_id=f"ingest-{group}", workers=2)
        fleet = await asyncio.to_thread(provision_fleet, env, 4, scale(20, 50))
        gws = list(fleet.tokens)
        t0 = time.time() - 6 * 3600
        posters = [Poster(gw, fleet.tokens[gw], fleet.devices[gw], t0) for gw in gws[:2]]
        publishers = [MqttGateway(gw, fleet.devices[gw], t0, mosquitto, pace_s=0.1) for gw in gws[2:]]
        mqtt_ids = tuple(g.gateway_id + "-" for g in publishers)

        def mqtt_stored() -> int:
            return sum(b.startswith(mqtt_ids) for b in ingested(db))

        await asyncio.gather(api.start(), worker.start())
        tasks += [
            asyncio.create_task(p.run(api.url, stop_http, 3), name=f"poster[{p.gateway_id}]") for p in posters
        ]
        tasks += [asyncio.create_task(g.run(stop_mqtt), name=f"gateway[{g.gateway_id}]") for g in publishers]
        outages: list[float] = []
        for _ in range(scale(1, 6)):
            await asyncio.sleep(1.5)  # under load
            http_before = sum(len(p.acks) for p in posters)
            mqtt_before = await asyncio.to_thread(mqtt_stored)
            outages.append(await asyncio.to_thread(restart_postgres, pg, rng.uniform(0.5, 3.0)))
            ledger.restarts += 1

            def resumed(http_before: int = http_before, mqtt_before: int = mqtt_before) -> bool:
                return sum(len(p.acks) for p in posters) > http_before and mqtt_stored() > mqtt_before

            deadline = time.monotonic() + RESUME_S + outages[-1]
            while not await asyncio.to_thread(resumed):
                for proc in (api, worker):
                    assert proc.proc is not None and proc.proc.poll() is None, (
                        f"a process exited: {proc.tail()}"
                    )
                for t in tasks:
                    if t.done():
                        t.result()
                assert time.monotonic() < deadline, "the API or the workers did not resume after the restart"
                await asyncio.sleep(0.2)
        stop_http.set()
        stop_mqtt.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        accepted = [b for p in posters for b in p.sent if b.batch_id in p.acks]
        accepted += [b for g in publishers for b in g.accepted.values()]
        want = {b.batch_id for b in accepted}
        deadline = time.monotonic() + 60
        while not want <= await asyncio.to_thread(ingested, db) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for proc in (api, worker):
            assert proc.proc is not None and proc.proc.poll() is None, f"a process exited: {proc.tail()}"
            assert proc.stop() in (0, -signal.SIGTERM), proc.tail()
        sent = [b for p in posters for b in p.sent] + [b for g in publishers for b in g.sent]
        ledger.sent = sum(len(list(reading_keys(b))) + len(b.alerts) for b in sent)
        readings = victoria_readings(vm.url) if vm else stored_readings_pg(db)
        ledger.reconcile(
            [k for b in accepted for k in (*reading_keys(b), *step_keys(b))], readings + stored_steps(db)
        )
        batches, readings_total = batches_and_counters(db)
        ledger.extra.update(
            timeseries=timeseries,
            outage_s=[round(s, 1) for s in outages],
            batches_sent=len(sent),
            batches_accepted=len(accepted),
            http_resends=sum(p.resends for p in posters),
            mqtt_duplicate_acks=sum(1 for g in publishers for a in g.acks if a.get("duplicate")),
            processes_exited=0,
        )
        print(ledger.summary(), ledger.extra)
        ledger.check()
        assert set(batches.values()) == {1}
        assert readings_total == sum(len(blk) for b in accepted for blk in b.telemetry)
    finally:
        stop_http.set()
        stop_mqtt.set()
        for t in tasks:
            t.cancel()
            with contextlib.suppress(BaseException):
                await t
        for started in (api, worker):
            if started is not None:
                started.ensure_dead()
        if db is not None:
            db.close()
        if vm is not None:
            vm.stop()
        pg.stop()
        shutil.rmtree(pg.directory, ignore_errors=True)


@pytest.mark.skipif(not long_run(), reason="long version only; CI runs the PostgreSQL one")
async def test_pg_restart_api_and_workers_wait_and_resume(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    await pg_restart_under_load(tmp_path, mosquitto, timeseries="victoria", scenario="cloud_pg_restart")


async def test_pg_restart_with_timeseries_on_postgres(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    await pg_restart_under_load(
        tmp_path, mosquitto, timeseries="postgres", scenario="cloud_pg_restart_pg_timeseries"
    )
