"""``vigil gateway status`` and ``vigil gateway alerts`` (edge/status.py, edge/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alerts.contract import AlertEvent
from edge.metrics import GatewayMetrics
from edge.outbox import Outbox
from edge.status import diagnose_metrics, diagnose_outbox
from tests.edge.helpers import alert, manhole_batch
from vigil_cli import main

NOW = 1_700_000_000.0


def test_metrics_explained_in_plain_words() -> None:
    m = GatewayMetrics()
    m.started.set(NOW - 7200)
    m.frames.labels("radio0").inc(970)
    m.rejects.labels("radio0", "crc").inc(30)
    m.rejects.labels("radio0", "duplicate").inc(5)
    m.frames.labels("chirpstack").inc(100)
    m.source_up.labels("chirpstack").set(1)
    m.source_up.labels("nbiot0").set(0)
    m.unknown_devices.inc(12)
    m.outbox_depth.labels("alert").set(2)
    m.outbox_depth.labels("live").set(300)
    m.outbox_oldest.set(5400)
    m.uplink_up.set(0)
    m.uplink_down_since.set(NOW - 5400)
    m.uplink_errors.labels("connect").inc(40)
    m.dropped.labels("telemetry_overflow").inc(1000)
    report = diagnose_metrics(m.render().decode(), now=NOW)
    text = report.render()
    assert "up for 2 h 0 min" in text
    assert "radio0: 30 CRC errors: check the baud rate" in text and "(3.0 % of frames)" in text
    assert "source nbiot0 is not connected" in text
    assert "12 frames came from devices not listed in devices_file" in text
    # times in the display zone (Asia/Shanghai by default), as every human-facing time
    assert "cloud unreachable since 2023-11-15 04:43:20 (Asia/Shanghai) (90 min)" in text
    assert "connect x40" in text
    assert "2 alert steps" in text and "oldest record 90 min old" in text
    assert "1000 records dropped (telemetry overflow)" in text
    assert "source chirpstack: 100 frames accepted" in text
    assert "duplicate frames" in text and "PROBLEM  source radio0: 5 duplicate" not in text  # info only
    assert report.exit_code == 1


def test_healthy_gateway_exit_0() -> None:
    m = GatewayMetrics()
    m.frames.labels("radio0").inc(10)
    m.source_up.labels("radio0").set(1)
    m.uplink_up.set(1)
    report = diagnose_metrics(m.render().decode(), now=NOW)
    assert report.exit_code == 0, report.render()
    assert "cloud reachable" in report.render()


def test_daemon_down_reads_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, wallclock=lambda: NOW - 600) as ob:
        ob.commit([manhole_batch(7)], [alert(1)])
        ob.put_state(
            "uplink_state",
            json.dumps(
                {"up": False, "down_since": NOW - 900, "last_error": "cannot reach https://cloud"}
            ).encode(),
        )
    report = diagnose_outbox(path, now=NOW)
    text = report.render()
    assert report.exit_code == 2 and "NOT RUNNING" in text
    assert "1 alert steps, 0 live and 7 backlog readings waiting; oldest record 10 min old" in text
    assert "unreachable since 2023-11-15 05:58:20 (Asia/Shanghai) (cannot reach https://cloud)" in text


def test_status_cli_with_daemon_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.servers import free_port

    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[gateway]\nid = "g"\ndata_dir = "{tmp_path}"\n[metrics]\nport = {free_port()}\n')
    assert main(["gateway", "status", "--config", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert "does not answer" in out and "never run" in out


def test_alerts_cli_prints_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        ob.commit([], [alert(1), alert(2)])
    assert main(["gateway", "alerts", "--outbox", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [AlertEvent.model_validate_json(x).alert_id for x in lines] == [
        alert(1).alert_id,
        alert(2).alert_id,
    ]
    assert main(["gateway", "alerts", "--outbox", str(tmp_path / "missing.db")]) == 1


def test_refused_credential_is_named() -> None:
    m = GatewayMetrics()
    m.uplink_up.set(0)
    m.uplink_down_since.set(NOW - 60)
    m.uplink_errors.labels("http_401").inc(3)
    text = diagnose_metrics(m.render().decode(), now=NOW).render()
    # and says how to install a new one
    assert "the cloud refuses this gateway's credential (http_401)" in text
    assert "vigil cloud gateway rotate ID" in text and "gateway.credential_file" in text


def test_status_speaks_the_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    """Human-facing text follows VIGIL_LANG / LANG (firmware_bridge.kernel.locale): zh-CN or English."""
    from edge.status import Report

    r = Report(running=True)
    r.bad("the cloud refuses this gateway's credential", "云端拒绝本网关的凭据")
    r.ok("cloud reachable")  # no translation yet: the English sentence, never nothing
    monkeypatch.setenv("VIGIL_LANG", "zh_CN.UTF-8")
    text = r.render()
    assert text.startswith("Vigil 网关：运行中") and "问题  云端拒绝本网关的凭据" in text
    assert "cloud reachable" in text and text.endswith("发现 1 个问题。")
    monkeypatch.setenv("VIGIL_LANG", "en")
    assert r.render().endswith("1 problem(s) found.")
