"""The cloud's ack names the topic it answers (``UplinkAck.via``), so the gateway's alert-lane verdict
needs no guessing (edge/uplink/mqtt.py, docs/contract.md "Alert lane").

Against the real Mosquitto of the test session and the real cloud ingest workers (cloud/mqtt_ingest.py)
storing into the idempotent ledger of ``test_alert_lane_outage.py``: the cloud's alert sessions restarted
alone while its telemetry session keeps answering no longer switch the lane off (with ``via`` ignored, i.e.
counting answers, this case falls back); a late lane answer that ends the gateway's wait on ``.../up``
is not taken for the ``.../up`` copy's (counting did); a cloud whose acks carry no ``via`` (an old
cloud, simulated by stripping the field where the workers publish) still gets today's counting fallback,
including a cloud rolled back after the lane was proven. An ack with fields the gateway does not know
still parses.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from alerts.contract import Refusal, UplinkAck, UplinkBatch, UTCSeconds
from cloud import mqtt_ingest
from edge.metrics import GatewayMetrics
from edge.outbox import Outbox
from edge.uplink.base import parse_ack
from edge.uplink.mqtt import MqttUplink
from tests.edge.helpers import alert
from tests.edge.test_alert_lane_outage import (
    T0,
    Ledger,
    _View,
    background,
    cloud_config,
    lane_metrics,
    until,
    worker,
)
from tests.servers import MosquittoServer


class _AckBeforeVia(BaseModel):
    """``UplinkAck`` as a gateway released before ``via`` has it (contract version 2, commit 399335d)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    batch_id: str
    duplicate: bool = False
    telemetry_stored: int = 0
    telemetry_duplicates: int = 0
    alerts_stored: int = 0
    committed_at: UTCSeconds
    telemetry_refused: int = 0
    alerts_refused: int = 0
    refused: list[Refusal] = Field(default_factory=list)


async def test_a_gateway_parses_acks_with_fields_it_does_not_know() -> None:
    """A new ack (with ``via``) parses with the old gateway's model (unknown keys ignored); the current
    model also ignores keys of a later cloud, and the MQTT uplink reads an ack whose ``via`` is a value
    it does not know as one without ``via`` (the batch is still acknowledged)."""
    new = UplinkAck(batch_id="b-1", committed_at=T0, alerts_stored=1, via="alert").for_version(2)
    assert new["via"] == "alert"
    old = _AckBeforeVia.model_validate_json(json.dumps(new))
    assert (old.batch_id, old.alerts_stored, old.committed_at) == ("b-1", 1, T0)
    assert UplinkAck.model_config.get("extra") == "ignore"
    later = json.dumps(new | {"lane_hint": {"x": 1}}).encode()
    assert parse_ack(later, "b-1").via == "alert"  # the gateway's own parser (HTTP and MQTT)
    up = MqttUplink("mqtt://127.0.0.1:1", "gw-1", "")
    fut: asyncio.Future[UplinkAck] = asyncio.get_running_loop().create_future()
    up._waiting["b-1"] = fut
    up._dispatch(json.dumps(new | {"via": "websocket"}).encode())
    assert fut.result().batch_id == "b-1" and fut.result().via is None


async def test_alert_sessions_restarted_alone_keep_the_lane(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """The lane answered (``via="alert"``) on this connection; then the cloud restarts its alert sessions
    alone while the telemetry session keeps answering. Alert batches wait one ack timeout on the lane and
    are delivered on ``.../up``; the lane stays in use (its session lags: no evidence), the copies held
    in its broker session are answered when it returns, and the next alert goes on the lane alone.
    Counting answers (``via`` ignored) judged the lane missing here."""
    gw, ledger, metrics = f"gw{secrets.token_hex(3)}", Ledger(), GatewayMetrics()
    telemetry_cfg = cloud_config(mosquitto, alert_lane=False)
    lane_cfg = telemetry_cfg.alert_config()
    up = MqttUplink(
        f"mqtt://{mosquitto.host}:{mosquitto.port}",
        gw,
        "",
        timeout_s=2.0,
        alert_fallback_s=0.3,
        alert_reprobe_min_s=30,
        metrics=metrics,
    )
    with Outbox(tmp_path / "o.db") as ob:

        async def send(i: int) -> str:
            ob.commit([], [alert(i)])
            pb = ob.next_batch(gw)
            assert pb is not None and pb.n_alerts == 1
            ob.ack(await up.send(pb))
            return pb.batch_id

        async with worker(telemetry_cfg, ledger.worker("up")), background(up.run()):
            await asyncio.wait_for(up.connected.wait(), 10)
            async with worker(lane_cfg, ledger.worker("lane")):
                b1 = await send(1)
                assert ledger.stored[b1] == "lane" and ledger.copies[b1] == 1
            # the alert sessions are restarting (their broker sessions persist); telemetry answers
            b2 = await send(2)
            b3 = await send(3)
            assert ledger.stored[b2] == ledger.stored[b3] == "up"  # delivered through .../up
            assert up.lane.state == "in_use" and up.alert_lane
            assert lane_metrics(metrics)["fallbacks"] == 0
            async with worker(lane_cfg, ledger.worker("lane")):  # back: it answers the copies it holds
                await until(lambda: ledger.copies[b2] == 2 and ledger.copies[b3] == 2)
                b4 = await send(4)
                assert ledger.stored[b4] == "lane" and ledger.copies[b4] == 1
    assert lane_metrics(metrics) | {"until": 0} == {
        "in_use": 1,
        "probing": 0,
        "fallback": 0,
        "disabled": 0,
        "fallbacks": 0,
        "until": 0,
    }
    assert ledger.alerts == Counter({alert(i).alert_id: 1 for i in (1, 2, 3, 4)})


@pytest.fixture
def old_cloud(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """While ``[0]`` is true, the workers' answers lose ``via`` on the wire: a cloud that predates it."""
    on = [True]
    publish = mqtt_ingest._Connection.publish

    def without_via(self: mqtt_ingest._Connection, topic: str, payload: bytes) -> None:
        if on[0]:
            doc = json.loads(payload)
            doc.pop("via", None)
            payload = json.dumps(doc).encode()
        publish(self, topic, payload)

    monkeypatch.setattr(mqtt_ingest._Connection, "publish", without_via)
    return on


@pytest.mark.parametrize("rolled_back", [False, True], ids=["old-cloud", "rolled-back-after-proof"])
async def test_a_cloud_without_via_gets_the_counting_fallback(
    tmp_path: Path, mosquitto: MosquittoServer, old_cloud: list[bool], rolled_back: bool
) -> None:
    """The same restart of the alert sessions against a cloud whose acks carry no ``via`` (from the start,
    or from a rollback after the lane answered with ``via="alert"``: an answer without ``via`` is counted,
    whatever was proven before): the lane
    is judged missing as before (counting answers), every alert is still delivered once, and the late
    answer of the lane copy its session held (one more answer than copies on ``.../up``) puts the lane
    back in use at once, before the 600 s fallback period ends."""
    gw, ledger, metrics = f"gw{secrets.token_hex(3)}", Ledger(), GatewayMetrics()
    old_cloud[0] = not rolled_back
    telemetry_cfg = cloud_config(mosquitto, alert_lane=False)
    lane_cfg = telemetry_cfg.alert_config()
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

        async def send(i: int) -> str:
            ob.commit([], [alert(i)])
            pb = ob.next_batch(gw)
            assert pb is not None and pb.n_alerts == 1
            ack = await up.send(pb)
            assert ack.via is None or not old_cloud[0]
            ob.ack(ack)
            return pb.batch_id

        async with worker(telemetry_cfg, ledger.worker("up")), background(up.run()):
            await asyncio.wait_for(up.connected.wait(), 10)
            async with worker(lane_cfg, ledger.worker("lane")):
                b1 = await send(1)
                assert ledger.stored[b1] == "lane" and up.lane.state == "in_use"
            old_cloud[0] = True  # (rolled back:) the cloud's acks no longer name their topic
            b2 = await send(2)
            assert ledger.stored[b2] == "up"
            lane = lane_metrics(metrics)
            assert lane["fallback"] == 1 and lane["fallbacks"] == 1, lane
            b3 = await send(3)  # in the fallback period: straight to .../up, no ack timeout
            assert ledger.stored[b3] == "up" and ledger.copies[b3] == 1
            async with worker(lane_cfg, ledger.worker("lane")):  # the held lane copy of b2 is answered
                await until(lambda: lane_metrics(metrics)["in_use"] == 1)
                assert ledger.copies[b2] == 2
                b4 = await send(4)
                assert ledger.stored[b4] == "lane" and ledger.copies[b4] == 1
    assert up.alert_fallbacks_total == 1
    assert ledger.alerts == Counter({alert(i).alert_id: 1 for i in (1, 2, 3, 4)})


class _Held(_View):
    """A worker session whose commits wait on ``gate``; ``entered`` is set once a copy reached it."""

    def __init__(self, ledger: Ledger, name: str, gate: asyncio.Event) -> None:
        super().__init__(ledger, name, gate)
        self.entered = asyncio.Event()

    async def ingest(self, batch: UplinkBatch, *, gateway_id: str) -> UplinkAck:
        self.entered.set()
        return await super().ingest(batch, gateway_id=gateway_id)


async def test_a_late_lane_answer_that_ends_the_up_wait_is_not_taken_for_the_up_copy(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """The lane's commit stalls past the ack timeout; the ``.../up`` copy is published and its commit stalls
    too; then the lane copy is committed first, and its ack is the one that ends the gateway's wait on
    ``.../up`` (one wait per batch id). It says ``via="alert"``, so the lane is kept (no fallback).
    Counting answers took that ack for the ``.../up`` copy's and switched the lane off."""
    gw, ledger, metrics = f"gw{secrets.token_hex(3)}", Ledger(), GatewayMetrics()
    lane_gate, up_gate = asyncio.Event(), asyncio.Event()
    telemetry_cfg = cloud_config(mosquitto, alert_lane=False)
    up_view = _Held(ledger, "up", up_gate)
    up = MqttUplink(
        f"mqtt://{mosquitto.host}:{mosquitto.port}",
        gw,
        "",
        timeout_s=10.0,
        alert_fallback_s=0.3,
        alert_reprobe_min_s=600,
        metrics=metrics,
    )
    with Outbox(tmp_path / "o.db") as ob:
        async with (
            worker(telemetry_cfg, up_view),
            worker(telemetry_cfg.alert_config(), ledger.worker("lane", lane_gate)),
            background(up.run()),
        ):
            await asyncio.wait_for(up.connected.wait(), 10)
            ob.commit([], [alert(1)])
            pb = ob.next_batch(gw)
            assert pb is not None
            sending = asyncio.ensure_future(up.send(pb))
            await asyncio.wait_for(up_view.entered.wait(), 10)  # both copies are at the cloud, stalled
            lane_gate.set()
            ack = await asyncio.wait_for(sending, 10)
            assert ack.via == "alert" and ledger.stored[pb.batch_id] == "lane"
            ob.ack(ack)
            assert up.lane.state == "in_use" and up.alert_fallbacks_total == 0
            up_gate.set()  # the .../up copy's answer (duplicate, via="up") comes later: nothing changes
            await until(lambda: ledger.copies[pb.batch_id] == 2)
            ob.commit([], [alert(2)])
            pb2 = ob.next_batch(gw)
            assert pb2 is not None
            ob.ack(await up.send(pb2))
            assert ledger.stored[pb2.batch_id] == "lane" and ledger.copies[pb2.batch_id] == 1
    assert lane_metrics(metrics)["fallbacks"] == 0 and lane_metrics(metrics)["in_use"] == 1
