"""Wristband for elderly people living alone (智能手环): channels, flags and payload codec.

Payload: 9-byte common header + 17 bytes of channels = 26 bytes. Byte table and a worked example:
``docs/payloads.md#wristband``. ``heart_rate_bpm`` / ``spo2_pct`` of 0 mean "not measured" (band off the
wrist or no optical contact).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from firmware_bridge.kernel.records import Channel, DeviceKind, Flag
from firmware_bridge.payload import PayloadCodec

KIND = DeviceKind.WRISTBAND
KIND_CODE = 0x03
HEARTBEAT_S = 300.0  # a summary every 5 minutes, immediately on SOS / fall

CHANNELS: tuple[Channel, ...] = (
    Channel(
        "heart_rate_bpm", "bpm", 0.0, 250.0, "u1", 1.0, "heart rate, mean over the last minute; 0 = none"
    ),
    Channel("spo2_pct", "%", 0.0, 100.0, "u1", 1.0, "blood oxygen saturation; 0 = none"),
    Channel("accel_peak_g", "g", 0.0, 16.0, ">u2", 0.001, "peak acceleration magnitude since last uplink"),
    Channel("stillness_s", "s", 0.0, 65535.0, ">u2", 1.0, "seconds near 1 g with no motion after the peak"),
    Channel(
        "orientation_change_deg", "°", 0.0, 180.0, "u1", 1.0, "wrist orientation before vs after the peak"
    ),
    Channel("steps", "steps", 0.0, 65535.0, ">u2", 1.0, "steps since the last uplink"),
    Channel("lat", "°", -90.0, 90.0, ">i4", 1e-6, "WGS-84 latitude (valid when gps_valid)"),
    Channel("lon", "°", -180.0, 180.0, ">i4", 1e-6, "WGS-84 longitude (valid when gps_valid)"),
)

FLAGS: tuple[Flag, ...] = (
    Flag("sos", 0, "SOS button pressed"),
    Flag("worn", 1, "on the wrist (capacitive/optical wear detection)"),
    Flag("fall", 2, "the band's own fall detector fired"),
    Flag("charging", 3, "on the charger"),
    Flag("low_battery", 4, "battery low"),
    Flag("gps_valid", 5, "lat/lon hold a fresh fix"),
    Flag("heartbeat", 6, "periodic summary uplink"),
    Flag("rest_broken", 7, "the rest after the window's peak ended before this uplink (fw >= 1.6)"),
    Flag("ok", 8, "the wearer confirmed 'I'm OK' on the band after a fall (fw >= 1.7; one-shot)"),
)
# bit 8 (``ok``) means "I'm OK" only from firmware 1.7 on; an older firmware never sets it on purpose, so
# the bit from one is a reserved bit (uninitialised struct padding, a bit flip) and must not cancel a fall
OK_MIN_FW = 0x0107

CODEC = PayloadCodec(KIND, KIND_CODE, CHANNELS, FLAGS)
encode = CODEC.encode
decode = CODEC.decode
decode_many = CODEC.decode_many
decode_buffer = CODEC.decode_buffer


def ok_pressed(flags: npt.ArrayLike, fw_version: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Per reading: the wearer's "I'm OK" (bit 8) from a firmware that defines it (>= 1.7, ``OK_MIN_FW``).
    The bit from an older firmware stays in ``flags`` (shown as set, nothing is dropped) but is not
    taken as the wearer's statement."""
    f = np.asarray(flags, dtype=np.uint32)
    fw = np.asarray(fw_version, dtype=np.uint32)
    on: npt.NDArray[np.bool_] = ((f & np.uint32(0x0100)) != 0) & (fw >= OK_MIN_FW)
    return on
