"""What a kind's rule module sees and returns: :class:`RuleContext` in, :class:`Verdict` per event out.

Why: the three kinds (and the fourth someone adds later) write their rules against the same small
vocabulary, so a rule reads like the standard it implements (``band(ch4, 25, 50, clear=20)``) and the
engine can run every kind the same vectorised way. All inputs are arrays over the readings of *unique*
devices (the engine hands the k-th reading of every device at once, in time order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bridge.kernel.events import Severity
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.registry import KindSpec
from tests.alerts.detection.reference.detectors.base import Detector
from tests.alerts.detection.reference.episodes import CLEAR, HOLD, UNKNOWN
from tests.alerts.detection.reference.profiles import ParamView

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
LevelArray = npt.NDArray[np.int8]

# mirrors the "I'm OK" mark of alerts/detection/rulekit.py (the loop's ``alerts.loop.reasons.OK_KEY_MARK``)
OK_KEY_MARK = "[ok_key]"


@dataclass(frozen=True)
class Verdict:
    """Per reading: condition level (CLEAR/HOLD/UNKNOWN/severity), a value to report, proof-on-its-own,
    and optionally when the condition really began (a fall began at the impact, before the stillness)."""

    level: LevelArray
    value: FloatArray
    immediate: BoolArray | None = None
    since: FloatArray | None = None  # when the condition began, if earlier than its first active reading
    # raise this many seconds after an active reading unless a CLEAR/HOLD reading arrives first (NaN =
    # never): for devices that uplink at once when the condition ends, silence confirms it
    confirm_after: FloatArray | None = None
    # on a HOLD reading of an open episode: clear this many seconds later unless an active or plain
    # HOLD reading arrives first (NaN = no timer): the condition is over, silence confirms it stays so
    clear_after: FloatArray | None = None
    # mirrors Verdict.cause: a clear at this reading is the wearer's "I'm OK"
    cause: BoolArray | None = None


_CHANNELS: dict[tuple[DeviceKind, str], int] = {}
_MASKS: dict[tuple[DeviceKind, str], np.uint32] = {}


def _channel_index(spec: KindSpec, name: str) -> int:
    key = (spec.kind, name)
    i = _CHANNELS.get(key)
    if i is None:
        i = _CHANNELS[key] = spec.channel_index(name)
    return i


def _flag_mask(spec: KindSpec, name: str) -> np.uint32:
    key = (spec.kind, name)
    m = _MASKS.get(key)
    if m is None:
        m = _MASKS[key] = np.uint32(spec.flag(name).mask)
    return m


@dataclass
class RuleContext:
    spec: KindSpec
    rows: npt.NDArray[np.int64]  # device rows (unique)
    t: FloatArray  # reading times
    dt: FloatArray  # seconds since the device's previous accepted reading (NaN for its first)
    values: FloatArray  # (n, channels)
    flags: npt.NDArray[np.uint32]
    battery: FloatArray
    p: ParamView
    state: dict[str, npt.NDArray[Any]]  # the kind's extra per-device arrays (index with rows)
    det: dict[str, Detector]
    fw_version: npt.NDArray[np.uint16] | None = None  # per reading (mirrors alerts/detection/rulekit.py)

    def __len__(self) -> int:
        return len(self.rows)

    def col(self, name: str) -> FloatArray:
        return self.values[:, _channel_index(self.spec, name)]

    def flag(self, name: str) -> BoolArray:
        on: BoolArray = (self.flags & _flag_mask(self.spec, name)) != 0
        return on

    def levels(self, fill: int = CLEAR) -> LevelArray:
        return np.full(len(self.rows), fill, dtype=np.int8)


_HIGH, _MEDIUM = np.int8(Severity.HIGH), np.int8(Severity.MEDIUM)
_HOLD, _CLEAR, _UNKNOWN = np.int8(HOLD), np.int8(CLEAR), np.int8(UNKNOWN)


def select(conditions: list[BoolArray], levels: list[int], default: int) -> LevelArray:
    """``np.select`` for levels (the first true condition wins) as int8, without its per-call overhead."""
    out = np.full(len(conditions[0]), default, dtype=np.int8)
    for cond, lvl in zip(reversed(conditions), reversed(levels), strict=True):
        out[cond] = lvl
    return out


def band(x: FloatArray, medium: Any, high: Any, clear: Any) -> LevelArray:
    """Higher-is-worse banding: HIGH >= high, MEDIUM >= medium, HOLD above clear, else CLEAR; NaN unknown."""
    lvl = np.where(x >= high, _HIGH, np.where(x >= medium, _MEDIUM, np.where(x > clear, _HOLD, _CLEAR)))
    return np.where(np.isfinite(x), lvl, _UNKNOWN).astype(np.int8, copy=False)


def band_low(x: FloatArray, medium: Any, high: Any, clear: Any) -> LevelArray:
    """Lower-is-worse banding (water distance, oxygen, SpO2)."""
    lvl = np.where(x <= high, _HIGH, np.where(x <= medium, _MEDIUM, np.where(x < clear, _HOLD, _CLEAR)))
    return np.where(np.isfinite(x), lvl, _UNKNOWN).astype(np.int8, copy=False)


def flag_level(on: BoolArray, severity: Severity) -> LevelArray:
    return np.where(on, np.int8(severity), _CLEAR)


def battery_verdict(ctx: RuleContext) -> Verdict:
    """LOW_BATTERY, the same for every kind: the device's flag or the percentage, with hysteresis."""
    b = ctx.battery
    low = ctx.flag("low_battery") | (b <= ctx.p.low_battery_pct)
    lvl = np.where(low, int(Severity.LOW), np.where(b < ctx.p.low_battery_clear_pct, HOLD, CLEAR))
    return Verdict(lvl.astype(np.int8), b)
