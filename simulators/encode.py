"""Vectorised payload encoding: many readings of one kind into Vigil payload bytes in one numpy pass.

Why not ``PayloadCodec.encode`` in a loop: at 10,000 devices the simulator emits tens of thousands of
frames per tick, and a per-frame Python call would dominate the run. This twin uses the codec's own
declarations (``dtype``, scale plan, wire limits) and reproduces its rounding, clamping and "not
available" pattern exactly; ``tests/simulators/test_models.py`` holds it byte-identical to the codec.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def encode_many(
    codec: object,
    seq: npt.ArrayLike,
    flags: npt.ArrayLike,
    battery: npt.ArrayLike,
    fw: npt.ArrayLike,
    values: F64,
) -> npt.NDArray[np.uint8]:
    """Vectorised twin of ``PayloadCodec.encode``: same rounding and clamping, one numpy pass.

    Returns ``(m, size)`` uint8; row ``i`` equals ``codec.encode(reading_i)`` byte for byte (tested).
    """
    from firmware_bridge.payload import PAYLOAD_VERSION, PayloadCodec

    assert isinstance(codec, PayloadCodec)
    m = values.shape[0]
    rec = np.zeros(m, dtype=codec.dtype)
    rec["version"] = PAYLOAD_VERSION
    rec["kind"] = codec.kind_code
    rec["seq"] = np.asarray(seq, dtype=np.int64) & 0xFFFF
    rec["flags"] = np.asarray(flags, dtype=np.int64) & 0xFFFF
    b = np.asarray(battery, dtype=np.float64)
    rec["battery"] = np.rint(np.clip(np.where(np.isfinite(b), b, 0.0), 0.0, 100.0)).astype(np.int64)
    rec["fw"] = np.asarray(fw, dtype=np.int64) & 0xFFFF
    for j, (c, (mul, div, low, high), (lo, hi)) in enumerate(
        zip(codec.channels, codec._scalar_plan, codec._raw_limits, strict=True)
    ):
        v = values[:, j]
        ok = np.isfinite(v)
        na_pattern = hi * mul / div  # "not available": the wire maximum, when it lies outside the valid range
        na = hi if not low <= na_pattern <= high else 0
        with np.errstate(over="ignore", invalid="ignore"):
            raw = np.clip(np.rint(np.where(ok, v, 0.0) * div / mul), lo, hi)
        rec[c.name] = np.where(ok, raw, na).astype(np.int64)
    return rec.view(np.uint8).reshape(m, codec.size)
