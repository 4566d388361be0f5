"""``vigil demo``: the cloud, one gateway and a simulated community together, on embedded defaults.

Everything runs for real, in one process and one event loop, with nothing to install:

    simulated fleet ──SLIP frames──▶ pseudo-terminal ──▶ gateway daemon (decode, detect, outbox)
        ──HTTP UplinkBatch──▶ cloud (FastAPI + SQLite) ──▶ alerts API ──▶ this console

All three share one accelerated clock (default 60x: two simulated hours in two real minutes). At the
end the alerts the cloud holds are scored against the simulator's ground truth with the same scorer as
``vigil score``; then the cloud (and the console, and the gateway) stay up until Ctrl-C so the printed
links and commands work. Times are shown in the display zone (Asia/Shanghai); everything is stored in UTC.
Text follows the locale (``VIGIL_LANG`` / ``LANG``: Chinese unless English is asked for).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import io
import logging
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from firmware_bridge.hints import vigil_command
from firmware_bridge.kernel import locale
from firmware_bridge.kernel.clock import AcceleratedClock

GATEWAY_ID = "gw-demo"
MARKER = ".vigil-demo"

DEMO_FLEET = """
version = 1
seed = 7
duration = "2h"
speedup = 60
step_s = 60

[area]
name = "黄庄社区 (演示 demo)"
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
cover_rocked = 0.5     # nuisance: a heavy truck leaves a cover askew for minutes

[scenarios.smoke_alarm]
fire = 0.06
co = 0.06
cooking = 1.5
test = 0.3
scorched_pot = 0.5     # nuisance: a pot boiled dry, thick smoke and some CO

[scenarios.wristband]
fall = 0.4
fall_recovered = 0.3
sos = 0.4
hr_high = 0.2
spo2_low = 0.2
geofence_exit = 0.3
band_removed = 0.3
band_off_table = 0.3   # nuisance: the band taken off and left on the table for half an hour
fw_1_7 = 0.3           # a third of the bands on firmware 1.7: the "I'm OK" key (a share, not a rate)
fall_ok = 0.3          # on those: falls the wearer cancels with OK within 30 s (never paged)

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
heartbeat_s = {heartbeat_s}

[outbox]
synchronous = "normal"

[detection]
batch_window_ms = 50
snapshot_interval_s = 10
profiles_file = "{profiles_file}"

[metrics]
port = {metrics_port}
"""


def demo_heartbeat_s(gateway_offline_s: float, speedup: float) -> float:
    """The demo gateway's heartbeat in real seconds: a third of the cloud's offline limit at the demo's
    speed-up. The gateway paces its heartbeat in real time (60 s by default), the cloud judges it on the
    demo's clock (300 s = 5 real seconds at 60x): every demo used to page device maintenance about a
    "gateway offline" a few seconds after the simulated devices stopped, with the gateway running."""
    return round(max(0.2, min(60.0, gateway_offline_s / max(speedup, 1.0) / 3.0)), 3)


class HeldClock(AcceleratedClock):
    """The demo's shared clock: it stands still at ``sim_epoch`` until :meth:`run` (the radio starts),
    then runs at ``speedup``, but never past a frame the gateway has been given and not yet judged.

    Why it stands still first: setting up the cloud, the people and the gateway takes seconds of real
    time (10 or more on a loaded machine), which at 120x is 20 simulated minutes. With the clock running
    from the first line, the devices were registered at the start and the cloud's connectivity check
    judged every wristband silent (2.2 x 5 min) before the simulator had sent a frame (80 false
    device-silent alarms in ``tests/cloud/test_demo.py``, 2026-11-27, load 6-8).

    Why it waits for the gateway (:meth:`gave` / :meth:`judged`): the gateway stamps a frame when it
    reads it and judges silence on its own tick; on a loaded machine a frame can sit 0.4 real seconds
    between the two (batch window, the outbox thread), which at 120x is 48 simulated seconds. A wristband
    whose previous summary the link lost has 60 s of margin left, so the tick called it silent with its
    next summary already read (2026-11-27: stamped 2195.1 s, judged at 2241.6 s, limit 2237.7 s). While
    a frame is in flight the clock stands still, and the real time it stood is not made up afterwards
    (simulated time stretches; nothing jumps): the demo's time is the devices', and a machine that cannot
    keep up slows the demo down instead of inventing silences. ``slack_s`` (20 simulated seconds: 0.17 real
    s at 120x, a third of the 60 s margin above) lets an unloaded machine run without standing still at
    every batch window (50 ms real is 6 simulated seconds at 120x). A frame not judged after
    ``max_hold_real_s`` (a count gone astray) no longer holds the clock.
    """

    # the base is a frozen dataclass: its fields are fixed; these are the subclass's (object.__setattr__)
    running_since: float | None
    held_real_s: float  # real seconds the clock stood still for frames in flight
    slack_s: float  # simulated seconds the clock may run past a frame in flight
    max_hold_real_s: float
    _given: int
    _in_flight: collections.deque[tuple[int, float, float]]  # (index, sim time given, monotonic time)
    _judged: Callable[[], int]
    _last: float
    _lock: threading.Lock

    def __init__(
        self, start: float, speedup: float, *, slack_s: float = 20.0, max_hold_real_s: float = 3.0
    ) -> None:
        super().__init__(sim_epoch=start, real_epoch=time.time(), speedup=speedup)
        object.__setattr__(self, "running_since", None)
        object.__setattr__(self, "held_real_s", 0.0)
        object.__setattr__(self, "slack_s", slack_s)
        object.__setattr__(self, "max_hold_real_s", max_hold_real_s)
        object.__setattr__(self, "_given", 0)
        object.__setattr__(self, "_in_flight", collections.deque())
        object.__setattr__(self, "_judged", lambda: 0)
        object.__setattr__(self, "_last", start)
        object.__setattr__(self, "_lock", threading.Lock())  # the gateway's outbox thread reads it too

    def run(self) -> None:
        if self.running_since is None:
            object.__setattr__(self, "running_since", time.time())

    def judged_by(self, count: Callable[[], int]) -> None:
        """``count()``: how many of the frames given so far the gateway has judged (accepted or rejected)."""
        object.__setattr__(self, "_judged", count)

    def gave(self) -> None:
        """A frame has been written to the gateway now."""
        with self._lock:
            n = self._given
            self._in_flight.append((n, self._last, time.monotonic()))
            object.__setattr__(self, "_given", n + 1)

    def now(self) -> float:
        since = self.running_since
        if since is None:
            return self.sim_epoch
        with self._lock:
            t = self.sim_epoch + (time.time() - since - self.held_real_s) * self.speedup
            q = self._in_flight
            if q:
                done = self._judged()
                real = time.monotonic()
                while q and (q[0][0] < done or real - q[0][2] > self.max_hold_real_s):
                    q.popleft()
                if q and t > (cap := q[0][1] + self.slack_s):
                    # stand still just past the oldest frame in flight; the real time is not made up
                    object.__setattr__(self, "held_real_s", self.held_real_s + (t - cap) / self.speedup)
                    t = cap
            if t < self._last:
                return self._last
            object.__setattr__(self, "_last", t)
            return t

    def to_json(self) -> str:  # clock.json for other readers: the epoch it really runs from
        epoch = (self.running_since or time.time()) + self.held_real_s
        return AcceleratedClock(self.sim_epoch, epoch, self.speedup).to_json()


def _fmt_time(t: float) -> str:
    return locale.show(t)[5:]  # MM-DD HH:MM:SS in the display zone


def _t(zh: str, en: str) -> str:
    """One human-facing line in the locale's language."""
    return en if locale.lang() == "en" else zh


def _pad(text: str, width: int) -> str:
    """Left-justify to ``width`` terminal columns (a CJK character takes two)."""
    import unicodedata

    cols = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(width - cols, 0)


_PHASE = {"raised": ("触发", "raised"), "updated": ("更新", "updated"), "cleared": ("解除", "cleared")}


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
    hints: list[str] = field(default_factory=list)  # the closing "what next" lines, commands included
    outbox: Path = Path()
    console_url: str | None = None
    seeded_roles: set[str] = field(default_factory=set)  # the roles the demo's roster and desks cover
    dispatch: list[str] = field(default_factory=list)  # the "paged" lines, one per incident
    progress: list[str] = field(default_factory=list)  # accepted, declined, on site, handled, closed, rated
    actors: Any = None  # simulators.demo_actors.Community: what the simulated people did, their failures
    loop: Any = None  # simulators.demo_loop.LoopSummary, read from the cloud's API at the end
    unscored_silent: int = 0  # device-silent steps raised after the simulation ended (not scored)
    # the score's false alarms by the simulated effects on their device (simulators.scoring_trace)
    false_alarm_effects: dict[str, int] = field(default_factory=dict)


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


def wearer_homes_toml(devices_text: str) -> str:
    """The gateway's detection profiles for the demo: each wristband's geofence centred on its wearer's
    registered home (the band's row of ``devices.csv``, the address the band was registered to), as an
    installer enters it when the band is handed to the wearer (``[devices."<id>"] home_lat / home_lon``,
    docs/gateway.md ``profiles_file``). Without it the detector learns the home from the band's fixes,
    which a two-hour demo has only outdoors, on the wearers' walks (docs/demo.md "Choices")."""
    lines = [
        "# vigil demo: the wearers' registered homes (sim/devices.csv), the centre of each band's geofence",
        "",
    ]
    for row in csv.DictReader(io.StringIO(devices_text)):
        if row.get("kind") != "wristband" or not row.get("lat") or not row.get("lon"):
            continue
        lines += [
            f'[devices."{row["device_id"]}"]',
            f"home_lat = {float(row['lat'])!r}",
            f"home_lon = {float(row['lon'])!r}",
            "",
        ]
    return "\n".join(lines)


def bind_free(preferred: int) -> socket.socket:
    """A socket bound to ``preferred`` on 127.0.0.1, or to a free port when that one is taken, kept bound
    until the cloud serves on it: a port merely found free can be taken by another process (another
    demo starting at the same moment) before uvicorn binds it, which stopped the demo with "address
    already in use"."""
    for port in (preferred, 0):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        return s
    raise OSError("no free TCP port")


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free TCP port")


class _Tally(logging.Handler):
    """Counts the gateway's reject warnings (the link faults the demo injects on purpose) instead of
    interleaving them with the story; the summary is printed at the end."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += 1


@contextlib.contextmanager
def _quiet_logs() -> Iterator[_Tally]:
    """Keep library chatter (migrations, HTTP access) off the console; reject warnings are tallied."""
    root = logging.getLogger()
    old = root.level
    sources = logging.getLogger("edge.sources")
    tally = _Tally()
    old_propagate = sources.propagate
    sources.addHandler(tally)
    sources.propagate = False
    if root.level <= logging.INFO:
        root.setLevel(logging.WARNING)
    try:
        yield tally
    finally:
        root.setLevel(old)
        sources.removeHandler(tally)
        sources.propagate = old_propagate


async def run_demo(
    workdir: Path,
    *,
    duration_s: float = 7200.0,
    speedup: float = 60.0,
    port: int = 8080,
    seed: int | None = None,
    out: IO[str] = sys.stdout,
    report_every_s: float = 5.0,
    linger: bool = False,
    quit_event: asyncio.Event | None = None,
) -> DemoReport:
    """Run the demo; with ``linger`` the cloud, console and gateway stay up after the score until Ctrl-C
    (or ``quit_event``), so the printed links and commands work."""
    import httpx
    import uvicorn

    from alerts.contract import AlertEvent
    from alerts.loop.routing import ROLES
    from cloud.app import create_app
    from cloud.auth import Credentials
    from cloud.crypto import SecretBox, load_or_create_key
    from cloud.db import Database, upgrade_head
    from cloud.registry import Registry
    from cloud.settings import CloudSettings
    from edge.config import parse_config as parse_gateway_config
    from edge.daemon import Gateway
    from firmware_bridge.kernel.events import EventType
    from simulators.config import parse_config as parse_fleet_config
    from simulators.demo_actors import Community, GroundTruth, desk_for, duty_plan, phones_for
    from simulators.demo_loop import DispatchStory, demo_people, seed_people, seeded_roles
    from simulators.fleet import Fleet
    from simulators.outputs import SerialSink
    from simulators.runner import run_simulation
    from simulators.scorer import score
    from simulators.scoring_trace import INJECTED_NUISANCES, count_by_effect, false_alarm_effects
    from simulators.truth import load_truth

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    vigil = vigil_command()
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
    # what really happens on site, for the simulated responders (the same seed: the same episodes as the
    # run's truth.jsonl, which is written only at the end)
    fleet.plan(cfg.start, cfg.duration_s)
    truth_now = GroundTruth(fleet.truth)

    # --- cloud: schema, one gateway credential, an operator, the people on call, the device registry ---
    cloud_socket = bind_free(port)
    port = int(cloud_socket.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    # the signed links in every notice point at this cloud, whatever port it got
    (clouddir / "notify.toml").write_text(f'public_base_url = "{url}"\n', encoding="utf-8")
    settings = CloudSettings(
        database_url=f"sqlite:///{clouddir / 'vigil.db'}",
        timeseries_url=f"sqlite:///{clouddir / 'vigil-ts.db'}",
        secret_key_file=clouddir / "vigil-secret.key",
        host="127.0.0.1",
        port=port,
        json_logs=False,
        connectivity_check_s=5.0,
        notify_config_file=clouddir / "notify.toml",
    )
    clock = HeldClock(start, speedup)  # stands at `start` until the simulator starts
    upgrade_head(settings.database_url)
    db = Database(settings.database_url)
    op_password = secrets.token_urlsafe(9)
    try:
        creds = Credentials(db, rotation_grace_s=0)
        gw_token = creds.add_gateway(GATEWAY_ID, name="demo street cabinet", now=clock.now())
        op_token = creds.add_user("demo-dispatcher", "dispatcher", password=op_password, now=clock.now())
        # the administrator who loads the roster through the API below (no password: no console login)
        admin_token = creds.add_user("demo-admin", "admin", now=clock.now())
        devices_text = (simdir / "devices.csv").read_text(encoding="utf-8")
        people = demo_people(
            (simdir / "responders.csv").read_text(encoding="utf-8"), devices_text, start=clock.now()
        )
        tokens: dict[str, str] = {}  # each person's own credential, for their simulated phone
        for person in people.people:  # no password: responders use their phone and its signed links
            tokens[person.username] = creds.add_user(person.username, person.console_role, now=clock.now())
        registry = Registry(db, SecretBox(load_or_create_key(settings.secret_key_file)))
        csv_text = _one_gateway_csv(devices_text)
        (clouddir / "devices-import.csv").write_text(csv_text, encoding="utf-8")
        registry.import_csv(csv_text, now=clock.now())
    finally:
        db.close()

    app = create_app(settings, clock=clock)
    has_console = any(str(getattr(r, "path", "")).startswith("/console") for r in app.routes)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the demo handles Ctrl-C itself
            yield

    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))

    # --- the radio: a pseudo-terminal pair; the simulator writes SLIP frames, the gateway reads -------
    class _DemoSerial(SerialSink):
        def offer(self, frame: Any) -> None:
            super().offer(frame)
            if frame.corrupt is None:  # a corrupt frame dies at the link's CRC, never reaching the pipeline
                clock.gave()

        async def close(self) -> None:  # the runner closes sinks at the end; the pty outlives the gateway
            return

        async def really_close(self) -> None:
            await super().close()

    serial = _DemoSerial(simdir, None, "slip")
    await serial.open()
    metrics_port = _free_port(9108)
    profiles_file = gwdir / "profiles.toml"
    profiles_file.write_text(wearer_homes_toml(devices_text), encoding="utf-8")
    gw_cfg = parse_gateway_config(
        _GATEWAY_TOML.format(
            gateway_id=GATEWAY_ID,
            credential=gw_token,
            data_dir=gwdir,
            devices_file=simdir / "devices.csv",
            port=serial.slave_path,
            url=url,
            metrics_port=metrics_port,
            profiles_file=profiles_file,
            heartbeat_s=demo_heartbeat_s(settings.gateway_offline_s, speedup),
        )
    )
    gateway = Gateway(gw_cfg, clock=clock)
    # every frame the radio gave the gateway ends accepted, rejected (duplicate, short, unknown) or dropped
    clock.judged_by(
        lambda: gateway.pipeline.frames_total + gateway.pipeline.rejects_total + gateway.sink.dropped
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    report = DemoReport(workdir=workdir, outbox=gw_cfg.outbox_path)
    report.console_url = f"{url}/console" if has_console else None

    say(
        _t(
            "Vigil 演示：一个模拟社区、一台网关和云端，使用内置默认配置",
            "Vigil demo: a simulated community, one gateway and the cloud, on embedded defaults",
        )
    )
    say(
        _t(
            f"  社区     {cfg.area.name}：{n_devices} 台设备（{cfg.devices.manhole} 个智能井盖、"
            f"{cfg.devices.smoke_alarm} 个烟雾报警器、{cfg.devices.wristband} 个智能手环）",
            f"  community   {cfg.area.name}: {n_devices} devices ({cfg.devices.manhole} manhole covers, "
            f"{cfg.devices.smoke_alarm} smoke alarms, {cfg.devices.wristband} wristbands)",
        )
    )
    zone = locale.display_zone().key
    say(
        _t(
            f"  时钟     {speedup:g} 倍速：模拟 {duration_s / 60:.0f} 分钟，实际约 "
            f"{duration_s / speedup / 60:.1f} 分钟；时间按 {zone} 显示",
            f"  clock       {speedup:g}x: {duration_s / 60:.0f} simulated minutes in "
            f"{duration_s / speedup / 60:.1f} real minutes; times in {zone}",
        )
    )
    say(
        _t(
            f"  无线链路  SLIP 帧经伪终端 {serial.slave_path}",
            f"  radio       SLIP frames on pseudo-terminal {serial.slave_path}",
        )
    )
    say(
        _t(
            f"  网关     {GATEWAY_ID}：指标 {metrics_url}，发件箱 {report.outbox}",
            f"  gateway     {GATEWAY_ID}: metrics {metrics_url}, outbox {report.outbox}",
        )
    )
    say(
        _t(
            f"  云端     {url}（API 文档 {url}/docs，指标 {url}/metrics）",
            f"  cloud       {url}  (API docs {url}/docs, metrics {url}/metrics)",
        )
    )
    if report.console_url:
        say(
            _t(
                f"  控制台   {report.console_url}（用户 demo-dispatcher，密码 {op_password}）",
                f"  console     {report.console_url}  (user demo-dispatcher, password {op_password})",
            )
        )
    report.seeded_roles = seeded_roles(people)
    teams = Counter(r for p in people.people for r in p.roles)
    say(
        _t(
            f"  值班     {len(people.people)} 人全天轮班，站内信通知（"
            + "、".join(f"{ROLES[r][0]} {n}" for r, n in teams.items())
            + "；119/120 由值班接警员转达）",
            f"  on call     {len(people.people)} people in round-the-clock shifts, paged in-app ("
            + ", ".join(f"{ROLES[r][1]} {n}" for r, n in teams.items())
            + "; the 119/120 desks relayed by the call takers)",
        )
    )
    phones = phones_for(people.people, tokens)
    say(
        _t(
            f"  人员     {len(phones)} 部模拟手机：读站内信，按各自习惯接单、拒绝或不应答，到场、办结并按真值"
            "填写核实结论；住户（或家属）凭案件链接评价、偶尔重开",
            f"  people      {len(phones)} simulated phones read their pages and accept, decline or ignore "
            "them, go on site and resolve with the ground truth's verdict; residents (or families) rate "
            "or reopen through their case link",
        )
    )
    say(
        _t(
            f"  文件     {workdir}（真值在 sim/truth.jsonl）",
            f"  files       {workdir}  (ground truth in sim/truth.jsonl)",
        )
    )
    say(_t("  按 Ctrl-C 可提前结束，仍会打印评分。", "  Ctrl-C stops early and still prints the score."))
    say()

    stop = asyncio.Event()  # the simulated run is over (drained, or Ctrl-C)
    interrupted = asyncio.Event()
    quit_event = quit_event or asyncio.Event()  # leave the lingering services
    gw_stop = asyncio.Event()
    sim_done = asyncio.Event()
    sim_end: list[float] = []  # when the simulated devices stopped sending
    seen_steps: set[tuple[str, str, float]] = set()
    addresses: dict[str, str] = {}
    last_phase: dict[str, str] = {}

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

    async def new_alert_lines(client: httpx.AsyncClient) -> list[tuple[float, str]]:
        out: list[tuple[float, str]] = []
        for a in sorted(await fetch_alerts(client), key=lambda a: a.time):
            key = (a.alert_id, a.phase.value, a.time)
            if key in seen_steps:
                continue
            seen_steps.add(key)
            if last_phase.get(a.alert_id) == a.phase.value and a.phase.value != "updated":
                continue  # a reminder of an open alert: counted, not told twice
            last_phase[a.alert_id] = a.phase.value
            where = await address(client, a.device_id) if a.kind != "gateway" else ""
            phase = _t(*_PHASE.get(a.phase.value, (a.phase.value,) * 2))
            out.append(
                (
                    a.time,
                    f"  [{_fmt_time(a.time)}] {_pad(phase, 7)} {_pad(locale.severity_label(a.severity), 6)} "
                    f"{_pad(locale.event_label(a.event_type), 16)} {a.device_id}  {where}",
                )
            )
        return out

    def status_line() -> str:
        snap = gateway.status_snapshot()
        report.gateway_frames = int(snap.get("frames_total", 0))
        rejects = int(snap.get("rejects_total", 0))
        return _t(
            f"[{_fmt_time(clock.now())}] 已发送 {report.frames_sent:,} 帧  网关：收到 "
            f"{report.gateway_frames:,}，拒收 {rejects}，待上传 {snap.get('outbox_depth', 0)}  "
            f"云端告警步骤 {len(seen_steps)}",
            f"[{_fmt_time(clock.now())}] frames sent {report.frames_sent:,}  gateway: received "
            f"{report.gateway_frames:,}, rejected {rejects}, outbox {snap.get('outbox_depth', 0)}  "
            f"cloud alert steps {len(seen_steps)}",
        )

    story = DispatchStory(None, t=_t, when=_fmt_time, parse_time=locale.parse_iso)

    async def tell(client: httpx.AsyncClient) -> None:
        """New alert steps and new pages, in time order (an incident is paged just after its alert)."""
        lines = await new_alert_lines(client) + await story.new_lines()
        for _, line in sorted(lines, key=lambda tl: tl[0]):
            say(line)
        report.dispatch = story.lines
        report.progress = story.progress

    async def tell_pages(*, final: bool = False) -> None:
        for _, line in sorted(await story.new_lines(final=final), key=lambda tl: tl[0]):
            say(line)
        report.dispatch = story.lines
        report.progress = story.progress

    async def reporter(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(report_every_s):
                    await stop.wait()
            if stop.is_set():
                return
            report.frames_sent = serial.stats.sent
            with contextlib.suppress(httpx.HTTPError):
                await tell(client)
            say(status_line())

    async def simulate() -> None:
        try:
            clock.run()  # simulated time starts with the radio (HeldClock)
            # the fleet planned above: the responders on site end its episodes (Fleet.handle)
            await run_simulation(cfg, simdir, progress=None, extra_sinks=[serial], clock=clock, fleet=fleet)
        finally:
            report.frames_sent = serial.stats.sent
            sim_end.append(clock.now())
            sim_done.set()

    def world(device_id: str, event_type: str, *, on_site: float, done: float) -> float | None:
        # once the simulation is over its truth.jsonl is written and the devices send nothing more: a
        # responder on site then changes nothing the score or the frames could show (test_demo failed
        # 1 run in 5 at load 10-12, 2026-11-27: 3 ended on site, 2 handled in the truth file)
        if sim_done.is_set():
            return None
        return fleet.handle(device_id, event_type, on_site=on_site, done=done)

    async def drain_then_stop() -> None:
        await sim_done.wait()
        # give the gateway a moment to batch, detect and upload what is still in flight
        deadline = time.monotonic() + 15
        await asyncio.sleep(1.0)
        while time.monotonic() < deadline and gateway.status_snapshot().get("outbox_depth", 0):
            await asyncio.sleep(0.5)
        stop.set()

    def on_ctrl_c() -> None:
        if stop.is_set():
            quit_event.set()
        else:
            interrupted.set()
            stop.set()

    loop = asyncio.get_running_loop()
    async with (
        contextlib.AsyncExitStack() as stack,
        httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {op_token}"}, timeout=10
        ) as client,
        asyncio.TaskGroup() as tg,
    ):
        tg.create_task(server.serve(sockets=[cloud_socket]), name="cloud")
        while not server.started:
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=10
        ) as admin:
            await seed_people(admin.put, people)
        story.bind(client.get)
        await story.load_names()
        # idle connections are dropped before uvicorn's 5-second keep-alive ends, so a phone never sends
        # on a connection the server is closing
        people_client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=url, timeout=10, limits=httpx.Limits(keepalive_expiry=2.0))
        )
        report.actors = Community(
            people_client,
            phones,
            truth_now,
            clock,
            seed=cfg.seed,
            on_duty=duty_plan(people.people, people.roster),
            world=world,
            desk=desk_for(people.people, tokens),
        )
        gw_task = tg.create_task(gateway.run(gw_stop), name="gateway")
        async with asyncio.timeout(20):
            await gateway.started.wait()
        with contextlib.suppress(NotImplementedError):  # after the gateway's own handler: ours wins
            # Ctrl-C, and SIGTERM alike (a service manager, `timeout`, a script's kill): a run stops and
            # scores; a lingering demo quits
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_ctrl_c)
        sim_task = tg.create_task(simulate(), name="simulator")
        # the people pick up their phones once the radio runs: nothing pages them before, and the start
        # (the simulator catching up with the clock) is when the gateway needs the event loop most
        tg.create_task(report.actors.run(stop), name="people")
        tg.create_task(reporter(client), name="reporter")
        tg.create_task(drain_then_stop(), name="drain")
        await stop.wait()
        sim_task.cancel()
        with contextlib.suppress(httpx.HTTPError):
            await tell(client)
            report.alerts = await fetch_alerts(client)
            r = await client.get("/metrics")
            for line in r.text.splitlines():
                if line.startswith("vigil_cloud_ingest_readings_total"):
                    report.readings_stored += int(float(line.rsplit(" ", 1)[1]))
        rejects = _rejects_by_reason(gateway)
        simulated = max(clock.now() - start, 1.0)
        truth = [t for t in load_truth(simdir / "truth.jsonl") if t.start <= start + simulated]
        # a device judged silent after the simulation ended went quiet because the simulation did (the
        # drain can outlast 2.2 heartbeats at high speed-ups): not a detection to score
        ended = sim_end[0] if sim_end else clock.now()
        scored = [
            a for a in report.alerts if not (a.event_type == EventType.DEVICE_SILENT and a.time > ended)
        ]
        report.unscored_silent = len(report.alerts) - len(scored)
        scored_s = min(simulated, duration_s)
        # events starting within their detection horizon of the end are censored, not misses
        report.score = score(truth, scored, devices=n_devices, duration_s=scored_s, end=start + scored_s)
        report.false_alarm_effects = dict(count_by_effect(false_alarm_effects(fleet, truth, scored)))
        with contextlib.suppress(httpx.HTTPError):
            # the run's last incidents: a moment for the notify worker to settle their first pages. Only
            # the incidents open now are told: the devices have stopped sending, so the gateway soon
            # judges them silent, and those incidents are not part of the story
            await story.freeze()
            settle_by = time.monotonic() + 5
            while await story.untold() and time.monotonic() < settle_by:
                await asyncio.sleep(0.5)
                await tell_pages()
            await tell_pages(final=True)
        say()
        say(status_line())
        say(
            _t(
                f"云端存储了 {report.readings_stored:,} 条读数、{len(report.alerts)} 个告警步骤",
                f"cloud stored {report.readings_stored:,} readings; {len(report.alerts)} alert steps",
            )
        )
        with contextlib.suppress(httpx.HTTPError):
            report.loop = await story.summary()
            for line in story.summary_lines(report.loop):
                say(line)
        if report.actors is not None and (report.actors.desk or report.actors.counts["ended_on_site"]):
            c, calls = report.actors.counts, report.actors.calls
            cloud = report.actors.cloud_calls  # the outcomes as the cloud recorded them
            recorded_zh = (
                f"，云端记录 {sum(cloud.values())} 次"
                f"（接通 {cloud['reached']}、未接通 {cloud['not_reached']}）"
                if cloud
                else "（云端未记录：无 family-call 接口）"
            )
            recorded_en = (
                f"; the cloud recorded {sum(cloud.values())} ({cloud['reached']} reached, "
                f"{cloud['not_reached']} not reached)"
                if cloud
                else " (not recorded in the cloud: no family-call endpoint)"
            )
            say(
                _t(
                    f"  现场：{c['ended_on_site']} 起由到场人员结束（井盖复位、火灭、老人扶起……），"
                    "设备随后的上报解除告警；值班接警员：致电家属 "
                    f"{calls['reached'] + calls['not_reached']} 次（接通 {calls['reached']}、"
                    f"未接通 {calls['not_reached']}）{recorded_zh}，确认火情 {c['confirm']} 起、"
                    f"排除 {c['not_confirmed']} 起，"
                    f"转达 119/120 等 {c['relayed']} 次",
                    f"  on site: {c['ended_on_site']} events ended by the responder (cover reseated, fire "
                    "out, wearer helped up ...), the device's next frames clearing the alert; call takers: "
                    f"{calls['reached'] + calls['not_reached']} calls to families ({calls['reached']} "
                    f"reached, {calls['not_reached']} not reached){recorded_en}, "
                    f"{c['confirm']} fires confirmed, "
                    f"{c['not_confirmed']} ruled out, {c['relayed']} pages relayed (119/120 ...)",
                )
            )
        if report.actors is not None and report.actors.failures:
            failed, n_failed = report.actors.failures, report.actors.counts["failed"]
            say(
                _t(
                    f"  模拟人员有 {n_failed} 个操作未成功（演示继续），例如：{failed[0]}",
                    f"  {n_failed} actions of the simulated people did not succeed (the demo carried on), "
                    f"e.g. {failed[0]}",
                )
            )
        if rejects:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(rejects.items(), key=lambda kv: -kv[1]))
            say(
                _t(
                    f"网关拒收 {sum(rejects.values())} 帧（{shown}）：这是演示有意注入的链路故障"
                    "（损坏、截断、重复的帧），网关按原因计数并继续工作",
                    f"the gateway rejected {sum(rejects.values())} frames ({shown}): link faults the demo "
                    "injects on purpose (corrupt, truncated, duplicate frames), counted by reason; the "
                    "gateway carries on",
                )
            )
        say()
        say(
            _t(
                "检测结果与模拟器真值对比（与 `vigil score` 相同的评分器）：",
                "Detection scored against the simulator's ground truth (same scorer as `vigil score`):",
            )
        )
        say(report.score.format_table())
        if report.false_alarm_effects:
            shown = ", ".join(
                f"{k} {v}" for k, v in sorted(report.false_alarm_effects.items(), key=lambda kv: -kv[1])
            )
            injected = ", ".join(sorted(INJECTED_NUISANCES))
            say(
                _t(
                    f"误报按模拟器中的起因（告警类型 <- 该设备当时的模拟效果）：{shown}"
                    f"（演示有意注入的干扰：{injected}）",
                    f"false alarms by what the simulator did (alert type <- the effects on that device): "
                    f"{shown} (nuisances the demo injects on purpose: {injected})",
                )
            )
        if report.unscored_silent:
            say(
                _t(
                    f"（模拟结束后判为失联的 {report.unscored_silent} 个告警步骤不计分："
                    "设备停发是因为模拟结束）",
                    f"({report.unscored_silent} device-silent alert steps raised after the simulation ended "
                    "are not scored: the devices stopped because the simulation did)",
                )
            )
        say()
        report.hints = _next_steps(
            vigil, report, url=url, op_token=op_token, metrics_url=metrics_url, simdir=simdir,
            lingering=linger and not interrupted.is_set(),
        )  # fmt: skip
        for line in report.hints:
            say(line)
        if linger and not interrupted.is_set():
            await quit_event.wait()
            say(_t("正在停止……", "stopping ..."))
        gw_stop.set()
        await asyncio.wait([gw_task])
        with contextlib.suppress(NotImplementedError):  # the gateway removed its handlers on exit
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal while stopping changes nothing
                loop.add_signal_handler(sig, lambda: None)
        server.should_exit = True
    with contextlib.suppress(NotImplementedError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    cloud_socket.close()
    await serial.really_close()
    return report


def _rejects_by_reason(gateway: Any) -> dict[str, int]:
    out: Counter[str] = Counter()
    for fam in gateway.metrics.registry.collect():
        if fam.name == "vigil_gateway_rejects":
            for sample in fam.samples:
                if sample.name.endswith("_total") and sample.value:
                    out[sample.labels["reason"]] += int(sample.value)
    return dict(out)


def _next_steps(
    vigil: str,
    report: DemoReport,
    *,
    url: str,
    op_token: str,
    metrics_url: str,
    simdir: Path,
    lingering: bool,
) -> list[str]:
    """What to try next; every command in it works as printed (tests/test_first_hour.py runs them)."""
    lines = [_t(f"全部文件都在 {report.workdir}。", f"Everything is in {report.workdir}.")]
    if lingering:
        lines.append(
            _t(
                "模拟已结束；云端、控制台和网关继续运行，直到按 Ctrl-C。模拟设备已停止上报，"
                "云端稍后会把它们判为失联（这正是连通性监测在工作）。现在可以试试：",
                "The simulated run is over; the cloud, the console and the gateway keep running until "
                "Ctrl-C. The simulated devices have stopped sending, so the cloud will soon judge them "
                "silent (connectivity monitoring at work). Try now:",
            )
        )
        if report.console_url:
            lines.append(
                _t(f"  控制台：         {report.console_url}", f"  the console:     {report.console_url}")
            )
        lines += [
            _t(f"  API 文档：        {url}/docs", f"  the API docs:    {url}/docs"),
            _t("  告警（JSON）：", "  alerts as JSON:")
            + f"  curl -H 'Authorization: Bearer {op_token}' {url}/api/v1/alerts",
            _t("  网关体检：     ", "  gateway health:") + f"  {vigil} gateway status --url {metrics_url}",
        ]
    lines += [
        _t("随时可以重新评分：", "Re-score any time:"),
        f"  {vigil} score --truth {simdir / 'truth.jsonl'} --outbox {report.outbox}",
        _t("解码一帧：", "Decode a frame:"),
        f"  {vigil} frame decode 01 01 04 d2 00 05 57 01 02 09 29 00 96 03 52 05 dc 00 19 00 08 08 2a 00 ba",
        _t(
            "下一步：按 docs/demo.md 的“下一步”分开运行云端、模拟器和网关（开发配方）。",
            "Next: run the cloud, a simulator and a gateway as separate processes: the development "
            'recipe in docs/demo.md ("Next steps").',
        ),
    ]
    return lines


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
    p.add_argument(
        "--exit",
        action="store_true",
        help="stop after the score instead of keeping the cloud and console up until Ctrl-C",
    )
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
    try:
        with _quiet_logs():
            asyncio.run(
                run_demo(
                    args.dir,
                    duration_s=duration_s,
                    speedup=args.speedup,
                    port=args.port,
                    seed=args.seed,
                    linger=not args.exit,
                )
            )
    except ModuleNotFoundError as exc:
        from cloud.cli import missing_extra_hint

        hint = missing_extra_hint(exc)
        if hint is None:
            raise
        print(hint, file=sys.stderr)
        return 1
    return 0


__all__ = ["DemoReport", "register_demo", "run_demo", "wearer_homes_toml"]
