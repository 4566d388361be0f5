"""Cloud outages with the gateway running: nothing lost or doubled, alerts first when the cloud is back.

A real ``vigil gateway`` subprocess reads SLIP frames from a pseudo-terminal (manhole telemetry, and smoke
alarms that go into fire during each outage, i.e. alerts) and uplinks over HTTP to a real local cloud
(``tests.faults.gateway_kit.FaultyCloud``) with the shipped back-off settings. The cloud fails in turn:

- ``500``: answers 500 to every batch (a cloud bug, or a proxy in trouble);
- ``503``: answers 503 (storage down);
- ``down``: the server is stopped (connection refused);
- ``commit_then_503``: stores a batch, then loses the answer (the gateway must resend the same batch id).

Frames, alarms among them, keep arriving during the outage. When the cloud is back, every alert step
produced before its return (including those whose first send was answered 5xx, recorded by the cloud)
must arrive before any telemetry batch, and at the end every accepted frame is stored exactly once. How
long the gateway took to notice the cloud was back (its return -> first stored batch) is a figure in the
ledger, not an assertion.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import tty
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware_bridge.framing import encode_frame
from tests.edge.helpers import device_id, manhole_payload, smoke_payload
from tests.edge.test_daemon_kill9 import write_all
from tests.faults.gateway_kit import (
    Daemon,
    FaultyCloud,
    Key,
    accepted_keys,
    http_uplink,
    load,
    poll,
    write_config,
)
from tests.faults.ledger import Ledger, scale
from tests.servers import free_port

N_MANHOLE = 200
SMOKE0 = 1000  # smoke alarms are devices SMOKE0, SMOKE0 + 1, ...


def grows(seen: set[str], n: int) -> Callable[[], bool]:
    return lambda: len(seen) > n


@pytest.mark.parametrize("seed", [31])
async def test_outages_lose_nothing_and_alerts_go_first(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    cycles = scale(1, 6)
    span = (0.5, 1.5) if cycles == 1 else (3.0, 20.0)  # outage lengths (s): CI, long version
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    cloud = FaultyCloud(port=free_port())
    await cloud.start()
    metrics_port = free_port()
    config = write_config(
        tmp_path / "gateway.toml",
        gateway_id="gw-faults-outage",
        data_dir=tmp_path / "data",
        sources=f'[[sources.serial]]\nname = "radio0"\nport = "{os.ttyname(slave)}"',
        uplink=http_uplink(cloud.url),  # the shipped back-off (docs/gateway.md), so the recovery is real
        metrics_port=metrics_port,
    )
    outbox = tmp_path / "data" / "outbox.sqlite3"
    daemon = Daemon(config, metrics_port, tmp_path / "daemon.log", "radio0")
    ledger = Ledger("gateway_outage")
    sent: set[Key] = set()
    seq = 0
    next_smoke = SMOKE0
    recovery: dict[str, list[float]] = {}
    alerts_first_send_failed = 0
    ordering_checked = 0

    async def radio(n_smoke: int) -> set[Key]:
        """One round of telemetry from every manhole cover, with ``n_smoke`` new smoke alarms in fire."""
        nonlocal seq, next_smoke
        seq += 1
        frames = {
            (device_id(i), seq): encode_frame(device_id(i), manhole_payload(i, seq)) for i in range(N_MANHOLE)
        }
        keys = list(frames)
        for _ in range(n_smoke):
            d = next_smoke
            next_smoke += 1
            frames[(device_id(d), 1)] = encode_frame(device_id(d), smoke_payload(d, 1, fire=True))
            keys.insert(rng.randrange(len(keys) + 1), (device_id(d), 1))
        await asyncio.to_thread(write_all, master, b"".join(frames[k] for k in keys))
        ledger.sent += len(keys)
        sent.update(keys)
        return set(keys)

    async def committed(keys: set[Key]) -> None:
        await poll(
            lambda: keys <= accepted_keys(outbox, cloud.stored()), 30, "frames committed by the gateway"
        )

    try:
        await daemon.start()
        await committed(await radio(0))
        await poll(lambda: sent <= set(cloud.stored()), 30, "the first frames stored")
        for _ in range(cycles):
            for fault in ("500", "503", "down", "commit_then_503"):
                failed_before = set(cloud.failed_alerts)
                if fault == "down":
                    await cloud.stop()
                else:
                    cloud.mode = fault
                await committed(await radio(rng.randint(2, 5)))
                if fault in ("500", "503"):  # the alert steps' first send fails: the cloud saw them refused
                    await poll(grows(cloud.failed_alerts, len(failed_before)), 30, "an alert send refused")
                outage = rng.uniform(*span) if fault != "commit_then_503" else 0.0
                await asyncio.sleep(outage)  # the outage lasts a while, frames keep coming
                if outage:
                    await committed(await radio(rng.randint(1, 3)))
                # the cloud is back
                back_wall, back = time.time(), time.monotonic()
                if fault == "down":
                    await cloud.start()
                elif fault != "commit_then_503":
                    cloud.mode = "ok"
                await poll(
                    lambda: sent <= set(cloud.stored()), 60, f"everything stored after the {fault} outage"
                )
                after = [b for b in cloud.order if cloud.arrived[b] >= back]
                if fault != "commit_then_503":
                    recovery.setdefault(fault, []).append(
                        round(min(cloud.arrived[b] for b in after) - back, 2)
                    )
                # alerts produced before the cloud came back go before any telemetry batch
                first_tel = next((i for i, b in enumerate(after) if cloud.batches[b].telemetry), len(after))
                late = [
                    a.alert_id
                    for b in after[first_tel:]
                    for a in cloud.batches[b].alerts
                    if a.time < back_wall
                ]
                assert not late, f"after the {fault} outage, alert steps came after telemetry: {late}"
                before_tel = {a.alert_id for b in after[:first_tel] for a in cloud.batches[b].alerts}
                failed_now = cloud.failed_alerts - failed_before
                assert failed_now <= set(cloud.alert_ids()), "an alert step whose send failed was lost"
                alerts_first_send_failed += len(failed_now)
                ordering_checked += len(before_tel)
        assert daemon.stop() == 0
        stored = cloud.stored()
        steps = [(a.alert_id, a.phase, a.time) for b in cloud.order for a in cloud.batches[b].alerts]
        ledger.kills, ledger.restarts = 0, 0
        ledger.reconcile(sent | accepted_keys(outbox, stored), stored.elements())
        ledger.extra.update(
            outages=cycles * 4,
            recovery_s=recovery,
            recovery_s_max=max(x for v in recovery.values() for x in v),
            alert_steps_stored=len(steps),
            alert_steps_doubled=len(steps) - len(set(steps)),
            alerts_first_send_failed=alerts_first_send_failed,
            alerts_checked_before_telemetry=ordering_checked,
            failed_requests=cloud.failed_requests,
            backoff="shipped defaults (backoff_initial_s 0.5, backoff_max_s 60; outage probe capped at 5 s)",
            load_average_1m_end=load(),
        )
        print(ledger.summary(), ledger.extra)
        assert len(steps) == len(set(steps)), "an alert step stored twice"
        assert daemon.traceback_free()
        ledger.check()
    finally:
        daemon.cleanup()
        await cloud.stop()
        os.close(master)
        os.close(slave)
