"""The one typed record that travels downstream of the codecs, and its columnar batch.

Every codec, whatever the radio or platform, ends in :class:`Reading` (one frame of one device) or in
:class:`ReadingBatch` (many frames of one device kind as numpy columns). Channel values are ordered as the
kind's channel declaration (a :class:`KindSchema`, built by each kind's codec in
``firmware_bridge/<kind>.py``),
so the detector can index them by position with no dict lookups on the hot path.

This module is part of the shared kernel: it imports nothing of Vigil's.

Times are UTC seconds since the epoch (``float``), everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt


class DeviceKind(StrEnum):
    """The device kinds Vigil knows. Adding one: see ``docs/adding-a-device-kind.md``."""

    MANHOLE = "manhole"
    SMOKE_ALARM = "smoke_alarm"
    WRISTBAND = "wristband"


@dataclass(frozen=True, slots=True)
class Channel:
    """A measured quantity declared as data (Home Assistant style).

    ``scale`` and ``wire`` describe the payload encoding: ``value = raw * scale``, ``wire`` is a numpy
    dtype string of the raw field (big-endian, e.g. ``">i2"``). ``low``/``high`` is the valid physical
    range: a decoded value outside it marks the reading as a sensor fault, never crashes.
    """

    name: str
    unit: str
    low: float
    high: float
    wire: str
    scale: float = 1.0
    description: str = ""

    def valid(self, value: float) -> bool:
        return math.isfinite(value) and self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class Flag:
    """A status bit in the payload's flag word."""

    name: str
    bit: int
    description: str = ""

    @property
    def mask(self) -> int:
        return 1 << self.bit


@dataclass(frozen=True)
class KindSchema:
    """What a kind's readings carry: its channels (in order) and status flags, as data."""

    kind: DeviceKind
    channels: tuple[Channel, ...]
    flags: tuple[Flag, ...]

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    def channel_index(self, name: str) -> int:
        return self.channel_names.index(name)

    def flag(self, name: str) -> Flag:
        for f in self.flags:
            if f.name == name:
                return f
        raise KeyError(f"{self.kind} has no flag {name!r}")


@dataclass(frozen=True, slots=True)
class Reading:
    """One decoded uplink of one device.

    ``values`` is ordered as the kind's channels; use :meth:`value` for access by name off the hot path.
    """

    kind: DeviceKind
    device_id: str
    seq: int
    time: float
    battery_pct: float
    flags: int
    values: tuple[float, ...]
    fw_version: int = 0
    schema: KindSchema | None = field(default=None, compare=False, repr=False)

    def _schema(self) -> KindSchema:
        if self.schema is None:
            raise ValueError(f"this {self.kind} reading carries no schema; decode it with the kind's codec")
        return self.schema

    def value(self, name: str) -> float:
        return self.values[self._schema().channel_index(name)]

    def has_flag(self, name: str) -> bool:
        return bool(self.flags & self._schema().flag(name).mask)

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly view (CLI output, logs); not used on the hot path."""
        s = self._schema()
        return {
            "kind": self.kind.value,
            "device_id": self.device_id,
            "seq": self.seq,
            "time": self.time,
            "battery_pct": self.battery_pct,
            "fw_version": self.fw_version,
            "flags": [f.name for f in s.flags if self.flags & f.mask],
            "values": dict(zip(s.channel_names, self.values, strict=True)),
        }


FloatArray = npt.NDArray[np.float64]
UIntArray = npt.NDArray[np.uint32]


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """Many readings of one kind as columns: what the vectorised detector consumes.

    ``values`` has shape ``(n, len(CHANNELS))``; row ``i`` together with the other columns' element ``i``
    is one :class:`Reading`.
    """

    kind: DeviceKind
    device_id: npt.NDArray[np.str_]
    seq: UIntArray
    time: FloatArray
    battery_pct: FloatArray
    flags: UIntArray
    values: FloatArray
    fw_version: npt.NDArray[np.uint16]

    def __post_init__(self) -> None:
        n = len(self.device_id)
        for name in ("seq", "time", "battery_pct", "flags", "fw_version"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"ReadingBatch column {name!r} has {len(getattr(self, name))} rows, expected {n}"
                )
        if self.values.ndim != 2 or self.values.shape[0] != n:
            raise ValueError(f"ReadingBatch values must be (n, channels); got {self.values.shape} for n={n}")

    def __len__(self) -> int:
        return len(self.device_id)

    def reading(self, i: int) -> Reading:
        return Reading(
            kind=self.kind,
            device_id=str(self.device_id[i]),
            seq=int(self.seq[i]),
            time=float(self.time[i]),
            battery_pct=float(self.battery_pct[i]),
            flags=int(self.flags[i]),
            values=tuple(float(v) for v in self.values[i]),
            fw_version=int(self.fw_version[i]),
        )

    def readings(self) -> list[Reading]:
        return [self.reading(i) for i in range(len(self))]

    def take(self, index: npt.ArrayLike) -> ReadingBatch:
        """Rows selected by an integer index or boolean mask."""
        idx = np.asarray(index)
        return ReadingBatch(
            kind=self.kind,
            device_id=self.device_id[idx],
            seq=self.seq[idx],
            time=self.time[idx],
            battery_pct=self.battery_pct[idx],
            flags=self.flags[idx],
            values=self.values[idx],
            fw_version=self.fw_version[idx],
        )

    @classmethod
    def empty(cls, kind: DeviceKind, n_channels: int) -> ReadingBatch:
        return cls.from_readings(kind, [], n_channels=n_channels)

    @classmethod
    def from_readings(
        cls, kind: DeviceKind, readings: Sequence[Reading], *, n_channels: int | None = None
    ) -> ReadingBatch:
        """Pack scalar readings into columns (tests, slow paths)."""
        if n_channels is None:
            if not readings:
                raise ValueError("from_readings needs n_channels for an empty batch")
            n_channels = len(readings[0].values)
        for r in readings:
            if r.kind is not kind:
                raise ValueError(f"a {r.kind} reading cannot join a {kind} batch")
        return cls(
            kind=kind,
            device_id=np.array([r.device_id for r in readings], dtype=np.str_),
            seq=np.array([r.seq for r in readings], dtype=np.uint32),
            time=np.array([r.time for r in readings], dtype=np.float64),
            battery_pct=np.array([r.battery_pct for r in readings], dtype=np.float64),
            flags=np.array([r.flags for r in readings], dtype=np.uint32),
            values=np.array([r.values for r in readings], dtype=np.float64).reshape(
                len(readings), n_channels
            ),
            fw_version=np.array([r.fw_version for r in readings], dtype=np.uint16),
        )

    @classmethod
    def concat(cls, batches: Iterable[ReadingBatch]) -> ReadingBatch:
        items = list(batches)
        if not items:
            raise ValueError("concat needs at least one batch")
        kind = items[0].kind
        if any(b.kind is not kind for b in items):
            raise ValueError("cannot concat batches of different kinds")
        return cls(
            kind=kind,
            device_id=np.concatenate([b.device_id for b in items]),
            seq=np.concatenate([b.seq for b in items]),
            time=np.concatenate([b.time for b in items]),
            battery_pct=np.concatenate([b.battery_pct for b in items]),
            flags=np.concatenate([b.flags for b in items]),
            values=np.concatenate([b.values for b in items]),
            fw_version=np.concatenate([b.fw_version for b in items]),
        )
