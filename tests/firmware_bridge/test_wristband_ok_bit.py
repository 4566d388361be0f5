"""The wristband's "I'm OK" bit (``ok``, bit 8, firmware >= 1.7; docs/payloads.md, wristband): decoded by
name, kept whatever the firmware, taken as the wearer's press only from firmware 1.7 on."""

from __future__ import annotations

import struct

import numpy as np

from firmware_bridge import wristband
from firmware_bridge.registry import spec

# docs/payloads.md, "Worked example: 'I'm OK' after a fall" (fw 1.7)
DOC_OK = bytes.fromhex("0103012e01223f0107586104 9c00060c000001 57fafd06cc628e".replace(" ", ""))


def _with_fw(payload: bytes, major: int, minor: int) -> bytes:
    return payload[:7] + struct.pack(">BB", major, minor) + payload[9:]


def test_ok_is_bit_8_and_bits_9_to_15_are_undeclared() -> None:
    s = spec(wristband.KIND)
    assert s.flag("ok").mask == 0x0100
    assert max(f.bit for f in s.flags) == 8
    assert wristband.OK_MIN_FW == 0x0107


def test_ok_from_fw_1_7_is_a_press_and_from_older_firmware_kept_but_not_a_press() -> None:
    new = wristband.decode(DOC_OK, device_id="w", time=0.0)
    old = wristband.decode(_with_fw(DOC_OK, 1, 6), device_id="w", time=0.0)
    for r in (new, old):  # nothing is dropped: the bit travels in flags either way
        assert r.flags == 0x0122 and r.has_flag("ok")
    assert wristband.ok_pressed(new.flags, new.fw_version)
    assert not wristband.ok_pressed(old.flags, old.fw_version)


def test_ok_pressed_over_a_batch_agrees_with_the_scalar_decode() -> None:
    frames = [
        _with_fw(DOC_OK, 1, 7),
        _with_fw(DOC_OK, 1, 6),
        _with_fw(DOC_OK, 2, 0),
        _with_fw(DOC_OK, 0, 255),
        DOC_OK[:4] + b"\x00\x22" + DOC_OK[6:],  # fw 1.7 without the bit
    ]
    batch, rejects = wristband.decode_many(frames, device_ids=["w"] * 5, times=np.zeros(5))
    assert rejects == []
    got = wristband.ok_pressed(batch.flags, batch.fw_version)
    assert got.tolist() == [True, False, True, False, False]
    for i, f in enumerate(frames):
        r = wristband.decode(f, device_id="w", time=0.0)
        assert bool(wristband.ok_pressed(r.flags, r.fw_version)) == got[i]
