"""LoRaWAN 1.0.x uplinks to Vigil frames: per-device ABP session keys from devices.csv, replay protection.

Shared by the Semtech UDP listener and the raw-PHYPayload MQTT format. The 32-bit frame counters are
kept in a :class:`firmware_bridge.lorawan.FrameCounterTracker` whose snapshot the daemon stores in the
outbox, so a restarted gateway still rejects replays.

Two trackers: ``tracker`` advances when a frame is decoded (replays are refused while the gateway runs);
``committed`` advances only when the frame's batch is committed to the outbox (:meth:`confirm`, called by
the sources through ``FrameSink.offer(..., on_commit)``), and only it is persisted. Persisting the decode
tracker would let a ``kill -9`` between a snapshot and the commit leave a counter ahead of what was
stored: after the restart the device's retransmission of a frame that was never stored (same FCnt:
NbTrans repetitions, confirmed uplinks, an MQTT redelivery) would be refused as a replay and lost (found
while building the UDP fault scenario, ``tests/faults/test_gateway_kill9_udp.py``, issue 11). An exact
replay of a committed frame whose counter missed the last snapshot is still caught by the outbox's
de-duplication window.
"""

from __future__ import annotations

import json
import threading

from edge.sources.devices import DeviceList
from firmware_bridge.errors import DecodeError
from firmware_bridge.lorawan import FrameCounterTracker, LoRaWANKeys, decode_uplink, parse_phy_payload


class LoRaWANSessions:
    """Decode PHYPayloads of known ABP devices into ``(device_id, vigil payload)``."""

    def __init__(self, devices: DeviceList | None, tracker: FrameCounterTracker | None = None) -> None:
        self.keys: dict[int, LoRaWANKeys] = {}
        if devices is not None:
            for addr, d in devices.by_dev_addr().items():
                assert d.nwk_skey is not None and d.app_skey is not None
                self.keys[addr] = LoRaWANKeys(addr, d.nwk_skey, d.app_skey, d.device_id)
        self.tracker = tracker or FrameCounterTracker(max_devices=max(100_000, 2 * len(self.keys)))
        self.committed = FrameCounterTracker(self.tracker.max_devices)
        self._lock = threading.Lock()  # confirm() runs on the event loop, snapshot() on the outbox thread

    def decode(self, phy: bytes) -> tuple[str, bytes]:
        """Decode and count the frame as committed at once (callers that do not report commits)."""
        device, payload, counter = self.decode_counted(phy)
        self.confirm(counter)
        return device, payload

    def decode_counted(self, phy: bytes) -> tuple[str, bytes, tuple[int, int]]:
        """``(device_id, payload, (dev_addr, fcnt))``; pass the counter to :meth:`confirm` once committed.

        Raises :class:`DecodeError` (reason ``unknown_dev_addr``, ``mic``, ``replay``, ...)."""
        frame = parse_phy_payload(phy)
        keys = self.keys.get(frame.dev_addr)
        if keys is None:
            raise DecodeError(
                f"no session keys for DevAddr {frame.dev_addr:08x}", reason="unknown_dev_addr", data=phy
            )
        up = decode_uplink(phy, keys, self.tracker.last(frame.dev_addr))
        self.tracker.commit(up.dev_addr, up.fcnt)
        if up.fport == 0:
            raise DecodeError("FPort 0 carries MAC commands, not sensor data", reason="fport", data=phy)
        assert keys.dev_eui is not None
        return keys.dev_eui, up.payload, (up.dev_addr, up.fcnt)

    def confirm(self, counter: tuple[int, int]) -> None:
        """The frame with this ``(dev_addr, fcnt)`` is committed to the outbox: persist its counter."""
        with self._lock:
            self.committed.commit(*counter)

    def snapshot(self) -> bytes:
        """The counters of committed frames (JSON), for the outbox; safe from any thread."""
        with self._lock:
            return json.dumps(self.committed.snapshot()).encode()

    def restore(self, data: bytes | None) -> None:
        if data:
            snap = json.loads(data)
            self.tracker = FrameCounterTracker.restore(snap, self.tracker.max_devices)
            self.committed = FrameCounterTracker.restore(snap, self.tracker.max_devices)
