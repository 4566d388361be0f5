"""Hand-made readings for the detection tests (normal values per kind, override what the test is about)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from alerts.contract import AlertEvent
from alerts.detection.engine import DetectionEngine
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from firmware_bridge.registry import spec

NORMAL: dict[DeviceKind, dict[str, float]] = {
    DeviceKind.MANHOLE: dict(
        tilt_deg=2.0,
        tilt_ref_deg=2.0,
        vibration_g=0.02,
        water_distance_cm=200.0,
        ch4_pct_lel=1.0,
        h2s_ppm=0.5,
        o2_pct_vol=20.8,
        temperature_c=15.0,
    ),
    DeviceKind.SMOKE_ALARM: dict(smoke_db_m=0.01, temperature_c=22.0, co_ppm=1.0, humidity_pct=45.0),
    DeviceKind.WRISTBAND: dict(
        heart_rate_bpm=70.0,
        spo2_pct=97.0,
        accel_peak_g=1.0,
        stillness_s=10.0,
        orientation_change_deg=10.0,
        steps=100.0,
        lat=22.54,
        lon=114.05,
    ),
}
BASE_FLAGS: dict[DeviceKind, tuple[str, ...]] = {
    DeviceKind.MANHOLE: (),
    DeviceKind.SMOKE_ALARM: (),
    DeviceKind.WRISTBAND: ("worn", "gps_valid"),
}
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z (08:00 in China)


def reading(
    kind: DeviceKind,
    device: str,
    seq: int,
    t: float,
    *flags: str,
    **values: float,
) -> Reading:
    """One reading of ``kind`` with normal values, ``values`` (channel -> value) over them and ``flags`` set.

    Two keywords are not channels: ``battery`` (%, default 80) and ``base_flags`` (default true: the flags a
    healthy device of the kind always sends, e.g. a worn band). They share ``**values`` with the channels so
    callers can unpack a dict of channel names (a typed keyword beside ``**values`` would make mypy refuse
    any such dict)."""
    battery = float(values.pop("battery", 80.0))
    base_flags = bool(values.pop("base_flags", True))
    s = spec(kind)
    v = dict(NORMAL[kind])
    unknown = set(values) - set(v)
    if unknown:
        raise KeyError(f"no channel(s) {unknown} in {kind}")
    # real analogue channels are never perfectly constant (the stuck-sensor rule relies on it)
    for ch in ("temperature_c", "water_distance_cm", "o2_pct_vol"):
        if ch in v and ch not in values:
            v[ch] += 0.1 * (seq % 3)
    v.update(values)
    word = 0
    for f in (*(BASE_FLAGS[kind] if base_flags else ()), *flags):
        word |= s.flag(f).mask
    return Reading(kind, device, seq, t, battery, word, tuple(v[c] for c in s.channel_names))


def batch(readings: Sequence[Reading]) -> ReadingBatch:
    return ReadingBatch.from_readings(readings[0].kind, list(readings))


def feed(engine: DetectionEngine, readings: Iterable[Reading]) -> list[AlertEvent]:
    """Process readings one frame per batch, at their own time (as a live gateway would)."""
    out: list[AlertEvent] = []
    for r in readings:
        out += engine.process(batch([r]), now=r.time)
    return out


def of(events: Iterable[AlertEvent], et: EventType, phase: AlertPhase | None = None) -> list[AlertEvent]:
    return [e for e in events if e.event_type is et and (phase is None or e.phase is phase)]


def types(events: Iterable[AlertEvent]) -> set[EventType]:
    return {e.event_type for e in events}
