"""The exceptions the simulators package raises.

Why a tree: the CLI turns any :class:`SimulatorError` into a one-line message and exit code 2, while a
bug (anything else) keeps its traceback.

    SimulatorError
    ├── ConfigError        the fleet TOML is missing, not TOML, or does not validate (names the key)
    ├── TruthFormatError   a truth / alerts JSONL line is not a valid record (names file and line)
    └── OutputError        an output (serial, MQTT, HTTP, files) could not be opened
"""

from __future__ import annotations


class SimulatorError(Exception):
    """Base class of every error raised by :mod:`simulators`."""


class ConfigError(SimulatorError, ValueError):
    """The fleet configuration is invalid; the message names the offending key."""


class TruthFormatError(SimulatorError, ValueError):
    """A JSONL record (truth or alerts) could not be parsed; the message names the file and line."""


class OutputError(SimulatorError, OSError):
    """An output sink could not be opened or written."""
