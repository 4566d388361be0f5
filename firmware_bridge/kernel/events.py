"""The vocabulary of events and alerts, shared by the edge, the cloud, the simulators and the scorer.

An *event type* names what happened in the world (a fall, a fire, a displaced cover). Ground truth, the
detectors and the cloud all use these names, so a scorer can match them without a translation table.

An *alert* is Vigil's claim that an event is happening. Its identity is stable: ``device/event/episode``
where ``episode`` is the UTC start of the episode in integer milliseconds. A duplicated or replayed frame
therefore never raises a second alert for the same episode, and a restarted gateway that resumes an
episode keeps its id.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

from firmware_bridge.kernel.records import DeviceKind


class Severity(IntEnum):
    """Risk grade (low / medium / high): decides who handles an event and how fast."""

    NONE = 0  # ground truth only: a nuisance that must not page anyone
    LOW = 1  # maintenance: low battery, contamination, a silent cover
    MEDIUM = 2  # needs someone today: gas first stage, heart rate episode, band removed
    HIGH = 3  # life safety: fire, CO, fall, SOS, open hole in a road

    @classmethod
    def parse(cls, value: str | int) -> Severity:
        if isinstance(value, int):
            return cls(value)
        return cls[value.upper()]


class AlertPhase(StrEnum):
    RAISED = "raised"
    UPDATED = "updated"  # severity or value changed during the episode
    CLEARED = "cleared"


class EventType(StrEnum):
    # manhole cover
    COVER_DISPLACED = "cover_displaced"  # |tilt - installed tilt| above threshold, sustained
    COVER_OPEN = "cover_open"  # lid off its frame / stolen: a hole in the road
    OVERFLOW = "overflow"  # water close to the cover
    GAS_COMBUSTIBLE = "gas_combustible"  # CH4 %LEL (GB/T 50493-2019 two stages)
    GAS_TOXIC = "gas_toxic"  # H2S ppm
    OXYGEN_ABNORMAL = "oxygen_abnormal"  # O2 outside 19.5-23.5 %vol
    # smoke / heat / CO alarm
    FIRE = "fire"
    CO = "co"
    CONTAMINATION = "contamination"
    # wristband
    FALL = "fall"
    SOS = "sos"
    HEART_RATE_HIGH = "heart_rate_high"
    HEART_RATE_LOW = "heart_rate_low"
    SPO2_LOW = "spo2_low"
    INACTIVITY = "inactivity"
    GEOFENCE_EXIT = "geofence_exit"
    BAND_REMOVED = "band_removed"
    # every kind
    TAMPER = "tamper"
    SENSOR_FAULT = "sensor_fault"
    LOW_BATTERY = "low_battery"
    DEVICE_SILENT = "device_silent"
    GATEWAY_OFFLINE = "gateway_offline"
    # nuisance events: ground truth labels only. Any alert matched to one is a false alarm.
    NUISANCE_TRAFFIC = "nuisance_traffic"  # a truck shaking a cover
    NUISANCE_COOKING = "nuisance_cooking"  # cooking smoke / steam
    NUISANCE_TEST = "nuisance_test"  # test button
    NUISANCE_HUSH = "nuisance_hush"  # resident hushed the alarm

    @property
    def is_nuisance(self) -> bool:
        return self.value.startswith("nuisance_")


#: which event types each kind can produce (ground truth and detectors must stay inside these)
KIND_EVENTS: dict[DeviceKind, frozenset[EventType]] = {
    DeviceKind.MANHOLE: frozenset(
        {
            EventType.COVER_DISPLACED,
            EventType.COVER_OPEN,
            EventType.OVERFLOW,
            EventType.GAS_COMBUSTIBLE,
            EventType.GAS_TOXIC,
            EventType.OXYGEN_ABNORMAL,
            EventType.TAMPER,
            EventType.SENSOR_FAULT,
            EventType.LOW_BATTERY,
            EventType.DEVICE_SILENT,
            EventType.NUISANCE_TRAFFIC,
        }
    ),
    DeviceKind.SMOKE_ALARM: frozenset(
        {
            EventType.FIRE,
            EventType.CO,
            EventType.CONTAMINATION,
            EventType.TAMPER,
            EventType.SENSOR_FAULT,
            EventType.LOW_BATTERY,
            EventType.DEVICE_SILENT,
            EventType.NUISANCE_COOKING,
            EventType.NUISANCE_TEST,
            EventType.NUISANCE_HUSH,
        }
    ),
    DeviceKind.WRISTBAND: frozenset(
        {
            EventType.FALL,
            EventType.SOS,
            EventType.HEART_RATE_HIGH,
            EventType.HEART_RATE_LOW,
            EventType.SPO2_LOW,
            EventType.INACTIVITY,
            EventType.GEOFENCE_EXIT,
            EventType.BAND_REMOVED,
            EventType.LOW_BATTERY,
            EventType.DEVICE_SILENT,
        }
    ),
}

#: events that still trigger a local action at the gateway while the cloud is unreachable
LIFE_SAFETY: frozenset[EventType] = frozenset(
    {EventType.FIRE, EventType.CO, EventType.FALL, EventType.SOS, EventType.COVER_OPEN}
)


def alert_id(device_id: str, event_type: EventType | str, episode_ms: int) -> str:
    """The stable identity of an alert episode."""
    return f"{device_id}/{EventType(event_type).value}/{int(episode_ms)}"
