"""InfluxDB reads through InfluxQL on the v1-compatible ``/query`` endpoint (writes: :mod:`.lineproto`).

Why InfluxQL and not Flux: InfluxDB 3 dropped Flux, while ``GET /query?db=..&q=..`` with InfluxQL is
served by 1.8, 2.x (the bucket needs a DBRP mapping so the ``db`` name resolves to it) and 3 (``db`` is
the database/bucket name). On 1.8 the URL's bucket is ``database/retention-policy`` and the token
``username:password`` (influxdb-client's 1.8 compatibility); the reads split the bucket into ``db`` and
``rp``. ``epoch=ms`` makes the server return integer millisecond timestamps.

``api=v1`` is for servers without the v2 write endpoint (InfluxDB 1.x before 1.8, e.g. Debian 12's 1.6):
the same line protocol goes to ``POST /write?db=..&rp=..&precision=ms``, and a ``username:password``
token is sent as the v1 ``u``/``p`` parameters on writes and reads (1.x before 1.8 does not know the
``Token`` scheme). The tests run this path against a real InfluxDB 1.6 (``tests/servers.py``).

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
        # v1 auth is u/p parameters, not the Token header (which 1.x before 1.8 rejects)
        user, sep, password = token.partition(":")
        self._v1_auth = {"u": user, "p": password} if v1_api and sep else {}
        super().__init__(
            base_url,
            org=org,
            bucket=bucket,
            token="" if v1_api else token,
            timeout_s=timeout_s,
            transport=transport,
        )

    def _db_rp(self) -> dict[str, str]:
        # InfluxDB 1.8 takes "database/retention-policy" as the v2 bucket name; v1 endpoints want them apart.
        db, _, rp = self.bucket.partition("/")
        return {"db": db, "rp": rp} if rp else {"db": db}

    def write(self, batch: ReadingBatch) -> WriteResult:
        if not self.v1_api:
            return super().write(batch)
        n = len(batch)
        if n == 0:
            return WriteResult(0, 0)
        body = "\n".join(batch_to_lines(batch)).encode()
        self._check_open()
        params = {**self._db_rp(), "precision": "ms", **self._v1_auth}
        try:
            r = self._http.post("/write", params=params, content=body)
            r.raise_for_status()
        except self._httpx.HTTPError as exc:
            raise BackendError(f"v1 write of {n} readings to {self.base_url} failed: {exc}") from exc
        return WriteResult(stored=n, duplicates=0)

    def _influxql(self, q: str) -> list[dict[str, Any]]:
        params = {**self._db_rp(), "q": q, "epoch": "ms", **self._v1_auth}
        doc = self._get("/query", params).json()
        results = doc.get("results", [])
        if not results:
            return []
        if "error" in results[0]:
            raise BackendError(f"InfluxQL error: {results[0]['error']}")
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
