"""Time-series storage for decoded readings: one protocol, several backends chosen by URL.

``open_timeseries(url)`` returns a :class:`TimeSeriesStore`:

==========================================================  =============================================
``sqlite:///path.db`` (``sqlite:////abs/path.db``)           embedded default, one file, WAL
``sqlite://``                                               in-memory (tests)
``postgresql://user@host:port/db`` (``postgresql+psycopg``)  production SQL path, wide tables, ``COPY``
``influx://host:port?org=..&bucket=..&token=..``             InfluxDB 1.8 / 2.x / 3 (line protocol + InfluxQL)
``victoria://host:port``                                    VictoriaMetrics (line protocol + export/PromQL)
==========================================================  =============================================

Query parameters: ``sqlite``: ``synchronous=full|normal`` (default ``full``, see
:mod:`cloud.timeseries.sqlite`); ``influx``/``victoria``: ``tls=1`` for HTTPS, ``timeout`` in seconds;
``influx``: ``api=v1`` for InfluxDB 1.x before 1.8 (v1 ``/write``; ``influx://user:password@host..`` or
``token=user:password``, sent as HTTP Basic).
Design notes and the trade-offs of each backend: ``docs/timeseries.md``.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from cloud.timeseries.base import (
    BackendError,
    InvalidRangeError,
    Series,
    TimeSeriesError,
    TimeSeriesStore,
    UnknownChannelError,
    UnsupportedURLError,
    WriteResult,
)

__all__ = [
    "BackendError",
    "InvalidRangeError",
    "Series",
    "TimeSeriesError",
    "TimeSeriesStore",
    "UnknownChannelError",
    "UnsupportedURLError",
    "WriteResult",
    "open_timeseries",
]


def _params(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


def _sqlite_path(url: str) -> str:
    # SQLAlchemy's convention: sqlite:///rel.db is relative, sqlite:////abs.db absolute, sqlite:// in memory.
    rest = url.split("://", 1)[1].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise UnsupportedURLError(f"a sqlite URL has no host: use sqlite:///path.db, got {url!r}")
    return unquote(rest[1:])


def open_timeseries(url: str) -> TimeSeriesStore:
    """Open the time-series store named by ``url`` (see the module docstring for the forms)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    params = _params(parts.query)
    if scheme == "sqlite":
        from cloud.timeseries.sqlite import SQLiteStore

        unknown = set(params) - {"synchronous"}
        if unknown:
            raise UnsupportedURLError(f"unknown sqlite URL parameter(s) {sorted(unknown)}")
        try:
            return SQLiteStore(_sqlite_path(url), synchronous=params.get("synchronous", "full"))
        except ValueError as exc:
            raise UnsupportedURLError(str(exc)) from exc
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        from cloud.timeseries.postgres import PostgresStore

        return PostgresStore(url)
    if scheme in ("influx", "victoria"):
        from cloud.timeseries.http import open_http_store

        return open_http_store(scheme, parts, params)
    raise UnsupportedURLError(
        f"unsupported time-series URL scheme {parts.scheme!r}; use sqlite, postgresql, influx or victoria"
    )
