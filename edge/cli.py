"""``vigil gateway`` subcommands: run the daemon, check a config, explain status, list alerts.

vigil gateway --config gateway.toml [--clock clock.json]   run the daemon (until SIGTERM)
vigil gateway status [--config gateway.toml] [--url URL]   plain-words health report
                                                           (exit 0 ok, 1 problems, 2 daemon down)
vigil gateway check-config FILE                            validate a config (exit 0 ok, 1 invalid)
vigil gateway alerts --outbox PATH                         every alert step ever produced, as JSONL
vigil gateway requeue-dead-letter [--config gateway.toml]  after a cloud fix: dead letters back in the
                                                           outbox (the daemon must be stopped)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this package's subcommands to the `vigil` parser."""
    p = sub.add_parser("gateway", help="the edge gateway daemon and its tools")
    p.add_argument("--config", type=Path, help="gateway TOML file (runs the daemon)")
    p.add_argument("--clock", type=Path, help="accelerated clock file written by `vigil simulate`")
    p.set_defaults(handler=_run)
    gsub = p.add_subparsers(dest="gateway_command", metavar="SUBCOMMAND")
    s = gsub.add_parser("status", help="explain what is wrong with this gateway, in plain words")
    s.add_argument("--config", dest="status_config", type=Path, default=Path("/etc/vigil/gateway.toml"))
    s.add_argument("--url", help="metrics URL (default: from the config's [metrics] section)")
    s.set_defaults(handler=_status)
    c = gsub.add_parser("check-config", help="validate a gateway TOML file")
    c.add_argument("file", type=Path)
    c.set_defaults(handler=_check)
    a = gsub.add_parser("alerts", help="print every alert step in an outbox as JSONL")
    a.add_argument("--outbox", type=Path, required=True)
    a.set_defaults(handler=_alerts)
    r = gsub.add_parser(
        "requeue-dead-letter",
        help="put dead-lettered records back in the outbox after the cloud was fixed (daemon stopped)",
    )
    r.add_argument("--config", dest="requeue_config", type=Path, default=Path("/etc/vigil/gateway.toml"))
    r.set_defaults(handler=_requeue)


def _run(args: argparse.Namespace) -> int:
    from edge.config import ConfigError, load_config

    if args.config is None:
        print(
            "vigil gateway: --config FILE is required to run the daemon (see `vigil gateway -h`)",
            file=sys.stderr,
        )
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.clock is not None:
        cfg = cfg.model_copy(update={"clock": cfg.clock.model_copy(update={"file": args.clock})})
    from edge.daemon import run_gateway

    return run_gateway(cfg)


def _check(args: argparse.Namespace) -> int:
    """Validate the file and open every file the daemon opens: a missing one fails here, not at start."""
    import os

    from edge.config import ConfigError, load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    problems: list[str] = []
    for key, path in cfg.files_to_open():
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            why = exc.strerror or str(exc)
            problems.append(f"{args.file}: {key}: cannot open {path}: {why} (create it, or fix the path)")
    if cfg.gateway.credential is None and cfg.gateway.credential_file is None and cfg.uplink.mode != "none":
        problems.append(
            f"{args.file}: gateway: no credential or credential_file, but uplink.mode = "
            f'"{cfg.uplink.mode}" needs one (`vigil cloud gateway add {cfg.gateway.id}` prints it)'
        )
    data_dir = cfg.outbox_path.parent
    existing = next((p for p in (data_dir, *data_dir.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):
        problems.append(
            f"{args.file}: gateway.data_dir: {data_dir} is not writable by this user "
            "(systemd's StateDirectory= creates /var/lib/vigil-gateway for the service user)"
        )
    if cfg.gateway.devices_file is not None:
        from edge.sources.devices import DeviceListError, load_devices

        if cfg.gateway.devices_file.exists():
            try:
                n_dev = len(load_devices(cfg.gateway.devices_file))
                print(f"{cfg.gateway.devices_file}: {n_dev} devices")
            except DeviceListError as exc:
                problems.append(f"{args.file}: gateway.devices_file: {exc}")
    for src in cfg.sources.serial:
        if not Path(src.port).exists():
            print(
                f"note: serial port {src.port} does not exist (yet); the daemon waits for it and opens it "
                "when it appears",
                file=sys.stderr,
            )
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return 1
    warning = cfg.uplink.plaintext_warning()
    if warning is not None:  # valid, but an installer must see it (docs/security.md)
        print(f"警告：{warning[0]}\nwarning: {warning[1]}", file=sys.stderr)
    names = ", ".join(n for n, _ in cfg.source_names()) or "none"
    print(
        f"{args.file}: ok (gateway {cfg.gateway.id}; sources: {names}; uplink: {cfg.uplink.mode}; "
        f"{len(cfg.actions)} local action(s))"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from edge.config import ConfigError, load_config
    from edge.status import gateway_status

    url, outbox, live_window_s = args.url, None, 300.0
    warnings: list[tuple[str, str]] = []
    try:
        cfg = load_config(args.status_config)
        outbox = cfg.outbox_path
        live_window_s = cfg.uplink.live_window_s
        plaintext = cfg.uplink.plaintext_warning()
        if plaintext is not None:
            warnings.append(plaintext)
        if url is None and cfg.metrics.enabled:
            host = "127.0.0.1" if cfg.metrics.bind in ("0.0.0.0", "::", "") else cfg.metrics.bind
            url = f"http://{host}:{cfg.metrics.port}/metrics"
    except ConfigError as exc:
        if url is None:
            print(exc, file=sys.stderr)
            return 1
    report = gateway_status(url, outbox, live_window_s=live_window_s, warnings=warnings)
    print(report.render())
    return report.exit_code


def _alerts(args: argparse.Namespace) -> int:
    from edge.outbox import OutboxError, iter_alert_events

    try:
        for ev in iter_alert_events(args.outbox):
            sys.stdout.write(ev.model_dump_json() + "\n")
    except OutboxError as exc:
        print(f"vigil gateway alerts: {exc}", file=sys.stderr)
        return 1
    return 0


def _requeue(args: argparse.Namespace) -> int:
    """Dead letters back into their lanes; refused while the daemon runs (it keeps the byte count)."""
    import httpx

    from edge.config import ConfigError, load_config
    from edge.outbox import Outbox, OutboxError

    try:
        cfg = load_config(args.requeue_config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if cfg.metrics.enabled:
        host = "127.0.0.1" if cfg.metrics.bind in ("0.0.0.0", "::", "") else cfg.metrics.bind
        try:
            httpx.get(f"http://{host}:{cfg.metrics.port}/metrics", timeout=2.0)
        except httpx.HTTPError:
            pass  # nothing answers: the daemon is stopped
        else:
            print(
                "网关守护进程正在运行：请先停止（systemctl stop vigil-gateway），再重新入队死信\n"
                "the gateway daemon is running: stop it first (systemctl stop vigil-gateway), then requeue",
                file=sys.stderr,
            )
            return 1
    if not cfg.outbox_path.exists():
        print(f"没有发件箱 / no outbox at {cfg.outbox_path}", file=sys.stderr)
        return 1
    try:
        with Outbox(cfg.outbox_path) as ob:
            n = ob.requeue_dead_letter()
    except OutboxError as exc:
        print(f"vigil gateway requeue-dead-letter: {exc}", file=sys.stderr)
        return 1
    print(
        f"已将死信中的 {n} 条记录放回发件箱，网关启动后重新发送\n"
        f"{n} dead-lettered record(s) put back in the outbox; the gateway sends them when it starts"
    )
    return 0
