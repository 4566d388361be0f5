"""Transports: move bytes between the world and the sans-I/O codecs, never parse them.

- :class:`SerialTransport` a UART / USB radio as an async byte stream that reopens itself.
- :class:`MqttTransport`   an MQTT subscription as an async message stream that reconnects and re-subscribes.
- :class:`Backoff`         the jittered exponential backoff both use.

Design notes and policies: ``docs/framing.md``.
"""

from firmware_bridge.backoff import Backoff
from firmware_bridge.transports.mqtt import MqttMessage, MqttTransport, OverflowPolicy
from firmware_bridge.transports.serial import SerialTransport

__all__ = ["Backoff", "MqttMessage", "MqttTransport", "OverflowPolicy", "SerialTransport"]
