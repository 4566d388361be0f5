"""Hostile-input and fault harness for issue 11 ("nothing silences an alarm"): the long version of
``tests/cloud/test_hostile_*.py`` and ``tests/edge/test_uplink_quarantine.py``.

Run: ``.venv/bin/python bench/fuzz_hostile.py`` (about 5 min on a 2-core box; ``--quick`` for about 1 min,
``--cases N`` / ``--seed S`` to vary). Writes ``bench/results/fuzz_hostile.json`` and exits 1 on any
violation. Three parts, every one against the real cloud app (SQLite, real clock):

1. **Ingest fuzz.** Seeded random batches from gateway A mixing its own devices, gateway B's devices,
   unknown and wrong-kind devices, readings and alert steps from the far past to the year 2100, alert
   steps that clear B's alerts or the cloud's own, alert ids naming another device, and raw-JSON
   mutations (NaN, Infinity, 2^63+ integers, wrong types, 100 KiB strings, truncation). An oracle
   predicts what must be stored; checked per case: no 5xx, stored + duplicates + refused = sent,
   stored = what the oracle allows; at the end B's and the cloud's alerts are still open. ``--mqtt``
   also sends a share of the cases through Mosquitto + :class:`cloud.mqtt_ingest.IngestWorker` and
   checks each MQTT ack's refusals equal the HTTP ack's for the same content.
2. **Gateway end to end.** The gateway's outbox + sender (HTTP) drain frames where 1 % come from forged
   device ids and a few alert steps are poison (422): counts frames committed, stored at the cloud,
   quarantined, dead-lettered, lost and doubled; fails on any own frame lost or doubled.
3. **Slow clients.** A real uvicorn with the connection guard (as ``vigil cloud`` serves): 1,100 idle
   connections and 200 slowloris heads from one address while an honest client on another address polls
   ``/healthz``: latency p50/p99/max and failures; bytes of log written during the attack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import math
import os
import platform
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from alerts.contract import HTTP_PATH, AlertEvent, TelemetryBlock, UplinkAck
from cloud.alertstore import store_alert_steps
from cloud.app import create_app
from cloud.registry import DeviceIn
from cloud.settings import CloudSettings
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from firmware_bridge.registry import spec

GW_A, GW_B = "gw-fuzz-a", "gw-fuzz-b"
M, S = DeviceKind.MANHOLE, DeviceKind.SMOKE_ALARM
RESULTS = Path(__file__).parent / "results" / "fuzz_hostile.json"


def dev(prefix: int, i: int) -> str:
    return f"{prefix:08X}{i:08X}"


class Fleet:
    def __init__(self) -> None:
        self.a_manholes = [dev(0x70B3D57E, i) for i in range(40)]
        self.a_smokes = [dev(0x70B3D57E, 1000 + i) for i in range(20)]
        self.b_manholes = [dev(0x70B3D57E, 2000 + i) for i in range(20)]
        self.unassigned = [dev(0x70B3D57E, 3000 + i) for i in range(5)]
        self.kind = {d: M for d in self.a_manholes + self.b_manholes + self.unassigned}
        self.kind.update({d: S for d in self.a_smokes})
        self.owner: dict[str, str | None] = {d: GW_A for d in self.a_manholes + self.a_smokes}
        self.owner.update({d: GW_B for d in self.b_manholes})
        self.owner.update({d: None for d in self.unassigned})

    def devices(self) -> list[DeviceIn]:
        return [DeviceIn(device_id=d, kind=k, gateway_id=self.owner[d]) for d, k in self.kind.items()]


def reading_block(kind: DeviceKind, ids: list[str], seqs: list[int], times: list[float]) -> dict[str, Any]:
    n_ch = len(spec(kind).channels)
    rs = [
        Reading(kind, d, s % 65536, t, 90.0, 0, tuple(float(j + 1) for j in range(n_ch)), fw_version=1)
        for d, s, t in zip(ids, seqs, times, strict=True)
    ]
    blk = TelemetryBlock.from_batch(ReadingBatch.from_readings(kind, rs))
    out: dict[str, Any] = json.loads(blk.model_dump_json())
    return out


def step(
    device: str, kind: DeviceKind, et: EventType, phase: AlertPhase, t: float, ep_t: float
) -> dict[str, Any]:
    ep = int(ep_t * 1000)
    return {
        "alert_id": alert_id(device, et, ep),
        "device_id": device,
        "kind": kind.value,
        "event_type": et.value,
        "severity": int(Severity.HIGH),
        "phase": phase.value,
        "episode_ms": ep,
        "time": t,
        "frame_time": t,
        "value": 1.0,
        "message": "fuzz",
    }


# -- part 1: ingest fuzz ---------------------------------------------------------------------------------
class IngestFuzz:
    def __init__(self, rng: random.Random, fleet: Fleet, now: float, max_future_s: float, max_past_s: float):
        self.rng, self.fleet, self.now = rng, fleet, now
        self.lo, self.hi = now - max_past_s, now + max_future_s
        self.seq = 0

    def at(self, now: float) -> None:
        span = self.hi - self.lo
        self.now, self.hi = now, now + (self.hi - self.now)
        self.lo = self.hi - span

    def _time(self) -> float:
        r = self.rng.random()
        if r < 0.7:
            return self.now - self.rng.uniform(0, 3600)
        return self.rng.choice(
            [self.now + 200, self.now + 400, self.now + 86400, self.now - 500 * 86400, 4_102_000_000.0, 1.0]
        )

    def case(
        self, i: int, b_alerts: list[dict[str, Any]], cloud_alerts: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], int, int]:
        """A batch document for gateway A and the oracle's (readings allowed, alert steps allowed)."""
        f, rng = self.fleet, self.rng
        pools = {
            "own": f.a_manholes,
            "b": f.b_manholes,
            "unassigned": f.unassigned,
            "unknown": [dev(0xDEADBEEF, rng.randrange(1 << 32)) for _ in range(3)],
            "own_smoke_as_manhole": f.a_smokes,
        }
        ids, times = [], []
        allowed = 0
        for _ in range(rng.randint(0, 30)):
            pool = rng.choices(list(pools), weights=[70, 10, 5, 10, 5])[0]
            d = rng.choice(pools[pool])
            t = self._time()
            ids.append(d)
            times.append(t)
            if pool == "own" and self.lo <= t <= self.hi:
                allowed += 1
        self.seq += len(ids)
        telemetry = [reading_block(M, ids, list(range(self.seq, self.seq + len(ids))), times)] if ids else []
        alerts: list[dict[str, Any]] = []
        alerts_allowed = 0
        for _ in range(rng.randint(0, 4)):
            kind = rng.choice(["own", "clear_b", "clear_cloud", "mismatch", "future", "unknown"])
            t = self.now - rng.uniform(0, 600)
            if kind == "own":
                d = rng.choice(f.a_smokes)
                ep = t - rng.uniform(0, 60)
                alerts.append(step(d, S, EventType.FIRE, rng.choice(list(AlertPhase)), t, ep))
                alerts_allowed += 1
            elif kind == "clear_b":
                a = dict(rng.choice(b_alerts))
                a.update(phase="cleared", time=t)
                alerts.append(a)
            elif kind == "clear_cloud":
                a = dict(rng.choice(cloud_alerts))
                a.update(phase="cleared", time=t, device_id=a["device_id"])
                alerts.append(a)
            elif kind == "mismatch":
                own = step(rng.choice(f.a_smokes), S, EventType.FIRE, AlertPhase.CLEARED, t, t)
                own["alert_id"] = rng.choice(b_alerts)["alert_id"]
                alerts.append(own)
            elif kind == "future":
                alerts.append(
                    step(rng.choice(f.a_smokes), S, EventType.FIRE, AlertPhase.CLEARED, 4_102_000_000.0, t)
                )
            else:
                alerts.append(
                    step(dev(0xDEADBEEF, rng.randrange(1 << 32)), S, EventType.FIRE, AlertPhase.RAISED, t, t)
                )
        # own steps with the same (alert_id, phase, time) are stored once
        keys = {
            (a["alert_id"], a["phase"], a["time"])
            for a in alerts
            if a["device_id"] in f.a_smokes
            and a["alert_id"] == alert_id(a["device_id"], a["event_type"], a["episode_ms"])
            and a["time"] < self.hi
        }
        alerts_allowed = len(keys)
        doc = {
            "contract_version": 2,
            "batch_id": f"fuzz-{i:08d}-{rng.randrange(1 << 30):x}",
            "gateway_id": GW_A,
            "sent_at": self.now,
            "telemetry": telemetry,
            "alerts": alerts,
            "status": {"uptime_s": 1.0, "frames_total": i},
        }
        return doc, allowed, alerts_allowed

    def mutate(self, raw: bytes) -> bytes:
        rng = self.rng
        choice = rng.randrange(10)
        if choice == 0:
            return raw.replace(b'"value":1.0', b'"value":NaN', 1)
        if choice == 1:
            return raw.replace(b'"uptime_s":1.0', b'"uptime_s":Infinity', 1)
        if choice == 2:
            return raw.replace(b'"episode_ms":', b'"episode_ms":9223372036854775', 1)
        if choice == 3:
            return raw[: rng.randrange(1, max(2, len(raw)))]
        if choice == 4:
            return raw.replace(b'"message":"fuzz"', b'"message":"' + b"x" * 100_000 + b'"', 1)
        if choice == 5:
            return raw.replace(b'"seq":[', b'"seq":[-1,', 1)
        if choice == 6:
            return raw.replace(b'"contract_version":2', b'"contract_version":99', 1)
        if choice == 7:
            return raw.replace(b'"frames_total":', b'"frames_total":1e400,"x":', 1)
        if choice == 8:
            return b"[" * 5000 + b"]" * 5000
        pos = rng.randrange(len(raw))
        return raw[:pos] + bytes([rng.randrange(256)]) + raw[pos + 1 :]


async def part_ingest(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    fleet = Fleet()
    settings = CloudSettings.model_validate(
        dict(
            database_url=f"sqlite:///{tmp}/fuzz.db",
            timeseries_url=f"sqlite:///{tmp}/fuzz-ts.db",
            secret_key_file=tmp / "keys" / "k.key",
            migrate_on_start=True,
            connectivity_check_s=0,
            json_logs=False,
        )
    )
    app = await asyncio.to_thread(create_app, settings)
    out: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        st = app.state.vigil
        now = st.clock.now()
        tok_a = st.credentials.add_gateway(GW_A, now=now)
        tok_b = st.credentials.add_gateway(GW_B, now=now)
        admin = st.credentials.add_user("fuzz-admin", "admin", now=now)
        st.registry.upsert(fleet.devices(), now=now)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.fuzz") as client:
            ha = {"Authorization": f"Bearer {tok_a}", "content-type": "application/json"}
            hb = {"Authorization": f"Bearer {tok_b}", "content-type": "application/json"}
            # B raises alerts; the cloud raises its own (connectivity-style) alerts on A's devices
            b_alerts = [
                step(d, M, EventType.COVER_OPEN, AlertPhase.RAISED, now - 10, now - 10)
                for d in fleet.b_manholes[:5]
            ]
            r = await client.post(
                HTTP_PATH,
                json={"batch_id": "b-raises-0001", "gateway_id": GW_B, "sent_at": now, "alerts": b_alerts},
                headers=hb,
            )
            assert r.status_code == 200, r.text
            cloud_alerts = [
                step(d, S, EventType.DEVICE_SILENT, AlertPhase.RAISED, now - 10, now - 10)
                for d in fleet.a_smokes[:3]
            ]
            with st.db.write() as s:
                store_alert_steps(
                    s, [AlertEvent.model_validate(a) for a in cloud_alerts], source="cloud", received_at=now
                )
            fuzz = IngestFuzz(rng, fleet, now, st.ingest.limits.max_future_s, st.ingest.limits.max_past_s)
            statuses: Counter[int] = Counter()
            refusals: Counter[str] = Counter()
            violations: list[str] = []
            sent = stored = refused = allowed_total = 0
            t0 = time.perf_counter()
            for i in range(args.cases):
                fuzz.at(st.clock.now())  # the oracle judges against the cloud's clock as it moves
                doc, allowed, alerts_allowed = fuzz.case(i, b_alerts, cloud_alerts)
                raw = json.dumps(doc, separators=(",", ":")).encode()
                mutated = rng.random() < 0.15
                if mutated:
                    raw = fuzz.mutate(raw)
                r = await client.post(HTTP_PATH, content=raw, headers=ha)
                statuses[r.status_code] += 1
                if r.status_code >= 500:
                    violations.append(f"case {i}: {r.status_code} {r.text[:200]}")
                    continue
                if mutated or r.status_code != 200:
                    if not mutated:
                        violations.append(
                            f"case {i}: unmutated batch answered {r.status_code}: {r.text[:200]}"
                        )
                    continue
                ack = UplinkAck.model_validate(r.json())
                n = sum(len(b["device_id"]) for b in doc["telemetry"])
                sent += n
                stored += ack.telemetry_stored
                refused += ack.telemetry_refused
                allowed_total += allowed
                for ref in ack.refused:
                    refusals[f"{ref.record}:{ref.reason}"] += ref.count
                if ack.telemetry_stored + ack.telemetry_duplicates + ack.telemetry_refused != n:
                    violations.append(f"case {i}: stored+dup+refused != sent ({ack})")
                if ack.telemetry_stored + ack.telemetry_duplicates != allowed:
                    violations.append(
                        f"case {i}: stored {ack.telemetry_stored}+{ack.telemetry_duplicates}, "
                        f"oracle {allowed}"
                    )
                if ack.alerts_stored > alerts_allowed:
                    violations.append(
                        f"case {i}: {ack.alerts_stored} alert steps stored, oracle allows {alerts_allowed}"
                    )
            elapsed = time.perf_counter() - t0
            for a in b_alerts + cloud_alerts:
                r = await client.get(
                    f"/api/v1/alerts/{a['alert_id']}", headers={"Authorization": f"Bearer {admin}"}
                )
                if r.json()["alert"]["phase"] != "raised":
                    violations.append(
                        f"alert {a['alert_id']} of another owner was moved to {r.json()['alert']['phase']}"
                    )
            out = {
                "cases": args.cases,
                "mutated_cases": sum(v for k, v in statuses.items() if k != 200),
                "statuses": {str(k): v for k, v in sorted(statuses.items())},
                "http_5xx": sum(v for k, v in statuses.items() if k >= 500),
                "readings_sent_in_valid_batches": sent,
                "readings_stored": stored,
                "readings_refused": refused,
                "readings_oracle_allowed": allowed_total,
                "refusals_by_reason": dict(sorted(refusals.items())),
                "foreign_alerts_checked_still_open": len(b_alerts) + len(cloud_alerts),
                "cases_per_s": round(args.cases / elapsed, 1),
                "violations": violations[:20],
                "violation_count": len(violations),
            }
            if args.mqtt:
                out["mqtt"] = await part_mqtt(args, st, fuzz, b_alerts, cloud_alerts, client, ha)
    return out


async def part_mqtt(
    args: argparse.Namespace,
    st: Any,
    fuzz: IngestFuzz,
    b_alerts: list[dict[str, Any]],
    cloud_alerts: list[dict[str, Any]],
    client: httpx.AsyncClient,
    ha: dict[str, str],
) -> dict[str, Any]:
    import uuid

    import aiomqtt

    from alerts.contract import mqtt_ack_topic, mqtt_up_topic
    from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig
    from tests.servers import start_mosquitto

    n = max(20, args.cases // 10)
    mism = 0
    details: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        broker = start_mosquitto(Path(d))
        try:
            cfg = MqttIngestConfig(
                host=broker.host, port=broker.port, client_id=f"fuzz-{uuid.uuid4().hex[:6]}", group="fuzz"
            )
            worker = IngestWorker(cfg, st.ingest)
            task = asyncio.create_task(worker.run())
            async with asyncio.timeout(10):
                await worker.ready.wait()
            acks: dict[str, dict[str, Any]] = {}
            async with aiomqtt.Client(broker.host, broker.port) as c:
                await c.subscribe(mqtt_ack_topic(GW_A), qos=1)

                async def collect() -> None:
                    async for m in c.messages:
                        doc = json.loads(bytes(m.payload))
                        acks[str(doc.get("batch_id"))] = doc

                col = asyncio.create_task(collect())
                for i in range(n):
                    fuzz.at(st.clock.now())
                    doc, _, _ = fuzz.case(10_000_000 + i, b_alerts, cloud_alerts)
                    http = await client.post(HTTP_PATH, json=doc, headers=ha)
                    doc["batch_id"] = doc["batch_id"] + "-m"
                    await c.publish(mqtt_up_topic(GW_A), json.dumps(doc), qos=1)
                    async with asyncio.timeout(10):
                        while doc["batch_id"] not in acks:
                            await asyncio.sleep(0.01)
                    h = UplinkAck.model_validate(http.json())
                    m = UplinkAck.model_validate(acks[doc["batch_id"]])
                    if _key(h) != _key(m) or (h.telemetry_stored + h.telemetry_duplicates) != (
                        m.telemetry_stored + m.telemetry_duplicates
                    ):
                        mism += 1
                        details.append({"http": h.model_dump(mode="json"), "mqtt": m.model_dump(mode="json")})
                col.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            broker.stop()
    return {"cases": n, "ack_mismatches_vs_http": mism, "mismatches": details[:3]}


def _key(a: UplinkAck) -> list[tuple[object, ...]]:
    """What must agree between HTTP and MQTT (``detail`` quotes the moving time window)."""
    return [(r.record, r.device_id, r.reason, r.count, r.alert_id, r.phase, r.time) for r in a.refused]


# -- part 2: gateway end to end -------------------------------------------------------------------------
async def part_gateway(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from edge.metrics import GatewayMetrics
    from edge.outbox import Outbox
    from edge.uplink.http import HttpUplink
    from edge.uplink.sender import UplinkSender

    rng = random.Random(args.seed + 1)
    fleet = Fleet()
    settings = CloudSettings.model_validate(
        dict(
            database_url=f"sqlite:///{tmp}/gw.db",
            timeseries_url=f"sqlite:///{tmp}/gw-ts.db",
            secret_key_file=tmp / "keys" / "k2.key",
            migrate_on_start=True,
            connectivity_check_s=0,
            json_logs=False,
        )
    )
    app = await asyncio.to_thread(create_app, settings)
    async with app.router.lifespan_context(app):
        st = app.state.vigil
        now = st.clock.now()
        tok = st.credentials.add_gateway(GW_A, now=now)
        st.registry.upsert(fleet.devices(), now=now)
        ob = Outbox(tmp / "outbox.sqlite3")
        up = HttpUplink("http://vigil.fuzz", tok, transport=httpx.ASGITransport(app=app))
        sender = UplinkSender(
            ob,
            up,
            GatewayMetrics(),
            GW_A,
            max_records=2000,
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
            max_refusals=2,
        )
        task = asyncio.create_task(sender.run())
        own: set[tuple[str, float]] = set()
        forged = good_alerts = poison = 0
        good_ids: set[str] = set()
        seq = 0
        t_base = now - 3000
        for commit in range(args.gateway_commits):
            ids, times, seqs = [], [], []
            for _ in range(200):
                seq += 1
                if rng.random() < 0.01:
                    d = dev(0xDEADBEEF, rng.randrange(1 << 32))
                    forged += 1
                else:
                    d = rng.choice(fleet.a_manholes)
                    own.add((d, round(t_base + seq * 0.01, 3)))
                ids.append(d)
                seqs.append(seq)
                times.append(t_base + seq * 0.01)
            blk = reading_block(M, ids, seqs, times)
            batch = TelemetryBlock.model_validate(blk).to_batch()
            alerts = []
            if commit % 10 == 0:
                a = AlertEvent.model_validate(
                    step(
                        rng.choice(fleet.a_smokes),
                        S,
                        EventType.FIRE,
                        AlertPhase.RAISED,
                        now - commit,
                        now - commit,
                    )
                )
                alerts.append(a)
                good_alerts += 1
                good_ids.add(a.alert_id)
                if commit % 50 == 0:
                    bad = AlertEvent.model_construct(**{**dict(a), "episode_ms": 2**63 + commit})
                    alerts.append(bad)
                    poison += 1
            await ob.call(ob.commit, [batch], alerts)
            sender.notify()
        t0 = time.perf_counter()
        async with asyncio.timeout(600):
            while ob.stats().depth != {"alert": 0, "live": 0, "backlog": 0}:
                await asyncio.sleep(0.05)
        drain = time.perf_counter() - t0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stored: Counter[tuple[str, float]] = Counter()
        for d in fleet.a_manholes:
            series = st.store.query(d, M, t_base - 1, now + 1, max_points=10**7)
            for t_ in series.time.tolist():
                stored[(d, round(float(t_), 3))] += 1
        lost = len(own - set(stored))
        doubled = sum(v - 1 for v in stored.values() if v > 1)
        from sqlalchemy import select

        from cloud.db import Alert

        with st.db.read() as s_:
            delivered = set(s_.scalars(select(Alert.alert_id).where(Alert.alert_id.in_(sorted(good_ids)))))
        q = dict(ob.quarantined)
        dl = dict(ob.dead_lettered)
        ob.close()
        await up.aclose()
    return {
        "frames_committed": len(own) + forged,
        "own_frames": len(own),
        "forged_frames": forged,
        "quarantined": q,
        "alerts_good": good_alerts,
        "alerts_poison": poison,
        "alerts_good_delivered": len(delivered),
        "alerts_good_missing": len(good_ids - delivered),
        "dead_letter": dl,
        "own_frames_lost": lost,
        "own_frames_doubled": doubled,
        "drain_s": round(drain, 2),
    }


# -- part 3: slow clients ------------------------------------------------------------------------------
async def part_slow(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import uvicorn

    from cloud.connguard import server_config
    from cloud.limits import GuardMetrics, install_log_throttle

    settings = CloudSettings.model_validate(
        dict(
            database_url=f"sqlite:///{tmp}/slow.db",
            timeseries_url=f"sqlite:///{tmp}/slow-ts.db",
            secret_key_file=tmp / "keys" / "k3.key",
            migrate_on_start=True,
            connectivity_check_s=0,
            json_logs=False,
        )
    )
    app = await asyncio.to_thread(create_app, settings)
    log_bytes = io.StringIO()
    handler = logging.StreamHandler(log_bytes)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # what reaches the journal: uvicorn's and our warnings
    install_log_throttle()
    with socket.socket() as s0:
        s0.bind(("127.0.0.1", 0))
        port = s0.getsockname()[1]
    metrics = GuardMetrics.for_registry(app.state.vigil.metrics.registry)
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=port, metrics=metrics))
    srv = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    held: list[asyncio.StreamWriter] = []
    lat: list[float] = []
    failures = 0
    try:
        for i in range(args.idle):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                if i < args.slowloris:
                    w.write(b"POST /api/v1/ingest/batches HTTP/1.1\r\nHost: x\r\nX-a: ")
                held.append(w)
            except OSError:
                break
        honest = "127.0.0.2"
        t_end = time.monotonic() + args.attack_s
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=honest)) as client:
            while time.monotonic() < t_end:
                t0 = time.perf_counter()
                try:
                    r = await client.get(f"http://127.0.0.1:{port}/healthz", timeout=5.0)
                    if r.status_code != 200:
                        failures += 1
                except httpx.HTTPError:
                    failures += 1
                lat.append(time.perf_counter() - t0)
                # the attacker also sends garbage requests that each produce an error log line
                with contextlib.suppress(OSError):
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write(b"\x16\x03\x01 garbage garbage\r\n\r\n")
                    held.append(w)
                await asyncio.sleep(0.05)
        from prometheus_client import generate_latest

        text = generate_latest(app.state.vigil.metrics.registry).decode()
    finally:
        for w in held:
            w.close()
        server.should_exit = True
        await srv
        root.removeHandler(handler)
    refused = {
        line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vigil_cloud_connections_refused_total{")
    }
    lat.sort()
    return {
        "idle_connections_opened": args.idle,
        "slowloris_heads": args.slowloris,
        "attack_s": args.attack_s,
        "healthz_requests": len(lat),
        "healthz_failures": failures,
        "healthz_p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
        "healthz_p99_ms": round(1000 * lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)], 1)
        if lat
        else None,
        "healthz_max_ms": round(1000 * lat[-1], 1) if lat else None,
        "connections_refused": refused,
        "log_bytes_during_attack": len(log_bytes.getvalue().encode()),
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", type=int, default=None)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument(
        "--mqtt", action="store_true", help="also compare MQTT acks with HTTP acks (needs mosquitto)"
    )
    args = ap.parse_args()
    args.cases = args.cases or (300 if args.quick else 2000)
    args.gateway_commits = 50 if args.quick else 500
    args.idle = 1100
    args.slowloris = 200
    args.attack_s = 5.0 if args.quick else 20.0
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.time()
        result: dict[str, Any] = {
            "command": " ".join(["bench/fuzz_hostile.py", *sys.argv[1:]]),
            "machine": f"{platform.machine()} {os.cpu_count()} cpu, python {platform.python_version()}",
            "ingest_fuzz": await part_ingest(args, tmp),
            "gateway_e2e": await part_gateway(args, tmp),
            "slow_clients": await part_slow(args, tmp),
        }
        result["wall_s"] = round(time.time() - t0, 1)
    ing, gw, slow = result["ingest_fuzz"], result["gateway_e2e"], result["slow_clients"]
    failed = (
        ing["violation_count"]
        or ing["http_5xx"]
        or ing.get("mqtt", {}).get("ack_mismatches_vs_http", 0)
        or gw["own_frames_lost"]
        or gw["own_frames_doubled"]
        or gw["alerts_good_missing"]
        or slow["healthz_failures"]
    )
    result["ok"] = not failed
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
