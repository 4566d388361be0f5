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

The kinds' byte-exact tables with worked hex examples are in ``docs/payloads.md``. The manhole example:

>>> from firmware_bridge import manhole
>>> p = bytes.fromhex("010104d2000557010209290096035205dc00190008082a00ba")
>>> r = manhole.decode(p, device_id="70b3d57ed0001234", time=1.7e9)
>>> r.seq, r.battery_pct, r.value("tilt_deg"), r.value("o2_pct_vol"), r.has_flag("cover_open")
(1234, 87.0, 23.45, 20.9, True)
>>> batch, rejects = manhole.decode_many([p, p[:-1], p], device_ids=["a", "b", "c"], times=1.7e9)
>>> batch.device_id.tolist(), [(i, e.reason) for i, e in rejects]
(['a', 'c'], [(1, 'length')])

Why the codec is written the way it is:

* **A corrupt frame is an error, a bad sensor value is data.** Wrong length, unknown version, wrong kind
  byte or a battery above 100 % mean the bytes are not a payload we understand: :class:`DecodeError`,
  counted by the caller with its bytes. A channel whose decoded value lies outside its declared valid
  range (a failed sensor, the "not available" all-ones pattern) keeps the reading - its seq, flags and
  the other channels still matter, e.g. an SOS bit - and only that value becomes ``NaN``.
* **One arithmetic, two paths.** The scalar :meth:`PayloadCodec.decode` (``struct``) and the vectorised
  :meth:`PayloadCodec.decode_many` / :meth:`PayloadCodec.decode_buffer` (numpy) compute every value as
  ``raw * mul / div`` with the same float64 constants, so they agree bit for bit. For decimal scales
  (0.1, 0.001, 1e-6) ``div`` is the integer ``1/scale``: one correctly rounded division yields the double
  nearest the decimal value, so 12 x 0.1 decodes to ``1.2``, not ``1.2000000000000002``.
* **No per-frame Python work for valid frames in the batch paths.** Lengths, header checks, scaling and
  range checks are whole-array operations; only rejected frames get a Python-level error object.
* **NaN survives a round trip where it can.** :meth:`PayloadCodec.encode` writes a non-finite value as
  the wire type's maximum (all ones for unsigned fields), the datasheet convention for "not available",
  which lies outside the valid range and decodes back to ``NaN``. Channels whose valid range covers the
  whole wire range (``steps``, ``stillness_s``) have no such pattern; there ``NaN`` encodes as 0.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from firmware_bridge.errors import DecodeError
from firmware_bridge.kernel.records import Channel, DeviceKind, Flag, KindSchema, Reading, ReadingBatch

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
_HEADER_STRUCT = ">BBHHBH"
_STRUCT_CODES = {
    ("u", 1): "B",
    ("i", 1): "b",
    ("u", 2): "H",
    ("i", 2): "h",
    ("u", 4): "I",
    ("i", 4): "i",
    ("u", 8): "Q",
    ("i", 8): "q",
}

BytesLike = bytes | bytearray | memoryview


_UTF32 = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"  # numpy's native UCS-4


def _id_array(device_ids: Sequence[str] | npt.ArrayLike) -> npt.NDArray[np.str_]:
    """``np.asarray(device_ids, dtype=np.str_)``, for a list of ``str`` in a few C passes.

    numpy converts a list of strings one object at a time, twice (width, then copy): on a district's
    batch that was half the decoding. Here the ids are joined and encoded to UCS-4 once and laid out at
    the widest id's width (NUL-padded, as numpy does); anything else (not a list of ``str``, a lone
    surrogate, only empty ids) goes through numpy itself, so the result is always numpy's.
    """
    if isinstance(device_ids, list) and device_ids:
        try:
            cp = np.frombuffer("".join(device_ids).encode(_UTF32), dtype=np.uint32)
        except (TypeError, UnicodeEncodeError):
            cp = None
        if cp is not None:
            n = len(device_ids)
            lens = np.fromiter(map(len, device_ids), dtype=np.int64, count=n)
            w = int(lens.max())
            if w > 0:
                if len(cp) == n * w:  # every id as wide as the widest: already laid out
                    return cp.view(f"U{w}")
                out = np.zeros(n * w, dtype=np.uint32)
                starts = np.cumsum(lens) - lens
                out[np.arange(len(cp)) + np.repeat(np.arange(0, n * w, w) - starts, lens)] = cp
                return out.view(f"U{w}")
    return np.asarray(device_ids, dtype=np.str_).reshape(-1)


def _scale_parts(scale: float) -> tuple[float, float]:
    """``(mul, div)`` with ``value = raw * mul / div``; ``div`` is an integer for decimal scales."""
    inv = 1.0 / scale
    r = round(inv)
    if r >= 1 and abs(inv - r) <= 1e-9 * r:
        return 1.0, float(r)
    return float(scale), 1.0


@dataclass(frozen=True)
class PayloadCodec:
    """Encoder/decoder of one kind's fixed-size payload, built from its channel declarations.

    The declarations are checked once at import time: unique names, big-endian integer wire types,
    positive scales, ``low <= high`` and flag bits inside the 16-bit flag word.
    """

    kind: DeviceKind
    kind_code: int
    channels: tuple[Channel, ...]
    flags: tuple[Flag, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.kind_code <= 0xFF:
            raise ValueError(f"{self.kind}: kind code {self.kind_code} does not fit a byte")
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names) or set(names) & {n for n, _ in HEADER_DTYPE}:
            raise ValueError(f"{self.kind}: channel names must be unique and not shadow the header: {names}")
        for c in self.channels:
            dt = np.dtype(c.wire)
            if dt.kind not in "iu" or (dt.itemsize > 1 and dt.str[0] != ">"):
                raise ValueError(f"{self.kind}.{c.name}: wire type {c.wire!r} must be a big-endian integer")
            if not (c.scale > 0 and math.isfinite(c.scale)) or not c.low <= c.high:
                raise ValueError(f"{self.kind}.{c.name}: needs scale > 0 and low <= high")
        bits = [f.bit for f in self.flags]
        if len(set(bits)) != len(bits) or any(not 0 <= b < 16 for b in bits):
            raise ValueError(f"{self.kind}: flag bits must be unique and within 0..15: {bits}")

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
    def _mul(self) -> npt.NDArray[np.float64]:
        return np.array([_scale_parts(c.scale)[0] for c in self.channels], dtype=np.float64)

    @cached_property
    def _div(self) -> npt.NDArray[np.float64]:
        return np.array([_scale_parts(c.scale)[1] for c in self.channels], dtype=np.float64)

    @cached_property
    def _low(self) -> npt.NDArray[np.float64]:
        return np.array([c.low for c in self.channels], dtype=np.float64)

    @cached_property
    def _high(self) -> npt.NDArray[np.float64]:
        return np.array([c.high for c in self.channels], dtype=np.float64)

    @cached_property
    def _struct(self) -> struct.Struct:
        codes = "".join(
            _STRUCT_CODES[(np.dtype(c.wire).kind, np.dtype(c.wire).itemsize)] for c in self.channels
        )
        return struct.Struct(_HEADER_STRUCT + codes)

    @cached_property
    def _scalar_plan(self) -> tuple[tuple[float, float, float, float], ...]:
        return tuple((*_scale_parts(c.scale), c.low, c.high) for c in self.channels)

    @cached_property
    def _raw_limits(self) -> list[tuple[int, int]]:
        limits = []
        for c in self.channels:
            info = np.iinfo(np.dtype(c.wire))
            limits.append((int(info.min), int(info.max)))
        return limits

    @cached_property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    @cached_property
    def schema(self) -> KindSchema:
        """The channel and flag declaration the decoded readings carry."""
        return KindSchema(kind=self.kind, channels=self.channels, flags=self.flags)

    # -- encoding -------------------------------------------------------------------------------------
    def encode(self, reading: Reading) -> bytes:
        """Encode one reading.

        Values are rounded to the wire resolution and clamped to the wire range; a non-finite value is
        written as the "not available" pattern (the wire maximum), see the module docstring.
        """
        if reading.kind is not self.kind:
            raise ValueError(f"cannot encode a {reading.kind} reading with the {self.kind} codec")
        if len(reading.values) != len(self.channels):
            raise ValueError(
                f"{self.kind} readings have {len(self.channels)} values, got {len(reading.values)}"
            )
        raws: list[int] = []
        for (mul, div, low, high), (lo, hi), v in zip(
            self._scalar_plan, self._raw_limits, reading.values, strict=True
        ):
            if math.isfinite(v):
                x = v * div / mul  # may overflow to +-inf for absurd values: clamp before rounding
                raws.append(lo if x <= lo else hi if x >= hi else min(max(round(x), lo), hi))
            else:
                na_pattern = hi * mul / div
                raws.append(hi if not low <= na_pattern <= high else 0)
        battery = reading.battery_pct if math.isfinite(reading.battery_pct) else 0.0
        return self._struct.pack(
            PAYLOAD_VERSION,
            self.kind_code,
            reading.seq & 0xFFFF,
            reading.flags & 0xFFFF,
            round(min(max(battery, 0.0), 100.0)),
            reading.fw_version & 0xFFFF,
            *raws,
        )

    # -- decoding -------------------------------------------------------------------------------------
    def _header_error(self, version: int, kind: int, battery: int, data: bytes) -> DecodeError | None:
        if version != PAYLOAD_VERSION:
            return DecodeError(
                f"unsupported payload version {version} (expected {PAYLOAD_VERSION})",
                reason="version",
                data=data,
            )
        if kind != self.kind_code:
            return DecodeError(
                f"kind code 0x{kind:02x} is not {self.kind} (0x{self.kind_code:02x})",
                reason="kind",
                data=data,
            )
        if battery > 100:
            return DecodeError(f"battery {battery} % is out of range 0..100", reason="range", data=data)
        return None

    def _length_error(self, n: int, data: bytes) -> DecodeError:
        hint = ""
        if n >= 2 and data[1] != self.kind_code:
            hint = f" (and its kind byte 0x{data[1]:02x} is not {self.kind}'s 0x{self.kind_code:02x})"
        return DecodeError(
            f"{self.kind} payload must be {self.size} bytes, got {n}{hint}", reason="length", data=data
        )

    def decode(self, payload: BytesLike, *, device_id: str, time: float) -> Reading:
        """Decode one payload. Raises :class:`DecodeError` for anything that is not a valid payload.

        Channel values outside their valid range decode as ``NaN`` (the reading is kept).
        """
        n = memoryview(payload).nbytes
        if n != self.size:
            raise self._length_error(n, bytes(payload))
        version, kind, seq, flags, battery, fw, *raws = self._struct.unpack(payload)
        if version != PAYLOAD_VERSION or kind != self.kind_code or battery > 100:
            err = self._header_error(version, kind, battery, bytes(payload))
            assert err is not None
            raise err
        values = []
        for raw, (mul, div, low, high) in zip(raws, self._scalar_plan, strict=True):
            v = float(raw) * mul / div
            values.append(v if low <= v <= high else math.nan)
        return Reading(
            kind=self.kind,
            device_id=device_id,
            seq=seq,
            time=float(time),
            battery_pct=float(battery),
            flags=flags,
            values=tuple(values),
            fw_version=fw,
            schema=self.schema,
        )

    def decode_many(
        self,
        payloads: Sequence[BytesLike],
        *,
        device_ids: Sequence[str] | npt.ArrayLike,
        times: npt.ArrayLike,
    ) -> tuple[ReadingBatch, list[tuple[int, DecodeError]]]:
        """Decode many payloads of this kind in one vectorised pass.

        ``times`` is one time for all or one per payload. Returns the batch of valid payloads (in input
        order) and, for each rejected one, its index and the error, so a bad frame is counted without
        dropping its neighbours. Agrees exactly with :meth:`decode` on every payload.
        """
        n = len(payloads)
        ids, times_arr = self._columns(n, device_ids, times)
        lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=n)
        raw = np.frombuffer(b"".join(payloads), dtype=np.uint8)
        if lengths.size and bool((lengths == self.size).all()):
            recs = raw.view(self.dtype)
            rows = np.arange(n)
            rejects: list[tuple[int, DecodeError]] = []
        else:
            ok = lengths == self.size
            rows = np.flatnonzero(ok)
            bad = np.flatnonzero(~ok).tolist()
            rejects = [(i, self._length_error(int(lengths[i]), bytes(payloads[i]))) for i in bad]
            recs = raw[np.repeat(ok, lengths)].view(self.dtype)  # the good frames' bytes, one C pass
        batch, header_rejects = self._decode_records(recs, rows, ids, times_arr)
        if header_rejects:
            rejects.extend(header_rejects)
            rejects.sort(key=lambda t: t[0])
        return batch, rejects

    def decode_buffer(
        self, buf: BytesLike, *, device_ids: Sequence[str] | npt.ArrayLike, times: npt.ArrayLike
    ) -> tuple[ReadingBatch, list[tuple[int, DecodeError]]]:
        """Decode a contiguous buffer of back-to-back payloads of this kind (zero-copy ``np.frombuffer``).

        ``buf`` is any C-contiguous buffer: ``bytes``, a ``memoryview`` of a receive buffer, or the
        ``(n, size)`` ``uint8`` array a simulator builds. Its length must be a multiple of :attr:`size`
        (else the whole buffer is misaligned and :class:`DecodeError` ``reason="length"`` is raised);
        ``device_ids`` has one id per payload. Returns what :meth:`decode_many` returns for the same
        payloads. A non-contiguous view is a programming error (``ValueError``).
        """
        view = memoryview(buf)
        if not view.c_contiguous:
            raise ValueError("decode_buffer needs a C-contiguous buffer; copy the view first")
        flat = view.cast("B") if view.ndim != 1 or view.format != "B" else view
        if flat.nbytes % self.size:
            raise DecodeError(
                f"buffer of {flat.nbytes} bytes is not a whole number of {self.size}-byte "
                f"{self.kind} payloads",
                reason="length",
                data=bytes(flat[: 4 * self.size]),
            )
        n = flat.nbytes // self.size
        ids, times_arr = self._columns(n, device_ids, times)
        recs = np.frombuffer(flat, dtype=self.dtype)
        return self._decode_records(recs, np.arange(n), ids, times_arr)

    # -- the shared vectorised core ---------------------------------------------------------------------
    @staticmethod
    def _columns(
        n: int, device_ids: Sequence[str] | npt.ArrayLike, times: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.float64]]:
        ids = _id_array(device_ids)
        if len(ids) != n:
            raise ValueError(f"{n} payloads but {len(ids)} device ids")
        t = np.asarray(times, dtype=np.float64)
        if t.ndim > 1 or (t.ndim == 1 and len(t) != n):
            raise ValueError(f"{n} payloads but times has shape {t.shape}")
        # (np.broadcast_to costs more than a small batch's decoding; the batch copies the times anyway)
        return ids, (t if t.ndim == 1 else np.full(n, t, dtype=np.float64))

    def _decode_records(
        self,
        recs: npt.NDArray[np.void],
        rows: npt.NDArray[np.intp],
        ids: npt.NDArray[np.str_],
        times: npt.NDArray[np.float64],
    ) -> tuple[ReadingBatch, list[tuple[int, DecodeError]]]:
        """Header checks, scaling and range checks on structured records; ``rows`` maps them to inputs."""
        version, kind, battery = recs["version"], recs["kind"], recs["battery"]
        bad = (version != PAYLOAD_VERSION) | (kind != self.kind_code) | (battery > 100)
        rejects: list[tuple[int, DecodeError]] = []
        if bad.any():
            j = np.flatnonzero(bad)  # rare: pull the bad rows out as Python values in a few C calls
            raw_bad = recs[j].tobytes()
            size = self.size
            for k, (i, v, kd, b) in enumerate(
                zip(rows[j].tolist(), version[j].tolist(), kind[j].tolist(), battery[j].tolist(), strict=True)
            ):
                err = self._header_error(v, kd, b, raw_bad[k * size : (k + 1) * size])
                assert err is not None
                rejects.append((i, err))
            keep = ~bad
            recs, rows = recs[keep], rows[keep]
        m = len(recs)
        values = np.empty((m, len(self.channels)), dtype=np.float64)
        for k, c in enumerate(self.channels):
            values[:, k] = recs[c.name]
        values *= self._mul
        values /= self._div
        np.copyto(values, np.nan, where=(values < self._low) | (values > self._high))
        every = len(rows) == len(ids)  # rows ascend and are unique: then they are every input
        batch = ReadingBatch(
            kind=self.kind,
            device_id=ids.copy() if every else ids[rows],
            seq=recs["seq"].astype(np.uint32),
            time=times.copy() if every else times[rows],
            battery_pct=recs["battery"].astype(np.float64),
            flags=recs["flags"].astype(np.uint32),
            values=values,
            fw_version=recs["fw"].astype(np.uint16),
        )
        return batch, rejects
