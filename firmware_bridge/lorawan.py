"""LoRaWAN 1.0.x data frames, sans-I/O: parse, verify MIC, decrypt, reject replays; build for simulators.

Why this exists: a Vigil gateway with a LoRa concentrator (Semtech UDP forwarder on the Pi, see
:mod:`firmware_bridge.semtech_udp`) receives raw PHYPayloads. Without a network server in between, the
gateway itself must check the message integrity code, decrypt FRMPayload and refuse replayed frames, or
anyone with a radio could inject "cover closed" frames. ABP session keys are configured per device.

Layout (LoRaWAN 1.0.x spec §4; little-endian fields)::

    PHYPayload = MHDR(1) | DevAddr(4) | FCtrl(1) | FCnt(2) | FOpts(0..15) | [FPort(1) | FRMPayload] | MIC(4)

Crypto (spec §4.3.3, §4.4; AES from the ``cryptography`` package):

* FRMPayload: ``A_i = 01 | 00000000 | Dir | DevAddr | FCnt32 | 00 | i``, keystream = AES-ECB(key, A_i);
  key = NwkSKey for FPort 0 (MAC commands), AppSKey otherwise.
* MIC: ``B_0 = 49 | 00000000 | Dir | DevAddr | FCnt32 | 00 | len(msg)``,
  MIC = AES-CMAC(NwkSKey, B_0 | msg)[0:4].

Frame counters: only the low 16 bits travel; :func:`reconstruct_fcnt` picks the 32-bit value and
:class:`FrameCounterTracker` keeps the last accepted counter per device (bounded, persistable). The
tracker must only advance *after* the MIC verified, or a forged frame could lock a device out.

Every decoder raises only :class:`DecodeError` (reasons ``"length"``, ``"mtype"``, ``"major"``,
``"fopts"``, ``"fport"``, ``"dev_addr"``), :class:`ChecksumError` (``"mic"``) or :class:`ReplayError`
(``"replay"``, ``"fcnt_gap"``).
"""

from __future__ import annotations

import hmac
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from firmware_bridge.errors import ChecksumError, DecodeError, ReplayError

MAX_FCNT_GAP = 16384
"""LoRaWAN 1.0.x: a frame whose counter jumped further than this from the last one is dropped."""

UPLINK = 0
DOWNLINK = 1
_MIC_LEN = 4
_FHDR_MIN = 7
_MIN_DATA_FRAME = 1 + _FHDR_MIN + _MIC_LEN


class MType(IntEnum):
    """MHDR bits 7..5."""

    JOIN_REQUEST = 0
    JOIN_ACCEPT = 1
    UNCONFIRMED_UP = 2
    UNCONFIRMED_DOWN = 3
    CONFIRMED_UP = 4
    CONFIRMED_DOWN = 5
    REJOIN_REQUEST = 6
    PROPRIETARY = 7


_DATA_MTYPES = {MType.UNCONFIRMED_UP, MType.UNCONFIRMED_DOWN, MType.CONFIRMED_UP, MType.CONFIRMED_DOWN}
_UP_MTYPES = {MType.UNCONFIRMED_UP, MType.CONFIRMED_UP}


@dataclass(frozen=True, slots=True)
class LoRaWANKeys:
    """ABP session of one device. ``dev_eui`` (16 lowercase hex) is Vigil's device id when known."""

    dev_addr: int
    nwk_skey: bytes = field(repr=False)
    app_skey: bytes = field(repr=False)
    dev_eui: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.dev_addr <= 0xFFFFFFFF:
            raise ValueError(f"DevAddr {self.dev_addr} is not a 32-bit value")
        for name in ("nwk_skey", "app_skey"):
            if len(getattr(self, name)) != 16:
                raise ValueError(f"{name} must be 16 bytes (AES-128)")
        if self.dev_eui is not None:
            eui = self.dev_eui.lower()
            if len(eui) != 16 or any(c not in "0123456789abcdef" for c in eui):
                raise ValueError(f"DevEUI {self.dev_eui!r} is not 16 hex characters")
            object.__setattr__(self, "dev_eui", eui)

    @classmethod
    def from_hex(cls, dev_addr: str, nwk_skey: str, app_skey: str, dev_eui: str | None = None) -> LoRaWANKeys:
        """Keys as written in configuration files and network-server UIs (DevAddr big-endian hex)."""
        return cls(int(dev_addr, 16), bytes.fromhex(nwk_skey), bytes.fromhex(app_skey), dev_eui)


@dataclass(frozen=True, slots=True)
class PhyPayload:
    """A parsed data frame; ``frm_payload`` is still encrypted."""

    mtype: int
    dev_addr: int
    fctrl: int
    fcnt16: int
    fopts: bytes
    fport: int | None
    frm_payload: bytes
    mic: bytes
    raw: bytes = field(repr=False)

    @property
    def direction(self) -> int:
        return UPLINK if self.mtype in _UP_MTYPES else DOWNLINK

    @property
    def confirmed(self) -> bool:
        return self.mtype in (MType.CONFIRMED_UP, MType.CONFIRMED_DOWN)

    @property
    def adr(self) -> bool:
        return bool(self.fctrl & 0x80)

    @property
    def ack(self) -> bool:
        return bool(self.fctrl & 0x20)

    @property
    def dev_addr_hex(self) -> str:
        return f"{self.dev_addr:08x}"


@dataclass(frozen=True, slots=True)
class LoRaWANUplink:
    """A verified, decrypted uplink. ``fcnt`` is the reconstructed 32-bit counter."""

    dev_addr: int
    fcnt: int
    fport: int | None
    payload: bytes
    confirmed: bool
    fopts: bytes
    dev_eui: str | None = None


# -- parsing ------------------------------------------------------------------------------------------
def parse_phy_payload(data: bytes) -> PhyPayload:
    """Split a data-frame PHYPayload into fields (no crypto). Join and proprietary frames are refused."""
    data = bytes(data)
    if len(data) < 1 + _MIC_LEN:
        raise DecodeError(f"PHYPayload of {len(data)} bytes is too short", reason="length", data=data)
    mhdr = data[0]
    if mhdr & 0x03 != 0:
        raise DecodeError(f"unsupported LoRaWAN major version {mhdr & 0x03}", reason="major", data=data)
    mtype = MType(mhdr >> 5)
    if mtype not in _DATA_MTYPES:
        raise DecodeError(f"{mtype.name.lower()} frames are not data frames", reason="mtype", data=data)
    if len(data) < _MIN_DATA_FRAME:
        raise DecodeError(
            f"data frame of {len(data)} bytes is shorter than {_MIN_DATA_FRAME}", reason="length", data=data
        )
    dev_addr, fctrl, fcnt16 = struct.unpack_from("<IBH", data, 1)
    fopts_len = fctrl & 0x0F
    body_end = len(data) - _MIC_LEN
    fopts_end = 8 + fopts_len
    if fopts_end > body_end:
        raise DecodeError(f"FOptsLen {fopts_len} overruns the frame", reason="length", data=data)
    fopts = data[8:fopts_end]
    fport: int | None = None
    frm = b""
    if fopts_end < body_end:
        fport = data[fopts_end]
        frm = data[fopts_end + 1 : body_end]
        if fport == 0 and fopts_len:
            raise DecodeError("FPort 0 frame must not carry FOpts", reason="fopts", data=data)
    return PhyPayload(
        mtype=int(mtype),
        dev_addr=dev_addr,
        fctrl=fctrl,
        fcnt16=fcnt16,
        fopts=fopts,
        fport=fport,
        frm_payload=frm,
        mic=data[body_end:],
        raw=data,
    )


# -- crypto -------------------------------------------------------------------------------------------
def _block(first: int, direction: int, dev_addr: int, fcnt32: int, last: int) -> bytes:
    return struct.pack("<B4xBIIxB", first, direction, dev_addr, fcnt32 & 0xFFFFFFFF, last)


def compute_mic(nwk_skey: bytes, dev_addr: int, fcnt32: int, direction: int, msg: bytes) -> bytes:
    """4-byte MIC over ``msg`` = MHDR | FHDR | FPort | FRMPayload (the PHYPayload without its MIC)."""
    c = cmac.CMAC(algorithms.AES(nwk_skey))
    c.update(_block(0x49, direction, dev_addr, fcnt32, len(msg) & 0xFF))
    c.update(msg)
    return c.finalize()[:_MIC_LEN]


def crypt_frm_payload(key: bytes, dev_addr: int, fcnt32: int, direction: int, data: bytes) -> bytes:
    """Encrypt or decrypt FRMPayload (the same XOR operation both ways). One ECB call for all blocks."""
    if not data:
        return b""
    nblocks = (len(data) + 15) // 16
    blocks = b"".join(_block(0x01, direction, dev_addr, fcnt32, i) for i in range(1, nblocks + 1))
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    stream = enc.update(blocks) + enc.finalize()
    n = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream[:n], "big")).to_bytes(n, "big")


def verify_mic(frame: PhyPayload, nwk_skey: bytes, fcnt32: int) -> bool:
    expected = compute_mic(nwk_skey, frame.dev_addr, fcnt32, frame.direction, frame.raw[:-_MIC_LEN])
    return hmac.compare_digest(expected, frame.mic)


# -- frame counters -----------------------------------------------------------------------------------
def reconstruct_fcnt(fcnt16: int, last_fcnt32: int | None) -> int:
    """The 32-bit counter whose low 16 bits are ``fcnt16``, at or just above ``last_fcnt32``.

    Equal to ``last_fcnt32`` for a retransmission of the last frame (the caller decides it is a replay);
    a value below the last one's low bits is taken as a wrap into the next 65536 block.
    """
    fcnt16 &= 0xFFFF
    if last_fcnt32 is None:
        return fcnt16
    candidate = (last_fcnt32 & ~0xFFFF) | fcnt16
    if candidate < last_fcnt32:
        candidate += 0x10000
    return candidate


def check_fcnt(dev_addr: int, fcnt32: int, last_fcnt32: int | None) -> None:
    """Raise :class:`ReplayError` unless ``fcnt32`` is a fresh counter after ``last_fcnt32``."""
    if last_fcnt32 is None:
        return
    if fcnt32 <= last_fcnt32:
        raise ReplayError(
            f"DevAddr {dev_addr:08x}: FCnt {fcnt32} is not above the last accepted {last_fcnt32}"
        )
    if fcnt32 - last_fcnt32 > MAX_FCNT_GAP:
        raise ReplayError(
            f"DevAddr {dev_addr:08x}: FCnt {fcnt32} jumps {fcnt32 - last_fcnt32} past {last_fcnt32} "
            f"(MAX_FCNT_GAP {MAX_FCNT_GAP}); a replayed old frame or a reset device",
            reason="fcnt_gap",
        )


class FrameCounterTracker:
    """Last accepted 32-bit uplink counter per DevAddr, LRU-bounded, persistable as a plain dict.

    ``evicted_total`` counts devices forgotten because more than ``max_devices`` were active; a forgotten
    device's next frame is accepted as its first (replay protection restarts), which is the documented
    trade-off for bounded memory on a Pi. Size ``max_devices`` above the fleet to never hit it.
    """

    def __init__(self, max_devices: int = 100_000) -> None:
        if max_devices < 1:
            raise ValueError("max_devices must be >= 1")
        self.max_devices = max_devices
        self._last: OrderedDict[int, int] = OrderedDict()
        self.evicted_total = 0

    def __len__(self) -> int:
        return len(self._last)

    def last(self, dev_addr: int) -> int | None:
        return self._last.get(dev_addr)

    def expected(self, dev_addr: int, fcnt16: int) -> int:
        """The 32-bit counter a frame with ``fcnt16`` would have (no check, no update)."""
        return reconstruct_fcnt(fcnt16, self._last.get(dev_addr))

    def commit(self, dev_addr: int, fcnt32: int) -> None:
        """Record an accepted counter (call after the MIC verified). Never moves a counter backwards."""
        prev = self._last.get(dev_addr)
        if prev is not None and fcnt32 <= prev:
            self._last.move_to_end(dev_addr)
            return
        self._last[dev_addr] = fcnt32
        self._last.move_to_end(dev_addr)
        while len(self._last) > self.max_devices:
            self._last.popitem(last=False)
            self.evicted_total += 1

    def check_and_update(self, dev_addr: int, fcnt16: int) -> int:
        """Reconstruct, reject a non-increasing (or too far jumped) counter, record it; returns FCnt32."""
        last = self._last.get(dev_addr)
        fcnt32 = reconstruct_fcnt(fcnt16, last)
        check_fcnt(dev_addr, fcnt32, last)
        self.commit(dev_addr, fcnt32)
        return fcnt32

    def reset(self, dev_addr: int) -> None:
        """Forget a device (after an operator confirmed an ABP device really rebooted to FCnt 0)."""
        self._last.pop(dev_addr, None)

    def snapshot(self) -> dict[str, int]:
        """``{"49be7df1": 1234, ...}`` in LRU order (oldest first), JSON-ready."""
        return {f"{addr:08x}": fcnt for addr, fcnt in self._last.items()}

    @classmethod
    def restore(cls, snapshot: Mapping[str, int], max_devices: int = 100_000) -> FrameCounterTracker:
        t = cls(max_devices)
        for key, fcnt in snapshot.items():
            addr = int(key, 16)
            if not 0 <= addr <= 0xFFFFFFFF or not isinstance(fcnt, int) or fcnt < 0:
                raise ValueError(f"bad frame-counter snapshot entry {key!r}: {fcnt!r}")
            t.commit(addr, fcnt)
        return t


# -- the uplink path ----------------------------------------------------------------------------------
def decode_uplink(data: bytes, keys: LoRaWANKeys, last_fcnt: int | None = None) -> LoRaWANUplink:
    """Parse, verify MIC, check the counter against ``last_fcnt`` and decrypt one uplink.

    The caller records ``result.fcnt`` (e.g. :meth:`FrameCounterTracker.commit`) only after this returns.

    >>> keys = LoRaWANKeys.from_hex("49be7df1", "44024241ed4ce9a68c6a8bc055233fd3",
    ...                             "ec925802ae430ca77fd3dd73cb2cc588")
    >>> up = decode_uplink(bytes.fromhex("40F17DBE4900020001954378762B11FF0D"), keys)
    >>> up.fcnt, up.fport, up.payload
    (2, 1, b'test')
    >>> decode_uplink(bytes.fromhex("40F17DBE4900020001954378762B11FF0D"), keys, last_fcnt=2)
    Traceback (most recent call last):
    ...
    firmware_bridge.errors.ReplayError: DevAddr 49be7df1: FCnt 2 is not above the last accepted 2
    """
    frame = parse_phy_payload(data)
    if frame.direction != UPLINK:
        raise DecodeError(
            f"{MType(frame.mtype).name.lower()} is a downlink, not an uplink", reason="mtype", data=frame.raw
        )
    if frame.dev_addr != keys.dev_addr:
        raise DecodeError(
            f"frame DevAddr {frame.dev_addr:08x} does not match the keys' {keys.dev_addr:08x}",
            reason="dev_addr",
            data=frame.raw,
        )
    fcnt32 = reconstruct_fcnt(frame.fcnt16, last_fcnt)
    if not verify_mic(frame, keys.nwk_skey, fcnt32):
        # A frame from the already-used block of 65536 counters whose MIC verifies is an old frame replayed.
        older = fcnt32 - 0x10000
        if last_fcnt is not None and older >= 0 and verify_mic(frame, keys.nwk_skey, older):
            raise ReplayError(f"DevAddr {frame.dev_addr:08x}: replay of old FCnt {older}", data=frame.raw)
        raise ChecksumError(
            f"DevAddr {frame.dev_addr:08x}: MIC mismatch at FCnt {fcnt32}", reason="mic", data=frame.raw
        )
    try:
        check_fcnt(frame.dev_addr, fcnt32, last_fcnt)
    except ReplayError as exc:
        exc.data = frame.raw
        raise
    if frame.fport is not None and frame.fport > 223:
        raise DecodeError(f"FPort {frame.fport} is reserved", reason="fport", data=frame.raw)
    key = keys.nwk_skey if frame.fport == 0 else keys.app_skey
    payload = crypt_frm_payload(key, frame.dev_addr, fcnt32, UPLINK, frame.frm_payload)
    return LoRaWANUplink(
        dev_addr=frame.dev_addr,
        fcnt=fcnt32,
        fport=frame.fport,
        payload=payload,
        confirmed=frame.confirmed,
        fopts=frame.fopts,
        dev_eui=keys.dev_eui,
    )


def build_uplink(
    keys: LoRaWANKeys,
    fcnt: int,
    fport: int,
    payload: bytes,
    confirmed: bool = False,
    *,
    fopts: bytes = b"",
    fctrl_flags: int = 0,
) -> bytes:
    """A complete, encrypted, MIC'd uplink PHYPayload (simulated devices, tests).

    ``fctrl_flags`` sets FCtrl bits 7..4 (ADR 0x80, ADRACKReq 0x40, ACK 0x20, ClassB 0x10).
    """
    if not 0 <= fcnt <= 0xFFFFFFFF:
        raise ValueError(f"FCnt {fcnt} is not a 32-bit counter")
    if not 0 <= fport <= 223:
        raise ValueError(f"FPort {fport} is outside 0..223")
    if len(fopts) > 15:
        raise ValueError("FOpts holds at most 15 bytes")
    if fport == 0 and fopts:
        raise ValueError("MAC commands go either in FOpts or in an FPort 0 payload, not both")
    if fctrl_flags & 0x0F:
        raise ValueError("fctrl_flags must leave the FOptsLen bits (3..0) clear")
    mtype = MType.CONFIRMED_UP if confirmed else MType.UNCONFIRMED_UP
    key = keys.nwk_skey if fport == 0 else keys.app_skey
    enc = crypt_frm_payload(key, keys.dev_addr, fcnt, UPLINK, bytes(payload))
    msg = (
        bytes([int(mtype) << 5])
        + struct.pack("<IBH", keys.dev_addr, (fctrl_flags & 0xF0) | len(fopts), fcnt & 0xFFFF)
        + bytes(fopts)
        + bytes([fport])
        + enc
    )
    return msg + compute_mic(keys.nwk_skey, keys.dev_addr, fcnt, UPLINK, msg)
