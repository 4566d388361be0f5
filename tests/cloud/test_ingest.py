"""Ingest: ack after commit, idempotency, authorisation per gateway, sequence gaps, alert steps.

Run on SQLite and on a real PostgreSQL (``db_url`` is parametrised). Batches follow the contract in
``alerts/contract.py`` (Vigil's own gateway-to-cloud contract, docs/contract.md).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from alerts.contract import HTTP_PATH, UplinkAck
from cloud.errors import PermissionDeniedError, StorageError
from cloud.ingest import sequence_summary
from cloud.timeseries import BackendError
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import (
    BAND_1,
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

M, S, W = DeviceKind.MANHOLE, DeviceKind.SMOKE_ALARM, DeviceKind.WRISTBAND


async def test_batch_is_stored_and_acknowledged(cloud: Cloud) -> None:
    b = batch("batch-0001", readings(M, MANHOLE_1, [1, 2, 3]), readings(S, SMOKE_1, [10, 11]))
    r = await cloud.client.post(
        HTTP_PATH, content=body(b), headers={**cloud.gw1, "content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    ack = UplinkAck.model_validate(r.json())
    assert (ack.batch_id, ack.duplicate, ack.telemetry_stored, ack.telemetry_duplicates) == (
        "batch-0001",
        False,
        5,
        0,
    )
    # the readings are in the time-series store, and the device shows its state
    series = cloud.state.store.query(MANHOLE_1, M, T0 - 1, T0 + 3600)
    assert len(series) == 3
    dev = (await cloud.client.get(f"/api/v1/devices/{MANHOLE_1}", headers=cloud.viewer)).json()
    assert dev["last_seq"] == 3 and dev["last_seen"] == T0 + 120 and dev["seq_gaps_total"] == 0
    assert dev["readings_total"] == 3 and dev["last_received_at"] == cloud.clock.now()
    gw = (await cloud.client.get(f"/api/v1/gateways/{GW1}", headers=cloud.viewer)).json()
    assert gw["last_seen"] == cloud.clock.now() and gw["batches_total"] == 1 and gw["online"] is True
    gw2 = (await cloud.client.get(f"/api/v1/gateways/{GW2}", headers=cloud.viewer)).json()
    assert gw2["online"] is None  # never heard from


async def test_same_batch_twice_is_stored_once(cloud: Cloud) -> None:
    b = batch("batch-dup-1", readings(M, MANHOLE_1, [1, 2]))
    first = await cloud.state.ingest.ingest(b, gateway_id=GW1)
    again = await cloud.state.ingest.ingest(b, gateway_id=GW1)
    assert not first.duplicate and again.duplicate
    assert again.telemetry_stored == 0 and again.committed_at == first.committed_at
    dev = cloud.state.registry.get(MANHOLE_1, "admin")
    assert dev.readings_total == 2  # device bookkeeping not applied twice
    assert (
        'vigil_cloud_ingest_batches_total{result="duplicate"} 1.0'
        in (await cloud.client.get("/metrics")).text
    )


async def test_a_delivery_committed_after_the_duplicate_check_is_answered_duplicate(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A concurrent delivery of the same batch commits between this one's duplicate check and its commit:
    the batch row's unique key refuses the second insert (on SQLite a driver-level statement, whose
    error must still reach the service as a conflict), nothing of it is committed, and the answer is the
    duplicate one with the first commit's time."""
    b = batch("batch-race-1", readings(M, MANHOLE_1, [1, 2]))
    first = await cloud.state.ingest.ingest(b, gateway_id=GW1)
    svc = cloud.state.ingest
    checks = []
    real = type(svc)._find_batch

    def blind_first_check(gateway_id: str, batch_id: str, s: object = None) -> UplinkAck | None:
        checks.append(batch_id)
        return None if len(checks) == 1 else real(svc, gateway_id, batch_id, s)

    monkeypatch.setattr(svc, "_find_batch", blind_first_check)
    again = await svc.ingest(b, gateway_id=GW1)
    assert again.duplicate and again.committed_at == first.committed_at and again.telemetry_stored == 0
    assert len(checks) == 2  # the conflict was answered by reading the first commit's row
    dev = cloud.state.registry.get(MANHOLE_1, "admin")
    assert dev.readings_total == 2  # the second transaction's bookkeeping was rolled back


async def test_same_frames_in_a_new_batch_are_deduplicated(cloud: Cloud) -> None:
    await cloud.state.ingest.ingest(batch("batch-a-0001", readings(M, MANHOLE_1, [1, 2])), gateway_id=GW1)
    ack = await cloud.state.ingest.ingest(
        batch("batch-b-0001", readings(M, MANHOLE_1, [1, 2, 3])), gateway_id=GW1
    )
    assert (ack.telemetry_stored, ack.telemetry_duplicates) == (1, 2)
    assert cloud.state.registry.get(MANHOLE_1, "admin").seq_gaps_total == 0


async def test_gateway_may_not_write_for_other_devices_but_its_own_are_stored(cloud: Cloud) -> None:
    """Issue 11: one foreign or forged record must not block the batch it travels in."""
    unknown = "70b3d57ed0009999"
    b = batch(
        "batch-forbid", readings(M, MANHOLE_1, [1]), readings(M, MANHOLE_2, [1]), readings(M, unknown, [1])
    )
    r = await cloud.client.post(
        HTTP_PATH, content=body(b), headers={**cloud.gw1, "content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    ack = UplinkAck.model_validate(r.json())
    assert ack.telemetry_stored == 1 and ack.telemetry_refused == 2
    assert {(x.device_id, x.reason, x.count) for x in ack.refused} == {
        (MANHOLE_2, "not_assigned", 1),
        (unknown, "unknown_device", 1),
    }
    # the gateway's own device was stored; the others were not
    assert len(cloud.state.store.query(MANHOLE_1, M, T0 - 1, T0 + 60)) == 1
    assert len(cloud.state.store.query(MANHOLE_2, M, T0 - 1, T0 + 60)) == 0
    assert cloud.state.registry.get(MANHOLE_1, "admin").readings_total == 1
    assert cloud.state.registry.get(MANHOLE_2, "admin").readings_total == 0
    metrics = (await cloud.client.get("/metrics")).text
    assert "vigil_cloud_forbidden_devices_total 2.0" in metrics
    assert 'vigil_cloud_refused_records_total{reason="not_assigned",record="telemetry"} 1.0' in metrics
    assert 'vigil_cloud_refused_records_total{reason="unknown_device",record="telemetry"} 1.0' in metrics
    # a retry is a duplicate (the batch was committed), never a blockage
    again = await cloud.client.post(
        HTTP_PATH, content=body(b), headers={**cloud.gw1, "content-type": "application/json"}
    )
    assert again.status_code == 200 and again.json()["duplicate"] is True


async def test_batch_naming_another_gateway_is_refused(cloud: Cloud) -> None:
    b = batch("batch-spoof", readings(M, MANHOLE_2, [1]), gateway_id=GW2)
    with pytest.raises(PermissionDeniedError):
        await cloud.state.ingest.ingest(b, gateway_id=GW1)
    r = await cloud.client.post(
        HTTP_PATH, content=body(b), headers={**cloud.gw1, "content-type": "application/json"}
    )
    assert r.status_code == 403 and "gw-community-2" in r.json()["detail"]


async def test_users_cannot_ingest(cloud: Cloud) -> None:
    b = batch("batch-user1", readings(M, MANHOLE_1, [1]))
    r = await cloud.client.post(
        HTTP_PATH, content=body(b), headers={**cloud.admin, "content-type": "application/json"}
    )
    assert r.status_code == 403


async def test_sequence_gaps_detected_across_batches_with_16_bit_wrap(cloud: Cloud) -> None:
    # 65533, 65534 | 65535, 0, 3 (1 and 2 lost across the wrap) | 6 (4, 5 lost)
    await cloud.state.ingest.ingest(
        batch("batch-seq-1", readings(M, MANHOLE_1, [65533, 65534])), gateway_id=GW1
    )
    await cloud.state.ingest.ingest(
        batch("batch-seq-2", readings(M, MANHOLE_1, [65535, 0, 3], t0=T0 + 120)), gateway_id=GW1
    )
    await cloud.state.ingest.ingest(
        batch("batch-seq-3", readings(M, MANHOLE_1, [6], t0=T0 + 600)), gateway_id=GW1
    )
    dev = (await cloud.client.get(f"/api/v1/devices/{MANHOLE_1}", headers=cloud.viewer)).json()
    assert dev["seq_gaps_total"] == 4 and dev["last_seq"] == 6 and dev["last_seen"] == T0 + 600
    assert "vigil_cloud_seq_gaps_total 4.0" in (await cloud.client.get("/metrics")).text


async def test_late_frames_do_not_move_last_seen_back(cloud: Cloud) -> None:
    await cloud.state.ingest.ingest(
        batch("batch-late-1", readings(M, MANHOLE_1, [10, 11], t0=T0 + 1000)), gateway_id=GW1
    )
    await cloud.state.ingest.ingest(batch("batch-late-2", readings(M, MANHOLE_1, [5], t0=T0)), gateway_id=GW1)
    dev = cloud.state.registry.get(MANHOLE_1, "admin")
    assert (dev.last_seq, dev.last_seen, dev.seq_gaps_total) == (11, T0 + 1060, 0)


def test_sequence_summary_vectorised_rules() -> None:
    # device a: stored last 100; frames 101 (ok), 101 (repeat), 105 (3 lost), 104 (late: by time after 105)
    # device b: never seen; 7, 9 (1 lost). device c: frames older than its stored last_seen: not compared
    ids = np.array(["a", "a", "a", "a", "b", "b", "c"])
    seq = np.array([101, 101, 105, 104, 7, 9, 50])
    t = np.array([1.0, 1.5, 2.0, 3.0, 1.0, 2.0, 5.0])
    batt = np.full(7, 50.0)
    s = sequence_summary(ids, seq, t, batt, {"a": 100, "c": 10}, {"a": 0.5, "c": 9.0})
    assert s.device_id == ["a", "b", "c"]
    assert s.gaps.tolist() == [3, 1, 0]
    assert s.last_seq.tolist() == [104, 9, 50] and s.count.tolist() == [4, 2, 1]


async def test_alert_steps_are_stored_once_and_state_moves(cloud: Cloud) -> None:
    raised = alert_step(BAND_1, W, EventType.FALL, AlertPhase.RAISED, T0 + 10)
    cleared = alert_step(BAND_1, W, EventType.FALL, AlertPhase.CLEARED, T0 + 300, episode_t=T0 + 10)
    ack = await cloud.state.ingest.ingest(batch("batch-alert-1", alerts=[raised]), gateway_id=GW1)
    assert ack.alerts_stored == 1
    # the same step again inside another batch (a gateway replaying its outbox) is not a new step
    ack2 = await cloud.state.ingest.ingest(batch("batch-alert-2", alerts=[raised, cleared]), gateway_id=GW1)
    assert ack2.alerts_stored == 1
    r = await cloud.client.get(f"/api/v1/alerts/{raised.alert_id}", headers=cloud.viewer)
    assert r.status_code == 200, r.text
    detail = r.json()
    assert [s["phase"] for s in detail["steps"]] == ["raised", "cleared"]
    assert detail["alert"]["phase"] == "cleared" and detail["source"] == GW1
    # the post-commit sink saw each new step exactly once
    seen = [(src, [s.phase.value for s in steps]) for src, steps in cloud.sink.calls]
    assert seen == [(GW1, ["raised"]), (GW1, ["cleared"])]


async def test_no_ack_when_the_store_fails_and_retry_succeeds(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = cloud.state.store
    real_write = store.write

    def broken(_batch: object) -> object:
        raise BackendError("disk full")

    monkeypatch.setattr(store, "write", broken)
    b = batch(
        "batch-retry-1",
        readings(M, MANHOLE_1, [1, 2]),
        alerts=[alert_step(MANHOLE_1, M, EventType.COVER_OPEN, AlertPhase.RAISED, T0)],
    )
    with pytest.raises(StorageError):
        await cloud.state.ingest.ingest(b, gateway_id=GW1)
    r = await cloud.client.post(
        HTTP_PATH, content=body(b), headers={**cloud.gw1, "content-type": "application/json"}
    )
    assert r.status_code == 503 and r.json()["error"] == "storage_unavailable"
    # nothing committed: no batch record, no alert, no sink call
    assert (await cloud.client.get("/api/v1/alerts", headers=cloud.viewer)).json() == {"alerts": []}
    assert cloud.sink.calls == []
    monkeypatch.setattr(store, "write", real_write)
    ack = await cloud.state.ingest.ingest(b, gateway_id=GW1)
    assert not ack.duplicate and ack.telemetry_stored == 2 and ack.alerts_stored == 1


async def test_a_failing_sink_never_unacknowledges(cloud: Cloud) -> None:
    class Boom:
        async def alerts_committed(self, steps: object, *, source: str) -> None:
            raise RuntimeError("dispatcher down")

    cloud.state.ingest.sink = Boom()
    b = batch("batch-sink-1", alerts=[alert_step(SMOKE_1, S, EventType.FIRE, AlertPhase.RAISED, T0)])
    ack = await cloud.state.ingest.ingest(b, gateway_id=GW1)
    assert ack.alerts_stored == 1
    assert "vigil_cloud_alert_sink_errors_total 1.0" in (await cloud.client.get("/metrics")).text


async def test_wrong_kind_for_registered_device_is_refused_per_record(cloud: Cloud) -> None:
    b = batch("batch-kind-1", readings(S, MANHOLE_1, [1]), readings(S, SMOKE_1, [1]))
    r = await cloud.client.post(
        HTTP_PATH, content=body(b), headers={**cloud.gw1, "content-type": "application/json"}
    )
    assert r.status_code == 200
    ack = UplinkAck.model_validate(r.json())
    assert ack.telemetry_stored == 1
    assert [(x.device_id, x.reason) for x in ack.refused] == [(MANHOLE_1, "wrong_kind")]


async def test_gateway_status_is_kept(cloud: Cloud) -> None:
    from alerts.contract import GatewayStatus, UplinkBatch

    b = UplinkBatch(
        batch_id="batch-status",
        gateway_id=GW1,
        sent_at=T0,
        status=GatewayStatus(version="0.1.0", outbox_depth=7, rejects_total=3),
    )
    await cloud.state.ingest.ingest(b, gateway_id=GW1)
    gw = (await cloud.client.get(f"/api/v1/gateways/{GW1}", headers=cloud.viewer)).json()
    assert gw["status"]["outbox_depth"] == 7 and gw["status"]["version"] == "0.1.0"


async def test_concurrent_batches_of_one_gateway_are_all_stored_and_counted(cloud: Cloud) -> None:
    """Batches in flight at once (parallel uplinks, an MQTT redelivery beside a new batch): their
    time-series writes group-commit and their transactions queue behind each other. Every reading is
    stored once and counted once, and the newest batch sets the device's last sequence number."""
    n = 6
    batches = [
        batch(
            f"batch-conc-{k}",
            readings(M, MANHOLE_1, [10 * k + j for j in range(10)], t0=T0 + 600 * k),
            readings(S, SMOKE_1, [10 * k + j for j in range(10)], t0=T0 + 600 * k),
        )
        for k in range(n)
    ]
    acks = await asyncio.gather(*(cloud.state.ingest.ingest(b, gateway_id=GW1) for b in batches))
    assert [a.telemetry_stored for a in acks] == [20] * n and not any(a.duplicate for a in acks)
    for dev_id in (MANHOLE_1, SMOKE_1):
        dev = cloud.state.registry.get(dev_id, "admin")
        # (lost-frame counts depend on the order the transactions commit in: the sequence rules' business)
        assert (dev.readings_total, dev.last_seq) == (10 * n, 10 * n - 1)
        assert dev.last_seen == T0 + 600 * (n - 1) + 9 * 60
    # a repeat of all of them, again at once: duplicates, nothing counted twice
    again = await asyncio.gather(*(cloud.state.ingest.ingest(b, gateway_id=GW1) for b in batches))
    assert all(a.duplicate for a in again)
    assert cloud.state.registry.get(MANHOLE_1, "admin").readings_total == 10 * n


async def test_a_group_of_batches_is_committed_together_and_each_answered(cloud: Cloud) -> None:
    """``ingest_many`` (an MQTT worker's waiting messages): one transaction for the group, one answer per
    batch in order; duplicates (stored before, or twice in the group) and refusals are per batch."""
    svc = cloud.state.ingest
    old = batch("batch-grp-0000", readings(M, MANHOLE_1, [1]))
    assert not (await svc.ingest(old, gateway_id=GW1)).duplicate
    b1 = batch(
        "batch-grp-0001",
        readings(M, MANHOLE_1, [2, 3]),
        alerts=[alert_step(MANHOLE_1, M, EventType.COVER_OPEN, AlertPhase.RAISED, T0 + 60)],
    )
    b2 = batch("batch-grp-0002", readings(M, MANHOLE_2, [1, 2, 3]), gateway_id=GW2)
    foreign = batch("batch-grp-0003", readings(M, MANHOLE_2, [9]), gateway_id=GW2)  # sent by GW1 below
    out = await svc.ingest_many([(b1, GW1), (b2, GW2), (old, GW1), (b1, GW1), (foreign, GW1)])
    assert [type(o).__name__ for o in out] == ["UplinkAck"] * 4 + ["PermissionDeniedError"]
    a1, a2, a_old, a1_again = out[:4]
    assert isinstance(a1, UplinkAck) and isinstance(a2, UplinkAck)
    assert (a1.duplicate, a1.telemetry_stored, a1.alerts_stored) == (False, 2, 1)
    assert (a2.duplicate, a2.telemetry_stored) == (False, 3)
    assert isinstance(a_old, UplinkAck) and a_old.duplicate
    assert isinstance(a1_again, UplinkAck) and a1_again.duplicate and a1_again.committed_at == a1.committed_at
    assert (a1_again.telemetry_stored, a1_again.alerts_stored) == (0, 0)  # as any duplicate answer
    assert cloud.state.registry.get(MANHOLE_1, "admin").readings_total == 3  # bookkeeping once per batch
    assert cloud.state.registry.get(MANHOLE_2, "admin").readings_total == 3
    assert len(cloud.state.store.query(MANHOLE_2, M, T0 - 1, T0 + 3600)) == 3  # nothing of the refused one
    gw = (await cloud.client.get(f"/api/v1/gateways/{GW1}", headers=cloud.viewer)).json()
    assert gw["batches_total"] == 2
    alerts = (await cloud.client.get("/api/v1/alerts", headers=cloud.viewer)).json()["alerts"]
    assert [(a["device_id"], a["event_type"]) for a in alerts] == [(MANHOLE_1, "cover_open")]
    # and the same group again: every batch a duplicate, nothing stored twice
    again = await svc.ingest_many([(b1, GW1), (b2, GW2)])
    assert all(isinstance(a, UplinkAck) and a.duplicate for a in again)
    assert cloud.state.registry.get(MANHOLE_2, "admin").readings_total == 3
