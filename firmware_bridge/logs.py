"""Structured logs for every Vigil process: JSON lines for machines, ``key=value`` text for people.

One JSON object per line on stderr (``ts`` UTC epoch seconds, ``level``, ``logger``, ``msg`` and every
``extra={...}`` field), so journald / Loki / Elasticsearch index gateway and cloud logs without a parser.
On a terminal the same records read as one line of text with the extra fields as ``key=value``.

Quiet by default: routine work (a batch uploaded, an HTTP request made) is DEBUG; INFO is for state
changes (started, stopped, cloud reachable again), WARNING for what a human should look at. Secrets are
never passed to the logger (tokens, keys and personal data are not logged anywhere).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Literal

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}
#: libraries whose INFO lines are per-request chatter (httpx logs every request at INFO)
CHATTY = ("httpx", "httpcore", "aiosqlite", "alembic.runtime.migration", "uvicorn.access")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2026-11-26 19:09:00,123 WARNING edge.sources: message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        return f"{text} {extra}" if extra else text


LogFormat = Literal["json", "text", "auto"]


def configure_logging(level: int | str = logging.INFO, fmt: str = "auto") -> None:
    """One handler on stderr for the whole process; ``auto`` = text on a terminal, JSON otherwise."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    quiet_chatty_loggers()


def quiet_chatty_loggers() -> None:
    """Per-request INFO lines of libraries go to DEBUG level only."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)


__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "quiet_chatty_loggers"]
