"""The shared kernel: what every part of Vigil speaks, importing nothing of Vigil's.

- :mod:`firmware_bridge.kernel.records`: device kinds, channel and flag declarations, the one typed record
  (:class:`Reading`) and its columnar batch (:class:`ReadingBatch`);
- :mod:`firmware_bridge.kernel.events`: the event and alert vocabulary (event types, severities, phases,
  stable alert ids);
- :mod:`firmware_bridge.kernel.clock`: real and accelerated clocks.

Codecs (the rest of :mod:`firmware_bridge`) and the alerting domain (:mod:`alerts`) sit above it; the gateway
(:mod:`edge`) and the cloud (:mod:`cloud`) above those; simulators and the demo on top. A test
(``tests/test_layout.py``) keeps it that way.
"""

from firmware_bridge.kernel.clock import AcceleratedClock, Clock, SystemClock
from firmware_bridge.kernel.events import KIND_EVENTS, LIFE_SAFETY, AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import Channel, DeviceKind, Flag, KindSchema, Reading, ReadingBatch

__all__ = [
    "KIND_EVENTS",
    "LIFE_SAFETY",
    "AcceleratedClock",
    "AlertPhase",
    "Channel",
    "Clock",
    "DeviceKind",
    "EventType",
    "Flag",
    "KindSchema",
    "Reading",
    "ReadingBatch",
    "Severity",
    "SystemClock",
    "alert_id",
]
