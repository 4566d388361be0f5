"""The MQTT alert lane is judged on evidence, not lost after an outage (edge/uplink/mqtt.py,
edge/uplink/alert_lane.py; docs/contract.md "Alert lane").

Against real Mosquitto brokers (tests/servers.py) and the real cloud ingest workers (cloud/mqtt_ingest.py)
storing into a small idempotent ledger: a broker outage longer than the ack timeout, after which the
cloud's alert session comes back later than its telemetry session, leaves the lane in use; a cloud down
while the broker is up likewise; a broker ACL without the ``.../alert`` line makes the gateway fall back,
shows it in ``vigil gateway status`` and still delivers every alert once; the re-probe periods double from
``alert_reprobe_min_s`` up to ``alert_reprobe_s`` (an injected clock), any lane answer resets them and a
reconnect to the broker re-probes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from alerts.contract import UplinkAck, UplinkBatch, mqtt_up_topic
from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig
from edge.config import ConfigError, parse_config
from edge.metrics import GatewayMetrics
from edge.outbox import Outbox
from edge.status import diagnose_metrics, parse_metrics
from edge.uplink import UplinkSender
from edge.uplink.alert_lane import AlertLane
from edge.uplink.mqtt import MqttUplink
from tests.aio import cancel_and_wait
from tests.edge.helpers import alert, manhole_batch
from tests.servers import MosquittoServer, start_mosquitto

T0 = 1_700_000_000.0


class Ledger:
    """The cloud's storage as the tests see it: idempotent on ``batch_id`` like cloud.ingest, recording
    which worker session stored each batch first (``up`` or ``lane``) and how many copies arrived."""

    def __init__(self) -> None:
        self.stored: dict[str, str] = {}  # batch id -> the worker that stored it
        self.copies: Counter[str] = Counter()  # batch id -> copies ingested (stored + duplicates)
        self.alerts: Counter[str] = Counter()  # alert id -> times stored (must be 1)
        self.batch_of: dict[str, str] = {}  # alert id -> the batch that stored it
        self.readings = 0

    def worker(self, name: str, gate: asyncio.Event | None = None) -> _View:
        return _View(self, name, gate)


class _View:
    def __init__(self, ledger: Ledger, name: str, gate: asyncio.Event | None = None) -> None:
        self.ledger, self.name, self.gate = ledger, name, gate

    async def ingest(self, batch: UplinkBatch, *, gateway_id: str) -> UplinkAck:
        assert batch.gateway_id == gateway_id
        if self.gate is not None:  # a slow commit on this session (e.g. its database stalls)
            await self.gate.wait()
        led = self.ledger
        led.copies[batch.batch_id] += 1
        dup = batch.batch_id in led.stored
        if not dup:
            led.stored[batch.batch_id] = self.name
            led.alerts.update(a.alert_id for a in batch.alerts)
            led.batch_of.update((a.alert_id, batch.batch_id) for a in batch.alerts)
            led.readings += sum(len(b) for b in batch.telemetry)
        return UplinkAck(batch_id=batch.batch_id, duplicate=dup, committed_at=T0)


def cloud_config(broker: MosquittoServer, *, alert_lane: bool = True) -> MqttIngestConfig:
    return MqttIngestConfig(
        host=broker.host,
        port=broker.port,
        client_id=f"ingest-{secrets.token_hex(4)}",
        group=f"g{secrets.token_hex(4)}",
        session_expiry_s=120,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        alert_lane=alert_lane,
    )


@contextlib.asynccontextmanager
async def background(
    coro: Awaitable[None], ready: Callable[[], Awaitable[object]] | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(coro)
    try:
        if ready is not None:
            await asyncio.wait_for(ready(), 10)
        yield task
    finally:
        await cancel_and_wait(task)


def worker(cfg: MqttIngestConfig, view: _View) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    w = IngestWorker(cfg, view)

    async def ready() -> None:
        await w.ready.wait()
        if w.alerts is not None:
            await w.alerts.ready.wait()

    return background(w.run(), ready)


async def until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll outside-observable state (the outbox, the ledger) with a deadline."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


def lane_metrics(metrics: GatewayMetrics) -> dict[str, float]:
    m = parse_metrics(metrics.render().decode())
    out = {lab["state"]: v for lab, v in m["vigil_gateway_alert_lane_state"]}
    out["fallbacks"] = m["vigil_gateway_alert_lane_fallbacks_total"][0][1]
    out["until"] = m["vigil_gateway_alert_lane_fallback_until_seconds"][0][1]
    return out


# --- (1) a broker outage longer than the ack timeout ------------------------------------------------------
async def test_broker_outage_longer_than_the_ack_timeout_keeps_the_alert_lane(tmp_path: Path) -> None:
    """Broker down 2 s (ack timeout 0.5 s); after it restarts the cloud's telemetry session is back at once
    but its alert session only later (independent reconnect backoffs). The alert committed in the outage
    reaches the cloud on ``.../up`` (an ack on ``.../up`` right after an outage is no evidence), the lane
    stays in use, and the next alert goes on the lane and is acked there. Each alert stored once, no
    reading lost. The old uplink switched the lane off for 15 min here."""
    broker = await asyncio.to_thread(start_mosquitto, tmp_path / "broker")
    gw, ledger, metrics = f"gw{secrets.token_hex(3)}", Ledger(), GatewayMetrics()
    telemetry_cfg = cloud_config(broker, alert_lane=False)
    lane_cfg = telemetry_cfg.alert_config()  # the same worker's alert session, run on its own here
    up = MqttUplink(
        f"mqtt://{broker.host}:{broker.port}",
        gw,
        "",
        timeout_s=1.0,
        alert_fallback_s=0.5,
        max_backoff_s=0.2,
        metrics=metrics,
    )
    try:
        with Outbox(tmp_path / "o.db") as ob:
            sender = UplinkSender(ob, up, metrics, gw, backoff_initial_s=0.05, backoff_max_s=0.3, linger_s=0)
            async with worker(telemetry_cfg, ledger.worker("up")), background(up.run()):
                await asyncio.wait_for(up.connected.wait(), 10)
                async with background(sender.run()):
                    async with worker(lane_cfg, ledger.worker("lane")):
                        ob.commit([manhole_batch(3)], [alert(1)])
                        sender.notify()
                        await until(lambda: not ob.alert_pending(alert(1).alert_id))
                        assert set(ledger.stored.values()) == {"up", "lane"}  # the lane works
                    # the alert session is gone (its broker session persists); now the broker goes down
                    await asyncio.to_thread(broker.stop)
                    ob.commit([manhole_batch(2, first=10)], [alert(2)])
                    sender.notify()
                    await asyncio.sleep(2.0)  # the outage itself: longer than both ack timeouts
                    await asyncio.to_thread(broker.start)
                    await until(lambda: not ob.alert_pending(alert(2).alert_id))
                    a2 = ledger.batch_of[alert(2).alert_id]
                    assert ledger.stored[a2] == "up"  # delivered on .../up while the lane had no reader
                    lane = lane_metrics(metrics)
                    assert lane["in_use"] == 1 and lane["fallbacks"] == 0, lane
                    assert up.alert_lane and up.alert_fallbacks_total == 0
                    async with worker(lane_cfg, ledger.worker("lane")):  # the alert session returns
                        ob.commit([], [alert(3)])
                        sender.notify()
                        await until(lambda: not ob.alert_pending(alert(3).alert_id))
                        a3 = ledger.batch_of[alert(3).alert_id]
                        assert ledger.stored[a3] == "lane" and ledger.copies[a3] == 1  # no .../up copy
                        await until(lambda: ob.stats().depth == {"alert": 0, "live": 0, "backlog": 0})
        assert up.reconnects_total >= 1
        assert ledger.alerts == Counter({alert(i).alert_id: 1 for i in (1, 2, 3)})  # none lost or doubled
        assert ledger.readings == 5
        assert lane_metrics(metrics)["fallbacks"] == 0
    finally:
        await asyncio.to_thread(broker.stop)


async def test_cloud_down_with_the_broker_up_keeps_the_alert_lane(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """The cloud's workers are down (the broker is up, the gateway stays connected) for longer than both
    ack timeouts, then its telemetry session returns before its alert session: the alert that waited is
    acked through ``.../up`` whichever wait the ack lands in, and the lane stays in use (nothing was
    answered during the outage, so the lane's silence proves nothing)."""
    gw, ledger, metrics = f"gw{secrets.token_hex(3)}", Ledger(), GatewayMetrics()
    telemetry_cfg = cloud_config(mosquitto, alert_lane=False)
    lane_cfg = telemetry_cfg.alert_config()
    up = MqttUplink(
        f"mqtt://{mosquitto.host}:{mosquitto.port}",
        gw,
        "",
        timeout_s=0.6,
        alert_fallback_s=0.4,
        metrics=metrics,
    )
    with Outbox(tmp_path / "o.db") as ob:
        sender = UplinkSender(ob, up, metrics, gw, backoff_initial_s=0.05, backoff_max_s=0.3, linger_s=0)
        async with background(up.run()):
            await asyncio.wait_for(up.connected.wait(), 10)
            async with background(sender.run()):
                async with (
                    worker(telemetry_cfg, ledger.worker("up")),
                    worker(lane_cfg, ledger.worker("lane")),
                ):
                    ob.commit([manhole_batch(2)], [alert(1)])
                    sender.notify()
                    await until(lambda: ob.stats().depth == {"alert": 0, "live": 0, "backlog": 0})
                ob.commit([], [alert(2)])  # the cloud is down
                sender.notify()
                await asyncio.sleep(2.0)  # the outage: several attempts, each lane + .../up unanswered
                async with worker(telemetry_cfg, ledger.worker("up")):
                    await until(lambda: not ob.alert_pending(alert(2).alert_id))
                assert up.alert_lane and up.alert_fallbacks_total == 0
                assert lane_metrics(metrics)["in_use"] == 1
                async with (
                    worker(telemetry_cfg, ledger.worker("up")),
                    worker(lane_cfg, ledger.worker("lane")),
                ):
                    ob.commit([], [alert(3)])
                    sender.notify()
                    await until(lambda: not ob.alert_pending(alert(3).alert_id))
                    a3 = ledger.batch_of[alert(3).alert_id]
                    assert ledger.stored[a3] == "lane" and ledger.copies[a3] == 1
    assert ledger.alerts == Counter({alert(i).alert_id: 1 for i in (1, 2, 3)})


# --- (2) a broker ACL without the .../alert line ----------------------------------------------------------
async def test_a_broker_acl_without_the_lane_falls_back_shows_it_and_delivers_every_alert(
    tmp_path: Path,
) -> None:
    """The broker lets this gateway write only ``.../up`` (its ACL lacks the ``.../alert`` line): MQTT
    3.1.1 PUBACKs and drops the lane publish. The cloud runs the lane, and ``.../up`` is answered on the
    same connection, so the lane is judged missing once: the alert is delivered through ``.../up``, the
    next one goes straight there (no second ack timeout), and ``vigil gateway status`` says so, Chinese
    first."""
    gw = f"gw{secrets.token_hex(3)}"
    acl = tmp_path / "vigil.acl"
    acl.write_text(  # anonymous clients (the cloud's workers): everything; the gateway: no .../alert
        f"topic readwrite #\n\nuser {gw}\ntopic write {mqtt_up_topic(gw)}\ntopic read vigil/v1/gw/{gw}/ack\n"
    )
    broker = await asyncio.to_thread(start_mosquitto, tmp_path / "broker", None, f"acl_file {acl}\n")
    ledger, metrics = Ledger(), GatewayMetrics()
    up = MqttUplink(
        f"mqtt://{broker.host}:{broker.port}",
        gw,
        "",
        timeout_s=2.0,
        alert_fallback_s=1.5,
        alert_reprobe_min_s=600,
        metrics=metrics,
    )
    try:
        with Outbox(tmp_path / "o.db") as ob:
            sender = UplinkSender(ob, up, metrics, gw, backoff_initial_s=0.05, backoff_max_s=0.3, linger_s=0)
            async with (
                worker(cloud_config(broker), ledger.worker("w")),
                background(up.run()),
                background(sender.run()),
            ):
                await asyncio.wait_for(up.connected.wait(), 10)
                ob.commit([manhole_batch(3)], [alert(1)])
                sender.notify()
                await until(lambda: not ob.alert_pending(alert(1).alert_id))
                lane = lane_metrics(metrics)
                assert lane["fallback"] == 1 and lane["fallbacks"] == 1, lane
                assert time.time() + 590 < lane["until"] <= time.time() + 600  # UTC epoch
                assert not up.alert_lane
                ob.commit([], [alert(2)])
                sender.notify()
                t = asyncio.get_running_loop().time()
                await until(lambda: not ob.alert_pending(alert(2).alert_id))
                assert asyncio.get_running_loop().time() - t < 1.5  # no lane attempt, no ack timeout
                await until(lambda: ob.stats().depth == {"alert": 0, "live": 0, "backlog": 0})
                a2 = ledger.batch_of[alert(2).alert_id]
                assert ledger.copies[a2] == 1 and lane_metrics(metrics)["fallbacks"] == 1
                text = metrics.render().decode()
        assert ledger.alerts == Counter({alert(1).alert_id: 1, alert(2).alert_id: 1})
        assert ledger.readings == 3
        report = diagnose_metrics(text)
        zh, en = report.render("zh"), report.render("en")
        assert "问题  MQTT 告警通道无应答而 .../up 有应答：告警批次改走 .../up" in zh
        assert "pattern write vigil/v1/gw/%u/alert" in zh
        assert "PROBLEM  MQTT alert lane not answered while .../up is" in en
        assert "then the lane is re-tried" in en
    finally:
        await asyncio.to_thread(broker.stop)


# --- (3) re-probe timing: backoff, reset, reconnect ---------------------------------------------------------
async def test_reprobe_periods_double_reset_on_a_lane_answer_and_a_reconnect_reprobes_at_once(
    tmp_path: Path,
) -> None:
    """An injected clock drives the fallback periods (30 s, 60 s, then the 100 s cap) against a cloud
    whose alert session is absent: an alert batch before the period ends goes straight to ``.../up``, one
    at its end tries the lane again. When the alert session appears the lane answers and the next period
    is back to 30 s; when it goes again the lane, proven on this connection, is kept for 30 s and then
    judged missing; a reconnect to the broker re-probes at once, keeping the doubled period (a lane
    silence on the new connection counts only once ``.../up`` answered on it)."""
    broker = await asyncio.to_thread(start_mosquitto, tmp_path / "broker")
    gw, ledger, metrics, now = f"gw{secrets.token_hex(3)}", Ledger(), GatewayMetrics(), [1000.0]
    telemetry_cfg = cloud_config(broker, alert_lane=False)
    up = MqttUplink(
        f"mqtt://{broker.host}:{broker.port}",
        gw,
        "",
        timeout_s=2.0,
        alert_fallback_s=0.3,
        alert_reprobe_min_s=30,
        alert_reprobe_s=100,
        max_backoff_s=0.2,
        metrics=metrics,
        clock=lambda: now[0],
    )
    i = 0

    async def send_alert(at: float) -> tuple[str, float, int]:
        """Send one alert batch at clock time ``at``: (lane state after, next period, fallbacks so far)."""
        nonlocal i
        now[0] = at
        i += 1
        ob.commit([], [alert(i)])
        pb = ob.next_batch(gw)
        assert pb is not None and pb.n_alerts == 1
        ob.ack(await up.send(pb))
        return up.lane.state, up.lane.next_period_s, up.alert_fallbacks_total

    try:
        with Outbox(tmp_path / "o.db") as ob:
            async with worker(telemetry_cfg, ledger.worker("up")), background(up.run()):
                await asyncio.wait_for(up.connected.wait(), 10)
                assert await send_alert(1000) == ("fallback", 60, 1)  # tried, judged missing: 30 s
                assert await send_alert(1029.9) == ("fallback", 60, 1)  # not tried (no second fallback)
                now[0] = 1030.0
                assert lane_metrics(metrics)["probing"] == 1  # the period is over: the next one tries
                assert await send_alert(1030) == ("fallback", 100, 2)  # tried again: 60 s
                assert await send_alert(1089.9) == ("fallback", 100, 2)
                assert await send_alert(1090) == ("fallback", 100, 3)  # tried: 100 s (the cap)
                assert await send_alert(1190) == ("fallback", 100, 4)  # tried: 100 s again
                assert lane_metrics(metrics)["until"] > 0
                async with worker(telemetry_cfg.alert_config(), ledger.worker("lane")):
                    assert await send_alert(1290) == ("in_use", 30, 4)  # answered on the lane: reset
                    assert ledger.stored[ledger.batch_of[alert(i).alert_id]] == "lane"
                    assert lane_metrics(metrics) | {"until": 0} == {
                        "in_use": 1,
                        "probing": 0,
                        "fallback": 0,
                        "disabled": 0,
                        "fallbacks": 4,
                        "until": 0,
                    }
                # the lane is gone again; it answered on this connection (via="alert"), so its silence
                # is taken for its session lagging for reprobe_min_s (30 s), then judged as usual
                assert await send_alert(1290) == ("in_use", 30, 4)
                assert await send_alert(1319.9) == ("in_use", 30, 4)
                assert await send_alert(1320) == ("fallback", 60, 5)  # judged missing: 30 s
                assert await send_alert(1330) == ("fallback", 60, 5)  # within the 30 s: not tried
                await asyncio.to_thread(broker.restart)
                await until(lambda: up.reconnects_total >= 1 and up.connected.is_set())
                assert lane_metrics(metrics)["probing"] == 1  # re-probed at once after the reconnect...
                # the first lane silence on a new connection is no evidence (delivered on .../up)...
                assert await send_alert(1330) == ("probing", 60, 5)
                # ...once .../up answered on it, the next one is (the lane's proof was for the old
                # connection): the doubled period was kept
                assert await send_alert(1330) == ("fallback", 100, 6)
        assert sorted(ledger.alerts) == sorted(alert(k).alert_id for k in range(1, i + 1))
        assert set(ledger.alerts.values()) == {1}
    finally:
        await asyncio.to_thread(broker.stop)


def test_alert_lane_states_log_once_per_change_and_show_in_status(caplog: pytest.LogCaptureFixture) -> None:
    """The lane's policy alone (clock injected): one log line per change of state, never per batch; the
    metrics and ``vigil gateway status`` for each state."""
    t = [0.0]
    lane = AlertLane(reprobe_min_s=30, reprobe_max_s=900, clock=lambda: t[0], wallclock=lambda: T0 + t[0])
    metrics = GatewayMetrics()
    metrics.watch_alert_lane(lane)
    caplog.set_level(logging.INFO, logger="edge.uplink.alert_lane")
    assert "告警通道使用中" in diagnose_metrics(metrics.render().decode(), now=T0).render("zh")
    assert [lane.missing() for _ in range(6)] == [30, 60, 120, 240, 480, 900]
    assert lane.missing() == 900 and lane.next_period_s == 900  # capped
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 7 and all(m.startswith("告警通道：") and " / alert lane " in m for m in lines)
    caplog.clear()
    for _ in range(5):  # alert batches during the fallback: no log lines
        assert not lane.use_lane()
    assert caplog.records == []
    report = diagnose_metrics(metrics.render().decode(), now=T0)
    assert "直至 " in report.render("zh") and "(in 15 min)" in report.render("en")
    t[0] = 900.0
    assert lane.use_lane() and lane.state == "probing" and len(caplog.records) == 1
    assert "重试中" in diagnose_metrics(metrics.render().decode(), now=T0).render("zh")
    lane.answered()
    assert str(lane.state) == "in_use" and lane.next_period_s == 30 and len(caplog.records) == 2
    lane.answered()  # every lane ack: no further log line
    assert len(caplog.records) == 2
    lane.reconnected()  # in use: nothing to re-probe
    assert str(lane.state) == "in_use" and len(caplog.records) == 2
    lane.missing()
    lane.reconnected()
    assert lane.state == "probing" and lane.use_lane() and lane.next_period_s == 60
    off = AlertLane(enabled=False)
    metrics_off = GatewayMetrics()
    metrics_off.watch_alert_lane(off)
    assert not off.use_lane() and off.state == "disabled"
    assert "uplink.mqtt_alert_topic = false" in diagnose_metrics(metrics_off.render().decode()).render("en")
    http = diagnose_metrics(GatewayMetrics().render().decode()).render("en")  # no lane with HTTP
    assert "alert lane" not in http


async def test_a_late_answer_on_the_lane_puts_it_back_in_use_at_once(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """The lane's commit stalls past the ack timeout while ``.../up`` answers: the lane is judged missing
    (it never answered on this connection, and the ack says it answers the ``.../up`` copy). When the
    stalled lane copy is answered after all (its ack says ``via="alert"``) the lane is back in use at once,
    not after the fallback period, and the next alert goes on it."""
    gw, ledger, metrics, gate = f"gw{secrets.token_hex(3)}", Ledger(), GatewayMetrics(), asyncio.Event()
    telemetry_cfg = cloud_config(mosquitto, alert_lane=False)
    up = MqttUplink(
        f"mqtt://{mosquitto.host}:{mosquitto.port}",
        gw,
        "",
        timeout_s=2.0,
        alert_fallback_s=0.3,
        alert_reprobe_min_s=600,
        metrics=metrics,
    )
    with Outbox(tmp_path / "o.db") as ob:
        async with (
            worker(telemetry_cfg, ledger.worker("up")),
            worker(telemetry_cfg.alert_config(), ledger.worker("lane", gate)),
            background(up.run()),
        ):
            await asyncio.wait_for(up.connected.wait(), 10)
            ob.commit([], [alert(1)])
            pb = ob.next_batch(gw)
            assert pb is not None
            ob.ack(await up.send(pb))
            assert ledger.stored[pb.batch_id] == "up" and lane_metrics(metrics)["fallback"] == 1
            gate.set()  # the lane's commit goes through: its (duplicate) answer arrives
            await until(lambda: lane_metrics(metrics)["in_use"] == 1)
            assert up.lane.next_period_s == 600 and up.alert_fallbacks_total == 1
            ob.commit([], [alert(2)])
            pb2 = ob.next_batch(gw)
            assert pb2 is not None
            ob.ack(await up.send(pb2))
            assert ledger.stored[pb2.batch_id] == "lane" and ledger.copies[pb2.batch_id] == 1
    assert ledger.alerts == Counter({alert(1).alert_id: 1, alert(2).alert_id: 1})


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ("mqtt_alert_reprobe_min_s = 0", "uplink.mqtt_alert_reprobe_min_s"),
        ('mqtt_alert_reprobe_max_s = "soon"', "uplink.mqtt_alert_reprobe_max_s"),
        ("mqtt_alert_reprobe_min_s = 600\nmqtt_alert_reprobe_max_s = 60", "must not exceed"),
    ],
)
def test_reprobe_settings_are_validated_and_named(keys: str, named: str) -> None:
    base = '[gateway]\nid = "gw-1"\n[uplink]\nmode = "mqtt"\nurl = "mqtt://127.0.0.1:1883"\n'
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_config(base + keys + "\n")
    cfg = parse_config(base + "mqtt_alert_reprobe_min_s = 45\nmqtt_alert_reprobe_max_s = 600\n")
    assert (cfg.uplink.mqtt_alert_reprobe_min_s, cfg.uplink.mqtt_alert_reprobe_max_s) == (45, 600)
