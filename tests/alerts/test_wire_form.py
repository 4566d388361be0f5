"""The uplink contract's wire form is written once: by the ``UplinkBatch`` model (docs/contract.md)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_uplink_wire_form_is_the_models_own() -> None:
    """The outbox sends ``UplinkBatch.wire`` (pre-serialised records in the model's envelope): it reads
    back as the same model the cloud validates, and nothing else writes the envelope."""
    from alerts.contract import AlertEvent, UplinkBatch

    alert = AlertEvent.model_validate(
        {
            "alert_id": "70b3d57ed0000001/fall/1795690000000",
            "device_id": "70b3d57ed0000001",
            "kind": "wristband",
            "event_type": "fall",
            "phase": "raised",
            "severity": 3,
            "episode_ms": 1795690000000,
            "time": 1795690000.0,
            "frame_time": 1795690000.0,
            "value": 1.0,
            "message": "fall",
        }
    )
    body = UplinkBatch.wire(
        batch_id="b-12345678",
        gateway_id="gw-1",
        sent_at=1795690001.0,
        alerts=[alert.model_dump_json().encode()],
        status={"version": "0.1.0", "frames_total": 3, "newer_key": 1},
    )
    batch = UplinkBatch.model_validate_json(body)
    assert batch.alerts == [alert] and batch.telemetry == [] and batch.status is not None
    assert batch.status.frames_total == 3
    outbox = (ROOT / "edge" / "outbox.py").read_text(encoding="utf-8")
    assert "UplinkBatch.wire(" in outbox and '"telemetry":[' not in outbox
