"""The tree reads like a map: dependencies run one way, and no module imports itself back in a circle.

Layers, bottom to top (``docs/architecture.md``):

1. ``firmware_bridge.kernel``: kinds, records, the event vocabulary, clocks. Imports nothing of ours.
2. ``firmware_bridge`` (codecs, framing, transports) and ``alerts`` (the alerting domain: contract,
   detection, the closed loop). Codecs never import ``alerts``.
3. ``edge`` (the gateway daemon) and ``cloud`` (the service). They never import each other.
   ``dashboards`` (the console's assets and templates) imports neither; the cloud serves it.
4. ``simulators``, the demo and ``vigil_cli``: on top; nothing below imports them.

Every import counts, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("firmware_bridge", "alerts", "edge", "cloud", "simulators", "dashboards", "vigil_cli")

#: which of our packages each layer may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "firmware_bridge.kernel": set(),
    "firmware_bridge": {"firmware_bridge.kernel"},
    "alerts": {"firmware_bridge.kernel", "firmware_bridge"},
    "edge": {"firmware_bridge.kernel", "firmware_bridge", "alerts"},
    "dashboards": {"firmware_bridge.kernel", "firmware_bridge", "alerts"},
    "cloud": {"firmware_bridge.kernel", "firmware_bridge", "alerts", "dashboards"},
    "simulators": {"firmware_bridge.kernel", "firmware_bridge", "alerts", "edge", "cloud", "dashboards"},
}


def _layer(module: str) -> str | None:
    if module == "firmware_bridge.kernel" or module.startswith("firmware_bridge.kernel."):
        return "firmware_bridge.kernel"
    top = module.split(".")[0]
    return top if top in ALLOWED else None


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in OURS[:-1]:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in OURS}


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str) -> None:
    layer = _layer(module)
    assert layer is not None
    bad = sorted(
        m
        for m in _imports(MODULES[module], module, top_level_only=False)
        if (other := _layer(m)) not in (None, layer) and other not in ALLOWED[layer]
    )
    assert not bad, f"{module} ({layer}) may not import {bad}; see docs/architecture.md"


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for target in _imports(path, module, top_level_only=False):
            # ``from pkg import sub`` names a module; ``from pkg.mod import name`` names a symbol
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            # a package's __init__ re-exporting its own children is not a cycle of design
            if target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in seen and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        seen[node] = 2
        return None

    for start in sorted(MODULES):
        if start not in seen and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_kernel_import_loads_no_other_module_of_ours() -> None:
    import subprocess
    import sys

    code = (
        "import sys, firmware_bridge.kernel\n"
        "ours = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{OURS!r} and not m.startswith('firmware_bridge.kernel') and m != 'firmware_bridge')\n"
        "print(','.join(ours))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
