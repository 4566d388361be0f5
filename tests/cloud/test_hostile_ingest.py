"""Hostile input at the cloud's ingest (issue 11): every way found to silence an alarm, kept closed.

Each test names the attack, runs it against the real app (SQLite; the PostgreSQL path shares the code and
is covered by ``test_ingest.py``), and asserts what an operator would observe: what was stored, what the
acknowledgement says, what the metrics count. MQTT ingest is checked to answer exactly like HTTP.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace

import pytest

from alerts.contract import HTTP_PATH, UplinkAck, UplinkBatch, mqtt_up_topic
from cloud.limits import GatewayQuota, IngestLimits, LogThrottle, RateLimitedError
from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.operator_push import build_ctwing_data_report
from firmware_bridge.registry import spec
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import (
    GW1,
    GW2,
    MANHOLE_1,
    MANHOLE_2,
    SMOKE_1,
    T0,
    Cloud,
    alert_step,
    batch,
    body,
    readings,
)
from tests.cloud.test_mqtt_ingest import gateway_client, running, wait_until
from tests.servers import MosquittoServer

M, S = DeviceKind.MANHOLE, DeviceKind.SMOKE_ALARM
JSON = {"content-type": "application/json"}


@pytest.fixture
def strict(cloud_sqlite: Cloud) -> Cloud:
    """The cloud with the production time window (cloudkit widens it for tests that run ahead)."""
    st = cloud_sqlite.state
    st.ingest.limits = replace(st.ingest.limits, max_future_s=IngestLimits().max_future_s)
    return cloud_sqlite


async def post(c: Cloud, b: UplinkBatch | bytes, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    raw = b if isinstance(b, bytes) else body(b)
    r = await c.client.post(HTTP_PATH, content=raw, headers={**headers, **JSON})
    return r.status_code, r.json()


async def alert_state(c: Cloud, aid: str) -> str:
    r = await c.client.get(f"/api/v1/alerts/{aid}", headers=c.admin)
    assert r.status_code == 200, r.text
    return str(r.json()["alert"]["phase"])


# -- a forged or foreign frame never blocks a batch --------------------------------------------------------
async def test_forged_frame_does_not_block_real_alarm_in_the_same_batch(strict: Cloud) -> None:
    c = strict
    fire = alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0)
    forged = alert_step("70B3D57EDEADBEEF", S, EventType.FIRE, AlertPhase.RAISED, T0)
    b = batch(
        "hostile-forged-1",
        readings(S, SMOKE_1, [1]),
        readings(S, "70B3D57EDEADBEEF", [1, 2, 3]),
        alerts=[fire, forged],
    )
    status, doc = await post(c, b, c.gw1)
    assert status == 200
    ack = UplinkAck.model_validate(doc)
    assert (ack.telemetry_stored, ack.telemetry_refused, ack.alerts_stored, ack.alerts_refused) == (
        1,
        3,
        1,
        1,
    )
    assert await alert_state(c, fire.alert_id) == "raised"
    assert (await c.client.get(f"/api/v1/alerts/{forged.alert_id}", headers=c.admin)).status_code == 404
    assert c.sink.calls and [s.alert_id for s in c.sink.calls[-1][1]] == [fire.alert_id]


# -- a gateway may not clear another's alert ---------------------------------------------------------------
async def test_gateway_cannot_clear_another_gateways_alert(strict: Cloud) -> None:
    c = strict
    raised = alert_step(MANHOLE_2, M, EventType.COVER_OPEN, AlertPhase.RAISED, T0)  # GW2's device
    assert (await post(c, batch("gw2-raise-1", alerts=[raised], gateway_id=GW2), c.gw2))[0] == 200
    clear = alert_step(MANHOLE_2, M, EventType.COVER_OPEN, AlertPhase.CLEARED, T0 + 1, episode_t=T0)
    status, doc = await post(c, batch("gw1-clear-1", alerts=[clear]), c.gw1)
    assert status == 200
    ack = UplinkAck.model_validate(doc)
    assert ack.alerts_stored == 0 and [r.reason for r in ack.refused] == ["not_assigned"]
    assert await alert_state(c, raised.alert_id) == "raised"


async def test_alert_step_must_name_its_own_device_episode(strict: Cloud) -> None:
    """A step for GW1's own device that names GW2's alert id (the old check looked at device_id only)."""
    c = strict
    raised = alert_step(MANHOLE_2, M, EventType.COVER_OPEN, AlertPhase.RAISED, T0)
    assert (await post(c, batch("gw2-raise-2", alerts=[raised], gateway_id=GW2), c.gw2))[0] == 200
    own = alert_step(MANHOLE_1, M, EventType.COVER_OPEN, AlertPhase.CLEARED, T0 + 1, episode_t=T0)
    forged = own.model_copy(update={"alert_id": raised.alert_id})
    status, doc = await post(c, batch("gw1-clear-2", alerts=[forged]), c.gw1)
    ack = UplinkAck.model_validate(doc)
    assert status == 200 and [r.reason for r in ack.refused] == ["alert_id_mismatch"]
    assert await alert_state(c, raised.alert_id) == "raised"


async def test_gateway_cannot_clear_an_alert_the_cloud_raised(strict: Cloud) -> None:
    c = strict
    from cloud.alertstore import store_alert_steps

    silent = alert_step(SMOKE_1, S, EventType.DEVICE_SILENT, AlertPhase.RAISED, T0)
    with c.state.db.write() as s:
        store_alert_steps(s, [silent], source="cloud", received_at=T0)
    clear = alert_step(SMOKE_1, S, EventType.DEVICE_SILENT, AlertPhase.CLEARED, T0 + 1, episode_t=T0)
    status, doc = await post(c, batch("gw1-clear-3", alerts=[clear]), c.gw1)
    ack = UplinkAck.model_validate(doc)
    assert status == 200 and [r.reason for r in ack.refused] == ["alert_not_owned"]
    assert await alert_state(c, silent.alert_id) == "raised"


# -- times are bounded by the cloud's clock ----------------------------------------------------------------
async def test_clear_stamped_in_2100_is_refused_and_the_alert_stays_open(strict: Cloud) -> None:
    c = strict
    raised = alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0)
    assert (await post(c, batch("gw1-raise-4", alerts=[raised]), c.gw1))[0] == 200
    late = alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.CLEARED, 4_102_000_000.0, episode_t=T0)
    status, doc = await post(c, batch("gw1-clear-4", alerts=[late]), c.gw1)
    ack = UplinkAck.model_validate(doc)
    assert status == 200 and [r.reason for r in ack.refused] == ["time_out_of_range"]
    assert "time" in ack.refused[0].detail
    assert await alert_state(c, raised.alert_id) == "raised"
    # an update at the right time still moves it: nothing "from the future" holds the state
    upd = alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.UPDATED, T0 + 5, episode_t=T0)
    assert (await post(c, batch("gw1-upd-4", alerts=[upd]), c.gw1))[0] == 200
    assert await alert_state(c, raised.alert_id) == "updated"


async def test_reading_from_the_future_cannot_hide_a_device_from_the_silence_check(strict: Cloud) -> None:
    c = strict
    b = batch("gw1-future-1", readings(M, MANHOLE_1, [1], t0=T0), readings(M, MANHOLE_1, [2], t0=T0 + 3600))
    status, doc = await post(c, b, c.gw1)
    ack = UplinkAck.model_validate(doc)
    assert status == 200 and ack.telemetry_stored == 1
    assert [(r.reason, r.count) for r in ack.refused] == [("time_out_of_range", 1)]
    dev = (await c.client.get(f"/api/v1/devices/{MANHOLE_1}", headers=c.admin)).json()
    assert dev["last_seen"] == T0


async def test_ctwing_push_with_timestamp_1e30_is_refused_and_last_seen_is_unchanged(strict: Cloud) -> None:
    c = strict
    imei = "868120012345678"
    r = await c.client.post(
        "/api/v1/devices",
        json={"device_id": imei, "kind": "smoke_alarm", "gateway_id": "ctwing"},
        headers=c.admin,
    )
    assert r.status_code == 201
    from firmware_bridge.kernel.records import Reading

    n = len(spec(S).channels)
    payload = spec(S).codec.encode(
        Reading(
            kind=S, device_id="x", seq=1, time=T0, battery_pct=80.0, flags=0, values=(1.0,) * n, fw_version=1
        )
    )
    url = "/api/v1/push/ctwing?token=ctwing-secret-token"
    for ts in (1e30, T0 + 86400.0):
        doc = json.loads(build_ctwing_data_report(imei, "dev-aep-1", payload, T0))
        doc["timestamp"] = ts * 1000
        raw = json.dumps(doc).encode()
        r = await c.client.post(url, content=raw, headers=JSON)
        assert r.status_code == 400, r.text
        assert "timestamp" in r.json()["detail"] or "window" in r.json()["detail"]
    dev = (await c.client.get(f"/api/v1/devices/{imei}", headers=c.admin)).json()
    assert dev["last_seen"] is None


# -- reachable 500s are 4xx that name the problem ----------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("alerts", 0, "value"), "NaN", "value"),
        (("alerts", 0, "value"), "Infinity", "value"),
        (("alerts", 0, "episode_ms"), str(2**63 + 5), "episode_ms"),
        (("status", "uptime_s"), "NaN", "uptime_s"),
        (("status", "frames_total"), str(2**64), "frames_total"),
    ],
)
async def test_non_finite_and_huge_numbers_are_422_naming_the_field(
    cloud_sqlite: Cloud, path: tuple[object, ...], value: str, field: str
) -> None:
    c = cloud_sqlite
    b = batch(
        "gw1-nan-0001", alerts=[alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0, value=1.0)]
    )
    doc = json.loads(body(b))
    doc["status"] = {"uptime_s": 1.0, "frames_total": 1}
    target = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = "__X__"
    raw = json.dumps(doc).replace('"__X__"', value).encode()
    status, out = await post(c, raw, c.gw1)
    assert status == 422, out
    assert field in json.dumps(out["errors"])


# -- the token is checked before the body is parsed --------------------------------------------------------
async def test_unauthenticated_body_is_never_parsed(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    r = await c.client.post(
        HTTP_PATH, content=b"{" * 100_000, headers={"Authorization": "Bearer nope", **JSON}
    )
    assert r.status_code == 401  # a parse would have answered 422
    r = await c.client.post(HTTP_PATH, content=b"{" * 100_000, headers=JSON)
    assert r.status_code == 401
    r = await c.client.post(HTTP_PATH, content=b"[not json", headers={**c.admin, **JSON})  # a user token
    assert r.status_code == 403
    r = await c.client.post(HTTP_PATH, content=b"[not json", headers={**c.gw1, **JSON})
    assert r.status_code == 422


# -- quotas ------------------------------------------------------------------------------------------------
async def test_gateway_over_quota_gets_429_while_its_alerts_still_pass(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    c.state.ingest.quota = GatewayQuota(IngestLimits(readings_per_s=1.0, readings_burst=10.0))
    big = batch("gw1-flood-01", readings(M, MANHOLE_1, list(range(1, 21))))
    assert (await post(c, big, c.gw1))[0] == 200  # admitted while the bucket was positive
    flood = batch("gw1-flood-02", readings(M, MANHOLE_1, list(range(21, 41)), t0=T0 + 3600))
    r = await c.client.post(HTTP_PATH, content=body(flood), headers={**c.gw1, **JSON})
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1
    assert c.state.registry.get(MANHOLE_1, "admin").readings_total == 20  # nothing of it stored
    fire = alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0)
    assert (await post(c, batch("gw1-fire-0001", alerts=[fire]), c.gw1))[0] == 200
    other = batch("gw2-normal-1", readings(M, MANHOLE_2, [1]), gateway_id=GW2)
    assert (await post(c, other, c.gw2))[0] == 200  # the quota is per gateway
    assert 'vigil_cloud_quota_refusals_total{lane="telemetry"} 1.0' in (await c.client.get("/metrics")).text


def test_quota_bucket_refills_and_bounds_the_long_run_rate() -> None:
    t = [0.0]
    q = GatewayQuota(IngestLimits(readings_per_s=100.0, readings_burst=100.0), monotonic=lambda: t[0])
    admitted = 0
    for _ in range(1000):  # 10 s of a gateway trying 50 readings every 10 ms (5,000/s)
        try:
            q.admit("gw", readings=50, alert_steps=0)
            admitted += 50
        except RateLimitedError as exc:
            assert exc.retry_after_s > 0
        t[0] += 0.01
    assert 100 * 10 <= admitted <= 100 * 10 + 100 + 50  # rate x time + burst + one batch of debt


def test_repeated_log_lines_are_throttled() -> None:
    import logging

    t = [0.0]
    throttle = LogThrottle(burst=3, window_s=10.0, monotonic=lambda: t[0])

    def rec() -> logging.LogRecord:
        return logging.LogRecord("x", logging.WARNING, "f", 1, "bad request from %s", ("1.2.3.4",), None)

    passed = sum(throttle.filter(rec()) for _ in range(10_000))
    assert passed == 3 and throttle.suppressed_total == 9_997
    t[0] = 11.0
    first = rec()
    assert throttle.filter(first) and getattr(first, "suppressed", 0) == 9_997


# -- contract versions -------------------------------------------------------------------------------------
async def test_version_1_gateway_gets_a_version_1_ack(strict: Cloud) -> None:
    c = strict
    b = batch("gw1-v1-00001", readings(M, MANHOLE_1, [1]), readings(M, MANHOLE_2, [1]))
    doc = json.loads(body(b))
    doc["contract_version"] = 1
    status, out = await post(c, json.dumps(doc).encode(), c.gw1)
    assert status == 200 and "refused" not in out and out["telemetry_stored"] == 1


# -- MQTT answers exactly like HTTP ------------------------------------------------------------------------
async def test_mqtt_and_http_refuse_the_same_records(strict: Cloud, mosquitto: MosquittoServer) -> None:
    c = strict

    def hostile(bid: str) -> UplinkBatch:
        return batch(
            bid,
            readings(M, MANHOLE_1, [1, 2], t0=T0 - 120),
            readings(M, MANHOLE_2, [1]),
            readings(M, MANHOLE_1, [3], t0=T0 + 86400),
            alerts=[
                alert_step(MANHOLE_1, M, EventType.COVER_OPEN, AlertPhase.RAISED, T0),
                alert_step(MANHOLE_2, M, EventType.COVER_OPEN, AlertPhase.CLEARED, T0),
            ],
        )

    status, http_doc = await post(c, hostile("both-http-01"), c.gw1)
    assert status == 200
    group = f"g{uuid.uuid4().hex[:8]}"
    cfg = MqttIngestConfig(
        host=mosquitto.host, port=mosquitto.port, client_id=f"w-{uuid.uuid4().hex[:6]}", group=group,
        session_expiry_s=60, backoff_initial_s=0.01, backoff_max_s=0.05,
    )  # fmt: skip
    worker = IngestWorker(cfg, c.state.ingest)
    async with running(worker), gateway_client(mosquitto, GW1) as (pub, acks):
        await pub.publish(mqtt_up_topic(GW1), body(hostile("both-mqtt-01")), qos=1)
        await wait_until(lambda: len(acks) >= 1)
    mqtt_ack = UplinkAck.model_validate(acks[0])
    http_ack = UplinkAck.model_validate(http_doc)
    assert http_ack.refused == mqtt_ack.refused and len(http_ack.refused) == 3
    assert (http_ack.telemetry_refused, http_ack.alerts_refused) == (2, 1)
    assert mqtt_ack.telemetry_duplicates == 2  # the same readings, stored once


async def test_mqtt_over_quota_is_answered_rate_limited(
    cloud_sqlite: Cloud, mosquitto: MosquittoServer
) -> None:
    c = cloud_sqlite
    c.state.ingest.quota = GatewayQuota(IngestLimits(readings_per_s=0.001, readings_burst=1.0))
    cfg = MqttIngestConfig(
        host=mosquitto.host, port=mosquitto.port, client_id=f"w-{uuid.uuid4().hex[:6]}",
        group=f"g{uuid.uuid4().hex[:8]}", session_expiry_s=60, backoff_initial_s=0.01, backoff_max_s=0.05,
    )  # fmt: skip
    worker = IngestWorker(cfg, c.state.ingest)
    async with running(worker), gateway_client(mosquitto, GW1) as (pub, acks):
        for i in range(2):
            await pub.publish(
                mqtt_up_topic(GW1),
                body(batch(f"q-mqtt-{i:04d}", readings(M, MANHOLE_1, [2 * i + 1, 2 * i + 2]))),
                qos=1,
            )
            await wait_until(lambda i=i: len(acks) >= i + 1)
    assert "error" not in acks[0] and acks[1]["error"] == "rate_limited"
    assert float(acks[1]["retry_after_s"]) > 0  # type: ignore[arg-type]
    assert worker.metrics.messages.labels("rate_limited")._value.get() == 1
    await asyncio.sleep(0)
