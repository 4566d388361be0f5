"""NB-IoT module URCs on a UART (Quectel BC95 / BC28 / BC26 / BC66 family), sans-I/O.

Why: a gateway-side NB-IoT module (or a module under test on a bench) hands received downstream or
relayed uplink data to the host as ASCII-hex inside AT unsolicited result codes. The transport only moves
bytes; :class:`UrcDecoder` turns any chunking of the byte stream into payloads and read requests.

Lines handled (Quectel BC95/BC28 and BC26 AT command manuals; RT-Thread-packages/at_device
``class/bc28/at_socket_bc28.c``; LiteOS ``drivers/devices/nb/bc95.c``)::

    +NNMI:<len>,<hex>                         CoAP / CDP path (AT+NNMI=1)        -> NbiotPayload(path="cdp")
    +NSONMI:<socket>,<len>                    UDP datagram waiting               -> ReadRequest(socket, len)
    +NSONMI:<socket>,<ip>,<port>,<len>,<hex>  UDP datagram inline (AT+NSONMI=2)  -> NbiotPayload(path="udp")
    [+NSORF:]<socket>,<ip>,<port>,<len>,<hex>,<remaining>
                                              response to AT+NSORF               -> NbiotPayload(path="udp")
                                                                                  (+ ReadRequest if remaining)
    +QLWDATARECV: <obj>,<inst>,<res>,<len>,<hex>   LwM2M (BC26/BC66; 19,1,0)    -> NbiotPayload(path="lwm2m")

What the data means is not this module's business at the URC level; a gateway reads our link body in it:
:class:`LinkUrcDecoder` (used by ``edge/sources/serial.py`` and ``vigil frame decode --format nbiot``).

``OK``, ``ERROR``, ``+CME ERROR``, command echoes and other URCs (``+CEREG``, ``+CSCON`` ...) are counted
in :attr:`UrcDecoder.ignored` and skipped. A length/hex mismatch, a non-ASCII line or a line longer than
``max_line`` is a counted reject (:attr:`UrcDecoder.rejects`, the last one kept in ``last_reject``); the
decoder resynchronises at the next line end and never raises on input.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

PATH_CDP = "cdp"
PATH_UDP = "udp"
PATH_LWM2M = "lwm2m"
DEFAULT_MAX_LINE = 4096
"""Bytes per line: BC28 reads at most 1358 bytes per AT+NSORF (2716 hex chars) plus the header fields."""
DEFAULT_MAX_READ = 512
"""Bytes asked per AT+NSORF; BC95 firmware caps a read at 512."""


@dataclass(frozen=True, slots=True)
class NbiotPayload:
    """Bytes received by the module, with where they came from."""

    path: str
    data: bytes
    socket: int | None = None
    remote_ip: str | None = None
    remote_port: int | None = None


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """The module holds ``length`` bytes on ``socket``: write :func:`read_command` to fetch them."""

    socket: int
    length: int


UrcEvent = NbiotPayload | ReadRequest

_NNMI = re.compile(rb"^\+NNMI: ?(\d{1,5}),([0-9A-Fa-f]*)$")
_NSONMI_SHORT = re.compile(rb"^\+NSONMI: ?(\d{1,2}),(\d{1,5})$")
_NSONMI_LONG = re.compile(rb"^\+NSONMI: ?(\d{1,2}),([0-9A-Fa-f.:]{2,45}),(\d{1,5}),(\d{1,5}),([0-9A-Fa-f]*)$")
_NSORF = re.compile(
    rb"^(?:\+NSORF: ?)?(\d{1,2}),([0-9A-Fa-f.:]{2,45}),(\d{1,5}),(\d{1,5}),([0-9A-Fa-f]*),(\d{1,5})$"
)
_QLW = re.compile(rb"^\+QLWDATARECV: ?(\d{1,5}),(\d{1,5}),(\d{1,5}),(\d{1,5}),([0-9A-Fa-f]*)$")
_FINAL = (b"OK", b"ERROR")
_MAX_REJECT_KEPT = 256


def read_command(req: ReadRequest) -> bytes:
    """``AT+NSORF=<socket>,<len>\\r\\n``."""
    return b"AT+NSORF=%d,%d\r\n" % (req.socket, req.length)


class UrcDecoder:
    """Feed raw UART bytes in any chunking; get payloads and read requests out, in order.

    >>> dec = UrcDecoder()
    >>> dec.feed(b"\\r\\n+NNMI:2,A1")
    []
    >>> payload, request = dec.feed(b"01\\r\\n\\r\\n+NSONMI:0,4\\r\\n")
    >>> payload.path, payload.data, request
    ('cdp', b'\\xa1\\x01', ReadRequest(socket=0, length=4))
    >>> read_command(ReadRequest(0, 4))
    b'AT+NSORF=0,4\\r\\n'
    """

    def __init__(
        self,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        max_read: int = DEFAULT_MAX_READ,
        on_reject: Callable[[str, bytes], None] | None = None,
    ) -> None:
        """``on_reject(reason, line)`` is called for every reject (log it with its bytes, count it)."""
        if max_line < 64 or max_read < 1:
            raise ValueError("max_line must be >= 64 and max_read >= 1")
        self.max_line = max_line
        self.max_read = max_read
        self._on_reject = on_reject
        self._buf = bytearray()
        self._discarding = False
        self.rejects: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.last_reject: bytes | None = None
        self.payloads_total = 0

    def feed(self, chunk: bytes) -> list[UrcEvent]:
        out: list[UrcEvent] = []
        buf = self._buf
        buf += chunk
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(buf[start:nl])
            start = nl + 1
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self.max_line:
                self._reject("overlong", line)
                continue
            self._line(line.rstrip(b"\r"), out)
        del buf[:start]
        if len(buf) > self.max_line:
            if not self._discarding:
                self._reject("overlong", bytes(buf[:_MAX_REJECT_KEPT]))
            self._discarding = True
            buf.clear()
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered waiting for a line end."""
        return len(self._buf)

    def _reject(self, reason: str, line: bytes) -> None:
        self.rejects[reason] += 1
        self.last_reject = line[:_MAX_REJECT_KEPT]
        if self._on_reject is not None:
            self._on_reject(reason, self.last_reject)

    def _hex(self, length: bytes, hexdata: bytes, line: bytes) -> bytes | None:
        if len(hexdata) % 2:
            self._reject("hex", line)
            return None
        data = bytes.fromhex(hexdata.decode("ascii"))
        if len(data) != int(length):
            self._reject("length", line)
            return None
        return data

    def _emit(self, out: list[UrcEvent], p: NbiotPayload) -> None:
        self.payloads_total += 1
        out.append(p)

    def _line(self, line: bytes, out: list[UrcEvent]) -> None:
        line = line.strip(b" \r\t\x00")
        if not line:
            return
        if any(b < 0x20 or b > 0x7E for b in line):
            self._reject("garbage", line)
            return
        if line in _FINAL or line.startswith(b"+CME ERROR") or line.startswith(b"+CMS ERROR"):
            self.ignored["final"] += 1
            return
        if line[:2].upper() == b"AT":
            self.ignored["echo"] += 1
            return
        if m := _NNMI.match(line):
            if (data := self._hex(m[1], m[2], line)) is not None:
                self._emit(out, NbiotPayload(PATH_CDP, data))
            return
        if m := _NSONMI_SHORT.match(line):
            self._read_request(int(m[1]), int(m[2]), out)
            return
        if m := _NSONMI_LONG.match(line):
            if (data := self._hex(m[4], m[5], line)) is not None and self._port(m[3], line):
                self._emit(out, NbiotPayload(PATH_UDP, data, int(m[1]), m[2].decode(), int(m[3])))
            return
        if m := _QLW.match(line):
            if (data := self._hex(m[4], m[5], line)) is not None:
                self._emit(out, NbiotPayload(PATH_LWM2M, data))
            return
        if m := _NSORF.match(line):
            if (data := self._hex(m[4], m[5], line)) is not None and self._port(m[3], line):
                self._emit(out, NbiotPayload(PATH_UDP, data, int(m[1]), m[2].decode(), int(m[3])))
                self._read_request(int(m[1]), int(m[6]), out)
            return
        if line.startswith(b"+NNMI") or line.startswith(b"+NSONMI") or line.startswith(b"+QLWDATARECV"):
            self._reject("malformed", line)
            return
        self.ignored["other"] += 1

    def _port(self, port: bytes, line: bytes) -> bool:
        if int(port) > 65535:
            self._reject("malformed", line)
            return False
        return True

    def _read_request(self, socket: int, length: int, out: list[UrcEvent]) -> None:
        if length > 0:
            out.append(ReadRequest(socket, min(length, self.max_read)))


# -- what a gateway reads: URCs that carry our link body ---------------------------------------------
@dataclass(frozen=True, slots=True)
class NbiotLinkFrame:
    """One verified link frame out of a URC: the device that sent it, its payload, and where it came from."""

    device_id: str
    payload: bytes
    path: str
    socket: int | None = None
    remote_ip: str | None = None
    remote_port: int | None = None


LinkUrcEvent = NbiotLinkFrame | ReadRequest


class LinkUrcDecoder:
    """URC lines -> verified link frames: the one NB-IoT parser of the gateway and of ``vigil frame decode``.

    An NB-IoT datagram says nothing about which device sent it, so every URC's data is our unstuffed
    link body ``device_id(8) | payload | CRC-16/CCITT-FALSE(2)``
    (:func:`firmware_bridge.framing.decode_link_body`).
    A bad URC line and a bad link body are both counted rejects (``rejects``, ``on_reject(reason, bytes)``);
    ``ReadRequest`` items must be answered with :func:`read_command`.

    >>> from firmware_bridge.framing import encode_link_body
    >>> line = format_nnmi(encode_link_body("00031530be923b81", bytes.fromhex("a101")))
    >>> [(f.device_id, f.payload.hex(), f.path) for f in LinkUrcDecoder().feed(line)]
    [('00031530be923b81', 'a101', 'cdp')]
    """

    def __init__(
        self,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        max_read: int = DEFAULT_MAX_READ,
        on_reject: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self._on_reject = on_reject
        self.rejects: Counter[str] = Counter()
        self.last_reject: bytes | None = None
        self.urc = UrcDecoder(max_line=max_line, max_read=max_read, on_reject=self._reject)
        self.frames_total = 0

    def _reject(self, reason: str, data: bytes) -> None:
        self.rejects[reason] += 1
        self.last_reject = data[:_MAX_REJECT_KEPT]
        if self._on_reject is not None:
            self._on_reject(reason, self.last_reject)

    def feed(self, chunk: bytes) -> list[LinkUrcEvent]:
        from firmware_bridge.errors import DecodeError
        from firmware_bridge.framing import decode_link_body

        out: list[LinkUrcEvent] = []
        for item in self.urc.feed(chunk):
            if isinstance(item, ReadRequest):
                out.append(item)
                continue
            try:
                frame = decode_link_body(item.data)
            except DecodeError as exc:
                self._reject(exc.reason, item.data)
                continue
            self.frames_total += 1
            out.append(
                NbiotLinkFrame(
                    frame.device_id, frame.payload, item.path, item.socket, item.remote_ip, item.remote_port
                )
            )
        return out


# -- builders (simulated modules, tests) --------------------------------------------------------------
def _hexs(data: bytes) -> bytes:
    return bytes(data).hex().upper().encode("ascii")


def format_nnmi(data: bytes) -> bytes:
    return b"\r\n+NNMI:%d,%s\r\n" % (len(data), _hexs(data))


def format_link_nnmi(device_id: str, payload: bytes) -> bytes:
    """A ``+NNMI`` URC carrying our link body: what a gateway's ``framing = "nbiot"`` source accepts."""
    from firmware_bridge.framing import encode_link_body

    return format_nnmi(encode_link_body(device_id, payload))


def format_nsonmi(socket: int, length: int) -> bytes:
    return b"\r\n+NSONMI:%d,%d\r\n" % (socket, length)


def format_nsorf_response(socket: int, ip: str, port: int, data: bytes, remaining: int = 0) -> bytes:
    """The module's answer to ``AT+NSORF`` (response line then final ``OK``)."""
    return b"\r\n%d,%s,%d,%d,%s,%d\r\n\r\nOK\r\n" % (
        socket,
        ip.encode("ascii"),
        port,
        len(data),
        _hexs(data),
        remaining,
    )


def format_qlwdatarecv(data: bytes) -> bytes:
    return b"\r\n+QLWDATARECV: 19,1,0,%d,%s\r\n" % (len(data), _hexs(data))
