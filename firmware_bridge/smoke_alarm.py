"""Smoke / heat / CO alarm (烟雾报警器): channels, flags and payload codec.

Payload: 9-byte common header + 7 bytes of channels = 16 bytes. Byte table and a worked example:
``docs/payloads.md#smoke_alarm``. The device decides "smoke" itself (GB 4715 / EN 14604) and reports it
as the ``smoke_alarm`` bit; density and temperature let the cloud see the trend.
"""

from __future__ import annotations

from firmware_bridge.kernel.records import Channel, DeviceKind, Flag
from firmware_bridge.payload import PayloadCodec

KIND = DeviceKind.SMOKE_ALARM
KIND_CODE = 0x02
HEARTBEAT_S = 12 * 3600.0  # GB 20517 requires a battery check at least every 24 h

CHANNELS: tuple[Channel, ...] = (
    Channel("smoke_db_m", "dB/m", 0.0, 10.0, ">u2", 0.001, "optical obscuration"),
    Channel("temperature_c", "°C", -40.0, 125.0, ">i2", 0.1, "air temperature at the detector"),
    Channel("co_ppm", "ppm", 0.0, 5000.0, ">u2", 0.1, "carbon monoxide"),
    Channel("humidity_pct", "%RH", 0.0, 100.0, "u1", 0.5, "relative humidity (steam discrimination)"),
)

FLAGS: tuple[Flag, ...] = (
    Flag("smoke_alarm", 0, "the detector is in smoke alarm"),
    Flag("heat_alarm", 1, "fixed-temperature or rate-of-rise heat alarm"),
    Flag("co_alarm", 2, "CO alarm per EN 50291 time/concentration curve"),
    Flag("test", 3, "test button pressed"),
    Flag("hush", 4, "alarm silenced by the resident (at most ~10 min)"),
    Flag("tamper", 5, "removed from its mounting base"),
    Flag("fault", 6, "sensor or electronics fault"),
    Flag("low_battery", 7, "battery low"),
    Flag("contamination", 8, "optical chamber contaminated (dust), sensitivity drifting"),
    Flag("heartbeat", 9, "periodic heartbeat uplink"),
)

CODEC = PayloadCodec(KIND, KIND_CODE, CHANNELS, FLAGS)
encode = CODEC.encode
decode = CODEC.decode
decode_many = CODEC.decode_many
decode_buffer = CODEC.decode_buffer
