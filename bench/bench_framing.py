"""Throughput of the serial link decoder and the CRCs, against a per-byte baseline measured in the same run.

Run: ``.venv/bin/python bench/bench_framing.py`` (about 15-30 s with the defaults on a 2-core box).

* ``FrameDecoder`` (SLIP and COBS): a stream of N link frames carrying 25-byte manhole-sized payloads
  (random bytes, so some need escaping), fed in 4096-byte chunks as a UART read would deliver them, with
  1 % of the frames corrupted on the link (counted as ``crc`` rejects).
* ``baseline``: the textbook SLIP receiver, a Python state machine over every byte with a table-driven
  CRC-16 per frame (what a per-byte converter in a typical gateway does), on the same stream.
* CRC-16/CCITT-FALSE: ``binascii.crc_hqx`` (our hot path) vs the pure-Python table (the reference), and
  CRC-16/MODBUS (pure-Python table) for scale.

Figures are the best of ``--repeat`` runs. Results go to ``bench/results/bench_framing.json``. Performance is
never asserted in tests; this is the place.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_bridge.crc import crc16_ccitt_false, crc16_ccitt_false_table, crc16_modbus
from firmware_bridge.framing import FrameDecoder, LinkFrame, cobs_encode, encode_link_body, slip_encode

RESULTS = Path(__file__).resolve().parent / "results" / "bench_framing.json"


def make_stream(n: int, framing: str, rng: random.Random, corrupt: float = 0.01) -> tuple[bytes, int]:
    parts = []
    good = 0
    for i in range(n):
        body = bytearray(encode_link_body(f"{rng.getrandbits(64):016x}", rng.randbytes(25)))
        if rng.random() < corrupt:
            body[rng.randrange(len(body))] ^= 1 + rng.randrange(255)
        else:
            good += 1
        parts.append(slip_encode(body) if framing == "slip" else b"\x00" + cobs_encode(body) + b"\x00")
        del i
    return b"".join(parts), good


def chunks(stream: bytes, size: int = 4096) -> list[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def baseline_slip(pieces: list[bytes]) -> list[LinkFrame]:
    """The textbook per-byte SLIP receiver with a table-driven CRC (the baseline)."""
    out: list[LinkFrame] = []
    buf = bytearray()
    esc = False
    for piece in pieces:
        for b in piece:
            if esc:
                esc = False
                if b == 0xDC:
                    buf.append(0xC0)
                elif b == 0xDD:
                    buf.append(0xDB)
                else:
                    buf.clear()
            elif b == 0xDB:
                esc = True
            elif b == 0xC0:
                if len(buf) >= 10 and crc16_ccitt_false_table(bytes(buf)) == 0:
                    out.append(LinkFrame(bytes(buf[:8]).hex(), bytes(buf[8:-2])))
                buf.clear()
            else:
                buf.append(b)
    return out


def best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--frames", type=int, default=100_000, help="frames per stream (default 100000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure, best kept (default 3)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    results: dict[str, object] = {
        "benchmark": "bench_framing",
        "frames": args.frames,
        "payload_bytes": 25,
        "chunk_bytes": 4096,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rows": [],
    }
    rows: list[dict[str, object]] = []

    print(f"link decode, {args.frames} frames of 25-byte payloads, 1 % corrupted, 4096-byte chunks")
    print(f"{'decoder':<28}{'frames/s':>14}{'MB/s':>10}{'vs baseline':>14}")
    slip_stream, good = make_stream(args.frames, "slip", rng)
    cobs_stream, cobs_good = make_stream(args.frames, "cobs", rng)
    slip_pieces, cobs_pieces = chunks(slip_stream), chunks(cobs_stream)

    def run(framing: str, pieces: list[bytes]) -> list[LinkFrame]:
        dec = FrameDecoder(framing=framing)  # type: ignore[arg-type]
        out: list[LinkFrame] = []
        for p in pieces:
            out += dec.feed(p)
        return out

    t_base, base_out = best(lambda: baseline_slip(slip_pieces), args.repeat)
    t_slip, slip_out = best(lambda: run("slip", slip_pieces), args.repeat)
    t_cobs, cobs_out = best(lambda: run("cobs", cobs_pieces), args.repeat)
    assert isinstance(slip_out, list) and isinstance(cobs_out, list)
    assert base_out == slip_out and len(slip_out) == good, "decoders disagree"
    assert len(cobs_out) == cobs_good, "COBS decoder lost frames"
    for name, t, size in (
        ("baseline per-byte SLIP", t_base, len(slip_stream)),
        ("FrameDecoder slip", t_slip, len(slip_stream)),
        ("FrameDecoder cobs", t_cobs, len(cobs_stream)),
    ):
        fps = args.frames / t
        row = {
            "name": name,
            "frames_per_s": round(fps),
            "mb_per_s": round(size / t / 1e6, 2),
            "speedup_vs_baseline": round(t_base / t, 2),
            "seconds": round(t, 4),
        }
        rows.append(row)
        print(f"{name:<28}{fps:>14,.0f}{size / t / 1e6:>10.2f}{t_base / t:>13.1f}x")

    blob = random.Random(2).randbytes(1 << 20 if args.frames >= 10_000 else 1 << 16)
    print(f"\nCRC over {len(blob) // 1024} KiB")
    print(f"{'crc':<34}{'MB/s':>10}{'vs table':>12}")
    t_table, ref = best(lambda: crc16_ccitt_false_table(blob), args.repeat)
    t_fast, fast = best(lambda: crc16_ccitt_false(blob), args.repeat)
    t_modbus, _ = best(lambda: crc16_modbus(blob), args.repeat)
    assert ref == fast
    for name, t in (
        ("ccitt-false table (baseline)", t_table),
        ("ccitt-false binascii (hot path)", t_fast),
        ("modbus table", t_modbus),
    ):
        rows.append(
            {
                "name": f"crc16 {name}",
                "mb_per_s": round(len(blob) / t / 1e6, 2),
                "speedup_vs_baseline": round(t_table / t, 2),
                "seconds": round(t, 5),
            }
        )
        print(f"{name:<34}{len(blob) / t / 1e6:>10.2f}{t_table / t:>11.1f}x")

    results["rows"] = rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
