"""The gateway daemon end to end: pseudo-terminal -> SLIP -> batched decode -> detection -> SQLite outbox.

Run: ``.venv/bin/python bench/bench_gateway.py`` (about 40 s). Writes ``bench/results/bench_gateway.json``.

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

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware_bridge import smoke_alarm  # noqa: E402
from firmware_bridge.framing import FrameDecoder, encode_frame  # noqa: E402
from firmware_bridge.kernel.events import EventType  # noqa: E402
from firmware_bridge.kernel.records import DeviceKind, Reading  # noqa: E402
from firmware_bridge.registry import kind_of_payload, spec  # noqa: E402
from simulators.faults import LinkFaultRates  # noqa: E402
from simulators.fleet import Fleet  # noqa: E402
from tests.servers import free_port  # noqa: E402

T0 = 1_700_000_000.0


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


def run_daemon_phases(frames: list[bytes], rate: float, latency_s: float, tmp: Path) -> dict[str, object]:
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
[metrics]
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
        n = len(frames)
        cpu0, t0 = proc_cpu_s(proc.pid), time.perf_counter()
        writer = threading.Thread(target=write_all, args=(master, b"".join(frames)))
        writer.start()
        done = rejected = 0.0
        while done + rejected < n and time.perf_counter() - t0 < 120:
            time.sleep(0.02)
            done = metric(url, "vigil_gateway_frames_total{")
            rejected = metric(url, "vigil_gateway_rejects_total{")
        wall = time.perf_counter() - t0
        cpu = proc_cpu_s(proc.pid) - cpu0
        writer.join()
        # -- 2. latency at nominal load ---------------------------------------------------------------
        written: dict[str, float] = {}
        bg = iter(frames * 2)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=1000.0, help="nominal load for the latency phase, frames/s")
    p.add_argument("--latency-seconds", type=float, default=8.0)
    p.add_argument("--baseline-frames", type=int, default=3000)
    args = p.parse_args(argv)
    frames = fleet_frames(args.devices, args.frames)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-gw-") as d:
        tmp = Path(d)
        ours = run_daemon_phases(frames, args.rate, args.latency_seconds, tmp)
        base = baseline_per_frame(frames[: args.baseline_frames], tmp)
    result = {
        "benchmark": "bench_gateway",
        "devices": args.devices,
        "cpu_count": os.cpu_count(),
        "ours": ours,
        "baseline_per_message": base,
        "speedup_vs_baseline": round(float(ours["frames_per_s"]) / max(float(base["frames_per_s"]), 1), 1),  # type: ignore[arg-type]
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
    out = ROOT / "bench" / "results" / "bench_gateway.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
