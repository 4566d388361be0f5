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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    demo.register_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
