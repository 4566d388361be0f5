"""The uplink batch body on the wire: CPU to read it on the cloud, to write it on the gateway, and its bytes.

Run: ``.venv/bin/python bench/bench_wire.py`` (about 30 s; ``--quick`` for a smoke run). Results:
``bench/results/bench_wire.json``.

Every figure is CPU time (``time.process_time``) per 2,000-reading manhole batch (8 channels, 200 devices,
1 % missing values, the shape of ``bench/bench_ingest.py``'s http rows), the median of ``--repeat`` rounds
of ``--iterations`` each, every variant measured in the same run:

* ``cloud``: body bytes -> validated :class:`~alerts.contract.UplinkBatch` -> ``to_batch()`` of each
  telemetry block (the numpy columns the ingest service stores). Baseline: today's route,
  ``pydantic_core.from_json`` then FastAPI's model validation of the Python objects. Alternatives in the
  venv without new dependencies: ``UplinkBatch.model_validate_json`` (one pass, no Python dicts), stdlib
  ``json.loads``; msgpack carrying the *same* document (lists) to show what the codec alone gives; and the
  columnar binary body (``alerts.uplink_body``: typed ``bin`` columns, dictionary-encoded device ids).
* ``gateway``: the outbox's work for the same 2,000 readings arriving as 20 pipeline commits of 100:
  encoding each commit's records (``Outbox.commit``) plus rendering the batch body at send time
  (``Outbox.next_batch``): today's JSON records + ``UplinkBatch.wire``; binary records merged per kind +
  ``msgpack_wire`` (what the outbox does); binary records sent unmerged (20 blocks, beside the cloud cost
  of reading 20 blocks instead of one); and JSON records converted to the binary body at send time (the
  alternative to storing binary records).
* ``bytes``: body sizes.

The share of the whole ingest path is computed against ``bench/results/bench_ingest.json``'s latest
``http ingest, sqlite db + sqlite ts, 1 poster`` row (CPU per reading of the whole path, this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
import numpy as np
import pydantic_core
from bench_ingest import make_batches

from alerts.contract import TelemetryBlock, UplinkBatch
from alerts.uplink_body import MSGPACK_CONTENT_TYPE, decode_batch, encode_block, msgpack_wire
from edge.outbox import _render
from firmware_bridge.kernel.records import ReadingBatch

RESULTS = Path(__file__).resolve().parent / "results" / "bench_wire.json"
INGEST_RESULTS = RESULTS.parent / "bench_ingest.json"
BATCH, DEVICES, COMMITS = 2000, 200, 20
T0 = 1_790_000_000.0


def cpu_us(fn: Callable[[], object], iterations: int, repeat: int) -> float:
    """Median CPU microseconds of one call."""
    fn()  # warm-up
    rounds = []
    for _ in range(repeat):
        c0 = time.process_time()
        for _ in range(iterations):
            fn()
        rounds.append((time.process_time() - c0) / iterations * 1e6)
    return round(statistics.median(rounds), 1)


def to_arrays(batch: UplinkBatch) -> list[ReadingBatch]:
    return [b.to_batch() for b in batch.telemetry]


def whole_path_us_per_batch() -> tuple[float | None, str]:
    """CPU per 2,000-reading batch of the whole HTTP ingest path, from the latest bench_ingest results."""
    try:
        doc = json.loads(INGEST_RESULTS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, "bench/results/bench_ingest.json missing"
    for row in doc.get("results", []):
        if row.get("name", "").startswith("http ingest, sqlite db + sqlite ts, 1 poster"):
            per_s = row.get("readings_per_client_cpu_s")
            if per_s:
                return round(BATCH / per_s * 1e6, 1), (
                    f"bench_ingest.json row {row['name']!r}: {per_s} readings per CPU-second "
                    f"(load {doc.get('load_average_1m')})"
                )
    return None, "no http ingest row in bench/results/bench_ingest.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    it = 5 if args.quick else 40
    rep = 2 if args.quick else args.repeat

    rb = make_batches(1, BATCH, DEVICES, prefix="70b3d57e00")[0]
    head: dict[str, Any] = {
        "contract_version": 2,
        "batch_id": "bench-wire-000001",
        "gateway_id": "gw-bench-0",
        "sent_at": T0,
    }
    model = UplinkBatch(**head, telemetry=[TelemetryBlock.from_batch(rb)])
    json_body = model.model_dump_json().encode()
    mp_lists = msgpack.packb(model.model_dump(mode="json"))
    parts = [rb.take(np.arange(i, i + BATCH // COMMITS)) for i in range(0, BATCH, BATCH // COMMITS)]
    bin_records = [encode_block(p) for p in parts]
    json_records = [TelemetryBlock.from_batch(p).model_dump_json().encode() for p in parts]
    bin_body = _render(binary=True, telemetry=bin_records, alerts=[], status=None, **head)
    unmerged = msgpack_wire(**head, telemetry=bin_records)
    assert decode_batch(bin_body, MSGPACK_CONTENT_TYPE) == model  # same document either way

    cloud = {
        "json: pydantic_core.from_json + model_validate (today's route, baseline)": lambda: to_arrays(
            UplinkBatch.model_validate(pydantic_core.from_json(json_body))
        ),
        "json: UplinkBatch.model_validate_json (one pass)": lambda: to_arrays(
            UplinkBatch.model_validate_json(json_body)
        ),
        "json: stdlib json.loads + model_validate": lambda: to_arrays(
            UplinkBatch.model_validate(json.loads(json_body))
        ),
        "msgpack, same document (lists) + model_validate": lambda: to_arrays(
            UplinkBatch.model_validate(msgpack.unpackb(mp_lists))
        ),
        "msgpack columnar binary (ours: alerts.uplink_body.decode_batch)": lambda: to_arrays(
            decode_batch(bin_body, MSGPACK_CONTENT_TYPE)
        ),
        "msgpack columnar binary, 20 unmerged blocks of 100": lambda: to_arrays(
            decode_batch(unmerged, MSGPACK_CONTENT_TYPE)
        ),
    }

    def gw_json() -> bytes:
        recs = [TelemetryBlock.from_batch(p).model_dump_json().encode() for p in parts]  # Outbox.commit
        return UplinkBatch.wire(**head, telemetry=recs)  # old next_batch

    def gw_binary() -> bytes:
        recs = [encode_block(p) for p in parts]
        return _render(binary=True, telemetry=recs, alerts=[], status=None, **head)

    def gw_binary_unmerged() -> bytes:
        return msgpack_wire(**head, telemetry=[encode_block(p) for p in parts])

    def gw_json_records_to_binary() -> bytes:
        recs = [TelemetryBlock.from_batch(p).model_dump_json().encode() for p in parts]
        return _render(binary=True, telemetry=recs, alerts=[], status=None, **head)

    gateway = {
        "json records + UplinkBatch.wire (before, baseline)": gw_json,
        "binary records, merged per kind + msgpack_wire (ours)": gw_binary,
        "binary records, unmerged (20 blocks)": gw_binary_unmerged,
        "json records converted to the binary body at send time": gw_json_records_to_binary,
        "send time only: binary records -> binary body (merge)": lambda: _render(
            binary=True,
            telemetry=bin_records,
            alerts=[],
            status=None,
            **head,
        ),
        "send time only: binary records -> JSON body (fallback for an old cloud)": lambda: _render(
            binary=False,
            telemetry=bin_records,
            alerts=[],
            status=None,
            **head,
        ),
        "send time only: json records -> JSON body (before)": lambda: UplinkBatch.wire(
            **head,
            telemetry=json_records,
        ),
    }
    load = os.getloadavg()
    res_cloud = {k: cpu_us(f, it, rep) for k, f in cloud.items()}
    res_gw = {k: cpu_us(f, max(2, it // 2), rep) for k, f in gateway.items()}
    load_end = os.getloadavg()
    sizes = {
        "json": len(json_body),
        "msgpack, same document (lists)": len(mp_lists),
        "msgpack columnar binary (merged)": len(bin_body),
        "msgpack columnar binary (20 unmerged blocks)": len(unmerged),
    }
    whole, whole_src = whole_path_us_per_batch()
    base = res_cloud[next(iter(cloud))]
    ours = res_cloud["msgpack columnar binary (ours: alerts.uplink_body.decode_batch)"]
    one_pass = res_cloud["json: UplinkBatch.model_validate_json (one pass)"]
    saving = {
        "binary_vs_today_us": round(base - ours, 1),
        "json_one_pass_vs_today_us": round(base - one_pass, 1),
        "whole_path_us_per_batch": whole,
        "whole_path_source": whole_src,
    }
    if whole:
        saving["binary_vs_today_pct_of_whole_path"] = round(100 * (base - ours) / whole, 1)
        saving["json_one_pass_vs_today_pct_of_whole_path"] = round(100 * (base - one_pass) / whole, 1)

    width = max(len(k) for k in [*cloud, *gateway])
    print(f"CPU us per {BATCH}-reading batch ({DEVICES} devices, 8 channels)", end="")
    print(f"; load {load[0]:.2f} -> {load_end[0]:.2f}")
    print("cloud: body -> validated UplinkBatch -> numpy columns")
    for k, v in res_cloud.items():
        print(f"  {k:<{width}} {v:>9.1f} us  x{base / v:5.1f}")
    print(f"gateway: {COMMITS} commits of {BATCH // COMMITS} readings -> one batch body")
    gbase = res_gw[next(iter(gateway))]
    for k, v in res_gw.items():
        print(f"  {k:<{width}} {v:>9.1f} us  x{gbase / v:5.1f}")
    print("bytes on the wire")
    for k, n in sizes.items():
        print(f"  {k:<{width}} {n:>9,d} B   {n / sizes['json']:5.2f} of JSON")
    print("saving per batch on the cloud:", json.dumps(saving, ensure_ascii=False))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "bench_wire",
                "command": "python bench/bench_wire.py" + (" --quick" if args.quick else ""),
                "quick": args.quick,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "load_average_1m": [round(load[0], 2), round(load_end[0], 2)],
                "batch_readings": BATCH,
                "devices": DEVICES,
                "gateway_commits": COMMITS,
                "unit": "CPU microseconds per batch (median of rounds)",
                "cloud_us": res_cloud,
                "gateway_us": res_gw,
                "bytes": sizes,
                "saving": saving,
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
