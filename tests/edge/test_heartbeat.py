"""The uplink heartbeat (edge/uplink/sender.py): an idle gateway sends status-only batches so the cloud keeps
it online; a heartbeat never delays an alert or a pending batch, is never persisted, never piles up.

End to end: the real cloud app (tests/cloud/cloudkit.py, a ManualClock moved by hand) behind a real uvicorn
and the real gateway daemon with no device reporting; and the real MQTT ingest worker behind Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import uvicorn

from alerts.contract import UplinkAck, UplinkBatch
from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig
from edge.config import ConfigError, GatewayConfig, parse_config
from edge.daemon import Gateway
from edge.metrics import GatewayMetrics
from edge.outbox import Outbox, PendingBatch
from edge.status import diagnose_metrics
from edge.uplink import UplinkSender, UplinkUnavailable
from edge.uplink.mqtt import MqttUplink
from firmware_bridge.kernel.events import EventType
from tests.aio import cancel_and_wait
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import GW1, Cloud, make_settings, start_cloud
from tests.edge.cloudstub import CloudStub
from tests.edge.helpers import alert, manhole_batch
from tests.servers import MosquittoServer, free_port

GW = "gw-hb-1"


class ScriptedUplink:
    """An in-process cloud: records every batch it is handed; fails while ``failing``; leaves heartbeats
    (batches without records) unanswered while ``hang_heartbeats``."""

    def __init__(self) -> None:
        self.sent: list[UplinkBatch] = []
        self.failing = False
        self.hang_heartbeats = False

    async def run(self) -> None:
        return None

    async def send(self, batch: PendingBatch) -> UplinkAck:
        # JSON whatever the outbox's body format (a binary body renders its JSON on demand)
        b = UplinkBatch.model_validate_json(batch.as_json() if hasattr(batch, "as_json") else batch.body)
        self.sent.append(b)
        if self.failing:
            raise UplinkUnavailable("connection refused (test)", reason="connect")
        if self.hang_heartbeats and not b.n_records:
            await asyncio.Event().wait()
        return UplinkAck(batch_id=b.batch_id, committed_at=1_700_000_000.0, telemetry_stored=b.n_records)

    async def aclose(self) -> None:
        return None

    def heartbeats(self) -> list[UplinkBatch]:
        return [b for b in self.sent if not b.n_records]


async def wait_until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a condition observable from outside, with a deadline."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def sending(outbox: Outbox, uplink: object, **kw: float) -> AsyncIterator[UplinkSender]:
    opts: dict[str, float] = {
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "recovery_probe_s": 0.05,
        "heartbeat_s": 0.05,
        "linger_s": 0.0,
        **kw,
    }
    status = {"version": "t", "uptime_s": 1.0, "outbox_depth": 0, "frames_total": 7, "rejects_total": 1}
    s = UplinkSender(outbox, uplink, GatewayMetrics(), GW, status=lambda: dict(status), **opts)  # type: ignore[arg-type]
    task = asyncio.create_task(s.run())
    try:
        yield s
    finally:
        await cancel_and_wait(task)


def persisted_batches(outbox: Outbox) -> int:
    return int(outbox._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0])


async def test_an_idle_gateway_sends_status_only_heartbeats_never_persisted(tmp_path: Path) -> None:
    up = ScriptedUplink()
    with Outbox(tmp_path / "o.db") as ob:
        async with sending(ob, up) as s:
            await wait_until(lambda: s.heartbeats_acked >= 3)
        assert s.batches_acked == 0 and s.up is True and s.last_heartbeat_at is not None
        assert persisted_batches(ob) == 0
    hb = up.heartbeats()
    assert len(hb) == len(up.sent) >= 3
    assert len({b.batch_id for b in hb}) == len(hb)  # a fresh id each time
    assert all(b.gateway_id == GW and b.status is not None for b in hb)
    status = hb[0].status
    assert status is not None and status.frames_total == 7 and status.rejects_total == 1
    assert status.quarantined_total == 0 and status.dead_letter_total == 0  # the sender's own additions


async def test_a_heartbeat_in_flight_never_delays_an_alert(tmp_path: Path) -> None:
    up = ScriptedUplink()
    up.hang_heartbeats = True  # the cloud never answers the heartbeat
    with Outbox(tmp_path / "o.db") as ob:
        async with sending(ob, up, heartbeat_s=0.01) as s:
            await wait_until(lambda: len(up.heartbeats()) == 1)
            ob.commit([], [alert(1)])
            s.notify()
            await wait_until(lambda: s.batches_acked == 1)
        assert ob.stats().depth["alert"] == 0
    assert [a.alert_id for a in up.sent[1].alerts] == [alert(1).alert_id]


async def test_no_heartbeat_while_a_batch_waits_and_an_outage_piles_nothing_up(tmp_path: Path) -> None:
    up = ScriptedUplink()
    up.failing = True
    with Outbox(tmp_path / "o.db") as ob:
        ob.commit([manhole_batch(5)], [])
        async with sending(ob, up, heartbeat_s=0.01) as s:
            await wait_until(lambda: len(up.sent) >= 5)
            # while a batch waits for its retry, the retry itself is the sign of life: no heartbeat
            assert up.heartbeats() == [] and len({b.batch_id for b in up.sent}) == 1
            up.failing = False
            await wait_until(lambda: s.batches_acked == 1)
            n_batches = len(up.sent)
            up.failing = True  # an outage of an idle gateway: heartbeats fail, one after another
            await wait_until(lambda: len(up.sent) >= n_batches + 5)
            assert s.up is False
            assert persisted_batches(ob) == 0  # nothing in the outbox: a heartbeat is never a record
            up.failing = False
            n_failed = len(up.sent) - n_batches
            await wait_until(lambda: s.heartbeats_acked >= 2)
            assert s.up is True
    ids = [b.batch_id for b in up.heartbeats()]
    # the whole outage is one heartbeat id (the cloud stores it once however many copies a broker
    # queued), acknowledged when the cloud came back; the next heartbeat has a fresh one
    assert n_failed >= 5 and set(ids[: n_failed + 1]) == {ids[0]}
    assert ids[n_failed + 1] != ids[0]


# -- end to end: the real cloud ----------------------------------------------------------------------------
def gateway_config(tmp_path: Path, url: str, token: str, heartbeat_s: float) -> GatewayConfig:
    cfg = parse_config(
        f"""
[gateway]
id = "{GW1}"
data_dir = "{tmp_path / "gw"}"
credential = "{token}"

[uplink]
mode = "http"
url = "{url}"
backoff_max_s = 0.3
heartbeat_s = {heartbeat_s}

[metrics]
enabled = false
""",
        tmp_path / "gateway.toml",
    )
    return cfg


async def test_an_idle_gateway_status_says_at_once_whether_the_cloud_takes_its_credential(
    tmp_path: Path,
) -> None:
    """Right after an install, with no device reporting yet, ``vigil gateway status`` already knows."""
    cloud = CloudStub(port=free_port())
    await cloud.start()
    try:
        for token, expected in (("wrong", "refuses this gateway's credential"), ("tok", "cloud reachable")):
            cfg = gateway_config(tmp_path / token, cloud.url, token, 60.0)
            cfg = cfg.model_copy(
                update={"metrics": cfg.metrics.model_copy(update={"enabled": True, "port": 0})}
            )
            gw = Gateway(cfg)
            stop = asyncio.Event()
            running = asyncio.create_task(gw.run(stop), name="gateway")
            try:
                await asyncio.wait_for(gw.started.wait(), 10)
                url = f"http://127.0.0.1:{gw.metrics_server.port}/metrics"
                async with httpx.AsyncClient() as client, asyncio.timeout(20):
                    while True:  # the first heartbeat goes at start: no device has to report first
                        report = diagnose_metrics((await client.get(url)).text)
                        if any(expected in line for line in report.lines):
                            break
                        await asyncio.sleep(0.05)
                assert report.exit_code == (1 if token == "wrong" else 0), report.lines
            finally:
                stop.set()
                await asyncio.wait_for(running, 20)
    finally:
        await cloud.stop()


def test_heartbeat_and_linger_settings_name_the_key_when_invalid(tmp_path: Path) -> None:
    base = gateway_config(tmp_path, "http://127.0.0.1:1", "t", 30)
    assert (base.uplink.heartbeat_s, base.uplink.linger_s) == (30, 0.5)
    for line, key in (
        ("heartbeat_s = 0", "uplink.heartbeat_s"),
        ("linger_s = -0.1", "uplink.linger_s"),
        ("linger_s = 60", "uplink.linger_s"),
    ):
        text = f'[gateway]\nid = "g"\n[uplink]\nmode = "none"\n{line}\n'
        with pytest.raises(ConfigError) as e:
            parse_config(text, tmp_path / "gateway.toml")
        assert key in str(e.value) and "line 5" in str(e.value)


async def gateway_view(cloud: Cloud) -> dict[str, object]:
    r = await cloud.client.get(f"/api/v1/gateways/{GW1}", headers=cloud.viewer)
    assert r.status_code == 200, r.text
    view: dict[str, object] = r.json()
    return view


async def test_a_quiet_gateway_stays_online_in_the_real_cloud_and_a_stopped_one_goes_offline(
    tmp_path: Path, sqlite_url: str
) -> None:
    port = free_port()
    async with start_cloud(make_settings(tmp_path, sqlite_url, port=port)) as cloud:
        server = uvicorn.Server(
            uvicorn.Config(cloud.app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
        )
        serving = asyncio.create_task(server.serve(), name="uvicorn")
        try:
            cfg = gateway_config(tmp_path, f"http://127.0.0.1:{port}", cloud.gw1_token, 0.05)
            gw = Gateway(cfg)
            assert gw.sender is not None and gw.sender.heartbeat_s == 0.05  # real seconds; cloud time by hand
            stop = asyncio.Event()
            running = asyncio.create_task(gw.run(stop), name="gateway")
            offline_s = cloud.settings.gateway_offline_s
            seen: list[float] = []

            async def heard_after(t: float) -> bool:
                view = await gateway_view(cloud)
                last = view["last_seen"]
                return isinstance(last, float) and last >= t

            # no device reports; over three offline thresholds of cloud time the gateway stays online
            for _ in range(6):
                t = cloud.clock.now()
                async with asyncio.timeout(20):
                    while not await heard_after(t):
                        await asyncio.sleep(0.02)
                view = await gateway_view(cloud)
                assert view["online"] is True
                status = view["status"]
                assert isinstance(status, dict) and status["outbox_depth"] == 0
                seen.append(float(view["last_seen"]))  # type: ignore[arg-type]
                cloud.clock.advance(offline_s / 2)
            assert seen[-1] - seen[0] >= 2 * offline_s
            steps = await cloud.state.monitor.check_once()  # its quiet devices may be silent: not it
            assert [s for s in steps if s.event_type is EventType.GATEWAY_OFFLINE] == []
            stop.set()
            await asyncio.wait_for(running, 20)
            assert gw.sender.batches_acked == 0 and gw.sender.heartbeats_acked >= 6
            # a stopped gateway: past the threshold it is offline, and the cloud pages once
            cloud.clock.advance(offline_s + 1)
            assert (await gateway_view(cloud))["online"] is False
            steps = await cloud.state.monitor.check_once()
            offline = [
                (s.device_id, s.phase.value) for s in steps if s.event_type is EventType.GATEWAY_OFFLINE
            ]
            assert offline == [(GW1, "raised")]
        finally:
            server.should_exit = True
            await serving


async def test_the_cloud_takes_a_heartbeat_over_mqtt(cloud_sqlite: Cloud, mosquitto: MosquittoServer) -> None:
    cloud = cloud_sqlite
    worker = IngestWorker(
        MqttIngestConfig(
            host=mosquitto.host,
            port=mosquitto.port,
            client_id=f"w-{uuid.uuid4().hex[:6]}",
            group=f"g{uuid.uuid4().hex[:8]}",
            session_expiry_s=60,
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
        ),
        cloud.state.ingest,
    )
    worker_task = asyncio.create_task(worker.run(), name="ingest-worker")
    up = MqttUplink(f"mqtt://{mosquitto.host}:{mosquitto.port}", GW1, "", timeout_s=2)
    session = asyncio.create_task(up.run(), name="uplink-session")
    try:
        await asyncio.wait_for(worker.ready.wait(), 10)
        await asyncio.wait_for(up.connected.wait(), 10)
        with Outbox(cloud.settings.secret_key_file.parent.parent / "o.db") as ob:
            status = {"version": "t", "uptime_s": 3.0, "outbox_depth": 0, "frames_total": 0}
            s = UplinkSender(
                ob, up, GatewayMetrics(), GW1, status=lambda: dict(status), heartbeat_s=0.05, linger_s=0
            )
            sender = asyncio.create_task(s.run(), name="sender")
            try:
                await wait_until(lambda: s.heartbeats_acked >= 2)
            finally:
                await cancel_and_wait(sender)
        view = await gateway_view(cloud)
        assert view["online"] is True and view["last_seen"] == cloud.clock.now()
        assert isinstance(view["status"], dict) and view["status"]["uptime_s"] == 3.0
        assert isinstance(view["batches_total"], int) and view["batches_total"] >= 2
    finally:
        for t in (worker_task, session):
            await cancel_and_wait(t)
