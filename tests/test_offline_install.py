"""Installing a gateway offline on a Raspberry Pi (docs/gateway.md, "Install on a Raspberry Pi").

The documented wheelhouse command must fetch the pinned versions (``constraints.txt``) as aarch64 wheels
for Python 3.11 without compiling anything, and a gateway install must not need the cloud's extras. The
offline checks read the documents and the project metadata; the resolution itself asks PyPI (``pip
install --dry-run --report``: index pages and wheel metadata only, a few seconds) and is marked slow and
skipped without network.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PINS = {
    Requirement(line).name.lower().replace("_", "-"): line.split("==", 1)[1].strip()
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    if "==" in line and not line.startswith("#")
}
GATEWAY_DEPS = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
CLOUD_ONLY = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "influxdb-client", "psycopg"}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _doc_download_command() -> list[str]:
    doc = (ROOT / "docs" / "gateway.md").read_text(encoding="utf-8")
    m = re.search(r"^pip download .*?(?<!\\)$", doc.replace("\\\n", " "), re.M)
    assert m is not None, "docs/gateway.md has no `pip download` line"
    return shlex.split(m.group(0))


def test_the_distribution_is_not_the_unrelated_vigil_on_pypi() -> None:
    assert PYPROJECT["project"]["name"] == "vigil-safety"
    assert PYPROJECT["project"]["scripts"] == {"vigil": "vigil_cli:main"}
    doc = (ROOT / "docs" / "gateway.md").read_text(encoding="utf-8")
    assert "pip install --no-index --find-links wheels/ vigil-safety" in doc
    assert not re.search(r"pip (install|download)[^\n]* vigil\s*$", doc, re.M)


def test_the_documented_wheelhouse_command_asks_for_what_the_pins_need() -> None:
    argv = _doc_download_command()
    platforms = {argv[i + 1] for i, a in enumerate(argv) if a == "--platform"}
    # numpy and cryptography pins ship manylinux_2_28 aarch64 wheels only; pydantic-core, cffi 2014
    assert platforms == {"manylinux_2_28_aarch64", "manylinux2014_aarch64"}
    assert "--only-binary=:all:" in argv and argv[argv.index("--python-version") + 1] == "3.11"
    assert argv[argv.index("-c") + 1] == "constraints.txt"


def test_a_gateway_needs_no_cloud_extra_and_every_dependency_is_pinned() -> None:
    names = {_norm(r.name) for r in GATEWAY_DEPS}
    assert not names & CLOUD_ONLY
    assert names <= set(PINS), sorted(names - set(PINS))
    assert {_norm(Requirement(r).name) for r in PYPROJECT["project"]["optional-dependencies"]["cloud"]} >= {
        "fastapi",
        "uvicorn",
        "sqlalchemy",
    }


def _pypi_reachable() -> bool:
    try:
        return httpx.head("https://pypi.org/simple/numpy/", timeout=5).status_code < 500
    except httpx.HTTPError:
        return False


def _resolve(
    tmp_path: Path, platforms: list[str], requirements: list[str]
) -> subprocess.CompletedProcess[str]:
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    argv += ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    for p in platforms:
        argv += ["--platform", p]
    argv += ["--target", str(tmp_path / "t"), "-c", str(ROOT / "constraints.txt"), "--report", str(report)]
    return subprocess.run(argv + requirements, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_the_pinned_gateway_dependencies_resolve_to_aarch64_wheels(tmp_path: Path) -> None:
    if not _pypi_reachable():
        pytest.skip("PyPI not reachable")
    argv = _doc_download_command()
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    done = _resolve(tmp_path, platforms, [str(r) for r in GATEWAY_DEPS])
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = json.loads((tmp_path / "report.json").read_text())["install"]
    by_name = {_norm(i["metadata"]["name"]): i for i in resolved}
    assert not set(by_name) & CLOUD_ONLY
    for name, item in by_name.items():
        wheel = item["download_info"]["url"].rsplit("/", 1)[-1]
        assert wheel.endswith(".whl"), wheel  # nothing to compile on the Pi
        tags = wheel[:-4].split("-")[-1]
        assert tags == "any" or "aarch64" in tags, wheel
        if name in PINS:
            assert item["metadata"]["version"] == PINS[name], (name, item["metadata"]["version"])
    # why the documented command names both tags: with manylinux2014 alone the pinned numpy has no wheel
    numpy_only_2014 = _resolve(tmp_path, ["manylinux2014_aarch64"], [f"numpy=={PINS['numpy']}"])
    assert numpy_only_2014.returncode != 0
