"""Vigil's own binary uplink payload, generic over the kinds' channel declarations.

Layout (all multi-byte fields big-endian), common header of 9 bytes then the kind's channels in
declaration order, each as its :attr:`Channel.wire` type scaled by :attr:`Channel.scale`::

    0  version    u8   payload-format version (currently 1)
    1  kind       u8   kind code (manhole 0x01, smoke_alarm 0x02, wristband 0x03)
    2  seq        u16  device sequence number, wraps at 65536
    4  flags      u16  kind-specific status bits (see the kind module's FLAGS)
    6  battery    u8   battery state of charge, percent (0..100; >100 is invalid)
    7  fw         u16  firmware version, major << 8 | minor
    9  channels   ...  see the kind module

The kinds' byte-exact tables with worked hex examples are in ``docs/payloads.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from firmware_bridge.errors import DecodeError
from firmware_bridge.records import Channel, DeviceKind, Flag, Reading, ReadingBatch

PAYLOAD_VERSION = 1
HEADER_DTYPE: list[tuple[str, str]] = [
    ("version", "u1"),
    ("kind", "u1"),
    ("seq", ">u2"),
    ("flags", ">u2"),
    ("battery", "u1"),
    ("fw", ">u2"),
]
HEADER_SIZE = 9


@dataclass(frozen=True)
class PayloadCodec:
    """Encoder/decoder of one kind's fixed-size payload, built from its channel declarations."""

    kind: DeviceKind
    kind_code: int
    channels: tuple[Channel, ...]
    flags: tuple[Flag, ...]

    @cached_property
    def dtype(self) -> np.dtype[np.void]:
        fields = HEADER_DTYPE + [(c.name, c.wire) for c in self.channels]
        return np.dtype(fields)

    @property
    def size(self) -> int:
        return int(self.dtype.itemsize)

    @cached_property
    def scales(self) -> npt.NDArray[np.float64]:
        return np.array([c.scale for c in self.channels], dtype=np.float64)

    @cached_property
    def _raw_limits(self) -> list[tuple[int, int]]:
        limits = []
        for c in self.channels:
            info = np.iinfo(np.dtype(c.wire))
            limits.append((int(info.min), int(info.max)))
        return limits

    # -- encoding -------------------------------------------------------------------------------------
    def encode(self, reading: Reading) -> bytes:
        """Encode one reading; values are rounded to the wire resolution and clamped to the wire range."""
        if reading.kind is not self.kind:
            raise ValueError(f"cannot encode a {reading.kind} reading with the {self.kind} codec")
        if len(reading.values) != len(self.channels):
            raise ValueError(f"{self.kind} readings have {len(self.channels)} values, got {len(reading.values)}")
        rec = np.zeros(1, dtype=self.dtype)
        rec["version"] = PAYLOAD_VERSION
        rec["kind"] = self.kind_code
        rec["seq"] = reading.seq & 0xFFFF
        rec["flags"] = reading.flags & 0xFFFF
        rec["battery"] = int(round(min(max(reading.battery_pct, 0.0), 100.0)))
        rec["fw"] = reading.fw_version & 0xFFFF
        for c, (lo, hi), v in zip(self.channels, self._raw_limits, reading.values, strict=True):
            raw = 0 if not np.isfinite(v) else round(v / c.scale)
            rec[c.name] = min(max(raw, lo), hi)
        return rec.tobytes()

    # -- decoding -------------------------------------------------------------------------------------
    def _check_header(self, version: int, kind: int, battery: int) -> None:
        if version != PAYLOAD_VERSION:
            raise DecodeError(f"unsupported payload version {version} (expected {PAYLOAD_VERSION})", reason="version")
        if kind != self.kind_code:
            raise DecodeError(
                f"kind code 0x{kind:02x} is not {self.kind} (0x{self.kind_code:02x})", reason="kind"
            )
        if battery > 100:
            raise DecodeError(f"battery {battery} % is out of range 0..100", reason="range")

    def decode(self, payload: bytes, *, device_id: str, time: float) -> Reading:
        """Decode one payload. Raises :class:`DecodeError` for anything that is not a valid payload."""
        if len(payload) != self.size:
            raise DecodeError(
                f"{self.kind} payload must be {self.size} bytes, got {len(payload)}", reason="length", data=payload
            )
        rec = np.frombuffer(payload, dtype=self.dtype, count=1)[0]
        try:
            self._check_header(int(rec["version"]), int(rec["kind"]), int(rec["battery"]))
        except DecodeError as exc:
            exc.data = payload
            raise
        values = tuple(float(rec[c.name]) * c.scale for c in self.channels)
        return Reading(
            kind=self.kind,
            device_id=device_id,
            seq=int(rec["seq"]),
            time=time,
            battery_pct=float(rec["battery"]),
            flags=int(rec["flags"]),
            values=values,
            fw_version=int(rec["fw"]),
        )

    def decode_many(
        self, payloads: Sequence[bytes], *, device_ids: Sequence[str], times: npt.ArrayLike
    ) -> tuple[ReadingBatch, list[tuple[int, DecodeError]]]:
        """Decode many payloads of this kind in one vectorised pass.

        Returns the batch of valid payloads and, for each rejected one, its index and the error, so a
        bad frame is counted without dropping its neighbours.
        """
        n = len(payloads)
        times_arr = np.broadcast_to(np.asarray(times, dtype=np.float64), (n,))
        ids = np.asarray(device_ids, dtype=np.str_)
        if len(ids) != n:
            raise ValueError(f"{n} payloads but {len(ids)} device ids")
        rejects: list[tuple[int, DecodeError]] = []
        lengths = np.fromiter((len(p) for p in payloads), dtype=np.int64, count=n)
        ok_len = lengths == self.size
        for i in np.flatnonzero(~ok_len):
            rejects.append(
                (int(i), DecodeError(f"{self.kind} payload must be {self.size} bytes, got {lengths[i]}",
                                     reason="length", data=payloads[i]))
            )
        good = np.flatnonzero(ok_len)
        buf = b"".join(payloads[i] for i in good)
        recs = np.frombuffer(buf, dtype=self.dtype)
        bad_version = recs["version"] != PAYLOAD_VERSION
        bad_kind = recs["kind"] != self.kind_code
        bad_batt = recs["battery"] > 100
        bad = bad_version | bad_kind | bad_batt
        for j in np.flatnonzero(bad):
            i = int(good[j])
            try:
                self._check_header(int(recs["version"][j]), int(recs["kind"][j]), int(recs["battery"][j]))
            except DecodeError as exc:
                exc.data = payloads[i]
                rejects.append((i, exc))
        keep = ~bad
        recs = recs[keep]
        rows = good[keep]
        if len(self.channels):
            raw = np.stack([recs[c.name].astype(np.float64) for c in self.channels], axis=1)
        else:
            raw = np.empty((len(recs), 0))
        batch = ReadingBatch(
            kind=self.kind,
            device_id=ids[rows],
            seq=recs["seq"].astype(np.uint32),
            time=times_arr[rows].copy(),
            battery_pct=recs["battery"].astype(np.float64),
            flags=recs["flags"].astype(np.uint32),
            values=raw * self.scales,
            fw_version=recs["fw"].astype(np.uint16),
        )
        rejects.sort(key=lambda t: t[0])
        return batch, rejects
