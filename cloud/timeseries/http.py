"""Open a store that speaks the InfluxDB line-protocol write API over HTTP (InfluxDB, VictoriaMetrics).

Kept apart from :mod:`cloud.timeseries.lineproto` (the shared writer) and :mod:`cloud.timeseries.influx`
(the InfluxDB reader), which build on each other in one direction only.
"""

from __future__ import annotations

from urllib.parse import SplitResult, unquote

from cloud.timeseries.base import TimeSeriesStore, UnsupportedURLError
from cloud.timeseries.influx import InfluxStore
from cloud.timeseries.lineproto import VictoriaStore


def open_http_store(scheme: str, parts: SplitResult, params: dict[str, str]) -> TimeSeriesStore:
    if not parts.hostname:
        raise UnsupportedURLError(f"{scheme}:// URL needs host:port")
    http = "https" if params.get("tls", "0") in ("1", "true", "yes") else "http"
    base = f"{http}://{parts.hostname}:{parts.port or (8428 if scheme == 'victoria' else 8086)}"
    try:
        timeout = float(params.get("timeout", "10"))
    except ValueError as exc:
        raise UnsupportedURLError(f"timeout must be seconds, got {params['timeout']!r}") from exc
    if scheme == "victoria":
        if parts.username is not None:
            raise UnsupportedURLError(
                "victoria:// URL takes no user:password@ (put a proxy in front for auth)"
            )
        unknown = set(params) - {"tls", "timeout"}
        if unknown:
            raise UnsupportedURLError(f"unknown victoria URL parameter(s) {sorted(unknown)}")
        return VictoriaStore(base, org="vigil", bucket="vigil", token="", timeout_s=timeout)
    unknown = set(params) - {"tls", "timeout", "org", "bucket", "token", "api"}
    if unknown:
        raise UnsupportedURLError(f"unknown influx URL parameter(s) {sorted(unknown)}")
    token = params.get("token", "")
    if parts.username is not None:  # influx://user:password@host: InfluxDB 1.x users (token user:password)
        if token:
            raise UnsupportedURLError("influx:// URL: give user:password@ or token=, not both")
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    if not params.get("bucket"):
        raise UnsupportedURLError("influx:// URL needs ?bucket=")
    api = params.get("api", "v2")
    if api not in ("v1", "v2"):
        raise UnsupportedURLError(f"influx api must be v1 or v2, got {api!r}")
    return InfluxStore(
        base,
        org=params.get("org", ""),
        bucket=params["bucket"],
        token=token,
        timeout_s=timeout,
        v1_api=api == "v1",
    )
