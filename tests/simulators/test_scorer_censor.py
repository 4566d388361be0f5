"""Censoring at the end of the data in the scorer, on hand-made truth and alerts.

No public test vectors exist for this scorer; every case is constructed here and its expected figures are
worked out by hand in the comments (docs/simulators.md "Scorer semantics", censoring).
"""

from __future__ import annotations

import json

from hypothesis import given, settings

from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from simulators.scorer import DEFAULT_HORIZON_S, DETECTION_HORIZON_S, LATE_CLEAR_S, score
from tests.simulators.test_scorer import DAY, T0, A, B, C, alert, cases, truth

CL = AlertPhase.CLEARED
F, G, INACT = EventType.FALL, EventType.GEOFENCE_EXIT, EventType.INACTIVITY
M = DeviceKind.MANHOLE
OV = EventType.OVERFLOW
END = T0 + DAY  # the data ends one day after T0 in these cases


def test_a_miss_that_started_inside_the_horizon_is_censored_not_missed() -> None:
    h = DETECTION_HORIZON_S[OV]  # 1200 s
    t = [
        truth(A, OV, 1000, 9000, kind=M),  # detected
        truth(B, OV, 2000, 9000, kind=M),  # missed, long before the end: a real miss
        truth(C, OV, DAY - h + 1, DAY, kind=M),  # starts 1199 s before the end, not detected: censored
    ]
    rep = score(t, [alert(A, OV, 1100, kind=M)], devices=3, duration_s=DAY, end=END)
    r = rep.row(OV)
    assert (r.events, r.detected, r.recall, r.censored, r.censored_detected) == (2, 1, 0.5, 1, 0)
    assert [m["device_id"] for m in rep.missed] == [B]
    assert [(c["device_id"], c["detected"]) for c in rep.censored] == [(C, False)]
    # without the end of the data nothing is censored: the same event is a miss (recall 1/3)
    r0 = score(t, [alert(A, OV, 1100, kind=M)], devices=3, duration_s=DAY).row(OV)
    assert (r0.events, r0.detected, r0.censored) == (3, 1, 0)


def test_the_horizon_boundary_is_strict() -> None:
    h = DETECTION_HORIZON_S[OV]
    on = truth(A, OV, DAY - h, DAY, kind=M)  # exactly the horizon before the end: scored (a miss)
    r = score([on], [], devices=1, duration_s=DAY, end=END).row(OV)
    assert (r.events, r.censored) == (1, 0)


def test_a_censored_event_that_was_detected_anyway_is_left_out_of_recall_but_its_alert_matches() -> None:
    # inactivity has a 9000 s horizon (2 h of stillness + 30 min): one at DAY - 8000 is censored even though
    # the detector paged it; counting only detected censored events would flatter recall
    t = [truth(A, INACT, DAY - 8000, DAY), truth(B, INACT, 1000, 10000)]
    alerts = [alert(A, INACT, DAY - 800), alert(B, INACT, 8300)]
    rep = score(t, alerts, devices=2, duration_s=DAY, end=END)
    r = rep.row(INACT)
    assert (r.events, r.detected, r.censored, r.censored_detected) == (1, 1, 1, 1)
    assert (r.alerts, r.matched_alerts, r.false_alarms, r.precision) == (2, 2, 0, 1.0)
    assert r.delays == [7300.0]  # only the scored one (8300 - 1000)
    assert [(c["device_id"], c["detected"]) for c in rep.censored] == [(A, True)]


def test_horizons_are_per_type_and_overridable() -> None:
    # a fall (default horizon, 600 s) and an inactivity (9000 s), both starting 1000 s before the end
    t = [truth(A, F, DAY - 1000, DAY - 900), truth(B, INACT, DAY - 1000, DAY)]
    rep = score(t, [], devices=2, duration_s=DAY, end=END)
    assert F not in DETECTION_HORIZON_S and DEFAULT_HORIZON_S == 600.0
    assert (rep.row(F).events, rep.row(F).censored) == (1, 0)  # 1000 > 600: a miss
    assert (rep.row(INACT).events, rep.row(INACT).censored) == (0, 1)
    rep2 = score(t, [], devices=2, duration_s=DAY, end=END, horizons={F: 1500.0})
    assert (rep2.row(F).events, rep2.row(F).censored) == (0, 1)


def test_must_not_alert_records_are_never_censored() -> None:
    up = truth(A, EventType.NUISANCE_TRAFFIC, DAY - 10, DAY - 9, kind=M)
    rep = score([up], [], devices=1, duration_s=DAY, end=END)
    assert rep.overall.censored == 0 and rep.censored == []


def test_an_alert_still_open_for_an_event_that_just_ended_is_clear_censored_not_open() -> None:
    t = [
        truth(A, G, 1000, 5000),  # ended long before the end, alert never cleared: open (a real failure)
        truth(B, G, 1000, DAY - LATE_CLEAR_S + 1),  # ended 3599 s before the end: could still clear late
        truth(C, G, 1000, DAY),  # still going on at the end of the data (the truth is clipped there)
    ]
    alerts = [alert(A, G, 1100), alert(B, G, 1100), alert(C, G, 1100)]
    r = score(t, alerts, devices=3, duration_s=DAY, end=END).row(G)
    assert (r.detected, r.cleared, r.not_cleared, r.clear_censored) == (3, 0, 1, 2)
    # a cleared one is a clear delay wherever it ended
    cleared = [alert(C, G, 1100), alert(C, G, DAY - 10, CL, episode=1100)]
    r2 = score([truth(C, G, 1000, DAY - 100)], cleared, devices=1, duration_s=DAY, end=END).row(G)
    assert (r2.cleared, r2.clear_censored, r2.clear_delays) == (1, 0, [90.0])


def test_report_json_and_table_show_censoring() -> None:
    t = [truth(A, OV, DAY - 60, DAY, kind=M)]
    rep = score(t, [], devices=1, duration_s=DAY, end=END)
    d = json.loads(rep.to_json())
    assert d["end"] == END and d["horizons_s"]["overflow"] == DETECTION_HORIZON_S[OV]
    assert d["horizons_s"]["*"] == DEFAULT_HORIZON_S
    assert d["overall"]["censored"] == 1 and d["missed"] == [] and len(d["censored"]) == 1
    line = next(x for x in rep.format_table().splitlines() if x.startswith("overflow"))
    assert line.split()[1:4] == ["0", "0", "-"] and line.split()[-1] == "1"  # no events, 1 censored


@settings(max_examples=200)
@given(cases())
def test_censoring_partitions_the_positive_events(case) -> None:  # type: ignore[no-untyped-def]
    truths, alerts = case
    end = max([t.end for t in truths], default=T0) + 300.0
    plain = score(truths, alerts, devices=3, duration_s=DAY)
    cens = score(truths, alerts, devices=3, duration_s=DAY, end=end)
    assert cens.overall.events + cens.overall.censored == plain.overall.events
    assert cens.overall.detected + cens.overall.censored_detected == plain.overall.detected
    assert len(cens.missed) + sum(not c["detected"] for c in cens.censored) == len(plain.missed)
    # matching does not depend on censoring: alerts, matched alerts, duplicates and false alarms are equal
    for name in ("alerts", "matched_alerts", "duplicates", "false_alarms"):
        assert getattr(cens.overall, name) == getattr(plain.overall, name)
    for r in [*cens.rows, cens.overall]:
        assert r.cleared + r.not_cleared + r.clear_censored == r.detected


def test_devices_judged_silent_after_the_end_of_the_data_are_not_scored() -> None:
    """``vigil demo`` keeps its gateway running after the simulation: it judges the devices silent once they
    stop, and ``vigil score`` on its outbox (the demo's own "re-score" hint) counted 80 unexplained false
    alarms the demo's score did not. A silence raised after the end is not scored and is said so; one
    raised before it still counts (hand-worked: 1 false alarm, 2 left out)."""
    S = EventType.DEVICE_SILENT
    alerts = [alert(A, S, DAY - 100), alert(B, S, DAY + 1), alert(C, S, DAY + 600)]
    rep = score([], alerts, devices=3, duration_s=DAY, end=END)
    r = rep.row(S)
    assert (r.alerts, r.false_alarms) == (1, 1)
    assert rep.silent_after_end == 2
    assert "not scored: 2 device-silent alerts raised after the end of the data" in rep.format_table()
    # other alert types after the end are scored as before, and without an end nothing is left out
    assert score([], [alert(A, F, DAY + 1)], devices=1, duration_s=DAY, end=END).row(F).false_alarms == 1
    assert score([], alerts, devices=3, duration_s=DAY).row(S).false_alarms == 3
