"""What every time-series backend shares: the store protocol, the result types, the errors and the
columnar helpers.

Why a protocol and not a base class: the backends have nothing in common at run time (an embedded SQLite
file, a PostgreSQL server, an HTTP time-series server); what they share is the contract the ingest
service codes against (``write`` / ``query`` / ``latest`` / ``close``) and its semantics, written down here
once:

- ``write`` is blocking and thread-safe and returns only after the data is durable in that backend (for
  SQL backends: after ``COMMIT``). It is idempotent on ``(device_id, time_ms, seq)``.
- ``query`` covers the half-open range ``start <= t < end`` (UTC seconds). When the range holds at most
  ``max_points`` readings it returns them at full resolution; otherwise it averages them into equal
  buckets of ``bucket_s`` seconds (a bucket is stamped with its start time; empty buckets are omitted) and
  also returns each bucket's minimum and maximum so spikes survive the averaging.
- Missing values (NaN in a :class:`~firmware_bridge.kernel.records.ReadingBatch`, ``null`` on the wire) are
  stored as missing (SQL ``NULL`` / an absent field), never as a number, and come back as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import spec

FloatArray = npt.NDArray[np.float64]

#: Extra per-reading columns that can be queried like a channel.
EXTRA_CHANNELS: tuple[str, ...] = ("battery_pct",)


class TimeSeriesError(Exception):
    """Base of every error raised by :mod:`cloud.timeseries`."""


class UnsupportedURLError(TimeSeriesError, ValueError):
    """``open_timeseries`` got a URL whose scheme or parameters it does not understand."""


class UnknownChannelError(TimeSeriesError, ValueError):
    """A query named a channel the device kind does not have."""


class InvalidRangeError(TimeSeriesError, ValueError):
    """A query's time range or ``max_points`` is not usable (end <= start, NaN, max_points < 1)."""


class BackendError(TimeSeriesError):
    """The backend failed (I/O error, server unreachable, HTTP error). The original error is chained."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """How many readings of one ``write`` were new (``stored``) and how many were already there."""

    stored: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class Series:
    """One device's history: a time column and one value column per channel.

    When ``downsampled`` is true, ``time`` holds bucket start times, ``values`` the per-bucket mean,
    ``values_min`` / ``values_max`` the per-bucket extremes and ``bucket_s`` the bucket width; otherwise
    ``values_min`` / ``values_max`` are empty and ``bucket_s`` is ``None``.
    """

    device_id: str
    kind: DeviceKind
    time: FloatArray
    values: dict[str, FloatArray]
    downsampled: bool
    bucket_s: float | None
    values_min: dict[str, FloatArray] = field(default_factory=dict)
    values_max: dict[str, FloatArray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.time)


@runtime_checkable
class TimeSeriesStore(Protocol):
    """The contract every backend implements (see the module docstring for the semantics)."""

    def write(self, batch: ReadingBatch) -> WriteResult: ...

    def query(
        self,
        device_id: str,
        kind: DeviceKind,
        start: float,
        end: float,
        *,
        channels: Sequence[str] | None = None,
        max_points: int = 1000,
    ) -> Series: ...

    def latest(self, device_ids: Sequence[str]) -> dict[str, float]: ...

    def close(self) -> None: ...


# --- helpers shared by the backends ---------------------------------------------------------------------
def table_name(kind: DeviceKind) -> str:
    """The wide table (SQL) or measurement (line protocol) of one kind: ``ts_manhole`` etc."""
    return f"ts_{DeviceKind(kind).value}"


def resolve_channels(kind: DeviceKind, channels: Sequence[str] | None) -> tuple[str, ...]:
    """The channels a query asked for, validated; ``None`` means all of the kind's sensor channels."""
    names = spec(kind).channel_names
    if channels is None:
        return names
    allowed = set(names) | set(EXTRA_CHANNELS)
    wanted = tuple(dict.fromkeys(channels))
    bad = [c for c in wanted if c not in allowed]
    if bad:
        raise UnknownChannelError(f"{DeviceKind(kind).value} has no channel {bad[0]!r}; it has {list(names)}")
    return wanted


def check_range(start: float, end: float, max_points: int) -> None:
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        raise InvalidRangeError(f"need finite start < end, got start={start!r} end={end!r}")
    if max_points < 1:
        raise InvalidRangeError(f"max_points must be >= 1, got {max_points}")


def to_ms(t: float) -> int:
    """UTC seconds -> integer milliseconds (the stored time key), rounding to nearest."""
    return round(t * 1000.0)


def plan_query(
    kind: DeviceKind | str, channels: Sequence[str] | None, start: float, end: float, max_points: int
) -> tuple[DeviceKind, tuple[str, ...], int, int]:
    """What every backend's ``query`` checks first: the kind, its validated channels, the range in ms."""
    k = DeviceKind(kind)
    names = resolve_channels(k, channels)
    check_range(start, end, max_points)
    return k, names, to_ms(start), to_ms(end)


def time_ms_column(batch: ReadingBatch) -> npt.NDArray[np.int64]:
    """The batch's times as integer milliseconds, vectorised (same rounding as :func:`to_ms`)."""
    return np.rint(batch.time * 1000.0).astype(np.int64)


def bucket_ms_for(start_ms: int, end_ms: int, max_points: int) -> int:
    """Bucket width so that ``[start, end)`` splits into at most ``max_points`` buckets (>= 1 ms)."""
    return max(1, -(-(end_ms - start_ms) // max_points))


def empty_series(device_id: str, kind: DeviceKind, names: Sequence[str]) -> Series:
    return Series(
        device_id=device_id,
        kind=DeviceKind(kind),
        time=np.empty(0, dtype=np.float64),
        values={n: np.empty(0, dtype=np.float64) for n in names},
        downsampled=False,
        bucket_s=None,
    )


def column_value_rows(batch: ReadingBatch, t_ms: npt.NDArray[np.int64]) -> Iterator[tuple[object, ...]]:
    """Rows ``(device_id, time_ms, seq, battery_pct, flags, fw_version, *channels)`` for ``executemany``.

    The conversion is column-wise: each numpy column becomes a Python list in C (``tolist``) and
    ``zip`` assembles the tuples, so there is no per-value Python work. It returns the ``zip`` iterator
    itself: ``executemany`` consumes one tuple at a time, so ``zip`` can recycle its result tuple and no
    list of n tuples is ever built (measured: about half the conversion time, and no GC pauses). NaN
    stays NaN; SQLite binds NaN as NULL, and the PostgreSQL backend maps it to NULL in SQL.
    """
    cols: list[list[object]] = [
        batch.device_id.tolist(),
        t_ms.tolist(),
        batch.seq.tolist(),
        batch.battery_pct.tolist(),
        batch.flags.tolist(),
        batch.fw_version.tolist(),
    ]
    cols.extend(batch.values.T.tolist())
    return zip(*cols, strict=True)


def full_series(
    device_id: str, kind: DeviceKind, names: Sequence[str], rows: Sequence[Sequence[object]]
) -> Series:
    """A full-resolution :class:`Series` from SQL rows ``(time_ms, channel...)``; NULL -> NaN."""
    a = np.array(rows, dtype=np.float64).reshape(len(rows), len(names) + 1)
    return Series(
        device_id=device_id,
        kind=kind,
        time=a[:, 0] / 1000.0,
        values={n: a[:, j + 1].copy() for j, n in enumerate(names)},
        downsampled=False,
        bucket_s=None,
    )


def bucketed_series(
    device_id: str,
    kind: DeviceKind,
    names: Sequence[str],
    rows: Sequence[Sequence[object]],
    s_ms: int,
    bucket: int,
) -> Series:
    """A downsampled :class:`Series` from SQL rows ``(bucket_no, avg, min, max per channel...)``."""
    a = np.array(rows, dtype=np.float64).reshape(len(rows), 3 * len(names) + 1)
    return Series(
        device_id=device_id,
        kind=kind,
        time=(s_ms + a[:, 0] * bucket) / 1000.0,
        values={n: a[:, 1 + 3 * j].copy() for j, n in enumerate(names)},
        values_min={n: a[:, 2 + 3 * j].copy() for j, n in enumerate(names)},
        values_max={n: a[:, 3 + 3 * j].copy() for j, n in enumerate(names)},
        downsampled=True,
        bucket_s=bucket / 1000.0,
    )
