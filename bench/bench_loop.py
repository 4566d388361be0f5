"""The closed loop under an alarm storm, and the steady cost of its timers, on one SQLite box.

Run: ``.venv/bin/python bench/bench_loop.py [--alerts 10000] [--open 100000] [--database URL]``.

* **storm**: a rainstorm floods a district's wells: ``--alerts`` overflow / cover alerts from
  ``--devices`` covers on ``--streets`` streets arrive in batches of 500 (as ingest hands them to the
  sink). ``--mix covers`` (default): three in four overflow (one incident per street), one in four a
  displaced cover (one per cover, repeated episodes attach); ``--mix district``: as
  ``bench_district.py``'s storm, every alert another device, half an open cover (one incident each),
  half overflow (one per street). Measured: alert steps handled per second (wall, and the process's CPU
  seconds), incidents formed, the most notification intents any one responder received (nobody is
  flooded), peak RSS, how long each hand-off to the sink took (``ack_wait_ms``: what a gateway's ack
  waits for after ingest's commit), and **a fire alarm handed off last, behind the whole storm**: seconds
  from its hand-off until its incident was committed (``fire_incident_s``) and how many transactions ran
  before it. ``--sink queue`` (default) is the intake queue drained off the request in batches of
  ``--drain-steps``; ``--sink inline`` runs the loop inside the hand-off, as before the queue.
  ``--baseline DIR`` first runs the same bench, same arguments, against the code in ``DIR`` (an older
  checkout, e.g. ``git archive <rev> | tar -x -C DIR``) in a subprocess, and puts its result under
  ``"baseline"``: before and after measured in one run, under the same load.
* **timers**: ``--open`` open work orders, each with a pending escalation and SLA timer far in the
  future; the cost of one ``run_due`` tick when nothing is due, and of one full tick (500 timers) when 1 %
  (plus the storm's own escalations) is due.

Results go to ``bench/results/bench_loop.json``. Performance is never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, os.environ.get("VIGIL_BENCH_CODE") or str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert, select

from alerts.contract import AlertEvent
from cloud.crypto import SecretBox, load_or_create_key
from cloud.db import Database, Device, upgrade_head
from cloud.loop.config import save
from cloud.loop.models import Incident, NotificationIntentRow, Timer
from cloud.loop.service import LoopService
from cloud.loop.wiring import DRAIN_BATCH_STEPS, LoopSink
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind

#: the code under test: this checkout, or the older one ``--baseline`` points this same file at
CODE = Path(os.environ.get("VIGIL_BENCH_CODE") or Path(__file__).resolve().parents[1])
T0 = 1_790_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - not used
        return None

    def real_seconds(self, seconds: float) -> float:
        return seconds


FIRE_DEVICE = "F000000000000001"


def setup(url: str, devices: int, streets: int) -> None:
    upgrade_head(url)
    db = Database(url)
    with db.write() as s:
        s.execute(
            insert(Device),
            [
                dict(
                    device_id=FIRE_DEVICE,
                    kind="smoke_alarm",
                    name="smoke 3-201",
                    grid="G000",
                    street="street-0",
                    community="c",
                    on_road=False,
                    gateway_id="gw",
                    profile="default",
                    interval_s=3600.0,
                    thresholds={},
                    dev_addr="",
                    created_at=T0,
                    lat=39.9,
                    lon=116.3,
                    address="",
                    seq_gaps_total=0,
                    readings_total=0,
                )
            ],
        )
        s.execute(
            insert(Device),
            [
                dict(
                    device_id=f"{i:016X}",
                    kind="manhole",
                    name=f"cover {i}",
                    grid=f"G{i % 200:03d}",
                    street=f"street-{i % streets}",
                    community="c",
                    on_road=i % 3 == 0,
                    gateway_id="gw",
                    profile="default",
                    interval_s=3600.0,
                    thresholds={},
                    dev_addr="",
                    created_at=T0,
                    lat=39.9 + (i % 100) * 1e-3,
                    lon=116.3 + (i // 100 % 100) * 1e-3,
                    address="",
                    seq_gaps_total=0,
                    readings_total=0,
                )
                for i in range(devices)
            ],
        )
        roster = {
            "responders": [
                {"id": f"gw-{g:03d}", "roles": ["grid_worker"], "zones": [f"G{g:03d}"]} for g in range(200)
            ]
            + [{"id": f"crew-{k}", "roles": ["municipal_crew"], "max_load": 50} for k in range(10)]
            + [{"id": f"police-{k}", "roles": ["traffic_police"]} for k in range(5)],
            "rotations": [
                {"role": "grid_worker", "zone": f"G{g:03d}", "participants": [f"gw-{g:03d}"], "start": T0 - 1}
                for g in range(200)
            ]
            + [
                {
                    "role": "municipal_crew",
                    "zone": "*",
                    "participants": [f"crew-{k}" for k in range(10)],
                    "start": T0 - 1,
                    "shift_s": 0,
                },
                {
                    "role": "traffic_police",
                    "zone": "*",
                    "participants": [f"police-{k}" for k in range(5)],
                    "start": T0 - 1,
                    "shift_s": 0,
                },
            ],
        }
        save(s, "roster", roster, actor="bench", role="admin", now=T0)
    db.close()


def storm(
    svc: LoopService,
    clock: Clock,
    n: int,
    devices: int,
    mode: str = "queue",
    batch_steps: int = DRAIN_BATCH_STEPS,
    mix: str = "covers",
) -> dict[str, Any]:
    steps = []
    for i in range(n):
        if mix == "district":
            dev = f"{i % devices:016X}"
            ev = EventType.COVER_OPEN if i % 2 == 0 else EventType.OVERFLOW
        else:
            dev = f"{i % devices:016X}"
            ev = EventType.OVERFLOW if i % 4 else EventType.COVER_DISPLACED
        t = T0 + 10.0 * i / n
        ep = round(t * 1000)
        steps.append(
            AlertEvent(
                alert_id=alert_id(dev, ev, ep),
                device_id=dev,
                kind=DeviceKind.MANHOLE,
                event_type=ev,
                severity=Severity.MEDIUM,
                phase=AlertPhase.RAISED,
                episode_ms=ep,
                time=t,
                frame_time=t,
            )
        )
    te = T0 + 10.0
    fire = AlertEvent(
        alert_id=alert_id(FIRE_DEVICE, EventType.FIRE, round(te * 1000)),
        device_id=FIRE_DEVICE,
        kind=DeviceKind.SMOKE_ALARM,
        event_type=EventType.FIRE,
        severity=Severity.HIGH,
        phase=AlertPhase.RAISED,
        episode_ms=round(te * 1000),
        time=te,
        frame_time=te,
    )
    acks: list[float] = []
    transactions: list[float] = []  # when each loop transaction finished (perf_counter)
    fire_done: list[tuple[float, int]] = []  # (when, transactions before it) for the fire's transaction
    real = svc.take_batch

    def recording(batch: Any) -> Any:
        out = real(batch)
        if any(st.alert_id == fire.alert_id for steps, _ in batch for st in steps):
            fire_done.append((time.perf_counter(), len(transactions)))
        transactions.append(time.perf_counter())
        return out

    svc.take_batch = recording  # type: ignore[method-assign]
    fire_sent = 0.0

    async def drive() -> float:
        nonlocal fire_sent
        # ingest hands each committed batch of 500 to the sink; the gateway's ack waits for that call
        sink = LoopSink(batch_steps=batch_steps)
        sink.service = svc
        drain = asyncio.create_task(sink.run()) if mode == "queue" else None
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        for k in range(0, n, 500):
            clock.t = T0 + 10.0 * k / n
            a0 = time.perf_counter()
            await sink.alerts_committed(steps[k : k + 500], source="gw")
            acks.append(time.perf_counter() - a0)
            await asyncio.sleep(0)  # the next request: let the drain task run between them
        fire_sent = time.perf_counter()  # a fire alarm arrives behind the whole storm
        await sink.alerts_committed([fire], source="gw")
        await sink.drained()
        elapsed = time.perf_counter() - t0
        if drain is not None:
            drain.cancel()
        assert sink.overflowed == 0, "queue overflowed: the bench would under-count"
        return elapsed

    c0 = time.process_time()
    elapsed = asyncio.run(drive())
    cpu = time.process_time() - c0
    svc.take_batch = real  # type: ignore[method-assign]
    acks.sort()
    with svc.db.read() as s:
        incidents = len(s.scalars(select(Incident.id)).all())
        per_target = Counter(s.scalars(select(NotificationIntentRow.target_id)).all())
    return {
        "sink": mode,
        "mix": mix,
        "drain_steps": batch_steps,
        "alerts": n,
        "seconds": round(elapsed, 2),
        "cpu_seconds": round(cpu, 2),
        "alerts_per_cpu_s": round(n / cpu),
        "ack_wait_ms_p50": round(acks[len(acks) // 2] * 1000, 2),
        "ack_wait_ms_max": round(acks[-1] * 1000, 2),
        "alerts_per_s": round(n / elapsed),
        "incidents": incidents,
        "max_intents_one_responder": max(per_target.values(), default=0),
        "responders_paged": len(per_target),
        "transactions": len(transactions),
        "fire_incident_s": round(fire_done[0][0] - fire_sent, 3) if fire_done else None,
        "fire_transactions_before": fire_done[0][1] if fire_done else None,
    }


def timers(svc: LoopService, n_open: int) -> dict[str, Any]:
    with svc.db.write() as s:
        base = int(s.scalar(select(Incident.id).order_by(Incident.id.desc())) or 0)
        rows: list[dict[str, Any]] = [
            dict(
                id=base + 1 + i,
                group_key=f"bench|{i}",
                group_rule="bench",
                is_open=True,
                stage="dispatched",
                source="gateway",
                kind="manhole",
                event_type="overflow",
                grade=2,
                urgency="urgent",
                title="",
                description="",
                device_id="",
                gateway_id="",
                grid="",
                street="",
                community="",
                address="",
                on_road=False,
                reporter="",
                route_rule="",
                department="municipal",
                receivers=[],
                created_at=T0,
                stage_entered_at=T0,
                paused_s=0.0,
                reopen_count=0,
                rework=False,
                returned_reasons=[],
                last_actor="",
                overdue=[],
                alert_count=1,
                alerts_open=1,
                snapshot=None,
                snapshot_version=1,
                esc_step=1,
                esc_loop=0,
                esc_done=False,
                esc_reason="",
                confirmed=False,
                row_version=1,
                updated_at=T0,
            )
            for i in range(n_open)
        ]
        for k in range(0, n_open, 5000):
            s.execute(insert(Incident), rows[k : k + 5000])
        trows: list[dict[str, Any]] = [
            dict(
                incident_id=base + 1 + i,
                purpose=p,
                step=1,
                loop=0,
                snapshot_version=1,
                due_at=T0 + 86400 * 30 + (i if i % 100 else -86400 * 29.9),
                state="pending",
                created_at=T0,
            )
            for i in range(n_open)
            for p in ("escalation", "sla")
        ]
        for k in range(0, len(trows), 5000):
            s.execute(insert(Timer), trows[k : k + 5000])
    idle = []
    for _ in range(20):
        t0 = time.perf_counter()
        svc.run_due(T0 + 60)
        idle.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    fired = svc.run_due(T0 + 86400, limit=500)  # one tick's worth: the job takes at most 500 per tick
    busy = time.perf_counter() - t0
    return {
        "open_orders": n_open,
        "pending_timers": 2 * n_open,
        "idle_tick_ms_median": round(sorted(idle)[len(idle) // 2] * 1000, 2),
        "due_timers": 2 * (n_open // 100),
        "busy_tick_timers": 500,
        "busy_tick_s": round(busy, 2),
        "fired_or_checked": fired,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=10_000)
    ap.add_argument("--devices", type=int, default=5_000)
    ap.add_argument("--streets", type=int, default=40)
    ap.add_argument("--open", type=int, default=100_000)
    ap.add_argument("--database", default="")
    ap.add_argument("--mix", choices=["covers", "district"], default="covers", help="the storm (see above)")
    ap.add_argument("--out", type=Path, help="result file (default bench/results/bench_loop.json)")
    ap.add_argument("--baseline", type=Path, help="also run against the code in this directory, first")
    ap.add_argument(
        "--drain-steps", type=int, default=DRAIN_BATCH_STEPS, help="steps per loop transaction (queue sink)"
    )
    ap.add_argument(
        "--sink",
        choices=["queue", "inline"],
        default="queue",
        help="queue: drained off the request (default); inline: the loop runs in the request",
    )
    args = ap.parse_args()
    baseline: dict[str, Any] | None = None
    if args.baseline is not None:
        with tempfile.TemporaryDirectory() as tmp:
            argv = [a for a in sys.argv[1:] if a != "--baseline" and a != str(args.baseline)]
            out_b = Path(tmp) / "baseline.json"
            subprocess.run(
                [sys.executable, __file__, *argv, "--out", str(out_b)],
                env={**os.environ, "VIGIL_BENCH_CODE": str(args.baseline.resolve())},
                stdout=subprocess.DEVNULL,
                check=True,
            )
            baseline = json.loads(out_b.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{tmp}/bench-loop.db"
        setup(url, args.devices, args.streets)
        clock = Clock()
        db = Database(url)
        svc = LoopService(db, box=SecretBox(load_or_create_key(Path(tmp) / "k.key")), clock=clock)
        result: dict[str, Any] = {
            "code": str(CODE),
            "command": " ".join(["bench/bench_loop.py", *sys.argv[1:]]),
            "machine": platform.platform(),
            "database": db.engine.url.get_backend_name(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "storm": storm(svc, clock, args.alerts, args.devices, args.sink, args.drain_steps, args.mix),
            "timers": timers(svc, args.open),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
        db.close()
    if baseline is not None:
        result["baseline"] = baseline
    out = args.out or Path(__file__).resolve().parent / "results" / "bench_loop.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
