"""`vigil demo`, the README's first command, really runs the whole loop: simulated frames over a
pseudo-terminal into the gateway daemon, HTTP batches into the cloud, alerts back out of the cloud API,
scored against the simulator's ground truth."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

from firmware_bridge.kernel.events import AlertPhase
from simulators.demo import run_demo
from tests.servers import free_port


async def test_demo_closes_the_loop_from_frame_to_scored_alert(tmp_path: Path) -> None:
    out = io.StringIO()
    # 120x: a wristband's 5-minute interval is 2.5 real seconds; much faster and ordinary scheduling
    # latency of one shared event loop starts to look like a silent device (docs/demo.md)
    report = await run_demo(
        tmp_path / "demo", duration_s=2400, speedup=120, port=free_port(), out=out, report_every_s=2.0
    )
    text = out.getvalue()
    assert report.frames_sent > 500
    # the link drops or corrupts a few frames on purpose; everything else reaches the gateway and the cloud
    assert report.gateway_frames >= 0.9 * report.frames_sent
    assert report.readings_stored >= 0.95 * report.gateway_frames
    raised = [a for a in report.alerts if a.phase is AlertPhase.RAISED]
    assert raised, text
    overall = report.score.overall
    assert overall.events >= 2 and overall.recall >= 0.7, report.score.format_table()
    with sqlite3.connect(tmp_path / "demo" / "cloud" / "vigil.db") as db:
        by_source = db.execute(
            "SELECT source, event_type, count(*) FROM alerts GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    assert overall.false_alarms == 0, f"{report.score.format_table()}\nalerts by source: {by_source}"

    # what an operator sees: the cloud URL, alerts with addresses in CST, and the score table
    assert "/docs" in text and "raised" in text and "recall" in text
    assert (tmp_path / "demo" / "sim" / "truth.jsonl").exists()
