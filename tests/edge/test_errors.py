"""The gateway's errors: one tree (edge/errors.py), and each says how to fix what went wrong."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import edge.errors
from edge.errors import VigilGatewayError
from vigil_cli import main


def test_one_tree() -> None:
    classes = [getattr(edge.errors, n) for n in edge.errors.__all__]
    assert all(issubclass(c, VigilGatewayError) for c in classes)
    # the modules that raise them re-export the same classes (no second, look-alike tree)
    from edge.config import ConfigError
    from edge.outbox import OutboxError
    from edge.uplink import UplinkError

    assert ConfigError is edge.errors.ConfigError and OutboxError is edge.errors.OutboxError
    assert UplinkError is edge.errors.UplinkError


def test_a_metrics_port_in_use_says_which_key_to_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "gw.toml").write_text(
            f'[gateway]\nid = "gw-1"\ndata_dir = "data"\n[metrics]\nport = {port}\n', encoding="utf-8"
        )
        assert main(["gateway", "--config", str(tmp_path / "gw.toml")]) == 1
    assert f"metrics port 127.0.0.1:{port} is in use" in caplog.text and "[metrics] port" in caplog.text
