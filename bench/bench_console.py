"""The console under load, in Debian's Chromium: 10,000 devices and ~1,000 open incidents on one SQLite box.

Run: ``.venv/bin/python bench/bench_console.py`` (about a minute; needs ``/usr/bin/chromium``).
``--screenshots docs/console`` also writes a PNG of each page (zh-CN and English) for the docs.

Measured, each in the same browser against a real cloud (uvicorn on a free port):

* ``first_page_s``: ``goto('/console/')`` until the queue is in the page (DOMContentLoaded, server-rendered);
* ``map_ready_s``: until every device marker is loaded into the cluster layer;
* ``queue_update_s``: from an ingest's acknowledgement until its incident is in the queue (server-sent
  event -> htmx swap), median and max of ``--updates`` alerts;
* ``pan_frame_ms``: frame intervals (``requestAnimationFrame``) while the map pans and zooms for 3 s,
  p50 / p95 / max.

The community is the simulator's (``simulators.fleet``, seed 7), so streets, buildings and grid cells look
like the demo's. Results go to ``bench/results/bench_console.json``. Performance is never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import uvicorn
from playwright.sync_api import Page, sync_playwright

from alerts.contract import AlertEvent, UplinkBatch
from cloud.app import create_app
from cloud.settings import CloudSettings
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind
from simulators.config import parse_config
from simulators.fleet import Fleet

RESULTS = Path(__file__).resolve().parent / "results" / "bench_console.json"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
GW = "gw-bench"
PASSWORD = "bench-password-1"
EVENTS = {
    DeviceKind.MANHOLE: (
        EventType.COVER_OPEN,
        EventType.COVER_DISPLACED,
        EventType.OVERFLOW,
        EventType.LOW_BATTERY,
    ),
    DeviceKind.SMOKE_ALARM: (EventType.FIRE, EventType.CO, EventType.LOW_BATTERY),
    DeviceKind.WRISTBAND: (EventType.FALL, EventType.SOS, EventType.HEART_RATE_HIGH, EventType.LOW_BATTERY),
}


def fleet_csv(n_devices: int) -> str:
    third = n_devices // 3
    toml = f"""
version = 1
seed = 7
duration = "1h"
[area]
name = "黄庄社区 (bench)"
lat = 39.96
lon = 116.30
[devices]
manhole = {third}
smoke_alarm = {third}
wristband = {n_devices - 2 * third}
"""
    cfg = parse_config(tomllib.loads(toml), source="bench", start=time.time(), duration_s=3600, speedup=1)
    fleet = Fleet.from_config(cfg)
    with tempfile.TemporaryDirectory() as d:
        fleet.write_manifest(Path(d))
        text = (Path(d) / "devices.csv").read_text("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        r["gateway_id"] = GW
        w.writerow(r)
    return out.getvalue()


def alert(device_id: str, kind: DeviceKind, i: int, t: float, sev: Severity | None = None) -> AlertEvent:
    et = EVENTS[kind][i % len(EVENTS[kind])]
    ep = round(t * 1000) + i
    return AlertEvent(
        alert_id=alert_id(device_id, et, ep),
        device_id=device_id,
        kind=kind,
        event_type=et,
        severity=sev if sev is not None else Severity(1 + i % 3),
        phase=AlertPhase.RAISED,
        episode_ms=ep,
        time=t,
        frame_time=t - 0.5,
        value=None,
        message=f"bench {et.value}",
    )


class Cloud:
    def __init__(self, tmp: Path, csv_text: str) -> None:
        port = _free_port()
        settings = CloudSettings(
            database_url=f"sqlite:///{tmp}/vigil.db",
            timeseries_url=f"sqlite:///{tmp}/vigil-ts.db",
            secret_key_file=tmp / "key",
            port=port,
            json_logs=False,
            connectivity_check_s=0,
        )
        self.app = create_app(settings)
        st = self.app.state.vigil
        now = time.time()
        for name, role in (("disp", "dispatcher"), ("viewer", "viewer")):
            st.credentials.add_user(name, role, password=PASSWORD, now=now)
        self.gw_token = st.credentials.add_gateway(GW, now=now)
        st.registry.import_csv(csv_text, now=now)
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=port,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=1,
            )
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.n = 0

    def ingest(self, alerts: list[AlertEvent]) -> None:
        self.n += 1
        b = UplinkBatch(
            batch_id=f"bench-{self.n:06d}", gateway_id=GW, sent_at=time.time(), telemetry=[], alerts=alerts
        )
        r = httpx.post(
            f"{self.url}/api/v1/ingest/batches",
            content=b.model_dump_json(),
            timeout=60,
            headers={"Authorization": f"Bearer {self.gw_token}", "content-type": "application/json"},
        )
        r.raise_for_status()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def open_incidents(cloud: Cloud) -> int | None:
    """How many incidents the loop holds open after the alerts (grouping folds some alerts together)."""
    try:
        from sqlalchemy import func, select

        from cloud.loop.models import Incident
    except ImportError:
        return None
    with cloud.app.state.vigil.db.read() as s:
        return int(s.scalar(select(func.count(Incident.id)).where(Incident.is_open.is_(True))) or 0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def login(page: Page, user: str, to: str = "/console/gateways") -> None:
    """Log in to a light page, so the measured overview load does not share the server with a previous one."""
    page.goto(f"/console/login?next={to}")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{to}")
    page.wait_for_load_state("networkidle")


PAN_JS = """async () => {
  const m = window.vigilMap.map; const frames = []; let last = performance.now(); let run = true;
  function tick(t) { frames.push(t - last); last = t; if (run) requestAnimationFrame(tick); }
  requestAnimationFrame(tick);
  const moves = [[300,0],[0,300],[-300,0],[0,-300],[200,200],[-200,-200]];
  for (let k = 0; k < 3; k++) for (const [x, y] of moves) { m.panBy([x, y], {animate: true, duration: 0.25});
    await new Promise(r => setTimeout(r, 160)); }
  m.zoomIn(1); await new Promise(r => setTimeout(r, 400));
  m.zoomOut(1); await new Promise(r => setTimeout(r, 400));
  run = false; return frames.slice(1);
}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--open-alerts", type=int, default=1_800, help="1,800 alerts open about 1,000 incidents")
    ap.add_argument("--updates", type=int, default=5)
    ap.add_argument("--screenshots", type=Path, default=None, help="write page PNGs into this folder")
    args = ap.parse_args()
    t0 = time.perf_counter()
    csv_text = fleet_csv(args.devices)
    devices = list(csv.DictReader(io.StringIO(csv_text)))
    with tempfile.TemporaryDirectory() as d:
        cloud = Cloud(Path(d), csv_text)
        print(f"cloud up with {len(devices)} devices in {time.perf_counter() - t0:.1f} s", flush=True)
        now = time.time()
        batch: list[AlertEvent] = []
        for i in range(args.open_alerts):
            dev = devices[(i * 7919) % len(devices)]
            batch.append(alert(dev["device_id"], DeviceKind(dev["kind"]), i, now - 3600 + i))
            if len(batch) == 500:
                cloud.ingest(batch)
                batch = []
        if batch:
            cloud.ingest(batch)
        result: dict[str, Any] = {"devices": len(devices), "open_alerts": args.open_alerts}
        result["load_avg_1m_at_start"] = round(os.getloadavg()[0], 2)
        result["open_incidents"] = open_incidents(cloud)
        foreign: list[str] = []
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                ctx = browser.new_context(base_url=cloud.url, viewport={"width": 1440, "height": 900})

                def only_ours(r: Any) -> None:
                    if r.request.url.startswith(cloud.url):
                        r.continue_()
                    else:
                        foreign.append(r.request.url)
                        r.abort()

                ctx.route("**/*", only_ours)
                page = ctx.new_page()
                login(page, "disp")
                t = time.perf_counter()
                page.goto("/console/", wait_until="domcontentloaded")
                page.wait_for_selector("#incident-table, #queue-table", state="attached")
                result["first_page_s"] = round(time.perf_counter() - t, 3)
                page.wait_for_selector("#map[data-markers]", timeout=60_000)
                result["map_ready_s"] = round(time.perf_counter() - t, 3)
                result["markers"] = int(page.get_attribute("#map", "data-markers") or 0)
                page.wait_for_selector("#live.on")
                page.evaluate(
                    "window.__swaps = 0; document.body.addEventListener('htmx:afterSwap', "
                    "e => { if (e.detail.target.id === 'queue') window.__swaps += 1; })"
                )
                page.wait_for_timeout(500)
                lat: list[float] = []
                used = {(i * 7919) % len(devices) for i in range(args.open_alerts)}
                fresh = [
                    d for k, d in enumerate(devices) if k not in used
                ]  # no incident yet: a new one opens
                for i in range(args.updates):
                    dev = fresh[i * 97 % len(fresh)]
                    a = alert(
                        dev["device_id"], DeviceKind(dev["kind"]), 100_000 + i, time.time(), Severity.HIGH
                    )
                    swaps = page.evaluate("window.__swaps")
                    cloud.ingest([a])
                    t = time.perf_counter()  # acknowledged: the cloud knows
                    # the queue was re-rendered with the new state (the alert may join an open incident)
                    page.wait_for_function(f"window.__swaps > {swaps}", timeout=10_000)
                    lat.append(time.perf_counter() - t)
                result["queue_update_s"] = {
                    "median": round(statistics.median(lat), 3),
                    "max": round(max(lat), 3),
                }
                page.wait_for_timeout(4500)  # the map's throttled reload after the new alerts
                frames = sorted(page.evaluate(PAN_JS))
                result["pan_frame_ms"] = {
                    "p50": round(frames[len(frames) // 2], 1),
                    "p95": round(frames[int(len(frames) * 0.95)], 1),
                    "max": round(frames[-1], 1),
                    "frames": len(frames),
                }
                print(json.dumps(result), flush=True)
                if args.screenshots:
                    shots(page, ctx, args.screenshots, devices, cloud.app)
                browser.close()
        finally:
            cloud.stop()
    result["foreign_requests"] = len(foreign)
    result["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


def shots(page: Page, ctx: Any, outdir: Path, devices: list[dict[str, str]], app: Any) -> None:
    """One PNG per page, zh-CN (and the overview in English), for docs/console.md."""
    outdir.mkdir(parents=True, exist_ok=True)

    def shot(name: str, full: bool = False) -> None:
        page.wait_for_timeout(300)
        page.screenshot(path=str(outdir / f"{name}.png"), full_page=full)

    page.goto("/console/")
    page.wait_for_selector("#map[data-markers]", state="attached", timeout=60_000)
    page.wait_for_timeout(800)
    shot("overview-zh")
    href = page.get_attribute("#incident-table tbody tr td:nth-child(2) a", "href")
    incident_id = href.rsplit("/", 1)[-1] if href else None
    if href:
        page.goto(href)
        shot("incident-zh", full=True)
    band = next(d for d in devices if d["kind"] == "wristband")
    page.goto(f"/console/devices/{band['device_id']}")
    shot("device-zh", full=True)
    page.goto("/console/gateways")
    shot("gateways-zh")
    page.goto("/console/kpi")
    shot("kpi-zh")
    page.goto("/console/config/roster")
    shot("config-zh")
    page.click("#lang-switch")
    page.goto("/console/")
    page.wait_for_selector("#map[data-markers]", state="attached", timeout=60_000)
    page.wait_for_timeout(800)
    shot("overview-en")
    page.click("#lang-switch")
    phone_ctx = ctx.browser.new_context(
        base_url=page.url.split("/console")[0],
        viewport={"width": 360, "height": 740},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    phone = phone_ctx.new_page()
    if incident_id:
        from cloud.notify.links import Purpose

        links = app.state.notify.links
        phone.goto(f"/l/{links.token(Purpose.ACCEPT, incident_id, 'r-1', now=time.time())}")
        phone.screenshot(path=str(outdir / "responder-phone-zh.png"), full_page=True)
        phone.goto(f"/l/{links.token(Purpose.RESOLVED, incident_id, 'r-1', now=time.time())}")
        phone.screenshot(path=str(outdir / "responder-resolve-phone-zh.png"), full_page=True)
        phone.goto(f"/l/{links.token(Purpose.CASE, incident_id, 'case', now=time.time())}")
        phone.screenshot(path=str(outdir / "resident-phone-zh.png"), full_page=True)
    phone.goto("/console/report")
    phone.screenshot(path=str(outdir / "report-phone-zh.png"), full_page=True)
    phone.goto("/console/login")
    phone.screenshot(path=str(outdir / "login-phone-zh.png"))
    phone_ctx.close()


if __name__ == "__main__":
    main()
