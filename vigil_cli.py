"""The ``vigil`` command: one entry point, subcommands registered by each package's ``cli`` module.

Each package owns its subcommands (``firmware_bridge.cli`` -> ``vigil frame``, ``simulators.cli`` ->
``vigil simulate`` / ``vigil score``, ``edge.cli`` -> ``vigil gateway``, ``cloud.cli`` -> ``vigil cloud`` /
``vigil demo``). Heavy imports happen inside the handlers, so ``vigil --help`` stays fast on a Pi.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from cloud import cli as cloud_cli
from edge import cli as edge_cli
from firmware_bridge import cli as bridge_cli
from firmware_bridge.logs import configure_logging, quiet_chatty_loggers
from simulators import cli as simulators_cli
from simulators import demo

COMMAND_MODULES = (bridge_cli, simulators_cli, edge_cli, cloud_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigil", description="Vigil: neighbourhood-safety IoT, edge to cloud."
    )
    parser.add_argument(
        "--log-level", default=os.environ.get("VIGIL_LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING"
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        default=os.environ.get("VIGIL_LOG_FORMAT", "auto"),
        help="structured logs: JSON lines, or key=value text (auto: text on a terminal, else JSON)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    demo.register_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:  # a host (a test runner) that configured logging keeps it
        configure_logging(getattr(logging, str(args.log_level).upper(), logging.INFO), args.log_format)
    else:
        quiet_chatty_loggers()
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
