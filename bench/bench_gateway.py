"""The gateway daemon end to end: pseudo-terminal -> SLIP -> batched decode -> detection -> SQLite outbox.

Run: ``.venv/bin/python bench/bench_gateway.py`` (about 2 min). Writes ``bench/results/bench_gateway.json``.

What it measures, on a 10,000-device simulated fleet (``simulators.fleet.Fleet``, no link faults):

1. **throughput**: the real daemon (``vigil gateway --config``, a subprocess) reads frames written to a pty
   as fast as the pty takes them; frames/s until every frame is committed to the outbox
   (``synchronous=FULL``); the daemon's CPU % (utime+stime / wall; 100 % = one core) and peak RSS (VmHWM).
2. **latency at nominal load**: background frames at ``--rate`` frames/s plus a smoke-alarm FIRE frame from a
   fresh device every 0.25 s; latency = the outbox row's commit time minus the moment the frame was
   written into the pty (same clock, same machine): pty + batch window + decode + detect + fsync.
3. **baseline, same run, same frames**: the per-message design we avoid (thingsboard-gateway style): for
   each frame, decode it alone and commit it alone (SQLite WAL, ``synchronous=FULL``), in-process. Its
   frames/s is measured on ``--baseline-frames`` frames.
4. **uplink batching** (``--uplink-seconds``, 0 skips it): the daemon uploads over HTTP to a real
   ``vigil cloud`` (a subprocess, SQLite, every device registered) at ``--rate`` frames/s, once per
   ``uplink.linger_s`` in ``--lingers`` (``0`` = the baseline: send whatever is there), each with a fresh
   outbox and other frames. Per run: the cloud's batches (``ingested_batches``: readings per batch),
   cloud transactions per 1000 readings, the cloud's and the daemon's CPU seconds per 1000 readings, and
   the latency from the pty to the cloud's commit of a probe reading (a fresh device every 0.1 s; the
   bench polls the cloud's database every 5 ms) and of a FIRE alert (a fresh smoke alarm every 1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware_bridge import manhole, smoke_alarm  # noqa: E402
from firmware_bridge.framing import FrameDecoder, encode_frame  # noqa: E402
from firmware_bridge.kernel.events import EventType  # noqa: E402
from firmware_bridge.kernel.records import DeviceKind, Reading  # noqa: E402
from firmware_bridge.registry import kind_of_payload, spec  # noqa: E402
from simulators.faults import LinkFaultRates  # noqa: E402
from simulators.fleet import Fleet  # noqa: E402
from tests.servers import free_port  # noqa: E402

T0 = 1_700_000_000.0
LOADAVG: list[str] = []  # /proc/loadavg when the run started (other work on the machine distorts wall clock)


def fleet_frames(devices: int, n: int, seed: int = 7) -> list[bytes]:
    counts = {
        DeviceKind.MANHOLE: devices * 4 // 10,
        DeviceKind.SMOKE_ALARM: devices * 4 // 10,
        DeviceKind.WRISTBAND: devices - 2 * (devices * 4 // 10),
    }
    fleet = Fleet.build(counts, seed, faults=LinkFaultRates())
    out: list[bytes] = []
    for f in fleet.run(T0, 30 * 86400.0):  # one continuous run (a second run would repeat the same frames)
        out.append(encode_frame(f.device_id, f.payload))
        if len(out) >= n:
            break
    return out


def fire_frame(i: int) -> tuple[str, bytes]:
    dev = f"{0xF1E0000000000000 + i:016x}"
    r = Reading(
        DeviceKind.SMOKE_ALARM, dev, 1, 0.0, 90.0, smoke_alarm.CODEC.flags[0].mask, (2.5, 60.0, 0.0, 40.0)
    )
    return dev, encode_frame(dev, smoke_alarm.encode(r))


def probe_frame(i: int) -> tuple[str, bytes]:
    """A manhole reading from a device never heard before (its arrival in the cloud is unambiguous)."""
    dev = f"{0x0B5E000000000000 + i:016x}"
    values = (2.0, 2.0, 0.01, 150.0, 0.0, 0.0, 20.9, 15.0)
    r = Reading(DeviceKind.MANHOLE, dev, 1, 0.0, 80.0, 0, values)
    return dev, encode_frame(dev, manhole.encode(r))


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metric(url: str, name: str) -> float:
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run_daemon_phases(
    frames: list[bytes],
    rate: float,
    latency_s: float,
    tmp: Path,
    *,
    window_ms: float | None = None,
    urgent_flush: bool | None = None,
    throughput: bool = True,
) -> dict[str, object]:
    """Phases 1 and 2 on one daemon; ``window_ms`` / ``urgent_flush`` set ``[detection]`` (else defaults),
    ``throughput=False`` runs the latency phase only (the merge-window rows)."""
    detection = ""
    if window_ms is not None:
        detection += f"batch_window_ms = {window_ms}\n"
    if urgent_flush is not None:
        detection += f"urgent_flush = {str(urgent_flush).lower()}\n"
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    port = free_port()
    cfg = tmp / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "gw-bench"
data_dir = "{tmp / "data"}"
[[sources.serial]]
name = "radio0"
port = "{os.ttyname(slave)}"
[uplink]
mode = "none"
[outbox]
synchronous = "full"
[detection]
{detection}[metrics]
port = {port}
""")
    url = f"http://127.0.0.1:{port}/metrics"
    log = (tmp / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "vigil_cli.py"),
            "--log-level",
            "WARNING",
            "gateway",
            "--config",
            str(cfg),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while metric(url, 'vigil_gateway_source_up{source="radio0"}') < 1:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((tmp / "daemon.log").read_text()[-2000:])
            time.sleep(0.05)
        # -- 1. throughput --------------------------------------------------------------------------------
        n = len(frames) if throughput else 0
        cpu0, t0 = proc_cpu_s(proc.pid), time.perf_counter()
        writer = threading.Thread(target=write_all, args=(master, b"".join(frames[:n])))
        writer.start()
        done = rejected = 0.0
        while done + rejected < n and time.perf_counter() - t0 < 120:
            time.sleep(0.02)
            done = metric(url, "vigil_gateway_frames_total{")
            rejected = metric(url, "vigil_gateway_rejects_total{")
        wall = max(time.perf_counter() - t0, 1e-9)
        cpu = proc_cpu_s(proc.pid) - cpu0
        writer.join()
        # -- 2. latency at nominal load ---------------------------------------------------------------
        written: dict[str, float] = {}
        bg = iter(frames * 2)
        cpu_l0 = proc_cpu_s(proc.pid)
        t_start = time.perf_counter()
        next_fire = t_start
        i = 0
        sent_bg = 0
        while time.perf_counter() - t_start < latency_s:
            now = time.perf_counter()
            due = int((now - t_start) * rate) - sent_bg
            if due > 0:
                write_all(master, b"".join(next(bg) for _ in range(due)))
                sent_bg += due
            if now >= next_fire:
                dev, fr = fire_frame(i)
                written[dev] = time.time()
                write_all(master, fr)
                i += 1
                next_fire += 0.25
            time.sleep(0.002)
        cpu_latency = (proc_cpu_s(proc.pid) - cpu_l0) / (time.perf_counter() - t_start)
        batches = metric(url, "vigil_gateway_detect_batch_seconds_count")
        time.sleep(0.5)
        rss = proc_peak_rss_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        os.close(master)
        os.close(slave)
    db = sqlite3.connect(tmp / "data" / "outbox.sqlite3")
    lat = []
    for created, body in db.execute("SELECT created, body FROM records WHERE lane=0"):
        a = json.loads(body)
        if a["device_id"] in written and a["event_type"] == EventType.FIRE.value and a["phase"] == "raised":
            lat.append((created - written[a["device_id"]]) * 1000)
    db.close()
    lat_arr = np.array(lat) if lat else np.array([np.nan])
    return {
        "frames": n,
        "committed": int(done),
        "rejected": int(rejected),
        "seconds": round(wall, 3),
        "frames_per_s": round(done / wall),
        "cpu_pct": round(100 * cpu / wall, 1),
        "peak_rss_mb": round(rss, 1),
        "latency_rate_fps": rate,
        "latency_alerts": len(lat),
        "fire_frames": len(written),
        "latency_p50_ms": round(float(np.percentile(lat_arr, 50)), 1),
        "latency_p99_ms": round(float(np.percentile(lat_arr, 99)), 1),
        "batch_window_ms": window_ms,
        "urgent_flush": urgent_flush,
        "cpu_pct_at_nominal_load": round(100 * cpu_latency, 1),
        "batches_total": int(batches),
    }


def baseline_per_frame(frames: list[bytes], tmp: Path) -> dict[str, object]:
    """Per-message decode and per-message commit, same frames, same durability."""
    db = sqlite3.connect(tmp / "baseline.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (device_id TEXT, body TEXT)")
    dec = FrameDecoder()
    t0 = time.perf_counter()
    n = 0
    for raw in frames:
        for f in dec.feed(raw):
            r = spec(kind_of_payload(f.payload)).codec.decode(
                f.payload, device_id=f.device_id, time=time.time()
            )
            db.execute("BEGIN")
            db.execute("INSERT INTO t VALUES (?, ?)", (r.device_id, json.dumps(r.as_dict())))
            db.execute("COMMIT")
            n += 1
    wall = time.perf_counter() - t0
    db.close()
    return {"frames": n, "seconds": round(wall, 3), "frames_per_s": round(n / wall)}


def fleet_devices(frames: list[bytes]) -> dict[str, str]:
    """device id -> kind name of every device in ``frames`` (to register them in the cloud)."""
    dec = FrameDecoder()
    out: dict[str, str] = {}
    for raw in frames:
        for f in dec.feed(raw):
            out.setdefault(f.device_id, kind_of_payload(f.payload).value)
    return out


class BenchCloud:
    """A real ``vigil cloud`` (subprocess) on SQLite, with gateway ``gw-bench`` and its devices registered."""

    def __init__(self, tmp: Path, devices: dict[str, str]) -> None:
        from cloud.api.state import CloudState
        from cloud.settings import CloudSettings

        self.db = tmp / "cloud.sqlite3"
        self.port = free_port()
        env = {
            "VIGIL_CLOUD_DATABASE_URL": f"sqlite:///{self.db}",
            "VIGIL_CLOUD_TIMESERIES_URL": f"sqlite:///{tmp / 'cloud-ts.sqlite3'}",
            "VIGIL_CLOUD_SECRET_KEY_FILE": str(tmp / "cloud-secret.key"),
            "VIGIL_CLOUD_PORT": str(self.port),
            "VIGIL_CLOUD_CONNECTIVITY_CHECK_S": "0",
            "VIGIL_CLOUD_JSON_LOGS": "false",
        }
        settings = CloudSettings.model_validate(
            {k.removeprefix("VIGIL_CLOUD_").lower(): v for k, v in env.items()} | {"migrate_on_start": True}
        )
        state = CloudState.build(settings)
        try:
            self.token = state.credentials.add_gateway("gw-bench", now=time.time())
            rows = [f"{d},{k},gw-bench" for d, k in devices.items()]
            state.registry.import_csv("device_id,kind,gateway_id\n" + "\n".join(rows) + "\n", now=time.time())
        finally:
            state.close()
        self.log = (tmp / "cloud.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "vigil_cli.py"), "--log-level", "WARNING", "cloud"],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=self.log,
            stderr=self.log,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError((tmp / "cloud.log").read_text()[-2000:])
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _arrivals(db: Path, want: dict[str, str], seen: dict[str, float], stop: threading.Event) -> None:
    """Poll the cloud's database every 5 ms until ``stop``: when each device in ``want`` (id -> "reading" or
    "alert") first had a reading, or an alert, committed. Fills ``seen`` (id -> wall time)."""
    queries = {
        "reading": "SELECT device_id FROM devices WHERE readings_total > 0 AND device_id IN ({})",
        "alert": "SELECT device_id FROM alerts WHERE device_id IN ({})",
    }
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        while not stop.is_set():
            for what, q in queries.items():
                ids = [d for d, w in list(want.items()) if w == what and d not in seen]
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    t = time.time()
                    for (dev,) in con.execute(q.format(",".join("?" * len(chunk))), chunk):
                        seen.setdefault(dev, t)
            time.sleep(0.005)
    finally:
        con.close()


def run_uplink_phase(
    frames: list[bytes],
    rate: float,
    seconds: float,
    linger_s: float,
    tmp: Path,
    cloud: BenchCloud,
    ids_from: int,
) -> dict[str, object]:
    """The daemon uploading ``frames`` to ``cloud`` at ``rate`` frames/s for ``seconds``, with
    ``uplink.linger_s``; probe and FIRE devices are numbered from ``ids_from`` (registered in the cloud)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    port = free_port()
    data = tmp / f"data-uplink-{linger_s}"
    cfg = tmp / f"gateway-uplink-{linger_s}.toml"
    cfg.write_text(f"""
[gateway]
id = "gw-bench"
data_dir = "{data}"
credential = "{cloud.token}"
[[sources.serial]]
name = "radio0"
port = "{os.ttyname(slave)}"
[uplink]
mode = "http"
url = "{cloud.url}"
linger_s = {linger_s}
[outbox]
synchronous = "full"
[metrics]
port = {port}
""")
    url = f"http://127.0.0.1:{port}/metrics"
    log = (tmp / f"daemon-uplink-{linger_s}.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "vigil_cli.py"),
            "--log-level",
            "WARNING",
            "gateway",
            "--config",
            str(cfg),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    probes: dict[str, float] = {}
    fires: dict[str, float] = {}
    want: dict[str, str] = {}
    seen: dict[str, float] = {}
    stop = threading.Event()
    poller = threading.Thread(target=_arrivals, args=(cloud.db, want, seen, stop))
    try:
        deadline = time.monotonic() + 30
        while metric(url, 'vigil_gateway_source_up{source="radio0"}') < 1:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((tmp / f"daemon-uplink-{linger_s}.log").read_text()[-2000:])
            time.sleep(0.05)
        poller.start()
        t_wall0 = time.time()
        cpu_cloud0, cpu_gw0 = proc_cpu_s(cloud.proc.pid), proc_cpu_s(proc.pid)
        bg = iter(frames)
        t_start = time.perf_counter()
        next_probe = next_fire = t_start
        sent_bg = n_probe = n_fire = 0
        while time.perf_counter() - t_start < seconds:
            now = time.perf_counter()
            due = int((now - t_start) * rate) - sent_bg
            if due > 0:
                write_all(master, b"".join(next(bg) for _ in range(due)))
                sent_bg += due
            if now >= next_probe:
                dev, fr = probe_frame(ids_from + n_probe)
                probes[dev], want[dev] = time.time(), "reading"
                write_all(master, fr)
                n_probe += 1
                next_probe += 0.1
            if now >= next_fire:
                dev, fr = fire_frame(ids_from + n_fire)
                fires[dev], want[dev] = time.time(), "alert"
                write_all(master, fr)
                n_fire += 1
                next_fire += 1.0
            time.sleep(0.002)
        deadline = time.monotonic() + 30
        while len(seen) < len(want) and time.monotonic() < deadline and poller.is_alive():
            time.sleep(0.05)
        cpu_cloud = proc_cpu_s(cloud.proc.pid) - cpu_cloud0
        cpu_gw = proc_cpu_s(proc.pid) - cpu_gw0
        t_wall1 = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        stop.set()
        if poller.is_alive():
            poller.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        os.close(master)
        os.close(slave)
    con = sqlite3.connect(f"file:{cloud.db}?mode=ro", uri=True)
    rows = con.execute(
        "SELECT telemetry_stored, alerts_stored FROM ingested_batches WHERE gateway_id='gw-bench'"
        " AND received_at BETWEEN ? AND ? ORDER BY received_at",
        (t_wall0, t_wall1),
    ).fetchall()
    con.close()
    sizes = np.array([t for t, a in rows if t > 0] or [0])
    readings = int(sizes.sum())
    lat_r = np.array([(seen[d] - t) * 1000 for d, t in probes.items() if d in seen] or [np.nan])
    lat_a = np.array([(seen[d] - t) * 1000 for d, t in fires.items() if d in seen] or [np.nan])

    def pct(a: np.ndarray, q: float) -> float:
        return round(float(np.percentile(a, q)), 1)

    return {
        "linger_s": linger_s,
        "rate_fps": rate,
        "seconds": seconds,
        "readings_stored": readings,
        "batches": len(rows),
        "telemetry_batches": int((sizes > 0).sum()),
        "alert_only_batches": sum(1 for t, a in rows if t == 0 and a > 0),
        "status_only_batches": sum(1 for t, a in rows if t == 0 and a == 0),
        "readings_per_batch": {
            "mean": round(float(sizes.mean()), 1),
            "p10": pct(sizes, 10),
            "p50": pct(sizes, 50),
            "p90": pct(sizes, 90),
            "max": int(sizes.max()),
        },
        "cloud_transactions_per_1000_readings": round(1000 * len(rows) / max(readings, 1), 2),
        "cloud_cpu_s_per_1000_readings": round(1000 * cpu_cloud / max(readings, 1), 3),
        "daemon_cpu_s_per_1000_readings": round(1000 * cpu_gw / max(readings, 1), 3),
        "reading_to_cloud_ms": {
            "n": int(np.isfinite(lat_r).sum()),
            "p50": pct(lat_r, 50),
            "p99": pct(lat_r, 99),
        },
        "fire_to_cloud_ms": {
            "n": int(np.isfinite(lat_a).sum()),
            "p50": pct(lat_a, 50),
            "p99": pct(lat_a, 99),
        },
        "probes_sent": len(probes),
        "fires_sent": len(fires),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=1000.0, help="nominal load for the latency phase, frames/s")
    p.add_argument("--latency-seconds", type=float, default=8.0)
    p.add_argument("--baseline-frames", type=int, default=3000)
    p.add_argument("--uplink-seconds", type=float, default=10.0, help="per uplink run; 0 skips phase 4")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bench_gateway.json")
    p.add_argument(
        "--lingers", default="0,0.25,0.5", help="uplink.linger_s of each uplink run (0 = baseline)"
    )
    p.add_argument(
        "--windows",
        default="50:off,50:on,100:on",
        help="latency phase again per batch_window_ms:urgent_flush (empty skips): FIRE latency, CPU %%",
    )
    args = p.parse_args(argv)
    global LOADAVG
    LOADAVG = Path("/proc/loadavg").read_text().split()[:3]
    frames = fleet_frames(args.devices, args.frames)
    lingers = [float(x) for x in args.lingers.split(",")] if args.uplink_seconds > 0 else []
    per_run = int(args.rate * args.uplink_seconds) + 1
    if per_run * len(lingers) > len(frames):
        p.error(f"--frames {args.frames} is fewer than the uplink runs need ({per_run * len(lingers)})")
    uplink: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-gw-") as d:
        tmp = Path(d)
        ours = run_daemon_phases(frames, args.rate, args.latency_seconds, tmp)
        base = baseline_per_frame(frames[: args.baseline_frames], tmp)
        windows: list[dict[str, object]] = []
        for k, item in enumerate(x for x in args.windows.split(",") if x):
            w, flush = item.split(":")
            windows.append(
                run_daemon_phases(
                    frames,
                    args.rate,
                    args.latency_seconds,
                    tmp / f"window{k}",
                    window_ms=float(w),
                    urgent_flush=flush == "on",
                    throughput=False,
                )
            )
        if lingers:
            devices = fleet_devices(frames)
            marks = int(args.uplink_seconds * 10) + 2  # probes every 0.1 s, FIRE frames every 1 s
            for k in range(len(lingers)):
                for i in range(marks):
                    devices[probe_frame((k + 1) * 10_000 + i)[0]] = DeviceKind.MANHOLE.value
                    devices[fire_frame((k + 1) * 10_000 + i)[0]] = DeviceKind.SMOKE_ALARM.value
            cloud = BenchCloud(tmp, devices)
            try:
                for k, linger in enumerate(lingers):
                    chunk = frames[k * per_run : (k + 1) * per_run]
                    uplink.append(
                        run_uplink_phase(
                            chunk, args.rate, args.uplink_seconds, linger, tmp, cloud, (k + 1) * 10_000
                        )
                    )
            finally:
                cloud.close()
    result = {
        "benchmark": "bench_gateway",
        "devices": args.devices,
        "cpu_count": os.cpu_count(),
        "ours": ours,
        "baseline_per_message": base,
        "speedup_vs_baseline": round(float(ours["frames_per_s"]) / max(float(base["frames_per_s"]), 1), 1),  # type: ignore[arg-type]
        "uplink": uplink,
        "merge_windows": windows,
        "loadavg_at_start": LOADAVG,
        "aims": {"peak_rss_mb": 120, "latency_p99_ms": 200},
    }
    print(
        f"gateway daemon, pty -> outbox, {args.devices} devices, {ours['frames']} frames (synchronous=FULL)"
    )
    print(f"{'':32}{'ours (batched)':>18}{'baseline (per msg)':>22}")
    print(f"{'frames/s':32}{ours['frames_per_s']:>18}{base['frames_per_s']:>22}")
    print(f"{'daemon CPU % (100 = 1 core)':32}{ours['cpu_pct']:>18}{'':>22}")
    print(f"{'daemon peak RSS MB (aim < 120)':32}{ours['peak_rss_mb']:>18}{'':>22}")
    print(
        f"frame -> alert in outbox at {args.rate:.0f} frames/s: p50 {ours['latency_p50_ms']} ms, "
        f"p99 {ours['latency_p99_ms']} ms (aim < 200) over "
        f"{ours['latency_alerts']}/{ours['fire_frames']} alerts"
    )
    for wr in windows:
        print(
            f"batch_window_ms={wr['batch_window_ms']} urgent_flush={wr['urgent_flush']}: FIRE frame -> alert "
            f"in outbox p50 {wr['latency_p50_ms']} ms p99 {wr['latency_p99_ms']} ms "
            f"({wr['latency_alerts']}/{wr['fire_frames']}), daemon CPU {wr['cpu_pct_at_nominal_load']} % at "
            f"{args.rate:.0f} frames/s, {wr['batches_total']} batches"
        )
    for u in uplink:
        rb, lr, la = u["readings_per_batch"], u["reading_to_cloud_ms"], u["fire_to_cloud_ms"]
        print(
            f"uplink linger_s={u['linger_s']}: {u['readings_stored']} readings in {u['telemetry_batches']} "
            f"telemetry batches (+{u['alert_only_batches']} alert-only), readings/batch p50 {rb['p50']} "
            f"mean {rb['mean']} p90 {rb['p90']}; cloud transactions per 1000 readings "
            f"{u['cloud_transactions_per_1000_readings']}; cloud CPU s per 1000 readings "
            f"{u['cloud_cpu_s_per_1000_readings']}; reading -> cloud p50 {lr['p50']} ms p99 {lr['p99']} ms; "
            f"FIRE -> cloud p50 {la['p50']} ms p99 {la['p99']} ms"
        )
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
