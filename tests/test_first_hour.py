"""A newcomer's first hour, as a test: README -> demo -> console -> the development recipe.

Every step is run the way the documents say, and every hint the programs print is followed: the demo's
closing commands are executed while its cloud, console and gateway are still up; the development recipe
is read out of ``docs/demo.md`` and run line by line (long-running lines in the background), with only
the ports changed to free ones; the simulator gets its Ctrl-C once the gateway's data is in the cloud.
A traceback anywhere, or a printed command that does not work, fails the test. (The Raspberry Pi
install is ``tests/test_offline_install.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from simulators.demo import run_demo
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
VIGIL = Path(sys.executable).with_name("vigil")  # what ./scripts/vigil execs after bootstrapping


def _run_hint(command: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a printed or documented command line as a shell would, ``./scripts/vigil`` = the venv's vigil."""
    line = command.replace("./scripts/vigil", shlex.quote(str(VIGIL)))
    return subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback (most recent call last)" not in text, text


def test_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "./scripts/vigil demo" in readme
    for doc in re.findall(r"\]\((docs/[\w\-]+\.md)\)", readme):
        assert (ROOT / doc).is_file(), doc
    assert os.access(ROOT / "scripts" / "vigil", os.X_OK)
    out = subprocess.run([str(VIGIL), "--help"], capture_output=True, text=True, timeout=60, check=True)
    for command in ("frame", "simulate", "score", "gateway", "cloud", "demo"):
        assert command in out.stdout


async def test_demo_then_its_hints_then_the_console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    quit_demo = asyncio.Event()
    monkeypatch.setenv("VIGIL_LANG", "en")
    demo = asyncio.create_task(
        run_demo(
            tmp_path / "demo",
            duration_s=900,
            speedup=120,
            port=free_port(),
            out=out,
            report_every_s=2.0,
            linger=True,
            quit_event=quit_demo,
        )
    )
    try:
        deadline = time.monotonic() + 60
        while "until Ctrl-C" not in out.getvalue() and "直到按 Ctrl-C" not in out.getvalue():
            assert not demo.done(), out.getvalue() + repr(demo.exception() if demo.done() else None)
            assert time.monotonic() < deadline, out.getvalue()
            await asyncio.sleep(0.2)
        text = out.getvalue()
        _no_traceback(text)
        assert "outbox.db" not in text and "outbox.sqlite3" in text
        # the closing hints, while the cloud, the console and the gateway are still up
        commands = [m[1] for m in re.finditer(r"(?m)((?:\./scripts/vigil|curl) .*)$", text)]
        assert any(" score " in c for c in commands) and any("gateway status" in c for c in commands), text
        for command in commands:
            if command.startswith("curl"):
                token = re.search(r"Bearer (\S+)'", command)
                url = command.rsplit(" ", 1)[-1]
                assert token is not None
                r = await asyncio.to_thread(httpx.get, url, headers={"Authorization": f"Bearer {token[1]}"})
                assert r.status_code == 200 and "alerts" in r.json()
                continue
            done = await asyncio.to_thread(_run_hint, command, ROOT)
            _no_traceback(done.stdout, done.stderr)
            # `gateway status` exits 1 when it reports the injected CRC errors as problems; 2 = not running
            assert done.returncode in (0, 1) if "gateway status" in command else done.returncode == 0, (
                command,
                done.stdout,
                done.stderr,
            )
            if "gateway status" in command:
                assert "running" in done.stdout and "NOT RUNNING" not in done.stdout
        console = re.search(r"(http://127\.0\.0\.1:\d+/console)\S*", text)
        if console is not None:  # the console, once it exists, is up as long as the cloud
            r = await asyncio.to_thread(httpx.get, console[1], follow_redirects=True)
            assert r.status_code == 200, r.text[:300]
        # SIGTERM (a service manager, `timeout`, a script's kill) ends a lingering demo like Ctrl-C. Sent
        # only when a handler is in place (with none, the signal would end the test run, not the test)
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.kill(os.getpid(), signal.SIGTERM)
        try:
            report = await asyncio.wait_for(asyncio.shield(demo), 60)
        except TimeoutError:
            raise AssertionError("SIGTERM did not end the lingering demo") from None
    finally:
        quit_demo.set()
        report = await asyncio.wait_for(demo, 60)
    assert report.frames_sent > 100 and report.readings_stored > 0.8 * report.gateway_frames
    assert report.outbox.name == "outbox.sqlite3" and report.outbox.exists()


# -- the development recipe ------------------------------------------------------------------------------
def _recipe() -> list[str]:
    doc = (ROOT / "docs" / "demo.md").read_text(encoding="utf-8")
    section = doc.split("### The development recipe", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]


LONG_RUNNING = ("vigil simulate", "vigil cloud --port", "vigil gateway --config")


def _wait(
    what: str, ok: Callable[[], bool], procs: list[subprocess.Popen[str]], timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        for p in procs:
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(f"{p.args!r} exited {p.returncode} while waiting for {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def _explained(tails: Callable[[], str]) -> Iterator[None]:
    """A failing step shows the logs of the background processes."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{tails()}") from exc


@contextlib.contextmanager
def _background() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def test_the_development_recipe_works_as_documented(tmp_path: Path) -> None:
    lines = _recipe()
    assert any("gateway add gw-dev" in ln for ln in lines) and any("--clock" in ln for ln in lines)
    cloud_port, metrics_port = free_port(), free_port()
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    toml = tmp_path / "examples" / "gateway-dev.toml"
    text = toml.read_text(encoding="utf-8")
    assert "127.0.0.1:8080" in text and "port = 9108" in text  # what the recipe's ports are tied to
    toml.write_text(
        text.replace("127.0.0.1:8080", f"127.0.0.1:{cloud_port}").replace(
            "port = 9108", f"port = {metrics_port}"
        ),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_CLOUD_")}
    env["VIGIL_LANG"] = "en"
    exports = ""
    cloud = f"http://127.0.0.1:{cloud_port}"
    logs: dict[str, Path] = {}
    sim = tmp_path / "var" / "dev" / "sim"

    def tails() -> str:
        return "\n".join(f"== {n}\n{p.read_text()[-3000:]}" for n, p in logs.items())

    with contextlib.ExitStack() as files, _background() as procs, _explained(tails):
        for raw in lines:
            line = raw.replace("--port 8080", f"--port {cloud_port}").replace(
                "127.0.0.1:8080", f"127.0.0.1:{cloud_port}"
            )
            if line.startswith("export "):
                exports += line + "; "
                continue
            if any(k in line for k in LONG_RUNNING):
                name = next(k for k in LONG_RUNNING if k in line).split()[1]
                logs[name] = tmp_path / f"{name}.log"
                cmd = exports + "exec " + line.replace("./scripts/vigil", shlex.quote(str(VIGIL)))
                procs.append(
                    subprocess.Popen(
                        ["bash", "-c", cmd],
                        cwd=tmp_path,
                        env=env,
                        stdout=files.enter_context(logs[name].open("w")),
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )
                if name == "simulate":
                    _wait(
                        "the simulator",
                        lambda: (sim / "clock.json").exists() and (sim / "serial").exists(),
                        procs,
                    )
                elif name == "cloud":
                    _wait("the cloud", lambda: _up(f"{cloud}/healthz"), procs)
                else:
                    _wait("the gateway", lambda: _up(f"http://127.0.0.1:{metrics_port}/metrics"), procs)
                continue
            if "vigil score" in line:  # "once the simulator has finished (or after Ctrl-C in terminal 1)"
                procs[0].send_signal(signal.SIGINT)
                procs[0].wait(30)
                assert procs[0].returncode in (0, 130), logs["simulate"].read_text()
            if "gateway status" in line:  # give the gateway a few batches to report on
                token = (tmp_path / "var" / "dev" / "operator.token").read_text().strip()

                def uploaded() -> bool:
                    r = httpx.get(f"{cloud}/metrics", timeout=2)
                    return any(
                        ln.startswith("vigil_cloud_ingest_readings_total") and float(ln.rsplit(" ", 1)[1]) > 0
                        for ln in r.text.splitlines()
                    )

                _wait("readings in the cloud", uploaded, procs, timeout=60)
            done = _run_hint(exports + line, tmp_path, env)
            _no_traceback(done.stdout, done.stderr)
            ok = (0, 1) if "gateway status" in line else (0,)  # 1 = problems found (injected CRC errors)
            assert done.returncode in ok, (line, done.stdout, done.stderr)
            if line.startswith("curl"):
                assert '"online":true' in done.stdout.replace(" ", ""), done.stdout
        gw = httpx.get(f"{cloud}/api/v1/gateways/gw-dev", headers={"Authorization": f"Bearer {token}"}).json()
        assert gw["online"], gw
    for path in logs.values():
        _no_traceback(path.read_text())
    for name in ("gateway", "cloud"):  # logs are structured (JSON lines off a terminal) and quiet
        lines = [ln for ln in logs[name].read_text().splitlines() if ln.strip()]
        records = [json.loads(ln) for ln in lines]
        info = [r["msg"] for r in records if r["level"] == "info"]
        assert len(info) <= 15, info  # state changes only: no line per uplink batch or request
    assert "refus" not in logs["gateway"].read_text().lower(), logs["gateway"].read_text()[-2000:]


def test_cloud_without_the_cloud_extras_says_how_to_install_them() -> None:
    # a gateway-only install: one of the cloud's modules at a time is absent (None in sys.modules)
    code = """
import sys, vigil_cli
for missing in ("fastapi", "uvicorn", "sqlalchemy"):
    saved = sys.modules.get(missing)
    sys.modules[missing] = None
    code = vigil_cli.main(["cloud", "--port", "0"])
    print(f"{missing}: exit {code}", file=sys.stderr)
    sys.modules[missing] = saved
    if saved is None:
        del sys.modules[missing]
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    _no_traceback(done.stderr)
    assert done.returncode == 0, done.stderr
    for missing in ("fastapi", "uvicorn", "sqlalchemy"):
        assert f"{missing}: exit 1" in done.stderr, done.stderr
    assert done.stderr.count("pip install 'vigil-safety[cloud]'") == 3, done.stderr


def test_a_cloud_port_in_use_says_how_to_choose_another(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [str(VIGIL), "cloud", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    _no_traceback(done.stderr)
    assert done.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in done.stderr, done.stderr
    assert "--port" in done.stderr


def test_the_demo_speaks_the_locale(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from simulators.demo import DemoReport, _next_steps

    report = DemoReport(workdir=tmp_path, outbox=tmp_path / "gateway" / "outbox.sqlite3")
    for lang, word in (("zh_CN.UTF-8", "直到按 Ctrl-C"), ("en_US.UTF-8", "until Ctrl-C")):
        monkeypatch.setenv("VIGIL_LANG", lang)
        lines = _next_steps(
            "./scripts/vigil",
            report,
            url="http://127.0.0.1:8080",
            op_token="t",
            metrics_url="http://127.0.0.1:9108/metrics",
            simdir=tmp_path,
            lingering=True,
        )
        text = "\n".join(lines)
        assert word in text and "outbox.sqlite3" in text and "./scripts/vigil gateway status" in text
