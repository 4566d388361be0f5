"""Every ack of the MQTT ingest workers names the topic its copy arrived on (``UplinkAck.via``):
``alert`` from the alert session, ``up`` from the telemetry session, duplicates included; a version-1
gateway's ack carries no ``via`` (its model refused unknown keys), error documents and the HTTP ack are
unchanged (no ``via``). Against the real Mosquitto of the test session."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict

from alerts.contract import UplinkAck, mqtt_alert_topic, mqtt_up_topic
from cloud.mqtt_ingest import IngestWorker
from tests.cloud.test_mqtt_ingest import T0, gateway_client, make_batch, running, uid, wait_until
from tests.cloud.test_mqtt_ingest_alerts import GatedIngest, alert_batch, config
from tests.servers import MosquittoServer


class _AckV1(BaseModel):
    """The version-1 gateway's ack model (alerts/contract.py before contract v2): unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_id: str
    duplicate: bool = False
    telemetry_stored: int = 0
    telemetry_duplicates: int = 0
    alerts_stored: int = 0
    committed_at: float


async def test_acks_and_error_documents_name_the_session_that_answered(mosquitto: MosquittoServer) -> None:
    group, gw = f"g{uid()}", f"gw{uid()}"
    service = GatedIngest()
    service.gate.set()
    worker = IngestWorker(config(mosquitto, group, f"w-{uid()}"), service)
    assert worker.alerts is not None
    a1, b2 = alert_batch(gw, 1), make_batch(gw, 2)
    v1 = alert_batch(gw, 3).model_copy(update={"contract_version": 1})
    async with running(worker), gateway_client(mosquitto, gw) as (pub, acks):
        await asyncio.wait_for(worker.alerts.ready.wait(), 10)
        await pub.publish(mqtt_alert_topic(gw), a1.model_dump_json(), qos=1)
        await wait_until(lambda: len(acks) >= 1)
        await pub.publish(mqtt_up_topic(gw), a1.model_dump_json(), qos=1)  # the same batch on .../up
        await wait_until(lambda: len(acks) >= 2)
        await pub.publish(mqtt_alert_topic(gw), a1.model_dump_json(), qos=1)  # and again on the lane
        await wait_until(lambda: len(acks) >= 3)
        await pub.publish(mqtt_up_topic(gw), b2.model_dump_json(), qos=1)
        await wait_until(lambda: len(acks) >= 4)
        await pub.publish(mqtt_alert_topic(gw), v1.model_dump_json(), qos=1)
        await wait_until(lambda: len(acks) >= 5)
        await pub.publish(mqtt_alert_topic(gw), b"not a batch", qos=1)
        await wait_until(lambda: len(acks) >= 6)
    got = [(a["batch_id"], a.get("duplicate"), a.get("via")) for a in acks[:4]]
    assert got == [
        (a1.batch_id, False, "alert"),
        (a1.batch_id, True, "up"),
        (a1.batch_id, True, "alert"),
        (b2.batch_id, False, "up"),
    ]
    assert [UplinkAck.model_validate(a).via for a in acks[:4]] == ["alert", "up", "alert", "up"]
    assert acks[4]["batch_id"] == v1.batch_id and "via" not in acks[4]
    _AckV1.model_validate(acks[4])  # a version-1 gateway still parses its ack
    assert acks[5]["error"] == "validation" and "via" not in acks[5]  # error documents: as before


def test_via_is_left_out_where_it_is_unknown_or_would_break_an_old_gateway() -> None:
    ack = UplinkAck(batch_id="b-1", committed_at=T0)
    assert "via" not in ack.for_version(2)  # HTTP and old clouds: the document is unchanged
    assert ack.model_copy(update={"via": "up"}).for_version(2)["via"] == "up"
    v1 = ack.model_copy(update={"via": "alert"}).for_version(1)
    assert "via" not in v1 and "refused" not in v1
    _AckV1.model_validate(v1)
