"""Soak: 10,000 devices over a simulated week, compressed by an accelerated clock; flat memory, no queue
growth, nothing lost.

Run: ``.venv/bin/python bench/soak.py`` (the full week, about 15-16 min on 2 cores), ``--quick`` (1,000
devices, one simulated day, about a minute), or choose ``--devices N --days D [--minutes M | --speedup X]``.
Writes ``bench/results/soak.json`` (``--quick``: ``soak_quick.json``); exits 1 on any violation.

What runs, all real and all separate processes except the radio:

    simulated fleet (simulators.Fleet, the kinds' real cadences: covers and smoke alarms a heartbeat every
    12 h plus events, wristbands a summary every 5 min) --SLIP frames on one pseudo-terminal per gateway
    (a concentrator's UART)--> ``vigil gateway`` x N (sources -> decode -> detection -> SQLite outbox ->
    HTTP uplink) --> ``vigil cloud`` (embedded SQLite store and time series, the closed loop and the
    notifier running, jobs on)

Every process reads the same :class:`~firmware_bridge.kernel.clock.AcceleratedClock` file, so a week of
device time passes in ``days * 86400 / speedup`` real seconds. The pty is lossless and blocking, so every
frame the fleet emits reaches a gateway (a UDP feed would drop datagrams on a loaded box and blur "not
accepted" with "lost"). Settings that are clock seconds are scaled, and written into the result:
- intervals that would spin at this acceleration run every ~0.5 real s (connectivity check, loop tick,
  notify poll; the notifier takes 200 intents a round instead of 20);
- silence (gateway ``silent_after_heartbeats``, cloud ``silent_factor``) tolerates ``tolerance_s`` (20)
  real seconds of end-to-end delay on top of the device's cadence: at 720x, 20 s of a busy box are
  4 simulated hours, and a 5-minute wristband would otherwise be "silent" after one slow commit;
- the uplink's ``live_window_s`` is 30 real s, so batches are full (live telemetry younger than 300
  simulated s is 0.4 real s at 720x: every batch would be a trickle), reminders every 30 real s.
Default mix: 47.5 % covers, 47.5 % smoke alarms, 5 % wristbands (172,000 frames a simulated day, 1.2 M
a week; a wristband sends 288 a day, a cover 4, a smoke alarm 2.4). ``--mix 45,45,10`` doubles that.

Sampled every ``--samples-per-day``-th of a simulated day: VmRSS and RssAnon of every process (RssAnon is
the heap; VmRSS also counts the cloud's memory-mapped SQLite pages, bounded by its ``mmap_size``), the
gateways' outbox depth and decode queue (their ``/metrics``), the cloud's readings and alert steps stored
and quota refusals (its ``/metrics``), the loop's backlog (committed alerts the loop has not handled yet),
notifications pending (intents + deliveries), open incidents, and the size of every database file.

Verdict:
- **nothing lost**: every frame sent was accepted by a gateway, every accepted reading is stored once
  (keyed by device and sequence number, read from the time-series tables), every alert step in the
  gateways' alert journals is stored once in the cloud's ``alert_events`` (or was refused with a
  reason and quarantined by its gateway: counted apart, not lost);
- **flat memory**: a least-squares line through each gateway's and the cloud's RssAnon over the second
  half of the run grows less than ``--rss-bound-pct`` (2 %) of its mean per simulated day (or 1 MB/day);
- **no queue growth**: each queue's value at the end of every simulated day (every quarter day for runs
  shorter than 3 days) does not trend upward: the fitted slope times the number of periods stays below
  max(floor, half the mean) (floors: outbox 2,000 records, loop backlog 200 alerts, notify 200).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import csv
import io
import json
import os
import platform
import queue
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from firmware_bridge.framing import encode_frame  # noqa: E402
from firmware_bridge.kernel.clock import AcceleratedClock  # noqa: E402
from firmware_bridge.kernel.records import DeviceKind  # noqa: E402

DAY = 86400.0
GW_PREFIX = "soak-gw-"
QUEUE_FLOORS = {
    "outbox_depth": 2000.0,
    "gateway_queue": 2000.0,
    "loop_backlog": 200.0,
    "notify_pending": 200.0,
}
#: real seconds that clock-driven cloud intervals are scaled to at high acceleration
REAL_INTERVAL_S = 0.5


@dataclass
class SoakConfig:
    devices: int = 10_000
    days: float = 7.0
    gateways: int = 4
    speedup: float = 0.0  # 0 = from ``minutes``
    minutes: float = 14.0  # target real time of the simulated run (startup and drain come on top)
    mix: tuple[float, float, float] = (0.475, 0.475, 0.05)  # manhole, smoke alarm, wristband
    seed: int = 11
    samples_per_day: int = 8
    step_s: float = 120.0  # simulated seconds per fleet tick (frames are written once per tick)
    drain_timeout_s: float = 600.0
    rss_bound_pct: float = 2.0
    #: real seconds of end-to-end delay (a loaded box, a busy cloud) that must not look like a silent device
    tolerance_s: float = 20.0
    #: real seconds between starting the processes and the simulated clock's start (None: by gateways)
    start_lead_s: float | None = None
    workdir: Path | None = None

    def resolved_speedup(self) -> float:
        return self.speedup if self.speedup > 0 else self.days * DAY / (self.minutes * 60.0)

    def counts(self) -> dict[DeviceKind, int]:
        m = int(self.devices * self.mix[0] / sum(self.mix))
        s = int(self.devices * self.mix[1] / sum(self.mix))
        return {DeviceKind.MANHOLE: m, DeviceKind.SMOKE_ALARM: s, DeviceKind.WRISTBAND: self.devices - m - s}


# -- small helpers -------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_mem_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) in MB, or NaN when the process is gone."""
    rss = anon = float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("RssAnon:"):
                anon = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, anon


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name{labels}: value}; comments skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def metric_sum(m: dict[str, float], name: str) -> float:
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def file_mb(*paths: Path) -> float:
    total = 0
    for p in paths:
        for q in (p, Path(str(p) + "-wal")):
            with contextlib.suppress(OSError):
                total += q.stat().st_size
    return total / 1e6


def slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2 or len(set(xs)) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(xs), np.asarray(ys), 1)[0])


def soak_roster(t0: float) -> dict[str, object]:
    """Three responders per role, on call everywhere, all the time."""
    from alerts.loop.routing import ROLES

    responders = [
        {"id": f"{role}-{k}", "roles": [role], "zones": ["*"], "max_load": 10_000}
        for role in ROLES
        for k in range(3)
    ]
    rotations = [
        {
            "role": role,
            "zone": "*",
            "participants": [f"{role}-{k}" for k in range(3)],
            "start": t0 - 1,
            "shift_s": 0,
        }
        for role in ROLES
    ]
    return {"zone": "Asia/Shanghai", "responders": responders, "rotations": rotations, "overrides": []}


# -- the processes -------------------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    metrics_url: str

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def _spawn(name: str, argv: list[str], log: Path, env: dict[str, str], metrics_url: str) -> Proc:
    fh = log.open("wb")
    try:
        p = subprocess.Popen(
            [sys.executable, str(ROOT / "vigil_cli.py"), "--log-level", "WARNING", *argv],
            cwd=ROOT,
            stdout=fh,
            stderr=fh,
            env={**os.environ, **env},
        )
    finally:
        fh.close()
    return Proc(name, p, log, metrics_url)


def _wait_http(proc: Proc, url: str, ok: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(url, timeout=2)
            if ok(r):
                return
        time.sleep(0.1)
    raise RuntimeError(
        f"{proc.name} not ready after {timeout:.0f} s: {proc.log.read_text(errors='replace')[-2000:]}"
    )


# -- the radio: one pty per gateway, a writer thread each ----------------------------------------------------
class PtyWriter(threading.Thread):
    """Blocking writes into a pty master; ``pending`` bytes queued behind the gateway's reading."""

    def __init__(self, name: str) -> None:
        super().__init__(name=f"pty-{name}", daemon=True)
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.q: queue.Queue[bytes | None] = queue.Queue()
        self.pending = 0
        self._lock = threading.Lock()

    def put(self, data: bytes) -> None:
        with self._lock:
            self.pending += len(data)
        self.q.put(data)

    def run(self) -> None:
        while (data := self.q.get()) is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(self.master, view) :]
            with self._lock:
                self.pending -= len(data)

    def close(self) -> None:
        self.q.put(None)
        self.join(30)
        os.close(self.master)
        os.close(self.slave)


# -- the soak ------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    real_s: float
    sim_day: float
    frames_sent: int
    gateway_frames: int
    readings_stored: int
    alert_steps_stored: int
    outbox_depth: int
    gateway_queue: int
    feeder_pending_kb: float
    loop_backlog: int
    notify_pending: int
    open_incidents: int
    quota_refusals: int
    cloud_db_mb: float
    timeseries_mb: float
    outbox_mb: float
    load_1m: float
    rss_mb: dict[str, float] = field(default_factory=dict)
    anon_mb: dict[str, float] = field(default_factory=dict)


class Soak:
    def __init__(self, cfg: SoakConfig, out: Any = sys.stdout) -> None:
        self.cfg = cfg
        self.out = out
        self.speedup = cfg.resolved_speedup()
        self.samples: list[Sample] = []
        self.procs: list[Proc] = []
        self.writers: list[PtyWriter] = []
        self.sent = array.array("q")  # device index << 16 | seq, one per frame
        self.sent_by_kind: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.frames_sent = 0
        self.feed_done = threading.Event()
        self.stopping = threading.Event()  # Ctrl-C / SIGTERM: the feeder and the sampler stop
        self.feed_lag_max_s = 0.0

    def say(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)

    # -- setup ------------------------------------------------------------------------------------------
    def setup(self, work: Path) -> None:
        from simulators.fleet import Fleet

        cfg = self.cfg
        self.work = work
        self.fleet = Fleet.build(
            cfg.counts(), cfg.seed, step_s=cfg.step_s
        )  # no link faults: all should arrive
        rows = self.fleet.manifest_rows()
        nb_gws = self.fleet.gateway_ids
        self.dev_index: dict[str, int] = {}
        self.dev_gw: dict[str, int] = {}
        self.dev_ids: list[str] = []
        per_gw: list[list[dict[str, object]]] = [[] for _ in range(cfg.gateways)]
        for i, row in enumerate(rows):
            dev = str(row["device_id"])
            g = nb_gws.index(str(row["gateway_id"])) % cfg.gateways
            row["gateway_id"] = f"{GW_PREFIX}{g}"
            self.dev_index[dev] = i
            self.dev_gw[dev] = g
            self.dev_ids.append(dev)
            per_gw[g].append(row)
        cloud = work / "cloud"
        cloud.mkdir(parents=True)
        self.cloud_db = cloud / "vigil.db"
        self.ts_db = cloud / "vigil-ts.db"
        key_file = cloud / "vigil-secret.key"
        self.sim_start = time.time()
        tokens = self._provision(rows, key_file)
        # one clock for everyone, starting a little after the processes are up
        self.clock_file = work / "clock.json"
        self.clock = AcceleratedClock(self.sim_start, time.time() + 1e6, self.speedup)  # re-written below
        notify_cfg = cloud / "notify.toml"
        notify_cfg.write_text(  # a district's batch (the default 20 per round suits a community)
            f"poll_s = {REAL_INTERVAL_S * self.speedup:.1f}\nbatch_size = 200\n", encoding="utf-8"
        )
        slack = cfg.tolerance_s * self.speedup  # simulated seconds a real-time hiccup is worth
        from firmware_bridge.registry import KINDS

        hb = {k.value: KINDS[k].heartbeat_s for k in DeviceKind}
        silent_factor = round(2.5 + slack / min(hb.values()), 2)
        remind_s = round(max(3600.0, 30.0 * self.speedup), 1)
        self.profiles_file = work / "profiles.toml"
        self.profiles_file.write_text(
            "".join(
                f"[{k}]\nsilent_after_heartbeats = {2.2 + slack / h:.3f}\n"
                f"silent_remind_s = {remind_s if k == 'wristband' else max(remind_s, 86400.0)}\n"
                for k, h in hb.items()
            ),
            encoding="utf-8",
        )
        self.intervals = {
            "live_window_s": round(max(300.0, 30.0 * self.speedup), 1),
            "silent_factor": silent_factor,
            "reminder_interval_s": remind_s,
            "gateway_silent_after_heartbeats": {k: round(2.2 + slack / h, 2) for k, h in hb.items()},
            "connectivity_check_s": round(max(30.0, REAL_INTERVAL_S * self.speedup), 1),
            "loop_tick_s": round(max(1.0, REAL_INTERVAL_S / 2 * self.speedup), 1),
            "notify_poll_s": round(REAL_INTERVAL_S * self.speedup, 1),
            "gateway_offline_s": round(max(300.0, 10.0 * self.speedup), 1),
        }
        self.cloud_port = free_port()
        self.cloud_url = f"http://127.0.0.1:{self.cloud_port}"
        start_lead_s = cfg.start_lead_s if cfg.start_lead_s is not None else 12.0 + 3.0 * cfg.gateways
        self.clock = AcceleratedClock(self.sim_start, time.time() + start_lead_s, self.speedup)
        self.clock.save(self.clock_file)
        env = {
            "VIGIL_CLOUD_JSON_LOGS": "false",
            "VIGIL_CLOUD_CONNECTIVITY_CHECK_S": str(self.intervals["connectivity_check_s"]),
            "VIGIL_CLOUD_LOOP_TICK_S": str(self.intervals["loop_tick_s"]),
            "VIGIL_CLOUD_GATEWAY_OFFLINE_S": str(self.intervals["gateway_offline_s"]),
            "VIGIL_CLOUD_NOTIFY_CONFIG_FILE": str(notify_cfg),
            "VIGIL_CLOUD_SILENT_FACTOR": str(self.intervals["silent_factor"]),
            "VIGIL_CLOUD_REMINDER_INTERVAL_S": str(self.intervals["reminder_interval_s"]),
        }
        cloud_proc = _spawn(
            "cloud",
            [
                "cloud",
                "--port",
                str(self.cloud_port),
                "--clock",
                str(self.clock_file),
                "--database-url",
                f"sqlite:///{self.cloud_db}",
                "--timeseries-url",
                f"sqlite:///{self.ts_db}",
                "--secret-key-file",
                str(key_file),
            ],
            work / "cloud.log",
            env,
            f"{self.cloud_url}/metrics",
        )
        self.procs.append(cloud_proc)
        for g in range(cfg.gateways):
            gdir = work / f"gw{g}"
            gdir.mkdir()
            with (gdir / "devices.csv").open("w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()), lineterminator="\n")
                w.writeheader()
                w.writerows(per_gw[g])
            wr = PtyWriter(f"{GW_PREFIX}{g}")
            wr.start()
            self.writers.append(wr)
            mport = free_port()
            (gdir / "gateway.toml").write_text(
                f"""
[gateway]
id = "{GW_PREFIX}{g}"
credential = "{tokens[g]}"
data_dir = "{gdir / "data"}"
devices_file = "{gdir / "devices.csv"}"
[[sources.serial]]
name = "radio0"
port = "{wr.path}"
[uplink]
mode = "http"
url = "{self.cloud_url}"
backoff_initial_s = 0.2
backoff_max_s = 2
live_window_s = {self.intervals["live_window_s"]}
[detection]
tick_interval_s = 0.25
profiles_file = "{self.profiles_file}"
[metrics]
port = {mport}
[clock]
file = "{self.clock_file}"
""",
                encoding="utf-8",
            )
            self.procs.append(
                _spawn(
                    f"gw{g}",
                    ["gateway", "--config", str(gdir / "gateway.toml")],
                    work / f"gw{g}.log",
                    {},
                    f"http://127.0.0.1:{mport}/metrics",
                )
            )
        _wait_http(cloud_proc, f"{self.cloud_url}/healthz", lambda r: r.status_code == 200, 90)
        for p in self.procs[1:]:
            _wait_http(
                p, p.metrics_url, lambda r: 'vigil_gateway_source_up{source="radio0"} 1.0' in r.text, 90
            )
        ready_in = self.clock.real_epoch - time.time()
        self.say(f"  processes up; the simulated clock starts in {ready_in:.1f} s")
        if ready_in < 0:
            self.say(f"  (started {-ready_in:.1f} s late: the first ticks are written in a burst)")

    def _provision(self, rows: list[dict[str, object]], key_file: Path) -> list[str]:
        from cloud.auth import Credentials
        from cloud.crypto import BlindIndex, SecretBox, load_or_create_key
        from cloud.db import Database, upgrade_head
        from cloud.loop.config import save
        from cloud.notify.contacts import Contacts
        from cloud.registry import Registry

        url = f"sqlite:///{self.cloud_db}"
        upgrade_head(url)
        db = Database(url)
        try:
            creds = Credentials(db, rotation_grace_s=0)
            tokens = [
                creds.add_gateway(f"{GW_PREFIX}{g}", name=f"soak cabinet {g}", now=self.sim_start)
                for g in range(self.cfg.gateways)
            ]
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            box = SecretBox(load_or_create_key(key_file))
            Registry(db, box).import_csv(buf.getvalue(), now=self.sim_start)
            roster = soak_roster(self.sim_start)
            with db.write() as s:  # someone on call for every role, so the loop dispatches and pages
                save(s, "roster", roster, actor="soak", role="admin", now=self.sim_start)
            # each responder is a platform user reached in the console (in-app), on duty for its role
            contacts = Contacts(db, box, index=BlindIndex(load_or_create_key(key_file)))
            for r in cast(list[dict[str, Any]], roster["responders"]):
                creds.add_user(r["id"], "operator", now=self.sim_start)
                contacts.bind(
                    r["id"],
                    now=self.sim_start,
                    responder_id=r["id"],
                    channels=["inapp"],
                    duty_roles=r["roles"],
                )
        finally:
            db.close()
        return tokens

    # -- feeding --------------------------------------------------------------------------------------------
    def feed(self) -> None:
        """Fleet ticks, each written when the shared clock reaches its end."""
        duration = self.cfg.days * DAY
        idx, gw, sent = self.dev_index, self.dev_gw, self.sent
        n_gw = self.cfg.gateways
        try:
            for t_end, frames in self.fleet.run_ticks(self.sim_start, duration):
                if self.stopping.is_set():
                    return
                wait = (t_end - self.clock.now()) / self.speedup
                if wait > 0:
                    time.sleep(wait)
                else:
                    self.feed_lag_max_s = max(self.feed_lag_max_s, -wait)
                chunks: list[list[bytes]] = [[] for _ in range(n_gw)]
                for f in frames:
                    chunks[gw[f.device_id]].append(encode_frame(f.device_id, f.payload))
                    sent.append(idx[f.device_id] << 16 | f.seq)
                    self.sent_by_kind[f.kind.value] += 1
                for g, c in enumerate(chunks):
                    if c:
                        self.writers[g].put(b"".join(c))
                with self.lock:
                    self.frames_sent += len(frames)
        finally:
            self.feed_done.set()

    # -- sampling -------------------------------------------------------------------------------------------
    def _db_counts(self) -> tuple[int, int, int]:
        """(loop backlog, notifications pending, open incidents) read from the cloud's database."""
        try:
            c = sqlite3.connect(f"file:{self.cloud_db}?mode=ro", uri=True, timeout=10)
            try:
                backlog = c.execute(
                    "SELECT COUNT(*) FROM alerts a LEFT JOIN loop_alert_links l ON l.alert_id = a.alert_id "
                    "WHERE l.alert_id IS NULL OR l.phase != a.phase"
                ).fetchone()[0]
                pending = c.execute(
                    "SELECT COUNT(*) FROM notification_intents WHERE state = 'pending'"
                ).fetchone()[0]
                pending += c.execute(
                    "SELECT COUNT(*) FROM notify_deliveries WHERE status = 'pending'"
                ).fetchone()[0]
                incidents = c.execute("SELECT COUNT(*) FROM loop_incidents WHERE is_open").fetchone()[0]
            finally:
                c.close()
        except sqlite3.Error:
            return -1, -1, -1
        return int(backlog), int(pending), int(incidents)

    def sample(self, client: httpx.Client) -> Sample:
        cloud = {}
        with contextlib.suppress(httpx.HTTPError):
            cloud = parse_metrics(client.get(self.procs[0].metrics_url).text)
        gws = []
        for p in self.procs[1:]:
            with contextlib.suppress(httpx.HTTPError):
                gws.append(parse_metrics(client.get(p.metrics_url).text))
        backlog, pending, incidents = self._db_counts()
        rss, anon = {}, {}
        for p in self.procs:
            rss[p.name], anon[p.name] = proc_mem_mb(p.popen.pid)
        rss["harness"], anon["harness"] = proc_mem_mb(os.getpid())
        with self.lock:
            sent = self.frames_sent
        return Sample(
            real_s=round(time.time() - self.clock.real_epoch, 2),
            sim_day=round((self.clock.now() - self.sim_start) / DAY, 4),
            frames_sent=sent,
            gateway_frames=int(sum(metric_sum(m, "vigil_gateway_frames_total") for m in gws)),
            readings_stored=int(metric_sum(cloud, "vigil_cloud_ingest_readings_total")),
            alert_steps_stored=int(metric_sum(cloud, "vigil_cloud_alert_events_total")),
            outbox_depth=int(sum(metric_sum(m, "vigil_gateway_outbox_depth") for m in gws)),
            gateway_queue=int(sum(metric_sum(m, "vigil_gateway_queue_depth") for m in gws)),
            feeder_pending_kb=round(sum(w.pending for w in self.writers) / 1024, 1),
            loop_backlog=backlog,
            notify_pending=pending,
            open_incidents=incidents,
            quota_refusals=int(metric_sum(cloud, "vigil_cloud_quota_refusals_total")),
            cloud_db_mb=round(file_mb(self.cloud_db), 2),
            timeseries_mb=round(file_mb(self.ts_db), 2),
            outbox_mb=round(
                file_mb(
                    *(self.work / f"gw{g}" / "data" / "outbox.sqlite3" for g in range(self.cfg.gateways))
                ),
                2,
            ),
            load_1m=round(os.getloadavg()[0], 2),
            rss_mb={k: round(v, 1) for k, v in rss.items()},
            anon_mb={k: round(v, 1) for k, v in anon.items()},
        )

    def sampler(self) -> None:
        every = DAY / self.cfg.samples_per_day
        k = 0
        with httpx.Client(timeout=10) as client:
            while not self.stopping.is_set():
                due = self.sim_start + k * every
                if due > self.sim_start + self.cfg.days * DAY + 1:
                    return
                while self.clock.now() < due:
                    time.sleep(min(max((due - self.clock.now()) / self.speedup, 0.01), 0.5))
                s = self.sample(client)
                s.sim_day = round(k * every / DAY, 4)  # the boundary it stands for (taken within ms of it)
                self.samples.append(s)
                self.print_sample(s, header=k == 0)
                k += 1

    def print_sample(self, s: Sample, header: bool = False) -> None:
        names = [p.name for p in self.procs]
        if header:
            self.say(
                f"{'day':>6} {'real s':>7} {'sent':>9} {'stored':>9} {'alerts':>6} {'outbox':>6} "
                f"{'queue':>5} "
                f"{'loop':>4} {'notif':>5} {'incid':>5} {'db MB':>6} {'ts MB':>7} {'ob MB':>6} {'load':>5}  "
                + " ".join(f"{n + ' MB':>9}" for n in names)
                + "   (RSS / anon)"
            )
        self.say(
            f"{s.sim_day:6.3f} {s.real_s:7.1f} {s.frames_sent:9d} {s.readings_stored:9d} "
            f"{s.alert_steps_stored:6d} "
            f"{s.outbox_depth:6d} {s.gateway_queue:5d} {s.loop_backlog:4d} {s.notify_pending:5d} "
            f"{s.open_incidents:5d} {s.cloud_db_mb:6.1f} {s.timeseries_mb:7.1f} {s.outbox_mb:6.1f} "
            f"{s.load_1m:5.2f}  " + " ".join(f"{s.rss_mb[n]:4.0f}/{s.anon_mb[n]:<4.0f}" for n in names)
        )

    # -- drain and reconcile ---------------------------------------------------------------------------------
    def drain(self, client: httpx.Client) -> float:
        t0 = time.monotonic()
        deadline = t0 + self.cfg.drain_timeout_s
        quiet_since = None
        while time.monotonic() < deadline:
            s = self.sample(client)
            done = (
                s.readings_stored >= self.frames_sent
                and s.gateway_frames >= self.frames_sent
                and s.outbox_depth == 0
                and s.gateway_queue == 0
                and s.loop_backlog == 0
            )
            if done:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 6.0:  # the depth gauge is refreshed every 5 s
                    break
            else:
                quiet_since = None
            time.sleep(0.5)
        self.final = self.sample(client)
        return time.monotonic() - t0

    def reconcile(self) -> dict[str, Any]:
        from cloud.timeseries.base import table_name
        from edge.outbox import iter_alert_events, iter_telemetry

        # readings: every (device, seq) sent, stored once
        sent = np.frombuffer(self.sent, dtype=np.int64)
        uniq_sent = np.unique(sent)
        keys: list[int] = []
        ts = sqlite3.connect(f"file:{self.ts_db}?mode=ro", uri=True)
        try:
            for kind in DeviceKind:
                with contextlib.suppress(sqlite3.OperationalError):
                    for dev, seq in ts.execute(f'SELECT device_id, seq FROM "{table_name(kind)}"'):
                        i = self.dev_index.get(dev)
                        keys.append(-1 if i is None else (i << 16 | int(seq)))
        finally:
            ts.close()
        stored = np.asarray(keys, dtype=np.int64)
        uniq_stored, n_stored = np.unique(stored, return_counts=True)
        waiting: list[int] = []  # still in a gateway's outbox: not lost, not delivered either
        for g in range(self.cfg.gateways):
            for block in iter_telemetry(self.work / f"gw{g}" / "data" / "outbox.sqlite3"):
                waiting.extend(
                    self.dev_index.get(d, -1) << 16 | q
                    for d, q in zip(block.device_id, block.seq, strict=True)
                )
        missing = np.setdiff1d(uniq_sent, uniq_stored, assume_unique=True)
        in_outbox = int(np.isin(missing, np.asarray(waiting, dtype=np.int64)).sum())
        lost_r = int(missing.size) - in_outbox
        extra_r = int(np.setdiff1d(uniq_stored, uniq_sent, assume_unique=True).size)
        doubled_r = int((n_stored - 1).sum())
        # alert steps: the gateways' journals against the cloud's alert_events
        journal: Counter[tuple[str, str, float]] = Counter()
        refused: set[tuple[str, str, float]] = set()
        refused_by: Counter[str] = Counter()
        pending_a: set[tuple[str, str, float]] = set()
        for g in range(self.cfg.gateways):
            path = self.work / f"gw{g}" / "data" / "outbox.sqlite3"
            for a in iter_alert_events(path):
                journal[(a.alert_id, a.phase.value, round(a.time, 3))] += 1
            q = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                for (body,) in q.execute("SELECT body FROM records WHERE lane = 0"):  # alerts not yet acked
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        a = json.loads(body)
                        pending_a.add((a["alert_id"], a["phase"], round(float(a["time"]), 3)))
                # records the cloud refused with a reason: quarantined by the gateway, counted, not lost
                for record, reason, n, body in q.execute("SELECT record, reason, n, body FROM quarantine"):
                    refused_by[f"{record}:{reason}"] += int(n)
                    if record == "alert" and body:
                        with contextlib.suppress(ValueError, KeyError):
                            a = json.loads(body)
                            refused.add((a["alert_id"], a["phase"], round(float(a["time"]), 3)))
                dead = q.execute("SELECT COALESCE(SUM(n), 0) FROM dead_letter").fetchone()[0]
            finally:
                q.close()
            refused_by["dead_letter"] += int(dead)
        c = sqlite3.connect(f"file:{self.cloud_db}?mode=ro", uri=True)
        try:
            rows = c.execute(
                "SELECT alert_id, phase, time FROM alert_events WHERE source LIKE ?", (GW_PREFIX + "%",)
            ).fetchall()
            cloud_steps = c.execute("SELECT COUNT(*) FROM alert_events").fetchone()[0]
            by_event = Counter(
                r[0] for r in c.execute("SELECT event_type FROM alerts WHERE phase = 'raised'")
            )
        finally:
            c.close()
        stored_a = Counter((a, p, round(t, 3)) for a, p, t in rows)
        unstored = [k for k in journal if k not in stored_a]
        end = self.sim_start + self.cfg.days * DAY
        return {
            "frames_sent": int(sent.size),
            "frames_sent_distinct": int(uniq_sent.size),
            "frames_by_kind": dict(self.sent_by_kind),
            "readings_stored_rows": int(stored.size),
            "readings_lost": lost_r,
            "readings_still_in_outbox": in_outbox,
            "readings_doubled": doubled_r,
            "readings_unexpected": extra_r,
            "alert_steps_gateways": sum(journal.values()),
            "alert_steps_stored_from_gateways": sum(stored_a.values()),
            "alert_steps_cloud_total": int(cloud_steps),
            "alert_steps_refused_by_cloud": sum(1 for k in journal if k in refused and k not in stored_a),
            "refused_by_reason": dict(refused_by),
            "alert_steps_lost": sum(1 for k in unstored if k not in refused and k not in pending_a),
            # still in an outbox when the gateways stopped: kept durably, not lost; those stamped after the
            # simulated run ended are the devices falling silent when the fleet stopped sending
            "alert_steps_in_outbox_after_run": sum(1 for k in unstored if k in pending_a and k[2] >= end),
            "alert_steps_in_outbox_during_run": sum(1 for k in unstored if k in pending_a and k[2] < end),
            "alert_steps_doubled": sum(n - 1 for n in stored_a.values() if n > 1),
            "open_alerts_by_event": dict(by_event),
        }

    # -- verdict ---------------------------------------------------------------------------------------------
    def verdict(
        self, ledger: dict[str, Any], accepted: int, rejected: int
    ) -> tuple[dict[str, Any], list[str]]:
        cfg = self.cfg
        problems: list[str] = []
        if ledger["readings_lost"] or ledger["readings_doubled"] or ledger["readings_unexpected"]:
            problems.append(
                f"readings: {ledger['readings_lost']} lost, {ledger['readings_doubled']} doubled, "
                f"{ledger['readings_unexpected']} unexpected"
            )
        if ledger["readings_still_in_outbox"]:
            problems.append(
                f"{ledger['readings_still_in_outbox']} readings still in the outboxes after the drain"
            )
        if ledger["alert_steps_in_outbox_during_run"]:
            problems.append(
                f"{ledger['alert_steps_in_outbox_during_run']} alert steps of the run still in the outboxes"
            )
        if ledger["alert_steps_lost"] or ledger["alert_steps_doubled"]:
            problems.append(
                f"alert steps: {ledger['alert_steps_lost']} lost, {ledger['alert_steps_doubled']} doubled"
            )
        if accepted + rejected != ledger["frames_sent"] or rejected:
            problems.append(
                f"gateways accepted {accepted} and rejected {rejected} of {ledger['frames_sent']} frames"
            )
        # memory: second half of the run, RssAnon per process
        half = [s for s in self.samples if s.sim_day >= cfg.days / 2]
        memory: dict[str, Any] = {}
        for p in self.procs:
            xs = [s.sim_day for s in half]
            ys = [s.anon_mb[p.name] for s in half]
            rs = [s.rss_mb[p.name] for s in half]
            mean = float(np.mean(ys)) if ys else float("nan")
            sl = slope(xs, ys)
            bound = max(cfg.rss_bound_pct / 100 * mean, 1.0)
            first, last = self.samples[0], self.samples[-1]
            memory[p.name] = {
                "rss_start_mb": first.rss_mb[p.name],
                "rss_end_mb": last.rss_mb[p.name],
                "rss_max_mb": max(s.rss_mb[p.name] for s in self.samples),
                "anon_start_mb": first.anon_mb[p.name],
                "anon_end_mb": last.anon_mb[p.name],
                "anon_slope_mb_per_day_2nd_half": round(sl, 2),
                "rss_slope_mb_per_day_2nd_half": round(slope(xs, rs), 2),
                "anon_slope_pct_per_day": round(100 * sl / mean, 2) if mean else None,
                "bound_mb_per_day": round(bound, 2),
                "flat": sl < bound,
            }
            memory[p.name]["judged"] = judged = cfg.days >= 2 and len(half) >= 6
            if judged and not sl < bound:
                problems.append(f"{p.name}: RssAnon grows {sl:.2f} MB per simulated day (bound {bound:.2f})")
        # queues at the end of each period
        period = 1.0 if cfg.days >= 3 else 0.25
        ends = [
            s
            for s in self.samples
            if s.sim_day > 0 and abs(s.sim_day / period - round(s.sim_day / period)) < 1e-6
        ]
        queues: dict[str, Any] = {}
        for q, floor in QUEUE_FLOORS.items():
            vals = [float(getattr(s, q)) for s in ends]
            xs = [s.sim_day / period for s in ends]
            sl = slope(xs, vals)
            growth = sl * max(len(vals) - 1, 1)
            bound = max(floor, 0.5 * float(np.mean(vals)) if vals else 0.0)
            queues[q] = {
                "period_days": period,
                "period_end_values": [int(v) for v in vals],
                "max": int(max((getattr(s, q) for s in self.samples), default=0)),
                "after_drain": int(getattr(self.final, q)),
                "fitted_growth_over_run": round(growth, 1),
                "bound": bound,
                "growing": growth > bound,
            }
            if len(vals) >= 2 and growth > bound:
                problems.append(
                    f"{q} trends upward: {[int(v) for v in vals]} (fitted growth {growth:.0f} > {bound:.0f})"
                )
            if q != "notify_pending" and getattr(self.final, q) != 0:
                problems.append(f"{q} is {getattr(self.final, q)} after the drain")
        return {"memory": memory, "queues": queues}, problems

    # -- the whole run ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t_start = time.monotonic()
        counts = cfg.counts()
        self.say(
            f"soak: {cfg.devices} devices ({counts[DeviceKind.MANHOLE]} manhole covers, "
            f"{counts[DeviceKind.SMOKE_ALARM]} smoke alarms, {counts[DeviceKind.WRISTBAND]} wristbands), "
            f"{cfg.gateways} gateways, {cfg.days:g} simulated days at {self.speedup:.0f}x "
            f"({cfg.days * DAY / self.speedup / 60:.1f} real minutes); load average {os.getloadavg()[0]:.2f}"
        )
        with contextlib.ExitStack() as stack:
            work = (
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vigil-soak-")))
                if cfg.workdir is None
                else cfg.workdir
            )
            work.mkdir(parents=True, exist_ok=True)
            stack.callback(self._stop_all)
            self.setup(work)
            self.say(f"  cloud intervals at this speed (simulated s): {self.intervals}")
            feeder = threading.Thread(target=self.feed, name="feeder", daemon=True)
            sampler = threading.Thread(target=self.sampler, name="sampler", daemon=True)
            sampler.start()
            feeder.start()
            try:
                while feeder.is_alive():  # a timed join, so Ctrl-C reaches this thread
                    feeder.join(0.5)
            except BaseException:
                self.stopping.set()
                raise
            feed_wall = time.time() - self.clock.real_epoch
            sampler.join(timeout=max(5.0, 3 * DAY / cfg.samples_per_day / self.speedup))
            self.say(f"  fed {self.frames_sent} frames in {feed_wall:.1f} s real; draining ...")
            with httpx.Client(timeout=10) as client:
                drain_s = self.drain(client)
                gw_metrics = [parse_metrics(client.get(p.metrics_url).text) for p in self.procs[1:]]
            accepted = int(sum(metric_sum(m, "vigil_gateway_frames_total") for m in gw_metrics))
            rejected = int(sum(metric_sum(m, "vigil_gateway_rejects_total") for m in gw_metrics))
            codes = self._stop_all()
            ledger = self.reconcile()
        ledger["gateway_accepted"] = accepted
        ledger["gateway_rejected"] = rejected
        checks, problems = self.verdict(ledger, accepted, rejected)
        for name, code in codes.items():
            # uvicorn re-raises the SIGTERM it handled after a graceful shutdown: -15 is a clean exit
            if code not in (0, None) and not (name == "cloud" and code == -signal.SIGTERM):
                problems.append(f"{name} exited with {code}")
        sim_days = cfg.days
        per_dev_day = {
            k.value: round(ledger["frames_by_kind"].get(k.value, 0) / max(n, 1) / sim_days, 1)
            for k, n in counts.items()
        }
        result = {
            "benchmark": "soak",
            "ok": not problems,
            "problems": problems,
            "devices": cfg.devices,
            "device_mix": {k.value: n for k, n in counts.items()},
            "frames_per_device_per_sim_day": per_dev_day,
            "gateways": cfg.gateways,
            "simulated_days": sim_days,
            "speedup": round(self.speedup, 1),
            "cloud_intervals_sim_s": self.intervals,
            "feed_real_s": round(feed_wall, 1),
            "feed_lag_max_real_s": round(self.feed_lag_max_s, 2),
            "drain_real_s": round(drain_s, 1),
            "wall_s": round(time.monotonic() - t_start, 1),
            "frames_per_real_s": round(ledger["frames_sent"] / max(feed_wall, 1e-9)),
            # what the cloud stored per real second between samples: its ingest capacity on this box now
            "cloud_stored_per_real_s": [
                round((b.readings_stored - a.readings_stored) / max(b.real_s - a.real_s, 1e-9))
                for a, b in zip(self.samples, self.samples[1:], strict=False)
            ],
            "ledger": ledger,
            **checks,
            "final": asdict(self.final),
            "exit_codes": codes,
            "samples": [asdict(s) for s in self.samples],
            "load_average_start_end": [self.samples[0].load_1m if self.samples else None, os.getloadavg()[0]],
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
        return result

    def _stop_all(self) -> dict[str, int | None]:
        self.stopping.set()
        codes: dict[str, int | None] = {}
        for p in reversed(self.procs):  # gateways first (they flush), then the cloud
            codes[p.name] = p.stop()
        for w in self.writers:
            with contextlib.suppress(OSError):
                w.close()
        self.writers = []
        return codes


def report(result: dict[str, Any], out: Any = sys.stdout) -> None:
    def say(line: str = "") -> None:
        print(line, file=out)

    L = result["ledger"]
    say()
    say(
        f"frames sent {L['frames_sent']:,} ({result['frames_per_real_s']:,}/s real; "
        "per device per simulated day: "
        f"{result['frames_per_device_per_sim_day']}), gateways accepted {L['gateway_accepted']:,}, "
        f"rejected {L['gateway_rejected']}"
    )
    say(
        f"readings stored {L['readings_stored_rows']:,}: lost {L['readings_lost']}, "
        f"doubled {L['readings_doubled']}, "
        f"still in outboxes {L['readings_still_in_outbox']}; "
        f"alert steps: gateways {L['alert_steps_gateways']}, stored {L['alert_steps_stored_from_gateways']} "
        f"(lost {L['alert_steps_lost']}, doubled {L['alert_steps_doubled']}); "
        f"cloud total {L['alert_steps_cloud_total']}"
    )
    say(
        f"alert steps in an outbox at the stop: {L['alert_steps_in_outbox_after_run']} stamped after the run "
        f"(devices falling silent once the fleet stopped), "
        f"{L['alert_steps_in_outbox_during_run']} from the run"
    )
    if L["refused_by_reason"]:
        say(
            "refused by the cloud with a reason (quarantined by the gateways, not lost): "
            f"{L['refused_by_reason']}"
        )
    say(
        f"{'process':10}{'RSS start':>10}{'RSS end':>9}{'RSS max':>9}{'anon start':>11}{'anon end':>9}"
        f"{'anon MB/day':>12}{'%/day':>7}  flat"
    )
    for name, m in result["memory"].items():
        say(
            f"{name:10}{m['rss_start_mb']:>10.0f}{m['rss_end_mb']:>9.0f}{m['rss_max_mb']:>9.0f}{m['anon_start_mb']:>11.0f}"
            f"{m['anon_end_mb']:>9.0f}{m['anon_slope_mb_per_day_2nd_half']:>12.2f}"
            f"{m['anon_slope_pct_per_day'] or 0:>7.2f}  {m['flat'] if m['judged'] else 'not judged'}"
        )
    for q, v in result["queues"].items():
        say(
            f"{q:15} period ends {v['period_end_values']} max {v['max']} after drain {v['after_drain']} "
            f"growing {v['growing']}"
        )
    say(
        f"wall {result['wall_s']:.0f} s (feed {result['feed_real_s']:.0f} s, "
        f"drain {result['drain_real_s']:.0f} s); "
        f"load average start/end {result['load_average_start_end']}"
    )
    say("VERDICT: " + ("PASS" if result["ok"] else "FAIL: " + "; ".join(result["problems"])))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--days", type=float, default=7.0, help="simulated days (default 7)")
    p.add_argument("--gateways", type=int, default=4)
    p.add_argument("--minutes", type=float, default=14.0, help="real minutes for the simulated run")
    p.add_argument("--speedup", type=float, default=0.0, help="clock acceleration (overrides --minutes)")
    p.add_argument(
        "--mix", default="47.5,47.5,5", help="manhole,smoke_alarm,wristband shares (default 47.5,47.5,5)"
    )
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--samples-per-day", type=int, default=8)
    p.add_argument("--drain-timeout", type=float, default=600.0, help="real seconds to wait for the backlog")
    p.add_argument("--quick", action="store_true", help="1,000 devices, 1 simulated day, about a minute")
    p.add_argument("--keep", type=Path, help="keep the working directory here (logs, databases)")
    p.add_argument("--out", type=Path, help="result file (default bench/results/soak.json)")
    args = p.parse_args(argv)
    mix = tuple(float(x) for x in args.mix.split(","))
    if len(mix) != 3 or not all(x >= 0 for x in mix) or not sum(mix) > 0:
        p.error("--mix takes three non-negative shares")
    cfg = SoakConfig(
        devices=args.devices,
        days=args.days,
        gateways=args.gateways,
        minutes=args.minutes,
        speedup=args.speedup,
        mix=(mix[0], mix[1], mix[2]),
        seed=args.seed,
        samples_per_day=args.samples_per_day,
        drain_timeout_s=args.drain_timeout,
        workdir=args.keep,
    )
    if args.quick:
        cfg.devices, cfg.days, cfg.minutes, cfg.gateways = 1000, 1.0, 1.0, 2
        cfg.drain_timeout_s = 60.0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the processes too
    result = Soak(cfg).run()
    report(result)
    out = args.out or ROOT / "bench" / "results" / ("soak_quick.json" if args.quick else "soak.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
