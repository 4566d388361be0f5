"""From a frame on the gateway's serial port to a responder's notification accepted by the channel server.

Run: ``.venv/bin/python bench/bench_notify.py [--alerts 200] [--interval 0.1]`` (about a minute).
Writes ``bench/results/bench_notify.json``. Performance is never asserted in tests.

1. **end to end**: the real gateway daemon (``vigil gateway``, a subprocess) reads SLIP frames from a
   pseudo-terminal; it decodes, detects and sends its outbox over HTTP to the real cloud app (uvicorn, in
   this process, SQLite) whose ingest commits the alert, the loop opens an incident and writes its
   notification intents, the delivery worker (woken by the committed alert) plans and sends a WeCom
   application message to a fake WeCom server (``tests/fakes/wecom.py``, a real HTTP server that checks the
   access token; run in its own process). ``--alerts`` smoke-alarm FIRE frames from fresh devices, one
   every ``--interval`` s.
   Latency = the fake's receipt of the first message for the incident minus the moment its frame was
   written into the pty (one clock, one machine).
2. **storm**: ``--storm`` pages at once (in-process ``NotifyService`` on SQLite): to users over WeCom
   (no per-message limit at this scale) and to one DingTalk group robot (20 messages a minute): delivered
   pages per second, and robot messages actually sent (digests keep them within the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402
from sqlalchemy import select  # noqa: E402

from cloud.auth import Credentials  # noqa: E402
from cloud.db import Alert, Database, upgrade_head  # noqa: E402
from cloud.loop.models import Incident  # noqa: E402
from cloud.notify.config import NotifyConfig  # noqa: E402
from cloud.notify.models import Delivery  # noqa: E402
from cloud.notify.planner import NotifyRequest  # noqa: E402
from cloud.notify.render import IncidentFacts  # noqa: E402
from cloud.notify.service import NotifyService  # noqa: E402
from cloud.settings import CloudSettings  # noqa: E402
from firmware_bridge import smoke_alarm  # noqa: E402
from firmware_bridge.framing import encode_frame  # noqa: E402
from firmware_bridge.kernel.records import DeviceKind, Reading  # noqa: E402
from tests.servers import free_port  # noqa: E402

GATEWAY = "gw-bench"
CSV_HEADER = (
    "device_id,kind,name,lat,lon,address,grid,community,street,on_road,gateway_id,profile,dev_addr,"
    "nwk_skey,app_skey,wearer_name,wearer_phone,emergency_contact_phone"
)
ROLES = ["grid_worker", "property_management", "municipal_crew", "traffic_police", "community_doctor",
         "family_contact", "volunteer", "resident"]  # fmt: skip


def device_id(i: int) -> str:
    return f"{0xF1E0000000000000 + i:016x}"


def fire_frame(dev: str) -> bytes:
    r = Reading(
        DeviceKind.SMOKE_ALARM, dev, 1, 0.0, 90.0, smoke_alarm.CODEC.flags[0].mask, (2.5, 60.0, 0.0, 40.0)
    )
    return encode_frame(dev, smoke_alarm.encode(r))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def fake_process(kind: str) -> Iterator[dict[str, Any]]:
    """A fake provider in its own process (it must not share this process's GIL with the cloud)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.serve", kind], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(10)


def accepted(info: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = httpx.get(info["url"] + "/_fake/accepted", timeout=10).json()
    return items


def metric(url: str, name: str) -> float:
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def start_cloud(tmp: Path, wecom: dict[str, Any], n: int) -> tuple[Any, str, str, threading.Thread]:
    import uvicorn

    from cloud.app import create_app

    (tmp / "notify.toml").write_text(
        f"""
public_base_url = "http://127.0.0.1"
poll_s = 0.5
[wecom]
corp_id = "{wecom["corp_id"]}"
corp_secret = "{wecom["corp_secret"]}"
agent_id = {wecom["agent_id"]}
api_url = "{wecom["api_url"]}"
""",
        encoding="utf-8",
    )
    settings = CloudSettings.model_validate(
        dict(
            database_url=f"sqlite:///{tmp}/vigil.db",
            timeseries_url=f"sqlite:///{tmp}/vigil-ts.db",
            secret_key_file=tmp / "secret.key",
            migrate_on_start=True,
            json_logs=False,
            notify_config_file=tmp / "notify.toml",
        )
    )
    app = create_app(settings)
    st = app.state.vigil
    now = time.time()
    token = st.credentials.add_gateway(GATEWAY, now=now)
    st.credentials.add_user("responder", "operator", now=now)
    rows = [
        f"{device_id(i)},smoke_alarm,烟感 {i},{39.9 + i * 1e-4:.5f},116.30,{i}号楼,"
        f"G{i:03d},C{i:03d},S{i:03d},0,{GATEWAY},,,,,,,"
        for i in range(n)
    ]
    st.registry.import_csv("\n".join([CSV_HEADER, *rows]) + "\n", now=now)
    app.state.notify.contacts.bind("responder", now=now, wecom_userid="zhangsan", duty_roles=ROLES)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="cloud", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("cloud did not start")
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}", token, thread


def end_to_end(alerts: int, interval: float, tmp: Path) -> dict[str, Any]:
    with fake_process("wecom") as wecom:
        server, url, token, thread = start_cloud(tmp, wecom, alerts)
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        metrics_port = free_port()
        cfg = tmp / "gateway.toml"
        cfg.write_text(f"""
[gateway]
id = "{GATEWAY}"
credential = "{token}"
data_dir = "{tmp / "gw"}"
[[sources.serial]]
name = "radio0"
port = "{os.ttyname(slave)}"
[uplink]
mode = "http"
url = "{url}"
[metrics]
port = {metrics_port}
""")
        log = (tmp / "gateway.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "vigil_cli.py"), "--log-level", "WARNING", "gateway", "--config",
             str(cfg)],
            cwd=ROOT, stdout=log, stderr=log,
        )  # fmt: skip
        written: dict[str, float] = {}
        try:
            deadline = time.monotonic() + 60
            up = 'vigil_gateway_source_up{source="radio0"}'
            while metric(f"http://127.0.0.1:{metrics_port}/metrics", up) < 1:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((tmp / "gateway.log").read_text()[-2000:])
                time.sleep(0.05)
            for i in range(alerts):
                dev = device_id(i)
                written[dev] = time.time()
                write_all(master, fire_frame(dev))
                time.sleep(interval)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(accepted(wecom)) < alerts:
                time.sleep(0.2)
            time.sleep(1.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            os.close(master)
            os.close(slave)
            server.should_exit = True
            thread.join(20)
        got = accepted(wecom)
        first: dict[str, float] = {}
        for item in got:
            m = re.search(r"(?:编号|Case)[：:] ?(\d+)", json.loads(item["body"])["text"]["content"])
            if m:
                first.setdefault(m.group(1), item["at"])
        db = Database(f"sqlite:///{tmp}/vigil.db")
        with db.read() as s:
            dev_of = {str(i): d for i, d in s.execute(select(Incident.id, Incident.device_id))}
            received = dict(s.execute(select(Alert.device_id, Alert.received_at)).all())
            opened = {str(i): t for i, t in s.execute(select(Incident.id, Incident.created_at))}
            planned: dict[str, float] = {}
            for inc, t in s.execute(select(Delivery.incident_id, Delivery.created_at)):
                planned[inc] = min(t, planned.get(inc, t))
        db.close()
        # where the time goes, per incident (ms): gateway (pty -> cloud commit), loop (commit -> incident),
        # plan (incident -> delivery row), send (delivery row -> the fake's receipt)
        stages: dict[str, list[float]] = {"gateway": [], "loop": [], "plan": [], "send": []}
        for inc, t in first.items():
            dev = dev_of.get(inc, "")
            if dev not in written or dev not in received or inc not in planned:
                continue
            stages["gateway"].append((received[dev] - written[dev]) * 1000)
            stages["loop"].append((opened[inc] - received[dev]) * 1000)
            stages["plan"].append((planned[inc] - opened[inc]) * 1000)
            stages["send"].append((t - planned[inc]) * 1000)
        lat = [(t - written[dev_of[i]]) * 1000 for i, t in first.items() if dev_of.get(i) in written]
        arr = np.array(lat) if lat else np.array([np.nan])
        return {
            "alerts_written": alerts,
            "interval_s": interval,
            "incidents_notified": len(lat),
            "messages_accepted": len(got),
            "latency_ms": {
                "p50": round(float(np.percentile(arr, 50)), 1),
                "p90": round(float(np.percentile(arr, 90)), 1),
                "p99": round(float(np.percentile(arr, 99)), 1),
                "max": round(float(arr.max()), 1),
            },
            "stages_ms": {
                k: {
                    "p50": round(float(np.percentile(v, 50)), 1),
                    "p99": round(float(np.percentile(v, 99)), 1),
                }
                for k, v in stages.items()
                if v
            },
        }


async def storm(pages: int, tmp: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp}/storm.db"
    upgrade_head(url)
    db = Database(url)
    creds = Credentials(db, rotation_grace_s=0)
    t0 = time.time()
    for k in range(10):
        creds.add_user(f"worker{k}", "operator", now=t0)
    out: dict[str, Any] = {}
    with fake_process("wecom") as wecom, fake_process("dingtalk") as ding:
        config = NotifyConfig.from_mapping(
            {
                "public_base_url": "http://127.0.0.1",
                "batch_size": 100,
                "wecom": {"corp_id": wecom["corp_id"], "corp_secret": wecom["corp_secret"],
                          "agent_id": wecom["agent_id"], "api_url": wecom["api_url"]},
                "robots": {
                    "g01": {"kind": "dingtalk_robot", "url": ding["robot_url"], "secret": ding["secret"]}
                },
            }
        )  # fmt: skip
        service = NotifyService.build(
            db=db, key_file=tmp / "storm.key", clock=_Wall(), registry=CollectorRegistry(), config=config
        )
        for k in range(10):
            service.contacts.bind(f"worker{k}", now=t0, wecom_userid=f"w{k}")
        service.contacts.set_group("g01", title="G01", robot="g01")

        def facts(i: int) -> IncidentFacts:
            return IncidentFacts(
                incident_id=str(i), opened_at=t0, severity=3, event_type="cover_open", place=f"{i}号"
            )

        w = service.worker
        t = time.perf_counter()
        await w.submit([NotifyRequest(facts(i), "user", f"worker{i % 10}") for i in range(pages)])
        enqueue_s = time.perf_counter() - t
        t = time.perf_counter()
        while await w.run_once():
            pass
        wecom_s = time.perf_counter() - t
        out["wecom_app"] = {
            "pages": pages,
            "enqueue_per_s": round(pages / enqueue_s),
            "delivered_per_s": round(len(accepted(wecom)) / wecom_s),
            "messages": len(accepted(wecom)),
        }
        await w.submit([NotifyRequest(facts(100_000 + i), "group", "g01") for i in range(pages)])
        t = time.perf_counter()
        while await w.run_once():
            pass
        robot_s = time.perf_counter() - t
        with db.read() as s:
            q = select(Delivery.id).where(Delivery.target == "g01", Delivery.status == "delivered")
            robot_delivered = len(s.scalars(q).all())
        out["dingtalk_robot"] = {
            "pages": pages,
            "delivered": robot_delivered,
            "robot_messages_sent": len(accepted(ding)),
            "robot_limit_per_minute": 20,
            "delivered_per_s": round(robot_delivered / robot_s),
            "seconds": round(robot_s, 2),
        }
        await service.aclose()
    db.close()
    return out


class _Wall:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def real_seconds(self, seconds: float) -> float:
        return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--storm", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "e2e").mkdir()
        (tmp / "storm").mkdir()
        e2e = end_to_end(args.alerts, args.interval, tmp / "e2e")
        st = asyncio.run(storm(args.storm, tmp / "storm"))
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "end_to_end": e2e,
        "storm": st,
    }
    out = ROOT / "bench" / "results" / "bench_notify.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
