"""docs/adding-a-device-kind.md says truthfully which files a new kind touches.

Every module outside a kind's own files (``*/<kind>.py``) that names a kind in code, as
``DeviceKind.<KIND>`` or as the string ``"<kind>"``, must be listed in the document; every file the
document names must exist. Docstrings and comments do not count (an example is not a dependency).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from firmware_bridge.kernel.records import DeviceKind

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "adding-a-device-kind.md").read_text(encoding="utf-8")
PACKAGES = ("firmware_bridge", "alerts", "edge", "cloud", "simulators", "dashboards")
KIND_VALUES = {k.value for k in DeviceKind}
KIND_NAMES = {k.name for k in DeviceKind}
#: modules where a kind's name is another vocabulary's word (a resident's report category "manhole")
NOT_A_KIND = {"cloud/notify/loopbridge.py", "cloud/notify/residents.py", "dashboards/public.py"}


def _names_a_kind(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in KIND_NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id == "DeviceKind"
        ):
            return True
        if isinstance(node, ast.Constant) and node.value in KIND_VALUES and id(node) not in docstrings:
            return True
    return False


def test_every_module_that_names_a_kind_is_in_the_checklist() -> None:
    missing = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.stem in KIND_VALUES or "tests" in path.parts:
                continue  # the kind's own modules: the checklist's "<kind>.py" lines
            if path.parent.as_posix().endswith("cloud/migrations/versions"):
                continue  # frozen history: a new kind gets a new revision, never an edit of an old one
            rel = path.relative_to(ROOT).as_posix()
            if _names_a_kind(path) and rel not in DOC and rel not in NOT_A_KIND:
                missing.append(rel)
    assert not missing, f"name these in docs/adding-a-device-kind.md: {missing}"


def test_every_file_the_checklist_names_exists() -> None:
    for rel in set(
        re.findall(r"`((?:firmware_bridge|alerts|edge|cloud|simulators|dashboards)/[\w/]+\.py)`", DOC)
    ):
        assert (ROOT / rel).exists() or "<kind>" in rel, rel
    for kind in DeviceKind:  # the per-role modules of an existing kind, as the checklist describes them
        for role in ("firmware_bridge", "alerts/detection", "simulators"):
            assert (ROOT / role / f"{kind.value}.py").exists(), (role, kind)
