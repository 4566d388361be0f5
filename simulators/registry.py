"""The one explicit registry of simulator signal models, one line per device kind.

Adding a kind: write ``simulators/<kind>.py`` with a :class:`~simulators.base.KindModel` subclass
(``EFFECTS`` + ``sample``) and add its line here (``docs/adding-a-device-kind.md``).
"""

from __future__ import annotations

from types import MappingProxyType

from firmware_bridge.kernel.records import DeviceKind
from simulators.base import KindModel
from simulators.manhole import ManholeModel
from simulators.smoke_alarm import SmokeAlarmModel
from simulators.wristband import WristbandModel

MODELS: MappingProxyType[DeviceKind, type[KindModel]] = MappingProxyType(
    {
        DeviceKind.MANHOLE: ManholeModel,
        DeviceKind.SMOKE_ALARM: SmokeAlarmModel,
        DeviceKind.WRISTBAND: WristbandModel,
    }
)


def effect_names(kind: DeviceKind) -> tuple[str, ...]:
    return tuple(e.name for e in MODELS[kind].EFFECTS) + MODELS[kind].SETTINGS
