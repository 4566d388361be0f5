"""`vigil simulate` and `vigil score` end to end, through the real `vigil` argument parser."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import pytest

from alerts.contract import AlertEvent
from firmware_bridge.kernel.events import AlertPhase, alert_id
from simulators.cli import fetch_cloud_alerts
from simulators.errors import SimulatorError
from simulators.fleet import MANIFEST_COLUMNS
from simulators.truth import TruthRecord, load_truth
from vigil_cli import main

SMALL = """
seed = 4
start = "2026-06-01T10:00:00+08:00"
duration = "3h"
speedup = 60
[devices]
manhole = 20
smoke_alarm = 20
wristband = 20
[scenarios.wristband]
fall = 2.0
sos = 2.0
[scenarios.smoke_alarm]
cooking = 4.0
[faults]
duplicate = 0.05
"""


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sim")
    (d / "fleet.toml").write_text(SMALL)
    assert main(["simulate", str(d / "fleet.toml"), "--out", str(d / "out"), "--fast", "--quiet"]) == 0
    return d / "out"


def perfect_alerts(truth: list[TruthRecord]) -> list[AlertEvent]:
    out = []
    for r in truth:
        if r.must_not_alert:
            continue
        ep = int(r.start * 1000)
        out.append(
            AlertEvent(
                alert_id=alert_id(r.device_id, r.event_type, ep),
                device_id=r.device_id,
                kind=r.kind,
                event_type=r.event_type,
                severity=r.severity,
                phase=AlertPhase.RAISED,
                episode_ms=ep,
                time=r.start + 5,
                frame_time=r.start + 5,
            )
        )
    return out


def test_simulate_writes_everything(simulated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in (
        "devices.csv",
        "responders.csv",
        "neighbourhood.json",
        "truth.jsonl",
        "faults.jsonl",
        "frames.jsonl",
        "summary.json",
    ):
        assert (simulated / name).stat().st_size > 0, name
    assert not (simulated / "clock.json").exists()  # --fast: no shared clock
    with (simulated / "devices.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == MANIFEST_COLUMNS and len(rows) == 60
    summary = json.loads((simulated / "summary.json").read_text())
    lines = (simulated / "frames.jsonl").read_text().splitlines()
    assert summary["frames_total"] + summary["faults"].get("duplicate", 0) == len(lines)
    assert summary["duration_s"] == 3 * 3600 and summary["events"]["fall"] >= 1
    first = json.loads(lines[0])
    assert set(first) >= {"time", "device_id", "kind", "payload", "frame", "gateway_id", "seq"}


def test_simulate_summary_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f.toml").write_text(SMALL)
    assert (
        main(
            [
                "simulate",
                str(tmp_path / "f.toml"),
                "--out",
                str(tmp_path / "o"),
                "--fast",
                "--quiet",
                "--duration",
                "10m",
                "--seed",
                "8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "frames per kind:" in out and "wristband" in out and "events injected" in out
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["seed"] == 8


def test_simulate_bad_config_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f.toml").write_text("[devices]\nmanholes = 3\n")
    assert main(["simulate", str(tmp_path / "f.toml"), "--out", str(tmp_path / "o"), "--fast"]) == 2
    assert "devices.manholes: unknown key" in capsys.readouterr().err


def test_score_alerts_file(simulated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = load_truth(simulated / "truth.jsonl")
    alerts = perfect_alerts(truth)
    p = tmp_path / "alerts.jsonl"
    p.write_text("".join(a.model_dump_json() + "\n" for a in alerts))
    out_json = tmp_path / "score.json"
    assert (
        main(
            ["score", "--truth", str(simulated / "truth.jsonl"), "--alerts", str(p), "--json", str(out_json)]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "overall" in table and "100.0%" in table
    data = json.loads(out_json.read_text())
    assert data["overall"]["recall"] == 1.0 and data["overall"]["false_alarms"] == 0
    assert data["devices"] == 60 and data["duration_s"] == 3 * 3600  # from devices.csv / summary.json


def test_score_outbox(simulated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.outbox import Outbox

    truth = load_truth(simulated / "truth.jsonl")
    alerts = perfect_alerts(truth)
    with Outbox(tmp_path / "outbox.db") as ob:
        # the first event's alert is missing (the last events may fall in their detection horizon of the
        # run's end: censored, not missed — docs/simulators.md)
        ob.commit([], alerts[1:])
    out_json = tmp_path / "score.json"
    assert (
        main(
            [
                "score",
                "--truth",
                str(simulated / "truth.jsonl"),
                "--outbox",
                str(tmp_path / "outbox.db"),
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    data = json.loads(out_json.read_text())
    overall = data["overall"]
    assert overall["detected"] + overall["censored_detected"] == len(alerts) - 1 and len(data["missed"]) == 1


def test_fetch_cloud_alerts_with_a_test_transport(simulated: Path) -> None:
    truth = load_truth(simulated / "truth.jsonl")
    alerts = perfect_alerts(truth)[:3]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/alerts"
        assert request.url.params["view"] == "steps"  # every lifecycle step, not the current-state view
        if request.headers.get("authorization") != "Bearer s3cret":
            return httpx.Response(401, json={"detail": "unauthorized"})
        return httpx.Response(200, json={"alerts": [a.model_dump(mode="json") for a in alerts]})

    got = fetch_cloud_alerts("http://cloud.test/", "s3cret", transport=httpx.MockTransport(handler))
    assert got == alerts
    with pytest.raises(SimulatorError, match="401"):
        fetch_cloud_alerts("http://cloud.test", "wrong", transport=httpx.MockTransport(handler))
    with pytest.raises(SimulatorError, match="did not answer"):
        fetch_cloud_alerts(
            "http://cloud.test",
            None,
            transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"items": []})),
        )


def test_score_cloud_unreachable_exit_2(simulated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["score", "--truth", str(simulated / "truth.jsonl"), "--cloud", url]) == 2
    assert "cannot fetch alerts" in capsys.readouterr().err


def test_score_bad_alerts_line(simulated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "alerts.jsonl"
    p.write_text('{"alert_id": "x"}\n')
    assert main(["score", "--truth", str(simulated / "truth.jsonl"), "--alerts", str(p)]) == 2
    assert "alerts.jsonl:1" in capsys.readouterr().err


def test_same_seed_byte_identical_files(tmp_path: Path) -> None:
    (tmp_path / "f.toml").write_text(
        SMALL.replace("duplicate = 0.05", "duplicate = 0.05\ncorrupt = 0.05\nreorder = 0.05")
    )
    for name in ("a", "b"):
        args = ["simulate", str(tmp_path / "f.toml"), "--out", str(tmp_path / name), "--fast", "--quiet"]
        assert main([*args, "--duration", "1h"]) == 0
    for f in (
        "frames.jsonl",
        "truth.jsonl",
        "faults.jsonl",
        "devices.csv",
        "responders.csv",
        "neighbourhood.json",
    ):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
