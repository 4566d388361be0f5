"""`vigil` subcommands owned by the firmware_bridge package."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this package's subcommands to the `vigil` parser."""
