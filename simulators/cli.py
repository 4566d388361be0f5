"""`vigil simulate` and `vigil score`: the simulators package's subcommands.

Heavy imports (numpy, pydantic, httpx) happen inside the handlers so ``vigil --help`` stays fast.
Exit codes: 0 success, 2 bad input (config, files, unreachable cloud), with a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this package's subcommands to the `vigil` parser."""
    p = sub.add_parser(
        "simulate",
        help="run a simulated device fleet with ground truth",
        description="Run the fleet described in CONFIG.toml; writes frames, truth.jsonl, "
        "faults.jsonl, devices.csv, responders.csv and summary.json into --out.",
    )
    p.add_argument("config", type=Path, help="fleet TOML (see examples/fleet-small.toml)")
    p.add_argument("--out", type=Path, default=Path("sim-out"), help="output directory (default ./sim-out)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--duration", default=None, help="simulated duration, e.g. 2h, 30m, 1d")
    p.add_argument("--speedup", type=float, default=None, help="simulated seconds per real second; 0 = fast")
    p.add_argument("--fast", action="store_true", help="as fast as possible (same as --speedup 0)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument(
        "--serial",
        action="store_true",
        help="also write SLIP frames to a pseudo-terminal (OUT/serial links to it; a gateway reads it)",
    )
    p.set_defaults(handler=_simulate)

    s = sub.add_parser(
        "score",
        help="score alerts against ground truth",
        description="Per event type: recall, precision, false alarms per 1,000 device-days, "
        "detection delay p50/p95 (rules: docs/simulators.md).",
    )
    s.add_argument("--truth", type=Path, required=True, help="truth.jsonl from vigil simulate")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--alerts", type=Path, help="JSONL of AlertEvent JSON")
    src.add_argument("--outbox", type=Path, help="a gateway outbox (SQLite)")
    src.add_argument("--cloud", help="cloud base URL; GETs {URL}/api/v1/alerts")
    s.add_argument("--token", default=None, help="bearer token for --cloud")
    s.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    s.add_argument(
        "--tolerance", type=float, default=None, help="seconds an alert may precede the truth start"
    )
    s.add_argument("--grace", type=float, default=None, help="seconds an alert may follow the truth end")
    s.add_argument("--devices", default=None, help="device count, or devices.csv (default: next to --truth)")
    s.add_argument("--duration", default=None, help="run length (default: summary.json next to --truth)")
    s.set_defaults(handler=_score)


def _simulate(args: argparse.Namespace) -> int:
    import asyncio

    from simulators.config import load_config
    from simulators.errors import SimulatorError
    from simulators.runner import format_summary, run_simulation
    from simulators.timeutil import parse_duration

    try:
        overrides: dict[str, Any] = {"seed": args.seed}
        if args.duration is not None:
            overrides["duration_s"] = parse_duration(args.duration)
        if args.fast:
            overrides["speedup"] = 0.0
        elif args.speedup is not None:
            overrides["speedup"] = args.speedup
        cfg = load_config(args.config, **overrides)
        if args.serial and not cfg.outputs.serial.enabled:
            serial = cfg.outputs.serial.model_copy(update={"enabled": True})
            cfg = cfg.model_copy(update={"outputs": cfg.outputs.model_copy(update={"serial": serial})})
        summary = asyncio.run(run_simulation(cfg, args.out, progress=None if args.quiet else sys.stderr))
    except (SimulatorError, ValueError) as exc:
        print(f"vigil simulate: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f"outputs in {args.out}/")
    return 0


def _device_counts(args: argparse.Namespace) -> Any:
    import csv

    from firmware_bridge.kernel.records import DeviceKind

    spec = args.devices
    path = Path(spec) if spec and not str(spec).isdigit() else args.truth.parent / "devices.csv"
    if spec and str(spec).isdigit():
        return int(spec)
    if path.exists():
        counts: dict[DeviceKind, int] = {}
        with path.open(encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                k = DeviceKind(rec["kind"])
                counts[k] = counts.get(k, 0) + 1
        return counts
    return None


def _duration(args: argparse.Namespace, truth: list[Any]) -> float:
    import json

    from simulators.timeutil import parse_duration

    if args.duration:
        return parse_duration(args.duration)
    summary = args.truth.parent / "summary.json"
    if summary.exists():
        return float(json.loads(summary.read_text(encoding="utf-8"))["duration_s"])
    if truth:
        return max(r.end for r in truth) - min(r.start for r in truth) or 1.0
    return 1.0


def fetch_cloud_alerts(
    url: str, token: str | None, timeout_s: float = 30.0, transport: Any = None
) -> list[Any]:
    """GET ``{url}/api/v1/alerts`` -> AlertEvents; raises :class:`SimulatorError` on any failure."""
    import httpx

    from alerts.contract import AlertEvent
    from simulators.errors import SimulatorError

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(timeout=timeout_s, headers=headers, transport=transport) as client:
            # every lifecycle step (the default view lists each episode's current state)
            r = client.get(url.rstrip("/") + "/api/v1/alerts", params={"view": "steps", "limit": 200_000})
            r.raise_for_status()
            return [AlertEvent.model_validate(a) for a in r.json()["alerts"]]
    except httpx.HTTPError as exc:
        raise SimulatorError(f"cannot fetch alerts from {url}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise SimulatorError(f"{url}/api/v1/alerts did not answer {{'alerts': [...]}}: {exc}") from exc


def _data_end(args: argparse.Namespace, truth: list[Any]) -> float | None:
    """The run's end (summary.json ``start`` + duration) for censoring; None (no censoring) if unknown."""
    import json

    summary = args.truth.parent / "summary.json"
    if not summary.exists():
        return None
    start = json.loads(summary.read_text(encoding="utf-8")).get("start")
    return None if start is None else float(start) + _duration(args, truth)


def _score(args: argparse.Namespace) -> int:
    from simulators.errors import SimulatorError
    from simulators.scorer import DEFAULT_GRACE_S, DEFAULT_TOLERANCE_S, load_alerts_jsonl, score
    from simulators.truth import load_truth

    try:
        truth = load_truth(args.truth)
        if args.alerts is not None:
            alerts = load_alerts_jsonl(str(args.alerts))
        elif args.outbox is not None:
            from edge.outbox import iter_alert_events

            alerts = list(iter_alert_events(args.outbox))
        else:
            alerts = fetch_cloud_alerts(args.cloud, args.token)
        devices = _device_counts(args)
        if devices is None:
            devices = len({r.device_id for r in truth} | {a.device_id for a in alerts}) or 1
        report = score(
            truth,
            alerts,
            devices,
            _duration(args, truth),
            tolerance_s=DEFAULT_TOLERANCE_S if args.tolerance is None else args.tolerance,
            grace_s=DEFAULT_GRACE_S if args.grace is None else args.grace,
            end=_data_end(args, truth),
        )
    except (SimulatorError, OSError, ValueError) as exc:
        print(f"vigil score: {exc}", file=sys.stderr)
        return 2
    print(report.format_table())
    if args.json is not None:
        args.json.write_text(report.to_json(), encoding="utf-8")
    return 0
