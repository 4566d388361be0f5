"""The operators' console: server-rendered pages (Jinja2 + htmx), a live queue, an offline map.

The cloud mounts :func:`create_console` at ``/console`` (``cloud/api/console.py``); the console reaches
the cloud only through its HTTP API. See ``docs/console.md``.
"""

from dashboards.app import LANG_COOKIE, SESSION_COOKIE, STATIC_DIRS, create_console
from dashboards.client import ApiError, CloudAPI, ConsoleError

__all__ = [
    "LANG_COOKIE",
    "SESSION_COOKIE",
    "STATIC_DIRS",
    "ApiError",
    "CloudAPI",
    "ConsoleError",
    "create_console",
]
