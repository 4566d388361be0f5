"""Link faults between the devices and the gateway, recorded as ground truth (``faults.jsonl``).

Why: a gateway's reject counters (CRC errors, short frames, replays/duplicates) and its outbox/backlog
handling must be checked against what really went wrong on the link, not guessed. Every injected fault is
logged with the frame's identity so a test can assert "12 corrupt frames injected, 12 CRC rejects counted".

Faults, each with a configurable rate:
- ``corrupt``: one byte flipped *on the link* (after framing / MIC), so a CRC or MIC catches it, as on a
  real UART or radio. :class:`SimFrame` carries ``corrupt=(offset, xor)``; outputs apply it to the link
  bytes (``SimFrame.apply_corruption``). Paths with their own integrity (MQTT over TCP, HTTP) drop such
  frames, as the network server would;
- ``truncate``: the payload loses its tail (a short frame);
- ``duplicate``: the same frame heard by a second gateway 20-500 ms later (same seq, same bytes; with a
  single gateway, received twice by it);
- ``reorder``: a frame delayed 1-8 s, behind its successors;
- ``clock skew``: some gateways' clocks are off; ``SimFrame.stamp`` (the time the transport claims)
  differs from ``SimFrame.time`` (when it really arrives);
- ``outage``: a gateway's link is down for a while; its frames are held and delivered in a burst of old
  frames (original ``stamp``) when it comes back.

A *corrupt* or *truncated* frame is lost. Periodic reports (``heartbeat`` flag set: unconfirmed uplinks)
stay lost. Event uplinks (``heartbeat`` clear) are confirmed uplinks, "retried until acknowledged"
(docs/payloads.md): the device, hearing no acknowledgement, re-sends the same bytes (same seq / FCnt)
``RETRY_DELAY_S`` after each lost attempt, up to ``MAX_TRANSMISSIONS`` transmissions in all (LoRaWAN
Class A practice; docs/simulators.md "Confirmed uplinks are retried"). Each retransmission may be lost
again (a ``corrupt`` / ``truncate`` row with its ``attempt``); the one that gets through is a ``retry``
row and frame. Retry draws come from their own random stream, so the other faults of a seed are unchanged.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from firmware_bridge.kernel.records import DeviceKind

# LoRaWAN 1.0.x Class A: no acknowledgement in RX1 (1 s) / RX2 (RECEIVE_DELAY2 = 2 s) -> the confirmed
# uplink is retransmitted ACK_TIMEOUT = 2 +- 1 s (uniform) after RX2, i.e. 3-5 s after the lost attempt.
RETRY_DELAY_S = (3.0, 5.0)
# transmissions of one confirmed uplink in all (the first + 7 retries); past that the stack gives up
MAX_TRANSMISSIONS = 8


class SimFrame(NamedTuple):
    """One frame as it reaches a gateway, after link faults (an immutable named tuple: cheap to create).

    ``time``: simulated arrival time (frames are yielded in this order). ``stamp``: the time the transport
    metadata claims (differs under clock skew and for backlog frames). ``payload``: the device's Vigil
    payload (truncated if ``fault == "truncate"``). ``corrupt``: ``(offset, xor)`` to apply to the link
    bytes, or ``None``.
    """

    time: float
    device_id: str
    kind: DeviceKind
    payload: bytes
    seq: int = 0
    gateway_id: str = ""
    stamp: float = 0.0
    fault: str = ""
    corrupt: tuple[int, int] | None = None

    def apply_corruption(self, link_bytes: bytes) -> bytes:
        """The link bytes as received: unchanged, or with one byte flipped if this frame is corrupt."""
        if self.corrupt is None or not link_bytes:
            return link_bytes
        off, xor = self.corrupt
        # never the first/last byte: on a SLIP link those are delimiters and a flip there would merge frames
        i = 1 + off % max(len(link_bytes) - 2, 1) if len(link_bytes) > 2 else 0
        b = bytearray(link_bytes)
        b[i] ^= xor
        return bytes(b)


@dataclass(frozen=True)
class LinkFaultRates:
    """Rates of link faults (per frame unless said otherwise)."""

    corrupt: float = 0.0
    truncate: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    skewed_gateways: float = 0.0  # fraction of gateways with a skewed clock
    skew_s: float = 0.0  # their offset (sign random)
    outages_per_gateway_day: float = 0.0
    outage_s: tuple[float, float] = (300.0, 1800.0)


@dataclass
class FaultInjector:
    """Applies :class:`LinkFaultRates` to a time-ordered frame stream and logs every fault."""

    rates: LinkFaultRates
    gateways: list[str]
    rng: np.random.Generator
    start: float
    duration_s: float
    log: list[dict[str, object]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        r, rng = self.rates, self.rng
        self._heap: list[tuple[float, int, SimFrame]] = []
        self._tie = itertools.count()
        self.skew = {g: 0.0 for g in self.gateways}
        for g in self.gateways:
            if r.skewed_gateways > 0 and rng.random() < r.skewed_gateways:
                self.skew[g] = float(r.skew_s * rng.choice([-1.0, 1.0]))
                self._record({"fault": "clock_skew", "gateway_id": g, "skew_s": self.skew[g]})
        self.outages: dict[str, list[tuple[float, float]]] = {g: [] for g in self.gateways}
        for g in self.gateways:
            k = int(rng.poisson(r.outages_per_gateway_day * self.duration_s / 86400.0))
            for a in sorted(self.start + rng.uniform(0, self.duration_s, k)):
                b = a + float(rng.uniform(*r.outage_s))
                self.outages[g].append((float(a), b))
        self._outage_frames: dict[tuple[str, float], int] = {}
        self._direct: list[SimFrame] = []
        self._touched = [g for g in self.gateways if self.skew.get(g) or self.outages.get(g)]
        # retries draw from a child stream: the faults of every other frame stay those of the same seed
        seed_seq = getattr(rng.bit_generator, "seed_seq", None)
        spawn = getattr(seed_seq, "spawn", None)
        self._retry_rng = np.random.default_rng(spawn(1)[0] if spawn else None)
        self._hb_mask: dict[DeviceKind, tuple[int, int]] = {}

    def confirmed(self, fr: SimFrame) -> bool:
        """True for an event uplink (``heartbeat`` flag clear: sent as a confirmed uplink), False for a
        periodic report (``heartbeat`` set: unconfirmed) or a payload too short to tell."""
        hb = self._hb_mask.get(fr.kind)
        if hb is None:
            from firmware_bridge.registry import spec

            sp = spec(fr.kind)
            fields = sp.codec.dtype.fields
            assert fields is not None
            hb = self._hb_mask[fr.kind] = (int(fields["flags"][1]), sp.flag("heartbeat").mask)
        off, mask = hb
        if len(fr.payload) < off + 2:
            return False
        return not int.from_bytes(fr.payload[off : off + 2], "big") & mask

    def _retransmit(self, fr: SimFrame) -> None:
        """The device re-sends a lost confirmed uplink until one attempt gets through (or it gives up)."""
        r, rr = self.rates, self._retry_rng
        t = fr.time
        for attempt in range(2, MAX_TRANSMISSIONS + 1):
            t += float(rr.uniform(*RETRY_DELAY_S))
            u = rr.random(3)
            payload, cor, fault = fr.payload, None, "retry"
            if u[0] < r.corrupt:
                fault, cor = "corrupt", (int(u[2] * 1024), 1 + int(u[1] * 255))
            elif u[1] < r.truncate and len(payload) > 1:
                fault, payload = "truncate", payload[: max(1, int(len(payload) * u[2]))]
            deliver = t
            until = self._outage_end(fr.gateway_id, t)
            if until is not None:
                key = (fr.gateway_id, until)
                n_held = self._outage_frames.get(key, 0)
                self._outage_frames[key] = n_held + 1
                deliver = until + 0.01 * n_held
            stamp = t + self.skew.get(fr.gateway_id, 0.0)
            out = SimFrame(deliver, fr.device_id, fr.kind, payload, fr.seq, fr.gateway_id, stamp, fault, cor)
            self._record(
                {
                    "fault": fault,
                    "time": round(deliver, 3),
                    "sent": round(t, 3),
                    "first_sent": round(fr.time, 3),
                    "attempt": attempt,
                    "device_id": fr.device_id,
                    "kind": fr.kind.value,
                    "seq": fr.seq,
                    "gateway_id": fr.gateway_id,
                }
            )
            heapq.heappush(self._heap, (deliver, next(self._tie), out))
            if fault == "retry":
                return
        self._record(
            {
                "fault": "confirmed_lost",
                "time": round(t, 3),
                "first_sent": round(fr.time, 3),
                "attempts": MAX_TRANSMISSIONS,
                "device_id": fr.device_id,
                "kind": fr.kind.value,
                "seq": fr.seq,
                "gateway_id": fr.gateway_id,
            }
        )

    def _record(self, row: dict[str, object]) -> None:
        self.log.append(row)
        name = str(row["fault"])
        self.counts[name] = self.counts.get(name, 0) + 1

    def _outage_end(self, gw: str, t: float) -> float | None:
        for a, b in self.outages.get(gw, ()):
            if a <= t < b:
                return b
        return None

    def push(self, frames: list[SimFrame]) -> None:
        """Apply faults to the frames of one tick (time order, all before the tick's end) and queue them.

        Frames untouched by any fault (nearly all) skip the Python path: they are delivered as they are.
        """
        m = len(frames)
        if m == 0:
            return
        r = self.rates
        u = self.rng.random((m, 4))
        extra = self.rng.random((m, 3))
        corrupt = u[:, 0] < r.corrupt
        trunc = u[:, 1] < r.truncate
        dup = u[:, 2] < r.duplicate
        reorder = u[:, 3] < r.reorder
        special = corrupt | trunc | dup | reorder
        gws = [f.gateway_id for f in frames]
        if self._touched:
            times = np.fromiter((f.time for f in frames), dtype=np.float64, count=m)
            gw_arr = np.asarray(gws)
            for g in self._touched:
                on_g = gw_arr == g
                special |= on_g if self.skew.get(g) else False
                for a, b in self.outages.get(g, ()):
                    special |= on_g & (times >= a) & (times < b)
        if not special.any():
            self._direct.extend(frames)
            return
        direct = self._direct
        for i in range(m):
            if not special[i]:
                direct.append(frames[i])
                continue
            fr = frames[i]
            deliver = fr.time
            stamp = fr.time + self.skew.get(fr.gateway_id, 0.0)
            fault = ""
            payload = fr.payload
            cor: tuple[int, int] | None = None
            if corrupt[i]:
                fault, cor = "corrupt", (int(extra[i, 0] * 1024), 1 + int(extra[i, 1] * 255))
            elif trunc[i] and len(payload) > 1:
                fault = "truncate"
                payload = payload[: max(1, int(len(payload) * extra[i, 0]))]
            elif reorder[i]:
                fault = "reorder"
                deliver += 1.0 + 7.0 * extra[i, 2]
            until = self._outage_end(fr.gateway_id, fr.time)
            if until is not None:
                key = (fr.gateway_id, until)
                n_held = self._outage_frames.get(key, 0)
                self._outage_frames[key] = n_held + 1
                deliver = until + 0.01 * n_held
                fault = fault or "outage_backlog"
            out = SimFrame(deliver, fr.device_id, fr.kind, payload, fr.seq, fr.gateway_id, stamp, fault, cor)
            if fault:
                self._record(
                    {
                        "fault": fault,
                        "time": round(deliver, 3),
                        "sent": round(fr.time, 3),
                        "device_id": fr.device_id,
                        "kind": fr.kind.value,
                        "seq": fr.seq,
                        "gateway_id": fr.gateway_id,
                    }
                )
            if deliver == fr.time:
                direct.append(out)
            else:
                heapq.heappush(self._heap, (deliver, next(self._tie), out))
            if dup[i]:
                # the next gateway hears it too (with a single gateway: the same frame received twice)
                other = self.gateways[(self.gateways.index(fr.gateway_id) + 1) % len(self.gateways)]
                d2 = deliver + 0.02 + 0.48 * extra[i, 1]
                twin = SimFrame(
                    d2,
                    fr.device_id,
                    fr.kind,
                    payload,
                    fr.seq,
                    other,
                    fr.time + self.skew.get(other, 0.0),
                    "duplicate",
                    cor,
                )
                self._record(
                    {
                        "fault": "duplicate",
                        "time": round(d2, 3),
                        "sent": round(fr.time, 3),
                        "device_id": fr.device_id,
                        "kind": fr.kind.value,
                        "seq": fr.seq,
                        "gateway_id": other,
                    }
                )
                heapq.heappush(self._heap, (d2, next(self._tie), twin))
            if fault in ("corrupt", "truncate") and self.confirmed(fr):
                self._retransmit(fr)

    def pop_until(self, t: float) -> list[SimFrame]:
        """Frames whose delivery time is before ``t``, in delivery order.

        Undelayed frames of the last tick (all before ``t``, in order) are merged with the delayed ones due.
        """
        late: list[SimFrame] = []
        h = self._heap
        while h and h[0][0] < t:
            late.append(heapq.heappop(h)[2])
        direct, self._direct = self._direct, []
        if not late:
            return direct
        if not direct:
            return late
        return list(heapq.merge(direct, late, key=lambda f: f.time))

    def drain(self) -> list[SimFrame]:
        return self.pop_until(float("inf"))

    def outage_records(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for g, wins in self.outages.items():
            for a, b in wins:
                rows.append(
                    {
                        "fault": "outage",
                        "gateway_id": g,
                        "start": round(a, 3),
                        "end": round(b, 3),
                        "frames_held": self._outage_frames.get((g, b), 0),
                    }
                )
        return rows
