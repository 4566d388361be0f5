"""Frames written the way a device vendor writes them: from ``docs/payloads.md`` alone, with ``struct``.

Nothing here imports our codecs or simulators: the byte layouts, scales and flag bits below are copied
by hand from the datasheet's tables, so a disagreement between the datasheet and the gateway shows up as
a failing test instead of being shared by construction.

>>> frame = smoke_alarm(seq=42, flags=("smoke_alarm", "heat_alarm"), battery=92, fw=(2, 1),
...                     smoke_db_m=0.35, temperature_c=58.4, co_ppm=12.0, humidity_pct=45.5)
>>> frame.hex()  # the datasheet's worked example "a kitchen fire"
'0102002a00035c0201015e024800785b'
"""

from __future__ import annotations

import struct

# docs/payloads.md, "Common header": version u8, kind u8, seq u16, flags u16, battery u8, fw u16 (BE)
HEADER = struct.Struct(">BBHHBH")
VERSION = 1

# docs/payloads.md "## manhole": tilt u16 0.01, tilt_ref u16 0.01, vibration u16 0.001, water u16 0.1,
# ch4 u16 0.1, h2s u16 0.1, o2 u16 0.01, temperature i16 0.1
MANHOLE_BODY = struct.Struct(">HHHHHHHh")
MANHOLE_FLAGS = {
    "cover_open": 0x0001,
    "tamper": 0x0002,
    "alarm": 0x0004,
    "heartbeat": 0x0008,
    "low_battery": 0x0010,
    "sensor_fault": 0x0020,
    "tilt_settled": 0x0040,
}
# "## smoke_alarm": smoke u16 0.001, temperature i16 0.1, co u16 0.1, humidity u8 0.5
SMOKE_BODY = struct.Struct(">HhHB")
SMOKE_FLAGS = {
    "smoke_alarm": 0x0001,
    "heat_alarm": 0x0002,
    "co_alarm": 0x0004,
    "test": 0x0008,
    "hush": 0x0010,
    "tamper": 0x0020,
    "fault": 0x0040,
    "low_battery": 0x0080,
    "contamination": 0x0100,
    "heartbeat": 0x0200,
}
# "## wristband": hr u8, spo2 u8, accel u16 0.001, stillness u16 1, orientation u8, steps u16,
# lat i32 1e-6, lon i32 1e-6
WRIST_BODY = struct.Struct(">BBHHBHii")
WRIST_FLAGS = {
    "sos": 0x0001,
    "worn": 0x0002,
    "fall": 0x0004,
    "charging": 0x0008,
    "low_battery": 0x0010,
    "gps_valid": 0x0020,
    "heartbeat": 0x0040,
    "rest_broken": 0x0080,
    "ok": 0x0100,  # "I'm OK" pressed after a fall (fw >= 1.7; one-shot, in the press's event uplink)
}
# the first firmware that defines the ok bit; from an older one the same bit is reserved (ignored)
WRIST_OK_MIN_FW = (1, 7)


def _word(table: dict[str, int], flags: tuple[str, ...] | list[str]) -> int:
    w = 0
    for f in flags:
        w |= table[f]
    return w


def _u(x: float, scale: float, top: int) -> int:
    """Round a physical value to its wire integer, clamped like a careful firmware would."""
    return max(0, min(top, round(x / scale)))


def _header(kind: int, seq: int, flags: int, battery: int, fw: tuple[int, int]) -> bytes:
    return HEADER.pack(VERSION, kind, seq & 0xFFFF, flags, battery, (fw[0] << 8) | fw[1])


def manhole(
    *,
    seq: int,
    flags: tuple[str, ...] | list[str] = (),
    battery: int = 80,
    fw: tuple[int, int] = (1, 2),
    tilt_deg: float,
    tilt_ref_deg: float,
    vibration_g: float,
    water_distance_cm: float = 180.0,
    ch4_pct_lel: float = 0.5,
    h2s_ppm: float = 0.2,
    o2_pct_vol: float = 20.9,
    temperature_c: float = 16.0,
) -> bytes:
    body = MANHOLE_BODY.pack(
        _u(tilt_deg, 0.01, 18000),
        _u(tilt_ref_deg, 0.01, 9000),
        _u(vibration_g, 0.001, 16000),
        _u(water_distance_cm, 0.1, 20000),
        _u(ch4_pct_lel, 0.1, 1000),
        _u(h2s_ppm, 0.1, 5000),
        _u(o2_pct_vol, 0.01, 3000),
        max(-400, min(850, round(temperature_c / 0.1))),
    )
    return _header(0x01, seq, _word(MANHOLE_FLAGS, flags), battery, fw) + body


def smoke_alarm(
    *,
    seq: int,
    flags: tuple[str, ...] | list[str] = (),
    battery: int = 80,
    fw: tuple[int, int] = (2, 1),
    smoke_db_m: float,
    temperature_c: float,
    co_ppm: float,
    humidity_pct: float,
) -> bytes:
    body = SMOKE_BODY.pack(
        _u(smoke_db_m, 0.001, 10000),
        max(-400, min(1250, round(temperature_c / 0.1))),
        _u(co_ppm, 0.1, 50000),
        _u(humidity_pct, 0.5, 200),
    )
    return _header(0x02, seq, _word(SMOKE_FLAGS, flags), battery, fw) + body


def wristband(
    *,
    seq: int,
    flags: tuple[str, ...] | list[str] = ("worn", "gps_valid"),
    battery: int = 70,
    fw: tuple[int, int] = (1, 5),
    heart_rate_bpm: float = 72.0,
    spo2_pct: float = 97.0,
    accel_peak_g: float = 1.1,
    stillness_s: float = 0.0,
    orientation_change_deg: float = 5.0,
    steps: float = 0.0,
    lat: float = 22.543096,
    lon: float = 114.057865,
) -> bytes:
    body = WRIST_BODY.pack(
        _u(heart_rate_bpm, 1.0, 250),
        _u(spo2_pct, 1.0, 100),
        _u(accel_peak_g, 0.001, 16000),
        _u(stillness_s, 1.0, 65535),
        _u(orientation_change_deg, 1.0, 180),
        _u(steps, 1.0, 65535),
        round(lat / 1e-6),
        round(lon / 1e-6),
    )
    return _header(0x03, seq, _word(WRIST_FLAGS, flags), battery, fw) + body
