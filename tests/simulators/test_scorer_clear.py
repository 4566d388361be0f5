"""Clear delay in the scorer (alert cleared - truth end) on hand-made truth and alerts.

No public test vectors exist for this scorer; every case below is constructed here and its expected
numbers are worked out by hand in the comments (docs/simulators.md "Scorer semantics").
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings

from firmware_bridge.kernel.events import AlertPhase, EventType
from simulators.scorer import score
from tests.simulators.test_scorer import DAY, A, B, C, alert, cases, truth

CL = AlertPhase.CLEARED
F, G = EventType.FALL, EventType.GEOFENCE_EXIT


def test_clear_delay_is_cleared_time_minus_truth_end() -> None:
    t = [truth(A, G, 100, 1000), truth(B, G, 5000, 6000), truth(C, G, 9000, 9500)]
    alerts = [
        alert(A, G, 110),
        alert(A, G, 1300, CL, episode=110),  # 300 s after the end
        alert(B, G, 5030),
        alert(B, G, 5900, CL, episode=5030),  # 100 s before the end: -100
        alert(C, G, 9010),
        alert(C, G, 9500 + 3601, CL, episode=9010),  # 3601 s: over an hour
    ]
    r = score(t, alerts, devices=3, duration_s=DAY).row(G)
    assert r.clear_delays == pytest.approx([300.0, -100.0, 3601.0])
    assert (r.cleared, r.not_cleared, r.clears_over_1h) == (3, 0, 1)
    # sorted -100, 300, 3601: median 300; p95 = 300 + 0.9 * 3301 = 3270.9 (linear interpolation)
    assert r.clear_delay_p50_s == pytest.approx(300.0)
    assert r.clear_delay_p95_s == pytest.approx(3270.9)


def test_exactly_one_hour_is_not_over_an_hour() -> None:
    alerts = [alert(A, G, 110), alert(A, G, 1000 + 3600, CL, episode=110)]
    r = score([truth(A, G, 100, 1000)], alerts, devices=1, duration_s=DAY).row(G)
    assert (r.cleared, r.clears_over_1h) == (1, 0)


def test_alert_without_a_cleared_step_is_open() -> None:
    alerts = [alert(A, G, 110), alert(A, G, 400, AlertPhase.UPDATED, episode=110)]
    r = score([truth(A, G, 100, 1000)], alerts, devices=1, duration_s=DAY).row(G)
    assert (r.detected, r.cleared, r.not_cleared) == (1, 0, 1)
    assert r.clear_delay_p50_s is None and r.clear_delay_p95_s is None and r.clears_over_1h == 0


def test_a_re_raised_alert_counts_its_last_episode() -> None:
    # cleared early at 300, raised again at 400 (a duplicate in the window) and cleared at 1500:
    # the operator saw it open until 1500, 500 s after the end (not 300 - 1000 = -700)
    alerts = [
        alert(A, G, 110),
        alert(A, G, 300, CL, episode=110),
        alert(A, G, 400),
        alert(A, G, 1500, CL, episode=400),
    ]
    r = score([truth(A, G, 100, 1000)], alerts, devices=1, duration_s=DAY).row(G)
    assert (r.detected, r.duplicates) == (1, 1)
    assert r.clear_delays == pytest.approx([500.0])
    # and when the second episode never cleared, the event's alert is still open
    r = score([truth(A, G, 100, 1000)], alerts[:3], devices=1, duration_s=DAY).row(G)
    assert (r.cleared, r.not_cleared) == (0, 1)


def test_earliest_cleared_step_and_input_order() -> None:
    alerts = [
        alert(A, G, 1700, CL, episode=110),  # the same clear journaled twice: the earliest counts
        alert(A, G, 1200, CL, episode=110),
        alert(A, G, 110),
    ]
    r = score([truth(A, G, 100, 1000)], alerts, devices=1, duration_s=DAY).row(G)
    assert r.clear_delays == pytest.approx([200.0])
    # a generator (consumed once) and AlertEvent JSON dicts give the same report
    gen = score([truth(A, G, 100, 1000)], (a.model_dump() for a in alerts), devices=1, duration_s=DAY)
    assert gen.to_dict() == score([truth(A, G, 100, 1000)], alerts, devices=1, duration_s=DAY).to_dict()


def test_false_alarms_and_misses_have_no_clear_delay() -> None:
    t = [truth(A, G, 100, 1000), truth(B, G, 100, 1000)]
    alerts = [
        alert(A, G, 5000),  # a false alarm (outside the window), cleared
        alert(A, G, 5600, CL, episode=5000),
        alert(C, G, 200),  # a device with no event
        alert(C, G, 800, CL, episode=200),
    ]
    r = score(t, alerts, devices=3, duration_s=DAY).row(G)
    assert (r.detected, r.false_alarms, r.cleared, r.not_cleared) == (0, 2, 0, 0)
    assert r.clear_delays == []


def test_per_type_rows_overall_json_and_table() -> None:
    t = [truth(A, G, 100, 1000), truth(B, F, 100, 200)]
    alerts = [
        alert(A, G, 110),
        alert(A, G, 1900, CL, episode=110),  # geofence +900
        alert(B, F, 130),
        alert(B, F, 260, CL, episode=130),  # fall +60
        alert(C, F, 100),  # a fall alert on a device with no fall: false alarm, open
    ]
    rep = score(t, alerts, devices=3, duration_s=DAY)
    assert rep.row(G).clear_delays == pytest.approx([900.0])
    assert rep.row(F).clear_delays == pytest.approx([60.0])
    o = rep.overall
    assert (o.cleared, o.not_cleared) == (2, 0)
    assert o.clear_delay_p50_s == pytest.approx(480.0)  # (60 + 900) / 2
    data = json.loads(rep.to_json())
    g = next(r for r in data["per_event_type"] if r["event_type"] == "geofence_exit")
    assert g["clear_delay_p50_s"] == pytest.approx(900.0) and g["cleared"] == 1
    assert g["clears_over_1h"] == 0 and g["not_cleared"] == 0
    assert "clear_delays" not in g and data["overall"]["clear_delay_p95_s"] == pytest.approx(858.0)
    table = rep.format_table()
    assert "clear delay" in table
    line = next(x for x in table.splitlines() if x.startswith("geofence_exit") and "900.0" in x)
    # cleared, open, clear-censored (no end given: none), p50, p95, over 1 h
    assert line.split() == ["geofence_exit", "1", "0", "0", "900.0", "900.0", "0"]


def test_no_clear_block_without_detections() -> None:
    assert "clear delay" not in score([truth(A, G, 100, 1000)], [], devices=1, duration_s=DAY).format_table()


@settings(max_examples=200)
@given(cases())
def test_every_detected_event_is_cleared_or_open(case) -> None:  # type: ignore[no-untyped-def]
    truths, alerts = case
    rep = score(truths, alerts, devices=3, duration_s=DAY)
    for r in [*rep.rows, rep.overall]:
        assert r.cleared + r.not_cleared == r.detected and r.clear_censored == 0  # no end: no censoring
        assert r.cleared == len(r.clear_delays) and 0 <= r.clears_over_1h <= r.cleared
        assert (r.clear_delay_p50_s is None) == (r.cleared == 0)
