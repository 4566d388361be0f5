"""InfluxDB reads through InfluxQL on the v1-compatible ``/query`` endpoint (writes: :mod:`.lineproto`).

Why InfluxQL and not Flux: InfluxDB 3 dropped Flux, while ``GET /query?db=..&q=..`` with InfluxQL is
served by 1.8, 2.x (the bucket needs a DBRP mapping so the ``db`` name resolves to it) and 3 (``db`` is
the database/bucket name). On 1.8 the URL's bucket is ``database/retention-policy`` and the token
``username:password`` (influxdb-client's 1.8 compatibility); the reads split the bucket into ``db`` and
``rp``. ``epoch=ms`` makes the server return integer millisecond timestamps.

``api=v1`` is for servers without the v2 write endpoint (InfluxDB 1.x before 1.8, e.g. Debian 12's 1.6):
the same line protocol goes to ``POST /write?db=..&rp=..&precision=ms``, and the credentials
(``influx://user:password@host:8086?..`` or ``token=user:password``) go as HTTP Basic auth on writes and
reads (1.x before 1.8 does not know the ``Token`` scheme; Basic keeps the password out of request lines and
access logs, where the ``u``/``p`` parameters would put it). The tests run this path against a real
InfluxDB 1.6 (``tests/servers.py``), with ``auth-enabled = true`` and without.

A server that refuses the credentials (HTTP 401/403) raises :class:`InfluxAuthError`, whose message names
the setting to fix (``VIGIL_CLOUD_TIMESERIES_URL``) and never contains the password.

Downsampling uses ``GROUP BY time(<B>ms, <offset>ms) fill(none)`` with the offset set to
``start mod B`` so buckets start exactly at ``start`` like the SQL backends' (InfluxQL aligns buckets to
the epoch plus the offset); empty buckets are omitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cloud.timeseries.base import (
    BackendError,
    Series,
    WriteResult,
    bucket_ms_for,
    empty_series,
    plan_query,
)
from cloud.timeseries.lineproto import _LineProtocolStore, batch_to_lines, measurement
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import KINDS

_IN_CHUNK = 200
#: the setting that holds the store's URL (and so its credentials): named in authentication errors
URL_SETTING = "VIGIL_CLOUD_TIMESERIES_URL"


class InfluxAuthError(BackendError):
    """InfluxDB refused the credentials (401) or the user's privileges (403); retrying will not help until
    the URL's credentials are fixed."""


def _ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _regex_alt(values: Sequence[str]) -> str:
    import re

    return "/^(" + "|".join(re.escape(v).replace("/", "\\/") for v in values) + ")$/"


class InfluxStore(_LineProtocolStore):
    """InfluxDB 1.x / 2.x / 3: line protocol in, InfluxQL out (``v1_api``: v1 ``/write`` and auth)."""

    def __init__(
        self,
        base_url: str,
        *,
        org: str,
        bucket: str,
        token: str,
        timeout_s: float,
        transport: Any = None,
        v1_api: bool = False,
    ) -> None:
        self.v1_api = v1_api
        # v1 auth is HTTP Basic, not the Token header (which 1.x before 1.8 rejects)
        user, sep, password = token.partition(":")
        self.username = user if sep else None
        super().__init__(
            base_url,
            org=org,
            bucket=bucket,
            token="" if v1_api else token,
            timeout_s=timeout_s,
            transport=transport,
        )
        if v1_api and sep:
            self._http.auth = (user, password)

    def _auth_error(self, status: int, what: str) -> InfluxAuthError:
        who = f"user {self.username!r}" if self.username is not None else "no credentials"
        if status == 401:
            why = f"refused the credentials ({who}, HTTP 401)"
        else:
            why = f"refused {who} the privilege to {what} database {self._db_rp()['db']!r} (HTTP 403)"
        return InfluxAuthError(
            f"InfluxDB at {self.base_url} {why} on {what}: set the user and password in {URL_SETTING} "
            "(influx://USER:PASSWORD@host:port?bucket=..&api=v1, or token=USER:PASSWORD)"
        )

    @staticmethod
    def _status_of(exc: BaseException) -> int | None:
        """The HTTP status behind a failure of httpx or influxdb-client, if any."""
        cur: BaseException | None = exc
        while cur is not None:
            resp = getattr(cur, "response", None)
            status = getattr(resp, "status_code", None) or getattr(cur, "status", None)
            if isinstance(status, int):
                return status
            cur = cur.__cause__
        return None

    def _db_rp(self) -> dict[str, str]:
        # InfluxDB 1.8 takes "database/retention-policy" as the v2 bucket name; v1 endpoints want them apart.
        db, _, rp = self.bucket.partition("/")
        return {"db": db, "rp": rp} if rp else {"db": db}

    def write(self, batch: ReadingBatch) -> WriteResult:
        if not self.v1_api:
            try:
                return super().write(batch)
            except BackendError as exc:
                status = self._status_of(exc)
                if status in (401, 403):
                    raise self._auth_error(status, "write") from exc
                raise
        n = len(batch)
        if n == 0:
            return WriteResult(0, 0)
        body = "\n".join(batch_to_lines(batch)).encode()
        self._check_open()
        params = {**self._db_rp(), "precision": "ms"}
        try:
            r = self._http.post("/write", params=params, content=body)
            r.raise_for_status()
        except self._httpx.HTTPError as exc:
            status = self._status_of(exc)
            if status in (401, 403):
                raise self._auth_error(status, "write") from exc
            raise BackendError(f"v1 write of {n} readings to {self.base_url} failed: {exc}") from exc
        return WriteResult(stored=n, duplicates=0)

    def _influxql(self, q: str) -> list[dict[str, Any]]:
        params = {**self._db_rp(), "q": q, "epoch": "ms"}
        try:
            doc = self._get("/query", params).json()
        except BackendError as exc:
            status = self._status_of(exc)
            if status in (401, 403):
                raise self._auth_error(status, "read") from exc
            raise
        results = doc.get("results", [])
        if not results:
            return []
        if "error" in results[0]:
            err = str(results[0]["error"])
            if "not authorized" in err:  # 1.x answers a missing READ privilege inside a 200
                raise self._auth_error(403, "read") from None
            raise BackendError(f"InfluxQL error: {err}")
        return list(results[0].get("series", []))

    def query(
        self,
        device_id: str,
        kind: DeviceKind,
        start: float,
        end: float,
        *,
        channels: Sequence[str] | None = None,
        max_points: int = 1000,
    ) -> Series:
        kind, names, s_ms, e_ms = plan_query(kind, channels, start, end, max_points)
        frm = _ident(measurement(kind))
        where = f"{_ident('device_id')} = {_literal(device_id)} AND time >= {s_ms}ms AND time < {e_ms}ms"
        series = self._influxql(f'SELECT COUNT("seq") FROM {frm} WHERE {where}')
        count = int(series[0]["values"][0][1]) if series and series[0].get("values") else 0
        if count == 0:
            return empty_series(device_id, kind, names)
        if count <= max_points:
            cols = ", ".join(_ident(n) for n in names)
            series = self._influxql(f'SELECT "seq", {cols} FROM {frm} WHERE {where}')
            a = _table(series, 2 + len(names))
            return Series(
                device_id,
                kind,
                a[:, 0] / 1000.0,
                {n: a[:, 2 + j].copy() for j, n in enumerate(names)},
                False,
                None,
            )
        bucket = bucket_ms_for(s_ms, e_ms, max_points)
        aggs = ", ".join(f"MEAN({_ident(n)}), MIN({_ident(n)}), MAX({_ident(n)})" for n in names)
        series = self._influxql(
            f"SELECT {aggs} FROM {frm} WHERE {where} GROUP BY time({bucket}ms, {s_ms % bucket}ms) fill(none)"
        )
        a = _table(series, 1 + 3 * len(names))
        return Series(
            device_id=device_id,
            kind=kind,
            time=a[:, 0] / 1000.0,
            values={n: a[:, 1 + 3 * j].copy() for j, n in enumerate(names)},
            values_min={n: a[:, 2 + 3 * j].copy() for j, n in enumerate(names)},
            values_max={n: a[:, 3 + 3 * j].copy() for j, n in enumerate(names)},
            downsampled=True,
            bucket_s=bucket / 1000.0,
        )

    def latest(self, device_ids: Sequence[str]) -> dict[str, float]:
        ids = list(dict.fromkeys(device_ids))
        out: dict[str, float] = {}
        for kind in KINDS:
            for i in range(0, len(ids), _IN_CHUNK):
                chunk = ids[i : i + _IN_CHUNK]
                q = (
                    f'SELECT LAST("seq") FROM {_ident(measurement(kind))} '
                    f'WHERE "device_id" =~ {_regex_alt(chunk)} '
                    'GROUP BY "device_id"'
                )
                for s in self._influxql(q):
                    dev = s.get("tags", {}).get("device_id")
                    if dev is not None and s.get("values"):
                        t = float(s["values"][0][0]) / 1000.0
                        out[dev] = max(t, out.get(dev, t))
        return out


def _table(series: list[dict[str, Any]], width: int) -> np.ndarray:
    """InfluxQL ``values`` rows (time first, nulls allowed) as a float array; None -> NaN."""
    rows = [r for s in series for r in s.get("values", [])]
    return np.array(rows, dtype=np.float64).reshape(len(rows), width)
