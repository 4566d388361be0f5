"""LoRaWAN 1.0.x uplinks to Vigil frames: per-device ABP session keys from devices.csv, replay protection.

Shared by the Semtech UDP listener and the raw-PHYPayload MQTT format. The 32-bit frame counters are
kept in a :class:`firmware_bridge.lorawan.FrameCounterTracker` whose snapshot the daemon stores in the
outbox, so a restarted gateway still rejects replays.
"""

from __future__ import annotations

import json

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

    def decode(self, phy: bytes) -> tuple[str, bytes]:
        """Raises :class:`DecodeError` (reason ``unknown_dev_addr``, ``mic``, ``replay``, ...)."""
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
        return keys.dev_eui, up.payload

    def snapshot(self) -> bytes:
        return json.dumps(self.tracker.snapshot()).encode()

    def restore(self, data: bytes | None) -> None:
        if data:
            self.tracker = FrameCounterTracker.restore(json.loads(data), self.tracker.max_devices)
