"""A simulated district through the real broker path: gateways -> Mosquitto (shared subscription) -> several
``vigil cloud mqtt-ingest`` worker processes -> PostgreSQL (+ a time-series server), then an alarm storm.

Run: ``.venv/bin/python bench/bench_district.py`` (100,000 devices behind 200 gateways, a simulated day of
12 heartbeat rounds, 3 ingest workers; a few minutes on a 2-core box) or ``--quick`` (10,000 devices,
20 gateways, 4 rounds: the CI's size). ``--ts victoria`` stores telemetry in VictoriaMetrics instead of
PostgreSQL; ``--kill`` SIGKILLs one worker mid-run and restarts it with the same client id.

What it reports (and writes to ``bench/results/bench_district.json``):

* readings/s sustained, from the first publish to the last ack, over all rounds;
* end-to-end lag per batch, gateway publish -> ack received (the ack is published after the commit, so
  this bounds publish -> commit from above), p50 / p99;
* the alarm storm: in the last round 10 % of the devices send an alert step with their reading; its
  lag is publish -> ack of those batches (alert committed; the incident engine is not in this path yet);
* each process's peak memory (VmHWM), workers and the gateway simulator;
* proof: rows in the time-series store == readings sent, ``ingested_batches`` == batches sent, alert
  steps stored == alerts sent; nothing lost, nothing doubled (also across ``--kill``).

Gateways keep one batch in flight (an outbox sends the next after the ack), as ``edge`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from alerts.contract import AlertEvent, TelemetryBlock, UplinkBatch, mqtt_ack_topic, mqtt_up_topic
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import spec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "bench_district.json"
KIND = DeviceKind.MANHOLE
T0 = 1_790_000_000.0
CSV_HEADER = (
    "device_id,kind,name,lat,lon,address,grid,community,street,on_road,gateway_id,profile,dev_addr,"
    "nwk_skey,app_skey,wearer_name,wearer_phone,emergency_contact_phone"
)


def device_ids(g: int, per_gw: int) -> np.ndarray:
    return np.array([f"70B3D57E{g:04X}{i:04X}" for i in range(per_gw)])


def provision(settings: Any, gateways: int, per_gw: int) -> None:
    from cloud.api.state import CloudState

    state = CloudState.build(settings)
    try:
        for g in range(gateways):
            gw = f"gw-{g:04d}"
            state.credentials.add_gateway(gw, now=time.time())
            rows = [f"{d},manhole,,39.9,116.3,,,,,false,{gw},,,,,,," for d in device_ids(g, per_gw)]
            state.registry.import_csv("\n".join([CSV_HEADER, *rows]) + "\n", now=time.time())
    finally:
        state.close()


def make_batch(g: int, ids: np.ndarray, rnd: int, interval_s: float, storm: bool) -> tuple[bytes, int]:
    n = len(ids)
    rng = np.random.default_rng(g * 1000 + rnd)
    t = T0 + rnd * interval_s + rng.random(n)
    vals = rng.normal(10, 3, size=(n, len(spec(KIND).channels)))
    vals[:, 6] = 20.9  # oxygen normal
    batch = ReadingBatch(
        kind=KIND,
        device_id=ids,
        seq=np.full(n, rnd + 1, dtype=np.uint32),
        time=t,
        battery_pct=np.full(n, 80.0),
        flags=np.zeros(n, dtype=np.uint32),
        values=vals,
        fw_version=np.full(n, 0x0102, dtype=np.uint16),
    )
    alerts = []
    if storm:  # 10 % of this gateway's devices raise an alert with this reading
        for i in range(0, n, 10):
            ep = round(float(t[i]) * 1000)
            alerts.append(
                AlertEvent(
                    alert_id=alert_id(str(ids[i]), EventType.COVER_OPEN, ep),
                    device_id=str(ids[i]),
                    kind=KIND,
                    event_type=EventType.COVER_OPEN,
                    severity=Severity.HIGH,
                    phase=AlertPhase.RAISED,
                    episode_ms=ep,
                    time=float(t[i]) + 0.5,
                    frame_time=float(t[i]),
                    value=95.0,
                    message="cover open",
                )
            )
    ub = UplinkBatch(
        batch_id=f"dist-{g:04d}-{rnd:04d}",
        gateway_id=f"gw-{g:04d}",
        sent_at=T0 + rnd * interval_s + 1.0,
        telemetry=[TelemetryBlock.from_batch(batch)],
        alerts=alerts,
    )
    return ub.model_dump_json().encode(), len(alerts)


async def run_gateways(
    host: str, port: int, gateways: int, per_gw: int, rounds: int, interval_s: float, on_half: Any
) -> dict[str, Any]:
    import aiomqtt

    lags: list[float] = []
    storm_lags: list[float] = []
    acks: dict[str, dict[str, Any]] = {}
    alerts_sent = 0
    half = asyncio.Event()
    done_half = 0

    async def gateway(g: int) -> None:
        nonlocal alerts_sent, done_half
        gw = f"gw-{g:04d}"
        ids = device_ids(g, per_gw)
        async with aiomqtt.Client(host, port, identifier=f"sim-{gw}-{uuid.uuid4().hex[:6]}") as c:
            await c.subscribe(mqtt_ack_topic(gw), qos=1)
            it = c.messages.__aiter__()
            for rnd in range(rounds):
                storm = rnd == rounds - 1
                body, n_alerts = make_batch(g, ids, rnd, interval_s, storm)
                alerts_sent += n_alerts
                sent = time.perf_counter()
                await c.publish(mqtt_up_topic(gw), body, qos=1)
                while True:  # the outbox: wait for this batch's ack, re-send after 30 s without one
                    try:
                        m = await asyncio.wait_for(it.__anext__(), 30)
                    except TimeoutError:
                        await c.publish(mqtt_up_topic(gw), body, qos=1)
                        continue
                    ack = json.loads(bytes(m.payload))
                    if ack.get("batch_id") != f"dist-{g:04d}-{rnd:04d}":
                        continue  # an ack of an earlier re-send
                    if ack.get("error") == "rate_limited":  # over quota: wait as told, send again
                        await asyncio.sleep(float(ack.get("retry_after_s", 1.0)))
                        await c.publish(mqtt_up_topic(gw), body, qos=1)
                        continue
                    if ack.get("error"):
                        raise RuntimeError(f"batch refused: {ack}")
                    break
                lag = time.perf_counter() - sent
                (storm_lags if storm else lags).append(lag)
                acks[ack["batch_id"]] = ack
                if rnd == rounds // 2:
                    done_half += 1
                    if done_half == gateways:
                        half.set()

    async def at_half() -> None:
        await half.wait()
        await on_half()

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(at_half(), name="at-half")
        for g in range(gateways):
            tg.create_task(gateway(g), name=f"gw-{g}")
    wall = time.perf_counter() - t0
    return {"wall": wall, "lags": lags, "storm_lags": storm_lags, "acks": acks, "alerts_sent": alerts_sent}


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--gateways", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=12, help="heartbeat rounds in the simulated day")
    ap.add_argument("--workers", type=int, default=3, help="ingest worker processes")
    ap.add_argument("--ts", choices=("postgresql", "victoria"), default="postgresql")
    ap.add_argument("--kill", action="store_true", help="SIGKILL worker 0 half-way, restart it")
    args = ap.parse_args(argv)
    if args.quick:
        args.devices, args.gateways, args.rounds = 10_000, 20, 4
    per_gw = args.devices // args.gateways
    interval = 86_400 / args.rounds

    from cloud.settings import CloudSettings
    from tests.servers import start_mosquitto, start_postgres, start_victoria

    tmp = Path(tempfile.mkdtemp(prefix="vigil-district-"))
    mq, pg = start_mosquitto(tmp / "mq"), start_postgres()
    vm = start_victoria(tmp / "vm") if args.ts == "victoria" else None
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        db_url = pg.create_database("district")
        ts_url = f"victoria://{vm.host}:{vm.port}" if vm else pg.create_database("district_ts")
        settings = CloudSettings.model_validate(
            dict(
                database_url=db_url,
                timeseries_url=ts_url,
                secret_key_file=tmp / "secret.key",
                migrate_on_start=True,
                connectivity_check_s=0,
                json_logs=False,
            )
        )
        t = time.perf_counter()
        provision(settings, args.gateways, per_gw)
        print(
            f"provisioned {args.gateways} gateways, {per_gw * args.gateways:,} devices "
            f"in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "VIGIL_CLOUD_DATABASE_URL": db_url,
            "VIGIL_CLOUD_TIMESERIES_URL": ts_url,
            "VIGIL_CLOUD_SECRET_KEY_FILE": str(tmp / "secret.key"),
            "VIGIL_CLOUD_MQTT_HOST": mq.host,
            "VIGIL_CLOUD_MQTT_PORT": str(mq.port),
            "VIGIL_CLOUD_MQTT_GROUP": f"district{uuid.uuid4().hex[:6]}",
            "VIGIL_CLOUD_RUN_JOBS": "false",
            "VIGIL_CLOUD_JSON_LOGS": "false",
            "VIGIL_CLOUD_MIGRATE_ON_START": "false",
        }
        logs = tmp / "logs"
        logs.mkdir()
        peaks: dict[str, float] = {}

        def start_worker(k: int) -> None:
            with open(logs / f"worker{k}.log", "ab") as log:
                procs[k] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "vigil_cli",
                        "--log-level",
                        "INFO",
                        "cloud",
                        "mqtt-ingest",
                        "--client-id",
                        f"district-{k}",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

        def wait_subscribed(k: int, times: int = 1, timeout: float = 180.0) -> None:
            """Until worker ``k`` logged its subscription ``times`` times: a batch published before any
            member of the group subscribed would be dropped by the broker (no subscriber yet)."""
            deadline = time.monotonic() + timeout
            while (logs / f"worker{k}.log").read_text(errors="replace").count(
                "MQTT ingest worker subscribed"
            ) < times:
                if procs[k].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {k} did not subscribe: see {logs}/worker{k}.log")
                time.sleep(0.2)

        for k in range(args.workers):
            start_worker(k)
        t = time.perf_counter()
        for k in range(args.workers):
            wait_subscribed(k)
        print(f"{args.workers} ingest workers subscribed after {time.perf_counter() - t:.1f} s", flush=True)

        async def on_half() -> None:
            if not args.kill:
                return
            p = procs[0]
            peaks["worker0 (killed)"] = peak_rss_mb(p.pid)
            p.send_signal(signal.SIGKILL)
            await asyncio.to_thread(p.wait)
            print("killed worker 0 (SIGKILL) half-way; restarting it with the same client id", flush=True)
            start_worker(0)
            await asyncio.to_thread(wait_subscribed, 0, 2)

        res = asyncio.run(
            run_gateways(mq.host, mq.port, args.gateways, per_gw, args.rounds, interval, on_half)
        )
        for k, p in procs.items():
            peaks[f"worker{k}"] = peak_rss_mb(p.pid)
        import resource

        peaks["gateway simulator (this process)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        # proof: nothing lost, nothing doubled
        import psycopg

        readings_sent = per_gw * args.gateways * args.rounds
        with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
            batches: Any = conn.execute(
                "SELECT count(*), count(DISTINCT (gateway_id, batch_id)) FROM ingested_batches"
            ).fetchone()
            alerts: Any = conn.execute(
                "SELECT count(*) FROM alert_events WHERE event_type = 'cover_open'"
            ).fetchone()
        if vm is None:
            with psycopg.connect(ts_url.replace("postgresql+psycopg", "postgresql")) as conn:
                stored: Any = conn.execute(
                    "SELECT count(*), count(DISTINCT (device_id, time_ms, seq)) FROM ts_manhole"
                ).fetchone()
        else:
            stored = (None, None)
        dup_acks = sum(1 for a in res["acks"].values() if a.get("duplicate"))
        lag = np.asarray(res["lags"]) * 1000
        storm = np.asarray(res["storm_lags"]) * 1000
        out = {
            "benchmark": "bench_district",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "devices": per_gw * args.gateways,
            "gateways": args.gateways,
            "rounds": args.rounds,
            "ingest_workers": args.workers,
            "timeseries": args.ts,
            "killed_a_worker": args.kill,
            "readings_sent": readings_sent,
            "seconds": round(res["wall"], 2),
            "readings_per_s": round(readings_sent / res["wall"]),
            "lag_ms_p50": round(float(np.percentile(lag, 50)), 1),
            "lag_ms_p99": round(float(np.percentile(lag, 99)), 1),
            "storm_alerts": res["alerts_sent"],
            "storm_lag_ms_p50": round(float(np.percentile(storm, 50)), 1),
            "storm_lag_ms_p99": round(float(np.percentile(storm, 99)), 1),
            "peak_memory_mb": {k: round(v, 1) for k, v in peaks.items()},
            "batches_sent": args.gateways * args.rounds,
            "batches_committed": batches[0] if batches else None,
            "batches_distinct": batches[1] if batches else None,
            "duplicate_acks": dup_acks,
            "readings_stored": stored[0],
            "readings_distinct": stored[1],
            "alerts_stored": alerts[0] if alerts else None,
        }
        ok = (
            out["batches_committed"] == out["batches_sent"] == out["batches_distinct"]
            and out["alerts_stored"] == out["storm_alerts"]
            and (stored[0] is None or stored[0] == stored[1] == readings_sent)
        )
        out["nothing_lost_or_doubled"] = bool(ok)
        print(json.dumps(out, indent=2))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {RESULTS}")
        return 0 if ok else 1
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for server in (vm, mq, pg):
            if server is not None:
                server.stop()
        shutil.rmtree(pg.directory, ignore_errors=True)
        if os.environ.get("VIGIL_BENCH_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
