"""Vigil's serial link frame: SLIP around ``device_id | payload | CRC-16``; sans-I/O stream decoder.

Our own LoRa / sub-GHz radio modules hand the gateway a byte stream over a UART. A UART gives no message
boundaries, drops and flips bytes on a noisy line, and starts mid-frame after a reboot, so the link needs
(1) a delimiter the payload can never contain, (2) an integrity check, (3) a way to resynchronise. The
frame on the wire is::

    END | SLIP-escaped( device_id (8 B, u64 BE) | payload | CRC-16/CCITT-FALSE (2 B BE) ) | END

The CRC covers ``device_id + payload``. The leading ``END`` flushes whatever line noise the receiver has
accumulated, so a frame sent after garbage still arrives intact. See ``docs/framing.md`` for the worked hex
example and why SLIP (RFC 1055) was chosen over COBS; COBS is implemented here as well
(:func:`cobs_encode`, :func:`cobs_decode`, ``framing="cobs"``) for links that prefer it.

:class:`FrameDecoder` never raises on bad input: every rejected segment is counted by reason in
``rejects`` (``crc``, ``short``, ``oversize``, ``escape``) and kept in ``last_reject`` (and passed to
``on_reject``) with its raw bytes for logging; decoding resumes at the next delimiter. Memory is bounded by
``max_frame``. The work per chunk is one ``bytes.split`` plus a handful of C-level ``bytes`` operations per
frame (``count``, ``replace``, ``binascii.crc_hqx``), never a Python loop per byte (COBS: one step per
block of non-zero bytes).
"""

from __future__ import annotations

import logging
from binascii import crc_hqx
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from firmware_bridge.errors import DecodeError

__all__ = [
    "CRC_LEN",
    "END",
    "ESC",
    "ESC_END",
    "ESC_ESC",
    "ID_LEN",
    "MIN_FRAME",
    "REJECT_REASONS",
    "FrameDecoder",
    "Framing",
    "LinkFrame",
    "cobs_decode",
    "cobs_encode",
    "decode_frame",
    "decode_link_body",
    "device_id_from_int",
    "device_id_to_int",
    "encode_frame",
    "encode_link_body",
    "slip_decode",
    "slip_encode",
]

log = logging.getLogger(__name__)

END = 0xC0
ESC = 0xDB
ESC_END = 0xDC
ESC_ESC = 0xDD
_END = b"\xc0"
_ESC = b"\xdb"
_ESC_END_SEQ = b"\xdb\xdc"
_ESC_ESC_SEQ = b"\xdb\xdd"

ID_LEN = 8
CRC_LEN = 2
MIN_FRAME = ID_LEN + CRC_LEN
"""The smallest valid unstuffed frame: a device id, an empty payload and the CRC."""

REJECT_REASONS = ("crc", "short", "oversize", "escape")
"""Every label :attr:`FrameDecoder.rejects` can count."""

Framing = Literal["slip", "cobs"]

_LOG_BYTES = 64  # how many raw bytes of a reject are rendered in the debug log line


# --------------------------------------------------------------------------------------------- device ids


def device_id_to_int(device_id: str) -> int:
    """The u64 that goes on the wire for ``device_id``.

    Accepted forms: 16 hex digits (an EUI-64 / LoRaWAN DevEUI, any case) or a 15-digit IMEI, which is
    carried as its integer value (an IMEI is < 10**15 < 2**64). Anything else is a :class:`DecodeError`
    with reason ``device_id``.
    """
    s = device_id.strip()
    try:
        if len(s) == 16:
            return int(s, 16)
        if len(s) == 15 and s.isascii() and s.isdigit():
            return int(s)
    except ValueError:
        pass
    raise DecodeError(
        f"device id {device_id!r} is neither 16 hex digits (EUI-64) nor a 15-digit IMEI", reason="device_id"
    )


def device_id_from_int(value: int) -> str:
    """The canonical rendering of a wire device id: 16 lowercase hex digits."""
    if not 0 <= value < 1 << 64:
        raise DecodeError(f"device id {value} does not fit in 64 bits", reason="device_id")
    return f"{value:016x}"


# ---------------------------------------------------------------------------------------------- SLIP


def slip_encode(data: bytes | bytearray | memoryview) -> bytes:
    """SLIP-encode one packet (RFC 1055) with a leading and a trailing ``END``.

    >>> slip_encode(b"\\xc0\\x01\\xdb").hex(" ")
    'c0 db dc 01 db dd c0'
    """
    body = bytes(data).replace(_ESC, _ESC_ESC_SEQ).replace(_END, _ESC_END_SEQ)
    return _END + body + _END


def _slip_unescape(segment: bytes) -> bytes | None:
    """Unescape the bytes between two ``END`` s; ``None`` on an invalid escape sequence.

    In valid SLIP every ``ESC`` starts an escape and the byte after it is ``ESC_END`` or ``ESC_ESC`` (never
    ``ESC``), so the escape count must equal the two sequences' counts, and the replacements cannot overlap.
    """
    n_esc = segment.count(_ESC)
    if not n_esc:
        return segment
    n_end = segment.count(_ESC_END_SEQ)
    n_esc_esc = segment.count(_ESC_ESC_SEQ)
    if n_end + n_esc_esc != n_esc:
        return None
    return segment.replace(_ESC_END_SEQ, _END).replace(_ESC_ESC_SEQ, _ESC)


def slip_decode(packet: bytes | bytearray | memoryview) -> bytes:
    """Decode one complete SLIP packet (leading/trailing ``END`` s optional).

    Raises :class:`DecodeError` (reason ``escape``) on an invalid escape or an ``END`` inside the packet;
    for a byte stream use :class:`FrameDecoder`, which never raises.
    """
    raw = bytes(packet).strip(_END)
    if _END in raw:
        raise DecodeError("SLIP packet contains an END byte inside it", reason="escape", data=bytes(packet))
    out = _slip_unescape(raw)
    if out is None:
        raise DecodeError("invalid SLIP escape sequence", reason="escape", data=bytes(packet))
    return out


# ---------------------------------------------------------------------------------------------- COBS


def cobs_encode(data: bytes | bytearray | memoryview) -> bytes:
    """Consistent Overhead Byte Stuffing: the result contains no ``0x00`` (the caller adds the delimiter).

    Block-wise (one step per run of non-zero bytes, not per byte). A run of exactly 254 non-zero bytes at
    the end encodes as ``FF ..`` with no trailing ``01``.

    >>> cobs_encode(b"12345\\x006789").hex(" ")
    '06 31 32 33 34 35 05 36 37 38 39'
    """
    pieces = bytes(data).split(b"\x00")
    out = bytearray()
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        had_full_block = False
        while len(piece) >= 254:
            out.append(0xFF)
            out += piece[:254]
            piece = piece[254:]
            had_full_block = True
        if piece or not had_full_block or i != last:
            out.append(len(piece) + 1)
            out += piece
    return bytes(out)


def cobs_decode(encoded: bytes | bytearray | memoryview) -> bytes:
    """Undo :func:`cobs_encode`; raises :class:`DecodeError` (reason ``escape``) on malformed input."""
    enc = bytes(encoded)
    out = bytearray()
    i, n = 0, len(enc)
    while i < n:
        code = enc[i]
        if code == 0:
            raise DecodeError(f"COBS: zero byte at offset {i}", reason="escape", data=enc)
        end = i + code
        if end > n:
            raise DecodeError(
                f"COBS: block at offset {i} needs {code - 1} bytes, {n - i - 1} left",
                reason="escape",
                data=enc,
            )
        block = enc[i + 1 : end]
        if b"\x00" in block:
            raise DecodeError(f"COBS: zero byte inside the block at offset {i}", reason="escape", data=enc)
        out += block
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def _cobs_unstuff(segment: bytes) -> bytes | None:
    try:
        return cobs_decode(segment)
    except DecodeError:
        return None


# ---------------------------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class LinkFrame:
    """One verified link frame: which device sent it and its (kind-specific) payload."""

    device_id: str
    payload: bytes

    def encode(self, framing: Framing = "slip") -> bytes:
        return encode_frame(self.device_id, self.payload, framing=framing)


def encode_link_body(device_id: str, payload: bytes | bytearray | memoryview) -> bytes:
    """``device_id (8 B BE) | payload | CRC-16/CCITT-FALSE (2 B BE)`` without any byte stuffing.

    The same body travels unstuffed where the carrier already delimits it (an NB-IoT datagram, a URC).
    """
    body = device_id_to_int(device_id).to_bytes(ID_LEN, "big") + bytes(payload)
    return body + crc_hqx(body, 0xFFFF).to_bytes(CRC_LEN, "big")


def decode_link_body(body: bytes | bytearray | memoryview) -> LinkFrame:
    """Verify and split an unstuffed link body; :class:`DecodeError` with reason ``short`` or ``crc``."""
    raw = bytes(body)
    if len(raw) < MIN_FRAME:
        raise DecodeError(
            f"link frame body of {len(raw)} bytes is shorter than {MIN_FRAME}", reason="short", data=raw
        )
    if crc_hqx(raw, 0xFFFF) != 0:
        raise DecodeError("link frame CRC-16 mismatch", reason="crc", data=raw)
    return LinkFrame(raw[:ID_LEN].hex(), raw[ID_LEN:-CRC_LEN])


def encode_frame(
    device_id: str, payload: bytes | bytearray | memoryview, *, framing: Framing = "slip"
) -> bytes:
    """The wire bytes of one frame, delimiters included.

    >>> encode_frame("70b3d57ed0001234", b"\\x01\\xc0").hex(" ")
    'c0 70 b3 d5 7e d0 00 12 34 01 db dc 31 9d c0'
    """
    body = encode_link_body(device_id, payload)
    if framing == "slip":
        return slip_encode(body)
    if framing == "cobs":
        return b"\x00" + cobs_encode(body) + b"\x00"
    raise ValueError(f"unknown framing {framing!r}; expected 'slip' or 'cobs'")


def decode_frame(packet: bytes | bytearray | memoryview, *, framing: Framing = "slip") -> LinkFrame:
    """Decode exactly one delimited frame, raising :class:`DecodeError` (with ``reason``) if it is bad.

    The strict one-shot counterpart of :class:`FrameDecoder`, for tools and tests.
    """
    dec = FrameDecoder(framing=framing, max_frame=max(len(packet), MIN_FRAME))
    delim = _END if framing == "slip" else b"\x00"
    frames = dec.feed(delim + bytes(packet) + delim)
    if len(frames) == 1 and dec.rejects.total() == 0:
        return frames[0]
    if dec.last_reject is not None:
        reason, raw = dec.last_reject
        raise DecodeError(f"bad {framing} link frame: {reason}", reason=reason, data=raw)
    raise DecodeError(
        f"expected exactly one {framing} link frame, found {len(frames)}",
        reason="framing",
        data=bytes(packet),
    )


class FrameDecoder:
    """Sans-I/O stream decoder: ``feed(chunk) -> [LinkFrame, ...]``, any chunking, never raises.

    ``max_frame`` bounds the unstuffed frame (device id + payload + CRC); the pending raw buffer never holds
    more than ``2 * max_frame + 2`` bytes (the worst case of escaping). A longer run without a delimiter is
    counted once as ``oversize`` and skipped up to the next delimiter, where decoding resynchronises.
    Empty segments (back-to-back delimiters, the leading ``END`` flush) are not rejects.

    Counters: ``frames_total`` (good frames), ``rejects`` (``Counter`` by reason), ``bytes_total``.
    ``last_reject`` is ``(reason, raw bytes)`` of the most recent reject (raw bytes capped at the buffer
    bound); ``on_reject(reason, raw)`` is called for each reject if given.
    """

    def __init__(
        self,
        max_frame: int = 512,
        *,
        framing: Framing = "slip",
        on_reject: Callable[[str, bytes], None] | None = None,
    ) -> None:
        if max_frame < MIN_FRAME:
            raise ValueError(f"max_frame must be at least {MIN_FRAME}, got {max_frame}")
        if framing == "slip":
            self._delim = _END
            self._unstuff: Callable[[bytes], bytes | None] = _slip_unescape
        elif framing == "cobs":
            self._delim = b"\x00"
            self._unstuff = _cobs_unstuff
        else:
            raise ValueError(f"unknown framing {framing!r}; expected 'slip' or 'cobs'")
        self.framing: Framing = framing
        self.max_frame = max_frame
        self.max_raw = 2 * max_frame + 2
        self.on_reject = on_reject
        self.rejects: Counter[str] = Counter()
        self.last_reject: tuple[str, bytes] | None = None
        self.frames_total = 0
        self.bytes_total = 0
        self._buf = bytearray()
        self._skipping = False

    @property
    def pending(self) -> int:
        """Bytes buffered for a frame whose closing delimiter has not arrived yet."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget any partial frame (e.g. after the port was reopened); counters are kept."""
        self._buf.clear()
        self._skipping = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[LinkFrame]:
        """Consume a chunk of the stream; return the frames it completed, in order."""
        chunk = bytes(data)
        self.bytes_total += len(chunk)
        out: list[LinkFrame] = []
        parts = chunk.split(self._delim)  # one C call; parts[1:-1] are complete segments
        buf = self._buf
        if len(parts) > 1:
            first = parts[0]
            if self._skipping:  # the end of an oversize run: drop it, resynchronise here
                self._skipping = False
                buf.clear()
            elif buf:
                buf += first
                first = bytes(buf)
                buf.clear()
                self._segment(first, out)
            elif first:
                self._segment(first, out)
            segment = self._segment
            for seg in parts[1:-1]:
                if seg:  # back-to-back delimiters are not frames, and not rejects
                    segment(seg, out)
        tail = parts[-1]
        if tail and not self._skipping:
            buf += tail
            if len(buf) > self.max_raw:
                self._reject("oversize", bytes(buf[: self.max_raw]))
                buf.clear()
                self._skipping = True
        return out

    def _segment(self, raw: bytes, out: list[LinkFrame]) -> None:
        if len(raw) > self.max_raw:
            self._reject("oversize", raw[: self.max_raw])
            return
        body = self._unstuff(raw)
        if body is None:
            self._reject("escape", raw)
        elif len(body) < MIN_FRAME:
            self._reject("short", raw)
        elif len(body) > self.max_frame:
            self._reject("oversize", raw)
        elif crc_hqx(body, 0xFFFF):
            # CRC-16/CCITT-FALSE has no final XOR and is MSB-first: running it over the data followed by
            # its own CRC (big-endian) always leaves 0, so one C call checks the frame without slicing.
            self._reject("crc", raw)
        else:
            self.frames_total += 1
            out.append(LinkFrame(body[:ID_LEN].hex(), body[ID_LEN:-CRC_LEN]))

    def _reject(self, reason: str, raw: bytes) -> None:
        self.rejects[reason] += 1
        self.last_reject = (reason, raw)
        if log.isEnabledFor(logging.DEBUG):
            shown = raw[:_LOG_BYTES].hex(" ")
            more = f" (+{len(raw) - _LOG_BYTES} bytes)" if len(raw) > _LOG_BYTES else ""
            log.debug("%s frame rejected (%s): %s%s", self.framing, reason, shown, more)
        if self.on_reject is not None:
            self.on_reject(reason, raw)
