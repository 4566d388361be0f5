"""HTTP time-series servers fed with InfluxDB line protocol: InfluxDB (1.8, 2.x, 3) and VictoriaMetrics.

Both backends write the same way, with ``influxdb-client``'s synchronous write API (VictoriaMetrics
accepts line protocol on its InfluxDB-compatible ``/api/v2/write``). One reading becomes one point::

    vigil_manhole,device_id=mh-001 seq=17i,flags=8i,fw_version=3i,battery_pct=88.5,tilt_deg=1.5 1700000000000

(millisecond precision; a NaN channel is simply left out of the point, which is how line protocol says
"missing"). Reads differ, and neither uses Flux, because InfluxDB 3 has none:

- **InfluxDB**: InfluxQL over the v1-compatible ``GET /query`` endpoint (InfluxDB 1.8, 2.x and 3 all serve
  it). On 2.x the bucket needs a DBRP mapping (``influx v1 dbrp create --db <bucket> --rp autogen
  --bucket-id <id> --default``); on 3 the database name is the bucket. See ``docs/timeseries.md``.
- **VictoriaMetrics**: a line-protocol field becomes the metric ``<measurement>_<field>`` with the tags as
  labels (``vigil_manhole_tilt_deg{device_id="mh-001"}``). Full resolution reads use ``/api/v1/export``;
  downsampled reads use ``/api/v1/query_range`` with ``avg_over_time`` / ``min_over_time`` /
  ``max_over_time`` and ``keep_metric_names``, with ``nocache=1`` so VictoriaMetrics does not shift the
  step grid for its cache.

Idempotency: a point's identity on these servers is (measurement, tags, time), so a re-written reading
overwrites itself (InfluxDB) or is collapsed at read time (VictoriaMetrics stores a repeated sample
unless ``-dedup.minScrapeInterval`` is set; the full-resolution read keeps one sample per timestamp).
``write`` therefore reports ``duplicates=0``: these servers cannot tell us. ``seq`` is a field, not a tag
(a tag would create a new series per reading), so two *different* readings of one device in the same
millisecond collide; the SQL backends keep both.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np

from cloud.timeseries.base import (
    BackendError,
    Series,
    WriteResult,
    bucket_ms_for,
    empty_series,
    plan_query,
    time_ms_column,
)
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import KINDS, spec

_SAFE_TAG = re.compile(r"^[A-Za-z0-9_.:\-]*$")
_IN_CHUNK = 200


def measurement(kind: DeviceKind) -> str:
    return f"vigil_{DeviceKind(kind).value}"


def _escape_tag(value: str) -> str:
    if _SAFE_TAG.match(value):
        return value
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def batch_to_lines(batch: ReadingBatch) -> list[str]:
    """Line-protocol points (millisecond timestamps) for a batch; NaN channels are omitted per point."""
    names = spec(batch.kind).channel_names
    meas = measurement(batch.kind)
    t_ms = time_ms_column(batch).tolist()
    vals = batch.values
    finite = np.isfinite(vals)
    bat = batch.battery_pct
    bat_ok: list[bool] = np.isfinite(bat).tolist()
    rows: list[list[float]] = vals.tolist()
    ok_rows = cast("list[bool]", finite.all(axis=1).tolist())
    fin_rows: list[list[bool]] = finite.tolist()
    out: list[str] = []
    for i, (dev, seq, flags, fw, b, t) in enumerate(
        zip(
            batch.device_id.tolist(),
            batch.seq.tolist(),
            batch.flags.tolist(),
            batch.fw_version.tolist(),
            bat.tolist(),
            t_ms,
            strict=True,
        )
    ):
        row = rows[i]
        if ok_rows[i]:
            chans = ",".join(f"{n}={v!r}" for n, v in zip(names, row, strict=True))
        else:
            chans = ",".join(f"{n}={v!r}" for n, v, ok in zip(names, row, fin_rows[i], strict=True) if ok)
        head = f"{meas},device_id={_escape_tag(dev)} seq={seq}i,flags={flags}i,fw_version={fw}i"
        if bat_ok[i]:
            head += f",battery_pct={b!r}"
        out.append(f"{head},{chans} {t}" if chans else f"{head} {t}")
    return out


class _LineProtocolStore:
    """The shared write path and HTTP plumbing; subclasses implement the reads."""

    def __init__(
        self, base_url: str, *, org: str, bucket: str, token: str, timeout_s: float, transport: Any = None
    ) -> None:
        import httpx
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.base_url = base_url.rstrip("/")
        self.org, self.bucket = org, bucket
        self._token = token
        self._client = InfluxDBClient(
            url=self.base_url, token=token or "none", org=org, timeout=int(timeout_s * 1000)
        )
        self._write = self._client.write_api(write_options=SYNCHRONOUS)
        headers = {"Authorization": f"Token {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout_s, headers=headers, transport=transport
        )
        self._httpx = httpx
        self._lock = threading.Lock()
        self._closed = False

    def write(self, batch: ReadingBatch) -> WriteResult:
        n = len(batch)
        if n == 0:
            return WriteResult(0, 0)
        from influxdb_client.domain.write_precision import WritePrecision

        body = "\n".join(batch_to_lines(batch))
        self._check_open()
        try:
            self._write.write(
                bucket=self.bucket,
                org=self.org,
                record=body,
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except Exception as exc:  # the client raises ApiException or urllib3 errors: translate in one place
            raise BackendError(
                f"line-protocol write of {n} readings to {self.base_url} failed: {exc}"
            ) from exc
        return WriteResult(stored=n, duplicates=0)

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        self._check_open()
        try:
            r = self._http.get(path, params=params)
            r.raise_for_status()
        except self._httpx.HTTPError as exc:
            raise BackendError(f"GET {self.base_url}{path} failed: {exc}") from exc
        return r

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._write.close()  # type: ignore[no-untyped-call]
                self._client.close()  # type: ignore[no-untyped-call]
                self._http.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("the time-series store is closed")

    def __enter__(self) -> _LineProtocolStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VictoriaStore(_LineProtocolStore):
    """VictoriaMetrics single-node: line protocol in, ``/api/v1/export`` and ``query_range`` out."""

    def _selector(self, kind: DeviceKind, names: Sequence[str], device_id: str) -> str:
        alt = _promql_regex(f"{measurement(kind)}_{n}" for n in names)
        return f'{{__name__=~"{alt}",device_id="{_promql_str(device_id)}"}}'

    def _export(self, selector: str, s_ms: int, e_ms: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        r = self._get(
            "/api/v1/export",
            {"match[]": selector, "start": f"{s_ms / 1000:.3f}", "end": f"{(e_ms - 1) / 1000:.3f}"},
        )
        found: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for line in r.text.splitlines():
            if not line.strip():
                continue
            doc = json.loads(line)
            name = doc["metric"]["__name__"]
            found.setdefault(name, []).append(
                (np.asarray(doc["timestamps"], dtype=np.int64), np.asarray(doc["values"], dtype=np.float64))
            )
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, parts in found.items():
            ts = np.concatenate([p[0] for p in parts])
            vs = np.concatenate([p[1] for p in parts])
            keep = (ts >= s_ms) & (ts < e_ms)
            ts, vs = ts[keep], vs[keep]
            ts, first = np.unique(ts, return_index=True)  # a re-written reading is one sample
            out[name] = (ts, vs[first])
        return out

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
        prefix = measurement(kind) + "_"
        # Count readings via the seq field, which every point carries.
        seq = self._export(self._selector(kind, ["seq"], device_id), s_ms, e_ms)
        count = len(next(iter(seq.values()))[0]) if seq else 0
        if count == 0:
            return empty_series(device_id, kind, names)
        if count <= max_points:
            raw = self._export(self._selector(kind, names, device_id), s_ms, e_ms)
            # The time axis is the readings' (seq is on every point), so an all-missing reading still shows.
            t = next(iter(seq.values()))[0]
            vals = {n: _reindex(t, *_col(raw, prefix + n)) for n in names}
            return Series(device_id, kind, t / 1000.0, vals, False, None)
        bucket = bucket_ms_for(s_ms, e_ms, max_points)
        stats = {
            fn: self._range(fn, self._selector(kind, names, device_id), s_ms, e_ms, bucket)
            for fn in ("avg", "min", "max")
        }
        t = np.unique(
            np.concatenate(
                [ts for per in stats.values() for ts, _ in per.values()] or [np.empty(0, np.int64)]
            )
        )

        def grid(fn: str) -> dict[str, np.ndarray]:
            return {
                n: _reindex(t, *stats[fn].get(prefix + n, (np.empty(0, np.int64), np.empty(0))))
                for n in names
            }

        return Series(
            device_id=device_id,
            kind=kind,
            time=t / 1000.0,
            values=grid("avg"),
            values_min=grid("min"),
            values_max=grid("max"),
            downsampled=True,
            bucket_s=bucket / 1000.0,
        )

    def _range(
        self, fn: str, selector: str, s_ms: int, e_ms: int, bucket: int
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Bucket k covers [s + k*B, s + (k+1)*B): PromQL's window at T is (T - B, T], so evaluate at
        T_k = s + (k+1)*B - 1 ms and stamp the result with T_k + 1 ms - B (the bucket start)."""
        q = f"{fn}_over_time({selector}[{bucket}ms]) keep_metric_names"
        first = s_ms + bucket - 1
        last = e_ms - 1 if (e_ms - s_ms) % bucket == 0 else s_ms + ((e_ms - s_ms) // bucket + 1) * bucket - 1
        r = self._get(
            "/api/v1/query_range",
            {
                "query": q,
                "start": f"{first / 1000:.3f}",
                "end": f"{last / 1000:.3f}",
                "step": f"{bucket}ms",
                "nocache": "1",
            },
        )
        doc = r.json()
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for res in doc.get("data", {}).get("result", []):
            pairs = res.get("values", [])
            ts = np.rint(np.array([float(p[0]) for p in pairs]) * 1000).astype(np.int64) + 1 - bucket
            vs = np.array([float(p[1]) for p in pairs], dtype=np.float64)
            keep = (ts >= s_ms) & (ts < e_ms)
            out[res["metric"].get("__name__", "")] = (ts[keep], vs[keep])
        return out

    def latest(self, device_ids: Sequence[str]) -> dict[str, float]:
        ids = list(dict.fromkeys(device_ids))
        out: dict[str, float] = {}
        alt = _promql_regex(measurement(k) + "_seq" for k in KINDS)
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i : i + _IN_CHUNK]
            devs = _promql_regex(chunk)
            # 50 years back: a window reaching 1970 or earlier matches nothing in VictoriaMetrics (measured).
            q = f'tlast_over_time({{__name__=~"{alt}",device_id=~"{devs}"}}[50y])'
            doc = self._get("/api/v1/query", {"query": q, "nocache": "1"}).json()
            for res in doc.get("data", {}).get("result", []):
                dev = res["metric"].get("device_id")
                t = float(res["value"][1])
                if dev is not None and t > out.get(dev, float("-inf")):
                    out[dev] = t
        return out


def _promql_str(value: str) -> str:
    """Escape for a double-quoted PromQL string literal (Go string escapes)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _promql_regex(values: Iterable[str]) -> str:
    """An anchored alternation (PromQL regexes are fully anchored) as the body of a string literal."""
    return _promql_str("|".join(re.escape(v) for v in values))


def _col(raw: dict[str, tuple[np.ndarray, np.ndarray]], name: str) -> tuple[np.ndarray, np.ndarray]:
    return raw.get(name, (np.empty(0, np.int64), np.empty(0)))


def _reindex(t: np.ndarray, ts: np.ndarray, vs: np.ndarray) -> np.ndarray:
    col = np.full(len(t), np.nan)
    if len(ts):
        idx = np.searchsorted(t, ts)
        ok = (idx < len(t)) & (t[np.minimum(idx, len(t) - 1)] == ts)
        col[idx[ok]] = vs[ok]
    return col
