"""A simulated district through the real broker path: gateways -> Mosquitto (shared subscription) -> several
``vigil cloud mqtt-ingest`` worker processes -> PostgreSQL (+ a time-series server) -> the closed loop's
incidents, then an alarm storm.

Run: ``.venv/bin/python bench/bench_district.py --ts victoria`` (100,000 devices behind 200 gateways, a
simulated day of 4 heartbeat rounds, 3 ingest workers, one ``vigil cloud jobs`` process for the loop's
timers and reconcile pass) or ``--quick`` (10,000 devices, 20 gateways: the small size). ``--ts victoria``
stores telemetry in VictoriaMetrics instead of PostgreSQL; ``--kill`` SIGKILLs one worker half-way and
restarts it with the same client id; ``--profile`` samples every worker with py-spy and prints where the
time goes. ``--body json|msgpack`` picks the gateways' payload (default the binary msgpack body,
``alerts.uplink_body.encode_batch``, which the workers recognise by its first byte); ``--lane alert|up``
where the storm's alert batches are published: ``alert`` (default) on ``vigil/v1/gw/{id}/alert``, consumed
by the workers' alert sessions, ``up`` on the telemetry topic as gateways did before the alert lane (the
baseline: there they queue at the broker behind the round's telemetry).

What it reports (and writes to ``bench/results/bench_district[_quick][_kill].json``):

* readings/s sustained, from the first publish to the last ack, over all rounds;
* end-to-end lag per batch, gateway publish -> ack received (the ack is published after the commit, so
  this bounds publish -> commit from above), p50 / p99;
* the alarm storm: in the last round 10 % of the devices alarm; each gateway sends their alert steps as
  one alert batch ahead of its telemetry (the edge's alert lane), half cover-open (one incident per
  device) and half overflow (one incident per street = per gateway here). Reported: the alert batch's
  publish -> ack, and **alert -> incident**: publish -> the incident row visible in ``loop_incidents``
  (polled every 0.2 s) and publish -> its ``created_at``, p50 / p99; incidents created == the distinct
  groups the default grouping must make, and no more;
* each process's peak memory (VmHWM): workers, the jobs process and the gateway simulator;
* proof: readings in the time-series store == readings sent, ``ingested_batches`` == batches sent, alert
  steps stored == alerts sent, incidents == groups; nothing lost, nothing doubled (also across ``--kill``).

Gateways keep one batch in flight (an outbox sends the next after the ack), as ``edge`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from alerts.contract import (
    AlertEvent,
    TelemetryBlock,
    UplinkBatch,
    mqtt_ack_topic,
    mqtt_alert_topic,
    mqtt_up_topic,
)
from alerts.uplink_body import encode_batch
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import spec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
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
            # one street per gateway: the storm's overflow alerts of a gateway make one incident
            rows = [
                f"{d},manhole,,39.9,116.3,,,,{street_of(g)},false,{gw},,,,,,," for d in device_ids(g, per_gw)
            ]
            state.registry.import_csv("\n".join([CSV_HEADER, *rows]) + "\n", now=time.time())
    finally:
        state.close()


def street_of(g: int) -> str:
    return f"street-{g:04d}"


def storm_alerts(g: int, ids: np.ndarray, t: np.ndarray) -> list[AlertEvent]:
    """10 % of this gateway's devices alarm: even ones a cover open (one incident per device, the
    ``per_device`` grouping), odd ones an overflow (one incident per street: ``flooded_street``)."""
    out = []
    for k, i in enumerate(range(0, len(ids), 10)):
        et = EventType.COVER_OPEN if k % 2 == 0 else EventType.OVERFLOW
        ep = round(float(t[i]) * 1000)
        out.append(
            AlertEvent(
                alert_id=alert_id(str(ids[i]), et, ep),
                device_id=str(ids[i]),
                kind=KIND,
                event_type=et,
                severity=Severity.HIGH,
                phase=AlertPhase.RAISED,
                episode_ms=ep,
                time=float(t[i]) + 0.5,
                frame_time=float(t[i]),
                value=95.0,
                message=str(et),
            )
        )
    return out


def expected_incidents(alerts: list[AlertEvent]) -> int:
    """Distinct groups of the default grouping (``alerts.loop.incidents.default_grouping``)."""
    cover = {a.device_id for a in alerts if a.event_type is EventType.COVER_OPEN}
    streets = {a.device_id[8:12] for a in alerts if a.event_type is EventType.OVERFLOW}  # gateway hex
    return len(cover) + len(streets)


def reading_times(g: int, n: int, rnd: int, interval_s: float) -> np.ndarray:
    return T0 + rnd * interval_s + np.random.default_rng(g * 1000 + rnd).random(n)


def encode(ub: UplinkBatch, body: str) -> bytes:
    return encode_batch(ub) if body == "msgpack" else ub.model_dump_json().encode()


def make_alert_batch(
    g: int, ids: np.ndarray, rnd: int, interval_s: float, body: str
) -> tuple[bytes, list[AlertEvent]]:
    """The storm as a gateway sends it: an alert-only batch ahead of telemetry (the edge's alert lane)."""
    alerts = storm_alerts(g, ids, reading_times(g, len(ids), rnd, interval_s))
    ub = UplinkBatch(
        batch_id=f"dist-{g:04d}-{rnd:04d}-alerts",
        gateway_id=f"gw-{g:04d}",
        sent_at=T0 + rnd * interval_s + 1.0,
        alerts=alerts,
    )
    return encode(ub, body), alerts


def make_batch(g: int, ids: np.ndarray, rnd: int, interval_s: float, body: str) -> bytes:
    n = len(ids)
    rng = np.random.default_rng(g * 1000 + rnd + 7)
    t = reading_times(g, n, rnd, interval_s)
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
    ub = UplinkBatch(
        batch_id=f"dist-{g:04d}-{rnd:04d}",
        gateway_id=f"gw-{g:04d}",
        sent_at=T0 + rnd * interval_s + 1.0,
        telemetry=[TelemetryBlock.from_batch(batch)],
    )
    return encode(ub, body)


async def run_gateways(
    host: str,
    port: int,
    gateways: int,
    per_gw: int,
    rounds: int,
    interval_s: float,
    on_half: Any,
    *,
    body: str = "msgpack",
    lane: str = "alert",
) -> dict[str, Any]:
    import aiomqtt

    lags: list[float] = []
    storm_lags: list[float] = []
    acks: dict[str, dict[str, Any]] = {}
    alerts: list[AlertEvent] = []
    storm_sent: dict[str, float] = {}  # gateway id -> wall time its alert batch was first published
    half = asyncio.Event()
    done_half = 0

    async def gateway(g: int) -> None:
        nonlocal done_half
        gw = f"gw-{g:04d}"
        ids = device_ids(g, per_gw)
        alert_topic = mqtt_alert_topic(gw) if lane == "alert" else mqtt_up_topic(gw)
        async with aiomqtt.Client(host, port, identifier=f"sim-{gw}-{uuid.uuid4().hex[:6]}") as c:
            await c.subscribe(mqtt_ack_topic(gw), qos=1)
            it = c.messages.__aiter__()

            async def send(batch_id: str, payload: bytes, topic: str) -> float:
                """Publish, wait for this batch's ack (the outbox: one batch in flight), return the lag."""
                sent = time.perf_counter()
                await c.publish(topic, payload, qos=1)
                while True:  # re-send after 30 s without an ack
                    try:
                        async with asyncio.timeout(30):
                            m = await it.__anext__()
                    except TimeoutError:
                        await c.publish(topic, payload, qos=1)
                        continue
                    ack = json.loads(bytes(m.payload))
                    if ack.get("batch_id") != batch_id:
                        continue  # an ack of an earlier re-send
                    if ack.get("error") == "rate_limited":  # over quota: wait as told, send again
                        await asyncio.sleep(float(ack.get("retry_after_s", 1.0)))
                        await c.publish(topic, payload, qos=1)
                        continue
                    if ack.get("error"):
                        raise RuntimeError(f"batch refused: {ack}")
                    acks[batch_id] = ack
                    return time.perf_counter() - sent

            for rnd in range(rounds):
                if rnd == rounds - 1:  # the storm: alerts first, as the edge's alert lane sends them
                    payload, steps = make_alert_batch(g, ids, rnd, interval_s, body)
                    alerts.extend(steps)
                    storm_sent[gw] = time.time()
                    storm_lags.append(await send(f"dist-{g:04d}-{rnd:04d}-alerts", payload, alert_topic))
                telemetry = make_batch(g, ids, rnd, interval_s, body)
                lags.append(await send(f"dist-{g:04d}-{rnd:04d}", telemetry, mqtt_up_topic(gw)))
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
    return {
        "wall": wall,
        "lags": lags,
        "storm_lags": storm_lags,
        "acks": acks,
        "alerts": alerts,
        "storm_sent": storm_sent,
    }


class IncidentWatch:
    """Polls the loop's incidents table from a thread (every 0.2 s) and notes when each storm incident
    first became visible; its ``created_at`` is when the loop decided, inside the transaction."""

    def __init__(self, db_url: str) -> None:
        import threading

        self.url = db_url.replace("postgresql+psycopg", "postgresql")
        # id -> (device_id, created_at, first seen, event type)
        self.seen: dict[int, tuple[str, float, float, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="incident-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psycopg

        # every poll reads all storm incidents: ids come from a sequence, but concurrent transactions
        # commit out of id order, so "id > last seen" would miss some
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT id, device_id, created_at, event_type FROM loop_incidents"
                    " WHERE event_type IN ('cover_open', 'overflow')"
                ).fetchall()
                now = time.time()
                for iid, dev, created, event in rows:
                    if int(iid) not in self.seen:
                        self.seen[int(iid)] = (str(dev), float(created), now, str(event))
                self._stop.wait(0.2)

    def wait(self, expected: int, timeout: float = 300.0, quiet_s: float = 3.0) -> float:
        """Until ``expected`` incidents were seen and nothing new came for ``quiet_s`` (a doubled incident
        would show); returns the seconds waited."""
        t0 = time.monotonic()
        settled: tuple[int, float] | None = None
        while time.monotonic() - t0 < timeout:
            n = len(self.seen)
            if n >= expected:
                if settled is None or settled[0] != n:
                    settled = (n, time.monotonic())
                elif time.monotonic() - settled[1] > quiet_s:
                    break
            time.sleep(0.2)
        self._stop.set()
        self._thread.join(10)
        return round(time.monotonic() - t0, 1)


def victoria_counts(url: str) -> tuple[int, int]:
    """(samples, distinct (device, time)) of the readings' ``seq`` metric in VictoriaMetrics."""
    import urllib.parse
    import urllib.request

    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=60).read()
    q = urllib.parse.urlencode(
        {"match[]": '{__name__="vigil_manhole_seq"}', "start": str(T0 - 86_400), "end": str(T0 + 3 * 86_400)}
    )
    samples = distinct = 0
    with urllib.request.urlopen(f"{url}/api/v1/export?{q}", timeout=300) as r:
        for line in r:
            if line.strip():
                ts = json.loads(line)["timestamps"]
                samples += len(ts)
                distinct += len(set(ts))
    return samples, distinct


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _pyspy() -> str | None:
    for cand in (
        os.environ.get("VIGIL_PYSPY"),
        str(ROOT / ".venv" / "bin" / "py-spy"),
        shutil.which("py-spy"),
    ):
        if cand and Path(cand).is_file():
            return cand
    return None


def start_profilers(
    procs: dict[int, subprocess.Popen[bytes]], logs: Path
) -> dict[Path, subprocess.Popen[bytes]]:
    """py-spy (sampling, all threads, GIL-holding or not) attached to every worker; collapsed stacks out."""
    spy = _pyspy()
    if spy is None:
        print("--profile: py-spy not found (set VIGIL_PYSPY); running without a profile", flush=True)
        return {}
    out: dict[Path, subprocess.Popen[bytes]] = {}
    for k, p in procs.items():
        path = logs / f"worker{k}.pyspy.txt"
        out[path] = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(p.pid),
                "--format",
                "raw",
                "--rate",
                "100",
                "--nonblocking",
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return out


def stop_profilers(spies: dict[Path, subprocess.Popen[bytes]]) -> list[Path]:
    for p in spies.values():
        p.send_signal(signal.SIGINT)
    for p in spies.values():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    return [path for path in spies if path.exists()]


def print_profile(paths: list[Path], top: int = 40) -> None:
    """Inclusive and self sample shares per function over all workers' collapsed stacks."""
    incl: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, n_s = line.rpartition(" ")
            if not stack or not n_s.isdigit():
                continue
            n = int(n_s)
            total += n
            frames = [
                f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                for f in stack.split(";")
            ]
            for f in set(frames):
                incl[f] = incl.get(f, 0) + n
            own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        print("profile: no samples")
        return
    print(f"profile: {total} samples over {len(paths)} workers (all threads, idle excluded)")
    print("  self %  | function")
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / total:6.1f}  | {f}")
    print("  incl %  | function")
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / total:6.1f}  | {f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--gateways", type=int, default=200)
    ap.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="heartbeat rounds in the simulated day (4: 6 h heartbeats; manhole covers report every 12-24 h)",
    )
    ap.add_argument("--workers", type=int, default=3, help="ingest worker processes")
    ap.add_argument("--ts", choices=("postgresql", "victoria"), default="postgresql")
    ap.add_argument("--kill", action="store_true", help="SIGKILL worker 0 half-way, restart it")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample every worker with py-spy (.venv/bin/py-spy, $VIGIL_PYSPY or PATH) during the run "
        "and print where their time goes",
    )
    ap.add_argument("--body", choices=("json", "msgpack"), default="msgpack", help="the gateways' payload")
    ap.add_argument(
        "--lane",
        choices=("alert", "up"),
        default="alert",
        help="topic of the storm's alert batches: the alert lane, or .../up as before it (the baseline)",
    )
    ap.add_argument(
        "--out", type=Path, help="result file (default bench/results/bench_district[_quick][_kill].json)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.devices, args.gateways, args.rounds = 10_000, 20, 4
    out_path: Path = args.out or RESULTS / (
        "bench_district" + ("_quick" if args.quick else "") + ("_kill" if args.kill else "") + ".json"
    )
    per_gw = args.devices // args.gateways
    interval = 86_400 / args.rounds

    from cloud.settings import CloudSettings
    from tests.servers import start_mosquitto, start_postgres, start_victoria

    tmp = Path(tempfile.mkdtemp(prefix="vigil-district-"))
    (tmp / "vm").mkdir()
    servers = contextlib.ExitStack()  # each server is stopped even if a later one fails to start
    procs: dict[int, subprocess.Popen[bytes]] = {}
    jobs: subprocess.Popen[bytes] | None = None
    try:
        mq = start_mosquitto(tmp / "mq")
        servers.callback(mq.stop)
        pg = start_postgres()
        servers.callback(shutil.rmtree, pg.directory, ignore_errors=True)
        servers.callback(pg.stop)
        vm = None
        if args.ts == "victoria":
            vm = start_victoria(tmp / "vm")
            servers.callback(vm.stop)
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
            """Until worker ``k`` logged the subscription of both its sessions (telemetry and alert lane)
            ``times`` times: a batch published before any member of the group subscribed would be dropped
            by the broker (no subscriber yet)."""
            deadline = time.monotonic() + timeout
            while (logs / f"worker{k}.log").read_text(errors="replace").count(
                "MQTT ingest worker subscribed"
            ) < 2 * times:
                if procs[k].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {k} did not subscribe: see {logs}/worker{k}.log")
                time.sleep(0.2)

        # the loop's periodic job (reconcile, escalation/SLA timers) in its own role, as a district runs
        # it; the connectivity job stays off: the simulated day's times would make every device silent
        with open(logs / "jobs.log", "ab") as log:
            jobs = subprocess.Popen(
                [sys.executable, "-m", "vigil_cli", "--log-level", "INFO", "cloud", "jobs"],
                cwd=ROOT,
                env={**env, "VIGIL_CLOUD_RUN_JOBS": "true", "VIGIL_CLOUD_JOBS_ONLY": "loop"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
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

        spies = start_profilers(procs, logs) if args.profile else {}
        watch = IncidentWatch(db_url)
        res = asyncio.run(
            run_gateways(
                mq.host,
                mq.port,
                args.gateways,
                per_gw,
                args.rounds,
                interval,
                on_half,
                body=args.body,
                lane=args.lane,
            )
        )
        if spies:
            print_profile(stop_profilers(spies))
        expected = expected_incidents(res["alerts"])
        incidents_wait_s = watch.wait(expected)
        for k, p in procs.items():
            peaks[f"worker{k}"] = peak_rss_mb(p.pid)
        peaks["jobs (loop timers, reconcile)"] = peak_rss_mb(jobs.pid)
        import resource

        peaks["gateway simulator (this process)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        # proof: nothing lost, nothing doubled
        import psycopg

        readings_sent = per_gw * args.gateways * args.rounds
        n_alerts = len(res["alerts"])
        with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
            batches: Any = conn.execute(
                "SELECT count(*), count(DISTINCT (gateway_id, batch_id)) FROM ingested_batches"
            ).fetchone()
            alerts: Any = conn.execute(
                "SELECT count(*) FROM alert_events WHERE event_type IN ('cover_open', 'overflow')"
            ).fetchone()
        if vm is None:
            with psycopg.connect(ts_url.replace("postgresql+psycopg", "postgresql")) as conn:
                stored: Any = conn.execute(
                    "SELECT count(*), count(DISTINCT (device_id, time_ms, seq)) FROM ts_manhole"
                ).fetchone()
        else:
            stored = victoria_counts(vm.url)
        dup_acks = sum(1 for a in res["acks"].values() if a.get("duplicate"))
        lag = np.asarray(res["lags"]) * 1000
        storm = np.asarray(res["storm_lags"]) * 1000

        def sent_of(dev: str) -> float:
            return float(res["storm_sent"][f"gw-{int(dev[8:12], 16):04d}"])

        seen = list(watch.seen.values())
        inc_created = np.asarray([created - sent_of(dev) for dev, created, _, _ in seen]) * 1000
        inc_visible = np.asarray([first - sent_of(dev) for dev, _, first, _ in seen]) * 1000

        def visible_of(event: str) -> np.ndarray:
            return np.asarray([first - sent_of(dev) for dev, _, first, ev in seen if ev == event]) * 1000

        def pct(a: np.ndarray, q: float) -> float | None:
            return round(float(np.percentile(a, q)), 1) if len(a) else None

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
            "body": args.body,
            "alert_batches_on": args.lane,
            "readings_sent": readings_sent,
            "seconds": round(res["wall"], 2),
            "readings_per_s": round(readings_sent / res["wall"]),
            "lag_ms_p50": round(float(np.percentile(lag, 50)), 1),
            "lag_ms_p99": round(float(np.percentile(lag, 99)), 1),
            "storm_alerts": n_alerts,
            "storm_alert_batch_ack_ms_p50": pct(storm, 50),
            "storm_alert_batch_ack_ms_p99": pct(storm, 99),
            "storm_incidents_expected": expected,
            "storm_incidents_created": len(seen),
            "storm_incidents_wait_after_last_ack_s": incidents_wait_s,
            "alert_to_incident_visible_ms_p50": pct(inc_visible, 50),
            "alert_to_incident_visible_ms_p99": pct(inc_visible, 99),
            "alert_to_incident_created_at_ms_p50": pct(inc_created, 50),
            "alert_to_incident_created_at_ms_p99": pct(inc_created, 99),
            # the loop takes life-safety events first (docs/loop.md): an open cover before a flood
            "visible_ms_p50_p99_by_event": {
                ev: [pct(visible_of(ev), 50), pct(visible_of(ev), 99)] for ev in ("cover_open", "overflow")
            },
            "peak_memory_mb": {k: round(v, 1) for k, v in peaks.items()},
            "batches_sent": args.gateways * (args.rounds + 1),
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
            and out["storm_incidents_created"] == out["storm_incidents_expected"]
            # VictoriaMetrics keeps a re-written sample (same series and time) twice until deduplicated on
            # merge; a query reads it once, so there "distinct" is what must match
            and stored[1] == readings_sent
            and (vm is not None or stored[0] == stored[1])
        )
        out["nothing_lost_or_doubled"] = bool(ok)
        print(json.dumps(out, indent=2))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {out_path}")
        return 0 if ok else 1
    finally:
        for p in [*procs.values(), *([jobs] if jobs is not None else [])]:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        servers.close()
        if os.environ.get("VIGIL_BENCH_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
