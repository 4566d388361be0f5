"""Small builders shared by the gateway daemon tests (readings, payloads, alert steps)."""

from __future__ import annotations

import numpy as np

from alerts.contract import AlertEvent
from firmware_bridge import manhole, smoke_alarm
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch


def device_id(i: int) -> str:
    return f"{0x70B3D57ED0000000 + i:016x}"


def smoke_reading(i: int, seq: int, t: float, *, fire: bool = False) -> Reading:
    flags = smoke_alarm.CODEC.flags[0].mask if fire else smoke_alarm.CODEC.flags[9].mask
    values = (2.5 if fire else 0.01, 60.0 if fire else 21.0, 0.0, 40.0)
    return Reading(DeviceKind.SMOKE_ALARM, device_id(i), seq, t, 90.0, flags, values, fw_version=0x0102)


def manhole_reading(i: int, seq: int, t: float) -> Reading:
    values = (2.0, 2.0, 0.01, 150.0, 0.0, 0.0, 20.9, 15.0)
    return Reading(
        DeviceKind.MANHOLE, device_id(i), seq, t, 80.0, manhole.CODEC.flags[3].mask, values, fw_version=1
    )


def smoke_payload(i: int, seq: int, *, fire: bool = False) -> bytes:
    return smoke_alarm.encode(smoke_reading(i, seq, 0.0, fire=fire))


def manhole_payload(i: int, seq: int) -> bytes:
    return manhole.encode(manhole_reading(i, seq, 0.0))


def manhole_batch(n: int, t0: float = 1_700_000_000.0, first: int = 0) -> ReadingBatch:
    return ReadingBatch.from_readings(
        DeviceKind.MANHOLE, [manhole_reading(first + i, i, t0 + i) for i in range(n)]
    )


def alert(i: int, t: float = 1_700_000_000.0, event: EventType = EventType.FIRE) -> AlertEvent:
    ep = int(t * 1000)
    return AlertEvent(
        alert_id=alert_id(device_id(i), event, ep),
        device_id=device_id(i),
        kind=DeviceKind.SMOKE_ALARM,
        event_type=event,
        severity=Severity.HIGH,
        phase=AlertPhase.RAISED,
        episode_ms=ep,
        time=t,
        frame_time=t,
    )


def batch_seqs(batch: ReadingBatch) -> set[tuple[str, int]]:
    return set(zip(batch.device_id.tolist(), np.asarray(batch.seq).tolist(), strict=True))
