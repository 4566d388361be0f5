"""Smart manhole cover (智能井盖): channels, flags and payload codec.

Payload: 9-byte common header (see :mod:`firmware_bridge.payload`) + 16 bytes of channels = 25 bytes.
Byte table and a worked example: ``docs/payloads.md#manhole``.
"""

from __future__ import annotations

from firmware_bridge.kernel.records import Channel, DeviceKind, Flag
from firmware_bridge.payload import PayloadCodec

KIND = DeviceKind.MANHOLE
KIND_CODE = 0x01
HEARTBEAT_S = 12 * 3600.0  # GB/T 41401-2022 devices report every 12-24 h, immediately on alarm

CHANNELS: tuple[Channel, ...] = (
    Channel("tilt_deg", "°", 0.0, 180.0, ">u2", 0.01, "cover tilt from horizontal, now"),
    Channel("tilt_ref_deg", "°", 0.0, 90.0, ">u2", 0.01, "tilt recorded at installation (the road's slope)"),
    Channel("vibration_g", "g", 0.0, 16.0, ">u2", 0.001, "peak vibration since the previous uplink"),
    Channel("water_distance_cm", "cm", 0.0, 2000.0, ">u2", 0.1, "ultrasonic distance cover -> water surface"),
    Channel("ch4_pct_lel", "%LEL", 0.0, 100.0, ">u2", 0.1, "combustible gas, % of lower explosive limit"),
    Channel("h2s_ppm", "ppm", 0.0, 500.0, ">u2", 0.1, "hydrogen sulphide"),
    Channel("o2_pct_vol", "%vol", 0.0, 30.0, ">u2", 0.01, "oxygen"),
    Channel("temperature_c", "°C", -40.0, 85.0, ">i2", 0.1, "well air temperature"),
)

FLAGS: tuple[Flag, ...] = (
    Flag("cover_open", 0, "reed/hall switch: the cover is not seated on its frame"),
    Flag("tamper", 1, "enclosure opened or sensor pulled off the cover"),
    Flag("alarm", 2, "the device itself raised an alarm (event-triggered uplink)"),
    Flag("heartbeat", 3, "periodic heartbeat uplink"),
    Flag("low_battery", 4, "battery below the device's own threshold"),
    Flag("sensor_fault", 5, "a sensor failed its self-test"),
    Flag("tilt_settled", 6, "tilt held past the threshold with the cover at rest >= 5 s (fw >= 1.3)"),
)

CODEC = PayloadCodec(KIND, KIND_CODE, CHANNELS, FLAGS)
encode = CODEC.encode
decode = CODEC.decode
decode_many = CODEC.decode_many
decode_buffer = CODEC.decode_buffer
