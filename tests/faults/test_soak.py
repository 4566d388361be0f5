"""The soak (``bench/soak.py``) at CI size: the same code path, 300 devices over one simulated day.

Real processes: two ``vigil gateway`` daemons fed SLIP frames on pseudo-terminals by a simulated fleet,
uplinking over HTTP to a ``vigil cloud`` (embedded SQLite, loop and notifier running), all on one
accelerated clock. Asserted: every frame sent was accepted, every reading is stored exactly once, every
alert step a gateway journalled is stored once (or was refused with a reason and quarantined), the queues
are empty after the drain, and the sampler saw every process at every sample. Memory slopes are measured
but not asserted at this size (one simulated day is too short to tell warm-up from growth; the full week
in ``bench/soak.py`` judges them).
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vigil_bench_soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


soak = _load_soak()


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    cfg = soak.SoakConfig(
        devices=300,
        days=1.0,
        gateways=2,
        minutes=0.2,  # one simulated day in 12 real seconds (7,200x)
        samples_per_day=8,
        drain_timeout_s=60.0,
        start_lead_s=6.0,
        workdir=tmp_path_factory.mktemp("soak"),
    )
    out = io.StringIO()
    res = soak.Soak(cfg, out=out).run()
    soak.report(res, out=out)
    print(out.getvalue())
    return res  # type: ignore[no-any-return]


def test_nothing_lost_or_doubled(result: dict[str, object]) -> None:
    ledger = result["ledger"]
    assert isinstance(ledger, dict)
    assert ledger["frames_sent"] > 1000
    assert ledger["frames_sent"] == ledger["frames_sent_distinct"]
    assert ledger["gateway_accepted"] == ledger["frames_sent"]
    assert ledger["gateway_rejected"] == 0
    assert ledger["readings_stored_rows"] == ledger["frames_sent"]
    assert ledger["readings_lost"] == 0
    assert ledger["readings_doubled"] == 0
    assert ledger["readings_unexpected"] == 0
    assert ledger["readings_still_in_outbox"] == 0
    assert ledger["alert_steps_lost"] == 0
    assert ledger["alert_steps_doubled"] == 0
    assert (
        ledger["alert_steps_stored_from_gateways"] + ledger["alert_steps_refused_by_cloud"]
        == (ledger["alert_steps_gateways"])
    )
    assert set(ledger["frames_by_kind"]) == {"manhole", "smoke_alarm", "wristband"}


def test_verdict_passes_and_processes_exit_cleanly(result: dict[str, object]) -> None:
    assert result["problems"] == []
    assert result["ok"] is True
    codes = result["exit_codes"]
    assert isinstance(codes, dict)
    assert set(codes) == {"cloud", "gw0", "gw1"}
    assert codes["gw0"] == 0 and codes["gw1"] == 0


def test_sampler_saw_every_process_at_every_sample(result: dict[str, object]) -> None:
    samples = result["samples"]
    assert isinstance(samples, list)
    assert [s["sim_day"] for s in samples] == [k / 8 for k in range(9)]
    for s in samples:
        for name in ("cloud", "gw0", "gw1", "harness"):
            assert s["rss_mb"][name] > 10, (name, s)
            assert 0 < s["anon_mb"][name] <= s["rss_mb"][name], (name, s)
        assert s["loop_backlog"] >= 0 and s["notify_pending"] >= 0 and s["open_incidents"] >= 0
    sent = [s["frames_sent"] for s in samples]
    stored = [s["readings_stored"] for s in samples]
    assert sent == sorted(sent) and stored == sorted(stored)
    assert samples[-1]["frames_sent"] > samples[1]["frames_sent"] > 0
    assert samples[-1]["timeseries_mb"] > samples[0]["timeseries_mb"]
    final = result["final"]
    assert isinstance(final, dict)
    assert final["readings_stored"] == result["ledger"]["frames_sent"]  # type: ignore[index]
    assert final["outbox_depth"] == 0 and final["gateway_queue"] == 0 and final["loop_backlog"] == 0


def test_memory_and_queues_are_measured(result: dict[str, object]) -> None:
    memory = result["memory"]
    queues = result["queues"]
    assert isinstance(memory, dict) and isinstance(queues, dict)
    assert set(memory) == {"cloud", "gw0", "gw1"}
    for m in memory.values():
        assert m["judged"] is False  # one simulated day: measured, not judged
        assert m["rss_end_mb"] > 0 and m["bound_mb_per_day"] >= 1.0
    assert set(queues) == {"outbox_depth", "gateway_queue", "loop_backlog", "notify_pending"}
    for q in queues.values():
        assert len(q["period_end_values"]) == 4  # quarter days
