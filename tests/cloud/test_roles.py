"""Process roles (cloud/roles.py, `vigil cloud jobs | mqtt-ingest | detect`): the MQTT ingest role in
front of the app's own ingest service, against a real Mosquitto; the commands and their settings."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

import vigil_cli
from alerts.contract import UplinkAck, mqtt_up_topic
from cloud.roles import mqtt_body, run_role
from firmware_bridge.kernel.records import DeviceKind
from tests.aio import cancel_and_wait
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import CSV_HEADER, CSV_ROWS, GW1, MANHOLE_1, T0, batch, make_settings, readings
from tests.cloud.test_mqtt_ingest import gateway_client
from tests.servers import MosquittoServer


async def test_mqtt_ingest_role_stores_and_acks(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    from cloud.api.state import CloudState

    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path}/vigil.db",
        mqtt_host=mosquitto.host,
        mqtt_port=mosquitto.port,
        mqtt_client_id=f"role-{uuid.uuid4().hex[:6]}",
        mqtt_group=f"g{uuid.uuid4().hex[:8]}",
        run_jobs=False,
    )
    state = await asyncio.to_thread(CloudState.build, settings)  # provision like an operator would
    try:
        await asyncio.to_thread(state.credentials.add_gateway, GW1, now=T0)
        await asyncio.to_thread(state.registry.import_csv, "\n".join([CSV_HEADER, *CSV_ROWS]) + "\n", now=T0)
    finally:
        await asyncio.to_thread(state.close)
    task = asyncio.create_task(run_role(settings, mqtt_body(settings, 2)), name="role")
    try:
        async with gateway_client(mosquitto, GW1) as (pub, acks):
            b = batch("role-batch-0001", readings(DeviceKind.MANHOLE, MANHOLE_1, [1, 2, 3]))

            async def publish_until_acked() -> None:
                while not acks:  # the workers subscribe in the background: re-send until acked
                    await pub.publish(mqtt_up_topic(GW1), b.model_dump_json(), qos=1)
                    await asyncio.sleep(0.2)

            await asyncio.wait_for(publish_until_acked(), 20)
        ack = UplinkAck.model_validate(acks[0])
        assert ack.batch_id == "role-batch-0001" and ack.telemetry_stored == 3
    finally:
        await cancel_and_wait(task)


def test_role_commands_are_registered() -> None:
    parser = vigil_cli.build_parser()
    for cmd in (["jobs"], ["mqtt-ingest", "--workers", "3", "--client-id", "ingest-h1"], ["detect"]):
        args = parser.parse_args(["cloud", *cmd, "--metrics-port", "9100"])
        assert args.cloud_command == cmd[0] and args.metrics_port == 9100
    assert parser.parse_args(["cloud", "mqtt-ingest", "--workers", "3"]).workers == 3


def test_detect_without_gateways_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VIGIL_CLOUD_DATABASE_URL", f"sqlite:///{tmp_path}/v.db")
    monkeypatch.setenv("VIGIL_CLOUD_JSON_LOGS", "false")
    monkeypatch.delenv("VIGIL_CLOUD_DETECT_GATEWAYS", raising=False)
    assert vigil_cli.main(["cloud", "detect"]) == 1
    assert "VIGIL_CLOUD_DETECT_GATEWAYS" in capsys.readouterr().err


def test_settings_for_roles_come_from_the_environment() -> None:
    from cloud.settings import CloudSettings

    s = CloudSettings.from_env(
        {
            "VIGIL_CLOUD_MQTT_HOST": "broker.internal",
            "VIGIL_CLOUD_MQTT_PORT": "8883",
            "VIGIL_CLOUD_RUN_JOBS": "false",
            "VIGIL_CLOUD_JOBS_ONLY": "connectivity, escalation",
            "VIGIL_CLOUD_DETECT_GATEWAYS": "ctwing,onenet",
        }
    )
    assert (s.mqtt_host, s.mqtt_port, s.run_jobs) == ("broker.internal", 8883, False)
    assert s.jobs_selected == ["connectivity", "escalation"]
    assert s.detect_gateway_ids == ["ctwing", "onenet"]
