"""``vigil simulate``: run a fleet against its outputs on an accelerated clock, write truth and a summary.

Why asyncio here: the network sinks (MQTT, HTTP) are asyncio clients and must run concurrently with
generation, each behind its own bounded queue, in one :class:`asyncio.TaskGroup` with named tasks.
Generating one tick of 10,000 devices takes a few milliseconds of numpy work, so it stays on the loop.

Paced mode (``speedup > 0``): the simulated time of the run is ``AcceleratedClock(start, now, speedup)``,
written to ``clock.json`` before the first frame so a gateway can read the same time; each frame is
offered to the sinks when the clock reaches its ``time``. Fast mode (``speedup = 0``): frames are written
as fast as they are generated (offline runs, CI, benchmarks).

Files written to the output directory: ``devices.csv``, ``responders.csv``, ``neighbourhood.json``,
``truth.jsonl``, ``faults.jsonl``, ``frames.jsonl`` (if enabled), ``clock.json`` (paced),
``serial_ports.txt`` (serial output), ``summary.json``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from firmware_bridge.kernel.aio import recancel
from firmware_bridge.kernel.clock import AcceleratedClock
from simulators.config import FleetConfig
from simulators.fleet import Fleet
from simulators.outputs import Sink, build_outputs
from simulators.truth import TruthRecord, write_truth


class Progress:
    """One updating stderr line: simulated time done, frames, wall time, speed-up reached."""

    def __init__(self, stream: IO[str] | None, total_s: float) -> None:
        self.stream, self.total_s = stream, total_s
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, done_s: float, frames: int, *, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.25:
            return
        self._last = now
        wall = max(now - self.t0, 1e-9)
        frac = min(done_s / self.total_s, 1.0) if self.total_s else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write(
            f"\r[{bar:<30}] {frac * 100:5.1f}%  sim {done_s / 3600:7.2f} h  frames {frames:>9}  "
            f"wall {wall:6.1f} s  x{done_s / wall:,.0f}  "
        )
        self.stream.flush()

    def finish(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


async def run_simulation(
    cfg: FleetConfig,
    outdir: Path,
    *,
    progress: IO[str] | None = sys.stderr,
    extra_sinks: Sequence[Sink] = (),
    clock: AcceleratedClock | None = None,
    fleet: Fleet | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` writing into ``outdir``; returns the summary (also written to ``summary.json``).

    ``extra_sinks``: more :class:`~simulators.outputs.Sink` objects (a demo's own consumer, tests).
    ``clock``: an accelerated clock already shared with a gateway and a cloud (``vigil demo``); by default
    one starts now at ``cfg.start`` with ``cfg.speedup``. ``fleet``: the fleet to run (built from ``cfg``
    by default); ``vigil demo`` passes its own so its responders can end episodes on site
    (:meth:`Fleet.handle`) while it runs.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    fleet = fleet if fleet is not None else Fleet.from_config(cfg)
    fleet.write_manifest(outdir)
    outputs = build_outputs(cfg.outputs, outdir, fleet.lora_key_table())
    outputs.sinks.extend(extra_sinks)
    bar = Progress(progress, cfg.duration_s)
    frames_out = 0
    opened = []
    started = completed = False
    recanceller: asyncio.Task[None] | None = None
    reached = cfg.start
    try:
        for sink in outputs.sinks:
            await sink.open()
            opened.append(sink)
            slave = getattr(sink, "slave_path", "")
            if slave and progress is not None:
                progress.write(
                    f"serial output on {slave} (the gateway opens this path; also in serial_ports.txt)\n"
                )
        if clock is None and cfg.speedup > 0:
            clock = AcceleratedClock.starting_now(cfg.start, cfg.speedup)
        if clock is not None:
            clock.save(outdir / "clock.json")
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(sink.run(), name=f"sink-{sink.name}") for sink in outputs.sinks]
            started = True
            try:
                for tick_end, frames in fleet.run_ticks(cfg.start, cfg.duration_s):
                    for fr in frames:
                        if clock is not None:
                            # loop: asyncio sleeps on the monotonic clock, the shared clock reads wall time
                            while (wait := clock.real_seconds(fr.time - clock.now())) > 0:
                                await asyncio.sleep(wait)
                        outputs.offer(fr)
                        frames_out += 1
                        reached = fr.time
                    if clock is None:
                        await asyncio.sleep(0)  # let sink tasks drain
                    reached = max(reached, min(tick_end, cfg.start + cfg.duration_s))
                    bar.update(tick_end - cfg.start, frames_out)
                for sink in outputs.sinks:
                    await sink.close()
                if tasks:
                    # the drain ends here, not in the group's exit: a sink failing meanwhile stops the
                    # others through the ``except`` below
                    await asyncio.wait(tasks)
            except BaseException:
                # a stop (Ctrl-C, the demo cancelling its simulator) or a failure: the group cancels the
                # sink tasks now. One inside an aiomqtt call may lose that cancel on Python 3.11
                # (gh-86296, aiomqtt awaits with wait_for) and the group would wait for it forever.
                recanceller = asyncio.get_running_loop().create_task(recancel(tasks), name="sink-recancel")
                raise
        completed = True
    finally:
        if recanceller is not None:
            recanceller.cancel()
        for sink in opened:
            aclose = getattr(sink, "aclose", None)
            if aclose is not None:
                await aclose()
            else:
                await sink.close()
        if started:
            bar.update(reached - cfg.start, frames_out, force=True)
            bar.finish()
            summary = _write_results(
                fleet,
                outputs.stats(),
                cfg,
                outdir,
                time.monotonic() - bar.t0,
                frames_out,
                None if completed else reached,
            )
    return summary


def _write_results(
    fleet: Fleet,
    sinks: dict[str, dict[str, int]],
    cfg: FleetConfig,
    outdir: Path,
    wall_s: float,
    frames_out: int,
    stopped_at: float | None,
) -> dict[str, Any]:
    """truth.jsonl, faults.jsonl, summary.json; an interrupted run keeps what happened before it stopped."""
    truth = fleet.truth
    faults = fleet.faults_log
    if stopped_at is not None:
        truth = [dataclasses.replace(r, end=min(r.end, stopped_at)) for r in truth if r.start < stopped_at]
        faults = [f for f in faults if float(f.get("time", f.get("start", 0.0))) <= stopped_at]  # type: ignore[arg-type]
    write_truth(truth, outdir / "truth.jsonl")
    with (outdir / "faults.jsonl").open("w", encoding="utf-8") as fh:
        for row in faults:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")
    summary = summarise(fleet, sinks, cfg, wall_s, truth, faults)
    summary["frames_delivered"] = frames_out  # after faults: duplicates added, nothing removed
    if stopped_at is not None:
        summary["interrupted"] = True
        summary["duration_s"] = stopped_at - cfg.start
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def summarise(
    fleet: Fleet,
    sinks: dict[str, dict[str, int]],
    cfg: FleetConfig,
    wall_s: float,
    truth: Sequence[TruthRecord] | None = None,
    faults_log: Sequence[dict[str, object]] | None = None,
) -> dict[str, Any]:
    events = collections.Counter(
        f"{r.event_type.value}"
        + ("" if r.severity.name != "NONE" or r.event_type.is_nuisance else " (no alarm expected)")
        for r in (fleet.truth if truth is None else truth)
    )
    faults = collections.Counter(
        str(r["fault"]) for r in (fleet.faults_log if faults_log is None else faults_log)
    )
    frames = dict(fleet.stats.frames)
    return {
        "seed": cfg.seed,
        "start": cfg.start,
        "duration_s": cfg.duration_s,
        "devices": fleet.device_count(),
        "frames_per_kind": frames,
        "frames_total": sum(frames.values()),
        "events": dict(sorted(events.items())),
        "faults": dict(sorted(faults.items())),
        "outputs": sinks,
        "wall_s": round(wall_s, 3),
        "speedup_reached": round(cfg.duration_s / wall_s, 1) if wall_s > 0 else None,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"simulated {s['duration_s'] / 3600:.2f} h of {s['devices']} devices in {s['wall_s']:.1f} s "
        f"(x{s['speedup_reached']}), seed {s['seed']}",
        "frames per kind:",
    ]
    lines += [f"  {k:<12} {v:>10}" for k, v in s["frames_per_kind"].items()]
    lines.append("events injected (ground truth):")
    lines += [f"  {k:<36} {v:>6}" for k, v in s["events"].items()] or ["  (none)"]
    lines.append("link faults injected:")
    lines += [f"  {k:<36} {v:>6}" for k, v in s["faults"].items()] or ["  (none)"]
    for name, st in s["outputs"].items():
        lines.append(f"output {name}: " + ", ".join(f"{k} {v}" for k, v in st.items()))
    return "\n".join(lines)
