"""The event history a forecast learns from: one columnar record of dated, placed, typed events.

Alerts from the cloud's alert table, incidents and manual reports all become rows of an
:class:`EventHistory` (time in UTC epoch seconds, position in local metres, the event family, the device
when there is one). Events are grouped into *families* that share a cause and a follow-up: covers that get
displaced again, wells that flood in the same rain, buildings with repeated fire/CO alarms, a resident's
falls and heart-rate episodes. Each family gets its own model; risk is their sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from alerts.forecast.errors import ForecastError
from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
DAY_S = 86_400.0


class Family(StrEnum):
    COVER = "cover"  # displaced / open covers, tampering with a well
    FLOOD = "flood"  # water at the cover
    GAS = "gas"  # combustible / toxic gas, oxygen
    FIRE = "fire"  # fire, heat and CO alarms
    HEALTH = "health"  # falls, SOS, heart-rate and SpO2 episodes (health data: restricted roles)


FAMILIES: tuple[Family, ...] = tuple(Family)

#: which event types count as risk, and in which family; everything else (battery, silence, nuisances,
#: sensor faults) is maintenance or noise and is left out of the history
FAMILY_OF: dict[EventType, Family] = {
    EventType.COVER_DISPLACED: Family.COVER,
    EventType.COVER_OPEN: Family.COVER,
    EventType.TAMPER: Family.COVER,
    EventType.OVERFLOW: Family.FLOOD,
    EventType.GAS_COMBUSTIBLE: Family.GAS,
    EventType.GAS_TOXIC: Family.GAS,
    EventType.OXYGEN_ABNORMAL: Family.GAS,
    EventType.FIRE: Family.FIRE,
    EventType.CO: Family.FIRE,
    EventType.FALL: Family.HEALTH,
    EventType.SOS: Family.HEALTH,
    EventType.HEART_RATE_HIGH: Family.HEALTH,
    EventType.HEART_RATE_LOW: Family.HEALTH,
    EventType.SPO2_LOW: Family.HEALTH,
}
EVENT_TYPES: tuple[EventType, ...] = tuple(FAMILY_OF)
#: the device kind whose devices a family's events happen at (its background is shared among them)
FAMILY_KIND: dict[Family, DeviceKind] = {
    Family.COVER: DeviceKind.MANHOLE,
    Family.FLOOD: DeviceKind.MANHOLE,
    Family.GAS: DeviceKind.MANHOLE,
    Family.FIRE: DeviceKind.SMOKE_ALARM,
    Family.HEALTH: DeviceKind.WRISTBAND,
}
HEALTH_EVENT_TYPES: frozenset[EventType] = frozenset(e for e, f in FAMILY_OF.items() if f is Family.HEALTH)


def family_of(event_type: str) -> Family | None:
    """The family of an event type's value, or None when it is not a risk event."""
    try:
        return FAMILY_OF.get(EventType(event_type))
    except ValueError:
        return None


@dataclass(frozen=True)
class EventHistory:
    """Events as columns, sorted by time. Build with :meth:`from_columns`."""

    time: F64  # (n,) UTC epoch seconds
    xy: F64  # (n, 2) local metres
    family: I64  # (n,) index into FAMILIES
    event_type: I64  # (n,) index into EVENT_TYPES
    device: I64  # (n,) index into device_ids, -1 = not tied to a device (a manual report)
    device_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.time)

    @classmethod
    def from_columns(
        cls,
        time: npt.ArrayLike,
        xy: npt.ArrayLike,
        event_type: Sequence[str],
        device: Sequence[str | None] | None = None,
    ) -> EventHistory:
        """Keep the risk events (see :data:`FAMILY_OF`) with a finite time and place; sort by time."""
        t = np.asarray(time, dtype=np.float64).reshape(-1)
        pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        n = len(t)
        if len(pts) != n or len(event_type) != n or (device is not None and len(device) != n):
            raise ForecastError("time, xy, event_type and device must have one entry per event")
        codes = {e.value: i for i, e in enumerate(EVENT_TYPES)}
        et = np.array([codes.get(str(e), -1) for e in event_type], dtype=np.int64)
        keep = (et >= 0) & np.isfinite(t) & np.isfinite(pts).all(axis=1)
        devs = list(device) if device is not None else [None] * n
        names = sorted({d for d, k in zip(devs, keep.tolist(), strict=True) if k and d})
        pos = {d: i for i, d in enumerate(names)}
        dev = np.array([pos.get(d, -1) if d else -1 for d in devs], dtype=np.int64)
        fam_code = np.array([FAMILIES.index(FAMILY_OF[e]) for e in EVENT_TYPES], dtype=np.int64)
        order = np.argsort(t[keep], kind="stable")
        et_k = et[keep][order]
        return cls(
            time=t[keep][order],
            xy=pts[keep][order],
            family=fam_code[et_k] if len(et_k) else np.empty(0, dtype=np.int64),
            event_type=et_k,
            device=dev[keep][order],
            device_ids=tuple(names),
        )

    def select(self, mask: npt.NDArray[np.bool_]) -> EventHistory:
        return EventHistory(
            self.time[mask], self.xy[mask], self.family[mask], self.event_type[mask], self.device[mask],
            self.device_ids,
        )  # fmt: skip

    def window(self, start: float, end: float) -> EventHistory:
        """Events with ``start <= time < end``."""
        a, b = np.searchsorted(self.time, [start, end], side="left")
        return self._slice(int(a), int(b))

    def _slice(self, a: int, b: int) -> EventHistory:
        sl = slice(a, b)
        return EventHistory(
            self.time[sl], self.xy[sl], self.family[sl], self.event_type[sl], self.device[sl], self.device_ids
        )

    def of_family(self, family: Family) -> EventHistory:
        return self.select(self.family == FAMILIES.index(family))

    def type_names(self) -> list[str]:
        return [EVENT_TYPES[i].value for i in self.event_type.tolist()]
