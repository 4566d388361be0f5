"""Throughput of Vigil's payload decoders: scalar loop (baseline) vs ``decode_many`` vs ``decode_buffer``.

Run: ``.venv/bin/python bench/bench_decode.py`` (about 15-40 s on a 2-core box with the defaults).

For each device kind it decodes N random *valid* payloads (and, in a second batch pass, the same payloads
with 1 % corrupted, so the reject path is measured too):

* ``scalar``   : ``codec.decode(p)`` in a Python loop, one :class:`Reading` per frame - the baseline, and
  what a per-message converter in a typical gateway does;
* ``many``     : ``codec.decode_many(list_of_bytes)`` - what the gateway does with a batch of frames;
* ``many_1pct``: the same with 1 % bad frames (each rejected with its own ``DecodeError``);
* ``buffer``   : ``codec.decode_buffer(contiguous_bytes)`` - zero-copy ``np.frombuffer``.

Figures are the best of ``--repeat`` runs, in frames per second, measured in the same process. Results
go to ``bench/results/bench_decode.json``. Performance is never asserted in tests; this is the place.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_bridge.payload import PAYLOAD_VERSION, PayloadCodec
from firmware_bridge.registry import KINDS

RESULTS = Path(__file__).resolve().parent / "results" / "bench_decode.json"


def random_payloads(codec: PayloadCodec, n: int, rng: np.random.Generator) -> bytes:
    """``n`` valid payloads back to back; channel raws uniform over each channel's valid range."""
    recs = np.zeros(n, dtype=codec.dtype)
    recs["version"] = PAYLOAD_VERSION
    recs["kind"] = codec.kind_code
    recs["seq"] = np.arange(n) & 0xFFFF
    recs["flags"] = rng.integers(0, 1 << 16, n)
    recs["battery"] = rng.integers(0, 101, n)
    recs["fw"] = 0x0102
    for c in codec.channels:
        info = np.iinfo(np.dtype(c.wire))
        lo = max(int(info.min), int(np.ceil(c.low / c.scale)))
        hi = min(int(info.max), int(np.floor(c.high / c.scale)))
        recs[c.name] = rng.integers(lo, hi + 1, n)
    return recs.tobytes()


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_kind(
    codec: PayloadCodec, n: int, n_scalar: int, repeat: int, rng: np.random.Generator
) -> dict[str, object]:
    size = codec.size
    buf = random_payloads(codec, n, rng)
    payloads = [buf[i * size : (i + 1) * size] for i in range(n)]
    ids = np.array([f"{i:016x}" for i in range(n)])
    times = np.full(n, 1.7e9)
    corrupted = list(payloads)
    for i in rng.choice(n, n // 100, replace=False):
        corrupted[i] = payloads[i][:-1] if i % 2 else b"\x09" + payloads[i][1:]

    def scalar() -> None:
        dec = codec.decode
        for p, d in zip(payloads[:n_scalar], ids[:n_scalar], strict=True):
            dec(p, device_id=d, time=1.7e9)

    batch, rejects = codec.decode_many(corrupted, device_ids=ids, times=times)
    assert len(rejects) == n // 100 and len(batch) == n - n // 100
    t_scalar = best_of(scalar, repeat)
    t_many = best_of(lambda: codec.decode_many(payloads, device_ids=ids, times=times), repeat)
    t_many_bad = best_of(lambda: codec.decode_many(corrupted, device_ids=ids, times=times), repeat)
    t_buffer = best_of(lambda: codec.decode_buffer(buf, device_ids=ids, times=times), repeat)
    return {
        "kind": codec.kind.value,
        "payload_bytes": size,
        "n": n,
        "n_scalar": n_scalar,
        "scalar_fps": n_scalar / t_scalar,
        "many_fps": n / t_many,
        "many_1pct_bad_fps": n / t_many_bad,
        "buffer_fps": n / t_buffer,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="payloads per kind for the batch paths")
    ap.add_argument("--n-scalar", type=int, default=100_000, help="payloads per kind for the scalar loop")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()[0]
    rows = [bench_kind(s.codec, args.n, min(args.n_scalar, args.n), args.repeat, rng) for s in KINDS.values()]

    head = f"{'kind':<12}{'bytes':>6}" + "".join(
        f"{h:>20}" for h in ("scalar (baseline)", "decode_many", "many 1% bad", "decode_buffer")
    )
    print(f"Vigil payload decode throughput, frames/s, best of {args.repeat}", end=" ")
    print(f"(N={args.n:,}; scalar N={args.n_scalar:,})")
    print(head)
    print("-" * len(head))
    for r in rows:
        s = float(r["scalar_fps"])  # type: ignore[arg-type]
        cells = [f"{s:>20,.0f}"] + [
            f"{float(r[k]):>13,.0f} ({float(r[k]) / s:>3.0f}x)"  # type: ignore[arg-type]
            for k in ("many_fps", "many_1pct_bad_fps", "buffer_fps")
        ]
        print(f"{r['kind']:<12}{r['payload_bytes']:>6}" + "".join(cells))
    doc = {
        "benchmark": "bench_decode",
        "unit": "frames_per_second",
        "baseline": "scalar codec.decode loop",
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": os.getloadavg()[0],
        "repeat": args.repeat,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
