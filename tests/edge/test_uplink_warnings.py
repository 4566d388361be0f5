"""A plaintext uplink (``http://`` / ``mqtt://``) to another machine is warned about, loudly and in zh first.

Where: at start-up (the daemon's log), in ``vigil gateway check-config`` and in ``vigil gateway status``.
Never for loopback hosts (a lab, a local TLS-terminating proxy) or with ``uplink.allow_plaintext = true``.
Also: the refusal / quarantine / dead-letter lines of ``vigil gateway status`` speak Chinese.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pytest

from alerts.contract import Refusal, UplinkAck
from edge.config import UplinkSection, parse_config
from edge.daemon import Gateway
from edge.metrics import GatewayMetrics
from edge.outbox import Outbox
from edge.quarantine import QuarantineMetrics
from edge.status import diagnose_metrics, diagnose_outbox
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from tests.edge.helpers import alert, smoke_reading
from tests.servers import free_port
from vigil_cli import main

ZH = "未加密"  # in every Chinese warning
EN = "NOT encrypted"


def config_text(tmp_path: Path, url: str, *, mode: str = "http", extra: str = "") -> str:
    return f"""
[gateway]
id = "gw-warn"
credential = "secret-token"
data_dir = "{tmp_path / "data"}"

[uplink]
mode = "{mode}"
url = "{url}"
{extra}

[metrics]
enabled = false
"""


@pytest.mark.parametrize(
    ("mode", "url", "warns"),
    [
        ("http", "http://10.1.2.3:8080", True),
        ("http", "http://cloud.example.cn", True),
        ("mqtt", "mqtt://broker.example.cn:1883", True),
        ("http", "https://cloud.example.cn", False),
        ("mqtt", "mqtts://broker.example.cn:8883", False),
        ("http", "http://127.0.0.1:8080", False),
        ("http", "http://127.9.9.9:8080", False),
        ("http", "http://localhost:8080", False),
        ("http", "http://[::1]:8080", False),
        ("mqtt", "mqtt://localhost:1883", False),
    ],
)
def test_plaintext_to_another_host_warns_and_loopback_does_not(mode: str, url: str, warns: bool) -> None:
    warning = UplinkSection(mode=mode, url=url).plaintext_warning()  # type: ignore[arg-type]
    assert (warning is not None) is warns
    if warning is not None:
        zh, en = warning
        assert ZH in zh and EN in en
        assert ("mqtts://" if mode == "mqtt" else "https://") in en  # says what to use instead
        assert "uplink.allow_plaintext" in en and "uplink.allow_plaintext" in zh
    allowed = UplinkSection(mode=mode, url=url, allow_plaintext=True)  # type: ignore[arg-type]
    assert allowed.plaintext_warning() is None
    assert UplinkSection(mode="none").plaintext_warning() is None


def test_check_config_warns_zh_then_en_and_still_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "gateway.toml"
    f.write_text(config_text(tmp_path, "http://10.1.2.3:8080"))
    assert main(["gateway", "check-config", str(f)]) == 0  # valid: a warning, not an error
    err = capsys.readouterr().err
    assert ZH in err and EN in err
    assert err.index("警告") < err.index("warning:") and err.index(ZH) < err.index(EN)

    f.write_text(config_text(tmp_path, "http://10.1.2.3:8080", extra="allow_plaintext = true"))
    assert main(["gateway", "check-config", str(f)]) == 0
    assert EN not in capsys.readouterr().err

    f.write_text(config_text(tmp_path, "https://10.1.2.3:8443"))
    assert main(["gateway", "check-config", str(f)]) == 0
    assert EN not in capsys.readouterr().err


def test_status_reports_the_plaintext_uplink_as_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "gateway.toml"
    f.write_text(config_text(tmp_path, "mqtt://10.1.2.3:1883", mode="mqtt"))
    monkeypatch.setenv("VIGIL_LANG", "zh_CN.UTF-8")
    url = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens: the daemon is down
    assert main(["gateway", "status", "--config", str(f), "--url", url]) == 2
    out = capsys.readouterr().out
    assert "问题" in out and ZH in out and "mqtts://" in out
    monkeypatch.setenv("VIGIL_LANG", "en")
    main(["gateway", "status", "--config", str(f), "--url", url])
    out = capsys.readouterr().out
    assert "PROBLEM" in out and EN in out

    f.write_text(config_text(tmp_path, "mqtt://10.1.2.3:1883", mode="mqtt", extra="allow_plaintext = true"))
    main(["gateway", "status", "--config", str(f), "--url", url])
    assert EN not in capsys.readouterr().out


def test_the_daemon_warns_at_start_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for url, warns in (("http://192.168.1.20:8080", True), ("http://127.0.0.1:8080", False)):
        caplog.clear()
        cfg = parse_config(config_text(tmp_path, url), tmp_path / "gateway.toml")
        with caplog.at_level(logging.WARNING, logger="edge.daemon"):
            gw = Gateway(cfg)
        try:
            hits = [r for r in caplog.records if EN in r.getMessage()]
            assert bool(hits) is warns
            if warns:
                msg = hits[0].getMessage()
                assert hits[0].levelno == logging.WARNING and msg.index(ZH) < msg.index(EN)
        finally:
            gw.outbox.close()


# -- refusal, quarantine and dead-letter lines in Chinese ---------------------------------------------
FORGED = "70b3d57edeadbeef"


def test_refusal_quarantine_and_dead_letter_lines_speak_chinese(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    path = tmp_path / "outbox.sqlite3"
    ob = Outbox(path)
    try:
        forged = [dataclasses.replace(smoke_reading(1, seq, now + seq), device_id=FORGED) for seq in range(3)]
        ob.commit([ReadingBatch.from_readings(DeviceKind.SMOKE_ALARM, forged)], [])
        pending = ob.next_batch("gw-warn")
        assert pending is not None
        refused = Refusal(record="telemetry", device_id=FORGED, reason="unknown_device", count=3)
        ob.ack(UplinkAck(batch_id=pending.batch_id, committed_at=now, telemetry_refused=3, refused=[refused]))
        ob.commit([], [alert(2, t=now)])
        poison = ob.next_batch("gw-warn")
        assert poison is not None
        assert ob.dead_letter(poison.batch_id, "http_422") == 1
    finally:
        ob.close()

    monkeypatch.setenv("VIGIL_LANG", "zh_CN.UTF-8")
    offline = diagnose_outbox(path, now=now).render()
    assert "3 条记录被云端拒收并已隔离（不再重发）：来自云端不认识的设备" in offline
    assert f"设备 {FORGED}：3 条记录被拒收，未在云端登记" in offline
    assert "死信中有 1 条告警记录" in offline
    assert "refused" not in offline and "dead letter" not in offline  # no English left in these lines

    m = GatewayMetrics()
    q = QuarantineMetrics.for_registry(m.registry, quarantined={}, dead_letter={})
    q.quarantined.labels("not_assigned").inc(4)
    q.dead_letter.labels("telemetry").inc(2)
    running = diagnose_metrics(m.render().decode(), now=now).render()
    assert "4 条记录被云端拒收并已隔离（不再重发）：来自云端分配给其他网关的设备" in running
    assert "死信中有 2 条遥测记录" in running

    monkeypatch.setenv("VIGIL_LANG", "en")
    english = diagnose_outbox(path, now=now).render()
    assert "3 record(s) refused by the cloud and quarantined" in english
    assert f"device {FORGED}: 3 record(s) refused, not registered in the cloud" in english
    assert "1 alert record(s) in the dead letter" in english
