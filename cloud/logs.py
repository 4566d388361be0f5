"""Structured (JSON lines) logging for the cloud service.

One JSON object per line on stderr, with ``ts`` (UTC epoch seconds), ``level``, ``logger``, ``msg`` and any
``extra={...}`` fields, so journald / Loki / Elasticsearch can index them without a parser. Secrets are
never passed to the logger in the first place (tokens, keys and personal data are not logged anywhere).
"""

from __future__ import annotations

import logging

from firmware_bridge.logs import JsonFormatter as JsonFormatter  # one formatter for gateway and cloud
from firmware_bridge.logs import quiet_chatty_loggers


def configure_json_logging(level: int | str = logging.INFO) -> None:
    """Replace the root handlers with one JSON-lines handler on stderr (used by ``vigil cloud``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    quiet_chatty_loggers()
