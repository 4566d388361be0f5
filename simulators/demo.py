"""``vigil demo``: the cloud, one gateway and a simulated community together, on embedded defaults.

Everything runs for real, in one process and one event loop, with nothing to install:

    simulated fleet ──SLIP frames──▶ pseudo-terminal ──▶ gateway daemon (decode, detect, outbox)
        ──HTTP UplinkBatch──▶ cloud (FastAPI + SQLite) ──▶ alerts API ──▶ this console

All three share one accelerated clock (default 60x: two simulated hours in two real minutes). At the
end the alerts the cloud holds are scored against the simulator's ground truth with the same scorer as
``vigil score``. Times are shown in Asia/Shanghai; everything is stored in UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import shutil
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

#: China Standard Time has had no daylight saving since 1991; a fixed offset needs no tz database.
SHANGHAI = timezone(timedelta(hours=8), "CST")
GATEWAY_ID = "gw-demo"
MARKER = ".vigil-demo"

DEMO_FLEET = """
version = 1
seed = 7
duration = "2h"
speedup = 60
step_s = 60

[area]
name = "黄庄社区 (demo)"
lat = 39.96
lon = 116.30

[devices]
manhole = 120
smoke_alarm = 150
wristband = 80

# Rates per device-day, raised far above real life so a two-hour demo shows every kind of event.
[scenarios.manhole]
cover_displaced = 0.4
cover_open = 0.15
rain = 2.0
gas_toxic = 0.1

[scenarios.smoke_alarm]
fire = 0.06
co = 0.06
cooking = 1.5
test = 0.3

[scenarios.wristband]
fall = 0.4
fall_recovered = 0.3
sos = 0.4
hr_high = 0.2
spo2_low = 0.2
geofence_exit = 0.3
band_removed = 0.3

[faults]
corrupt = 0.003
truncate = 0.002
duplicate = 0.02
reorder = 0.0
outages_per_gateway_day = 0.0

[outputs.files]
enabled = true
"""

_GATEWAY_TOML = """
[gateway]
id = "{gateway_id}"
credential = "{credential}"
data_dir = "{data_dir}"
devices_file = "{devices_file}"

[[sources.serial]]
name = "radio0"
port = "{port}"
framing = "slip"

[uplink]
mode = "http"
url = "{url}"
backoff_initial_s = 0.2
backoff_max_s = 2

[outbox]
synchronous = "normal"

[detection]
batch_window_ms = 50
snapshot_interval_s = 10

[metrics]
port = {metrics_port}
"""


def _fmt_time(t: float) -> str:
    return datetime.fromtimestamp(t, SHANGHAI).strftime("%m-%d %H:%M:%S")


@dataclass
class DemoReport:
    """What the demo saw; returned for tests and printed at the end."""

    frames_sent: int = 0
    gateway_frames: int = 0
    gateway_rejects: dict[str, int] = field(default_factory=dict)
    alerts: list[Any] = field(default_factory=list)  # alerts.contract.AlertEvent, every lifecycle step
    score: Any = None  # simulators.scorer.ScoreReport
    readings_stored: int = 0
    workdir: Path = Path()


def _prepare_workdir(workdir: Path) -> None:
    if workdir.exists():
        if not (workdir / MARKER).exists() and any(workdir.iterdir()):
            raise SystemExit(f"error: {workdir} exists and is not a Vigil demo directory; choose --dir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("created by vigil demo; deleted and re-created by every run\n")


def _one_gateway_csv(text: str) -> str:
    """The demo has one gateway cabinet, so every device is assigned to it."""
    rows = list(csv.DictReader(io.StringIO(text)))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0].keys()) if rows else ["device_id"])
    writer.writeheader()
    for row in rows:
        row["gateway_id"] = GATEWAY_ID
        writer.writerow(row)
    return out.getvalue()


def _free_port(preferred: int) -> int:
    import socket

    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free TCP port")


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Keep library chatter (migrations, HTTP access) off the console; warnings still show."""
    import logging

    root = logging.getLogger()
    old = root.level
    if root.level == logging.INFO:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(old)


async def run_demo(
    workdir: Path,
    *,
    duration_s: float = 7200.0,
    speedup: float = 60.0,
    port: int = 8080,
    seed: int | None = None,
    out: IO[str] = sys.stdout,
    report_every_s: float = 5.0,
) -> DemoReport:
    import httpx
    import uvicorn

    from alerts.contract import AlertEvent
    from cloud.app import create_app
    from cloud.auth import Credentials
    from cloud.crypto import SecretBox, load_or_create_key
    from cloud.db import Database, upgrade_head
    from cloud.registry import Registry
    from cloud.settings import CloudSettings
    from edge.config import parse_config as parse_gateway_config
    from edge.daemon import Gateway
    from firmware_bridge.kernel.clock import AcceleratedClock
    from simulators.config import parse_config as parse_fleet_config
    from simulators.fleet import Fleet
    from simulators.outputs import SerialSink
    from simulators.runner import run_simulation
    from simulators.scorer import score
    from simulators.truth import load_truth

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    workdir = workdir.resolve()
    _prepare_workdir(workdir)
    simdir, clouddir, gwdir = workdir / "sim", workdir / "cloud", workdir / "gateway"
    for d in (simdir, clouddir, gwdir):
        d.mkdir()
    start = time.time()
    cfg = parse_fleet_config(
        tomllib.loads(DEMO_FLEET),
        source="vigil demo",
        start=start,
        duration_s=duration_s,
        speedup=speedup,
        seed=seed,
    )
    fleet = Fleet.from_config(cfg)
    fleet.write_manifest(simdir)
    n_devices = fleet.device_count()

    # --- cloud: schema, one gateway credential, an operator token, the device registry --------------
    port = _free_port(port)
    settings = CloudSettings(
        database_url=f"sqlite:///{clouddir / 'vigil.db'}",
        timeseries_url=f"sqlite:///{clouddir / 'vigil-ts.db'}",
        secret_key_file=clouddir / "vigil-secret.key",
        host="127.0.0.1",
        port=port,
        json_logs=False,
        connectivity_check_s=5.0,
    )
    clock = AcceleratedClock.starting_now(start, speedup)
    upgrade_head(settings.database_url)
    db = Database(settings.database_url)
    try:
        creds = Credentials(db, rotation_grace_s=0)
        gw_token = creds.add_gateway(GATEWAY_ID, name="demo street cabinet", now=clock.now())
        op_token = creds.add_user("demo-dispatcher", "dispatcher", now=clock.now())
        registry = Registry(db, SecretBox(load_or_create_key(settings.secret_key_file)))
        csv_text = _one_gateway_csv((simdir / "devices.csv").read_text(encoding="utf-8"))
        (clouddir / "devices-import.csv").write_text(csv_text, encoding="utf-8")
        registry.import_csv(csv_text, now=clock.now())
    finally:
        db.close()

    app = create_app(settings, clock=clock)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the demo handles Ctrl-C itself
            yield

    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    url = f"http://127.0.0.1:{port}"

    # --- the radio: a pseudo-terminal pair; the simulator writes SLIP frames, the gateway reads -------
    class _DemoSerial(SerialSink):
        async def close(self) -> None:  # the runner closes sinks at the end; the pty outlives the gateway
            return

        async def really_close(self) -> None:
            await super().close()

    serial = _DemoSerial(simdir, None, "slip")
    await serial.open()
    metrics_port = _free_port(9108)
    gw_cfg = parse_gateway_config(
        _GATEWAY_TOML.format(
            gateway_id=GATEWAY_ID,
            credential=gw_token,
            data_dir=gwdir,
            devices_file=simdir / "devices.csv",
            port=serial.slave_path,
            url=url,
            metrics_port=metrics_port,
        )
    )
    gateway = Gateway(gw_cfg, clock=clock)

    say("Vigil demo: a simulated community, one gateway and the cloud, on embedded defaults")
    say(
        f"  community   {cfg.area.name}: {n_devices} devices "
        f"({cfg.devices.manhole} manhole covers, {cfg.devices.smoke_alarm} smoke alarms, "
        f"{cfg.devices.wristband} wristbands)"
    )
    say(
        f"  clock       {speedup:g}x: {duration_s / 60:.0f} simulated minutes in "
        f"{duration_s / speedup / 60:.1f} real minutes; times in Asia/Shanghai (CST)"
    )
    say(f"  radio       SLIP frames on pseudo-terminal {serial.slave_path}")
    say(
        f"  gateway     {GATEWAY_ID}: metrics http://127.0.0.1:{metrics_port}/metrics, "
        f"outbox {gwdir / 'outbox.db'}"
    )
    say(f"  cloud       {url}  (API docs {url}/docs, metrics {url}/metrics)")
    say(f"  operator    curl -H 'Authorization: Bearer {op_token}' {url}/api/v1/alerts")
    say(f"  files       {workdir}  (ground truth in sim/truth.jsonl)")
    say("  Ctrl-C stops early and still prints the score.")
    say()

    report = DemoReport(workdir=workdir)
    stop = asyncio.Event()
    sim_done = asyncio.Event()
    seen_steps: set[tuple[str, str, float]] = set()
    addresses: dict[str, str] = {}

    async def fetch_alerts(client: httpx.AsyncClient) -> list[AlertEvent]:
        r = await client.get("/api/v1/alerts", params={"view": "steps", "limit": 200_000})
        r.raise_for_status()
        return [AlertEvent.model_validate(a) for a in r.json()["alerts"]]

    async def address(client: httpx.AsyncClient, device_id: str) -> str:
        if device_id not in addresses:
            r = await client.get(f"/api/v1/devices/{device_id}")
            body = r.json() if r.status_code == 200 else {}
            addresses[device_id] = str(body.get("address") or body.get("name") or "")
        return addresses[device_id]

    async def print_new_alerts(client: httpx.AsyncClient) -> None:
        for a in sorted(await fetch_alerts(client), key=lambda a: a.time):
            key = (a.alert_id, a.phase.value, a.time)
            if key in seen_steps:
                continue
            seen_steps.add(key)
            where = await address(client, a.device_id) if a.kind != "gateway" else ""
            say(
                f"  [{_fmt_time(a.time)}] {a.phase.value:<7} {a.severity.name:<6} {a.event_type.value:<16} "
                f"{a.device_id}  {where}"
            )

    def status_line() -> str:
        snap = gateway.status_snapshot()
        report.gateway_frames = int(snap.get("frames_total", 0))
        rejects = int(snap.get("rejects_total", 0))
        return (
            f"[{_fmt_time(clock.now())}] frames sent {report.frames_sent:,}  gateway: received "
            f"{report.gateway_frames:,}, rejected {rejects}, outbox {snap.get('outbox_depth', 0)}  "
            f"cloud alert steps {len(seen_steps)}"
        )

    async def reporter(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), report_every_s)
            report.frames_sent = serial.stats.sent
            with contextlib.suppress(httpx.HTTPError):
                await print_new_alerts(client)
            say(status_line())

    async def simulate() -> None:
        try:
            await run_simulation(cfg, simdir, progress=None, extra_sinks=[serial], clock=clock)
        finally:
            report.frames_sent = serial.stats.sent
            sim_done.set()

    async def drain_then_stop() -> None:
        await sim_done.wait()
        # give the gateway a moment to batch, detect and upload what is still in flight
        deadline = time.monotonic() + 15
        await asyncio.sleep(1.0)
        while time.monotonic() < deadline and gateway.status_snapshot().get("outbox_depth", 0):
            await asyncio.sleep(0.5)
        stop.set()

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(2, stop.set)  # SIGINT
    async with (
        httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {op_token}"}, timeout=10
        ) as client,
        asyncio.TaskGroup() as tg,
    ):
        tg.create_task(server.serve(), name="cloud")
        while not server.started:
            await asyncio.sleep(0.05)
        gw_task = tg.create_task(gateway.run(stop), name="gateway")
        await asyncio.wait_for(gateway.started.wait(), 20)
        sim_task = tg.create_task(simulate(), name="simulator")
        tg.create_task(reporter(client), name="reporter")
        tg.create_task(drain_then_stop(), name="drain")
        await stop.wait()
        sim_task.cancel()
        await asyncio.wait([gw_task])
        with contextlib.suppress(httpx.HTTPError):
            await print_new_alerts(client)
            report.alerts = await fetch_alerts(client)
            r = await client.get("/metrics")
            for line in r.text.splitlines():
                if line.startswith("vigil_cloud_ingest_readings_total"):
                    report.readings_stored += int(float(line.rsplit(" ", 1)[1]))
        server.should_exit = True
    with contextlib.suppress(NotImplementedError):
        loop.remove_signal_handler(2)
    await serial.really_close()

    simulated = max(clock.now() - start, 1.0)
    truth = [t for t in load_truth(simdir / "truth.jsonl") if t.start <= start + simulated]
    report.score = score(truth, report.alerts, devices=n_devices, duration_s=min(simulated, duration_s))
    say()
    say(status_line())
    say(f"cloud stored {report.readings_stored:,} readings; {len(report.alerts)} alert steps")
    say()
    say("Detection scored against the simulator's ground truth (same scorer as `vigil score`):")
    say(report.score.format_table())
    say()
    say(f"Everything is in {workdir}. Re-score any time:")
    say(f"  vigil score --truth {simdir / 'truth.jsonl'} --outbox {gwdir / 'outbox.db'}")
    return report


def register_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the cloud, a gateway and a simulated community together on embedded defaults",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--dir", type=Path, default=Path("var/demo"), help="working directory (re-created)")
    p.add_argument("--duration", default="2h", help="simulated time to run, e.g. 30m, 2h (default 2h)")
    p.add_argument("--speedup", type=float, default=60.0, help="clock acceleration (default 60x)")
    p.add_argument("--port", type=int, default=8080, help="cloud HTTP port (a free one if taken)")
    p.add_argument("--seed", type=int, default=None, help="fleet seed (default: the demo's own)")
    p.set_defaults(handler=_handle)


def _handle(args: Any) -> int:
    from simulators.timeutil import parse_duration

    if args.speedup <= 0:
        print("error: --speedup must be > 0", file=sys.stderr)
        return 2
    try:
        duration_s = parse_duration(args.duration)
    except ValueError as exc:
        print(f"error: --duration: {exc}", file=sys.stderr)
        return 2
    with _quiet_logs():
        asyncio.run(
            run_demo(args.dir, duration_s=duration_s, speedup=args.speedup, port=args.port, seed=args.seed)
        )
    return 0


__all__ = ["DemoReport", "register_demo", "run_demo"]
