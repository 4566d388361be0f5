"""Frame sources of the gateway: serial ports, MQTT subscriptions, the Semtech UDP listener.

Each source turns its transport's bytes into ``(device_id, payload, receive_time, source)`` and hands them
to one bounded :class:`~edge.sources.base.FrameSink`; decode errors are counted per source and reason.
"""

from edge.sources.base import FrameSink, SourceError, SourceFrame
from edge.sources.devices import DeviceEntry, DeviceList, DeviceListError, load_devices

__all__ = [
    "DeviceEntry",
    "DeviceList",
    "DeviceListError",
    "FrameSink",
    "SourceError",
    "SourceFrame",
    "load_devices",
]
