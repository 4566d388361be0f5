"""How to spell the ``vigil`` command in a hint, so a copied line runs where the user is.

From a clone, the README's commands are ``./scripts/vigil ...`` (the venv is not on ``PATH``); in an
activated venv or an install it is ``vigil``; under systemd the full path of the venv's script.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def vigil_command(cwd: Path | None = None) -> str:
    """``vigil`` when that name runs this same program, else ``./scripts/vigil`` from a clone's root,
    else the path this program was started by.
    """
    here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    on_path = shutil.which("vigil")
    if on_path is not None and (here is None or here.name != "vigil" or Path(on_path).resolve() == here):
        return "vigil"
    root = cwd or Path.cwd()
    if (root / "scripts" / "vigil").is_file() and (root / "pyproject.toml").is_file():
        return "./scripts/vigil"
    if here is not None and here.name == "vigil" and os.access(here, os.X_OK):
        return str(here)
    return "vigil"


__all__ = ["vigil_command"]
