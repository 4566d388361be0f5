"""The scorer on hand-made cases: every rule of docs/simulators.md pinned by a case checkable by hand.

No public test vectors exist for this scorer; the cases below are constructed here, with the expected
numbers worked out in the comments.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.contract import AlertEvent
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind
from simulators.scorer import score
from simulators.truth import TruthRecord, load_truth, write_truth

T0 = 1_780_272_000.0
DAY = 86400.0
A = "00000000000000a1"
B = "00000000000000b2"
C = "00000000000000c3"


def truth(
    dev: str,
    et: EventType,
    start: float,
    end: float,
    sev: Severity = Severity.HIGH,
    kind: DeviceKind = DeviceKind.WRISTBAND,
) -> TruthRecord:
    return TruthRecord(dev, kind, et, T0 + start, T0 + end, sev)


def alert(
    dev: str,
    et: EventType,
    t: float,
    phase: AlertPhase = AlertPhase.RAISED,
    sev: Severity = Severity.HIGH,
    kind: DeviceKind = DeviceKind.WRISTBAND,
    episode: float | None = None,
) -> AlertEvent:
    ep = int((T0 + (t if episode is None else episode)) * 1000)
    return AlertEvent(
        alert_id=alert_id(dev, et, ep),
        device_id=dev,
        kind=kind,
        event_type=et,
        severity=sev,
        phase=phase,
        episode_ms=ep,
        time=T0 + t,
        frame_time=T0 + t,
    )


FALLS = [truth(A, EventType.FALL, 100, 1000), truth(B, EventType.FALL, 5000, 6000)]


def test_perfect_detector() -> None:
    rep = score(
        FALLS, [alert(A, EventType.FALL, 110), alert(B, EventType.FALL, 5030)], devices=10, duration_s=DAY
    )
    r = rep.row(EventType.FALL)
    assert (r.events, r.detected, r.alerts, r.false_alarms, r.duplicates) == (2, 2, 2, 0, 0)
    assert r.recall == 1.0 and r.precision == 1.0
    assert r.false_alarms_per_1000_device_days == 0.0
    # delays 10 s and 30 s: median 20, p95 = 10 + 0.95 * 20 = 29 (linear interpolation)
    assert r.delay_p50_s == pytest.approx(20.0)
    assert r.delay_p95_s == pytest.approx(29.0)
    assert rep.overall.recall == 1.0 and rep.missed == []


def test_missed_event() -> None:
    rep = score(FALLS, [alert(A, EventType.FALL, 110)], devices=10, duration_s=DAY)
    r = rep.row(EventType.FALL)
    assert (r.detected, r.recall, r.precision) == (1, 0.5, 1.0)
    assert [m["device_id"] for m in rep.missed] == [B]


def test_late_alert_is_a_miss_and_a_false_alarm() -> None:
    # B's fall ends at 6000; grace 600 -> an alert at 6601 is too late
    rep = score(
        FALLS, [alert(A, EventType.FALL, 110), alert(B, EventType.FALL, 6601)], devices=10, duration_s=DAY
    )
    r = rep.row(EventType.FALL)
    assert (r.detected, r.false_alarms, r.recall, r.precision) == (1, 1, 0.5, 0.5)
    assert rep.false_alarms_by_cause == {"unexplained": 1}
    # inside the grace it counts, with its delay measured from the start
    rep = score(FALLS, [alert(B, EventType.FALL, 6599)], devices=10, duration_s=DAY)
    assert rep.row(EventType.FALL).delays == [pytest.approx(1599.0)]


def test_tolerance_before_start() -> None:
    rep = score(FALLS, [alert(A, EventType.FALL, 41)], devices=10, duration_s=DAY, tolerance_s=60)
    assert rep.row(EventType.FALL).detected == 1
    assert rep.row(EventType.FALL).delays == [pytest.approx(-59.0)]
    rep = score(FALLS, [alert(A, EventType.FALL, 39)], devices=10, duration_s=DAY, tolerance_s=60)
    assert rep.row(EventType.FALL).detected == 0 and rep.row(EventType.FALL).false_alarms == 1


def test_double_alert_in_one_episode_is_a_duplicate() -> None:
    alerts = [alert(A, EventType.FALL, 110), alert(A, EventType.FALL, 400), alert(B, EventType.FALL, 5010)]
    r = score(FALLS, alerts, devices=10, duration_s=DAY).row(EventType.FALL)
    assert (r.detected, r.alerts, r.matched_alerts, r.duplicates, r.false_alarms) == (2, 3, 2, 1, 0)
    assert r.precision == pytest.approx(2 / 3)
    assert r.delays == [pytest.approx(10.0), pytest.approx(10.0)]  # the first alert's delay, not the second's


def test_nuisance_paging_is_attributed() -> None:
    cook = TruthRecord(
        C, DeviceKind.SMOKE_ALARM, EventType.NUISANCE_COOKING, T0 + 100, T0 + 1900, Severity.NONE
    )
    fire = TruthRecord(A, DeviceKind.SMOKE_ALARM, EventType.FIRE, T0 + 100, T0 + 900, Severity.HIGH)
    alerts = [
        alert(C, EventType.FIRE, 700, kind=DeviceKind.SMOKE_ALARM),
        alert(A, EventType.FIRE, 130, kind=DeviceKind.SMOKE_ALARM),
    ]
    rep = score(
        [cook, fire],
        alerts,
        devices={DeviceKind.SMOKE_ALARM: 100, DeviceKind.WRISTBAND: 900},
        duration_s=2 * DAY,
    )
    r = rep.row(EventType.FIRE)
    assert (r.events, r.detected, r.false_alarms) == (1, 1, 1)
    assert rep.false_alarms_by_cause == {"nuisance_cooking": 1}
    # per kind: 1 false alarm / (100 smoke alarms x 2 days) x 1000 = 5 per 1,000 device-days
    assert r.false_alarms_per_1000_device_days == pytest.approx(5.0)
    # overall uses every device: 1 / (1000 x 2) x 1000 = 0.5
    assert rep.overall.false_alarms_per_1000_device_days == pytest.approx(0.5)
    # nuisances are not events: there is no recall row for nuisance_cooking
    assert all(row.event_type != "nuisance_cooking" for row in rep.rows)


def test_recovered_fall_is_must_not_alert() -> None:
    up_again = truth(A, EventType.FALL, 100, 115, Severity.NONE)
    rep = score([up_again], [alert(A, EventType.FALL, 120)], devices=1, duration_s=DAY)
    r = rep.row(EventType.FALL)
    assert (r.events, r.recall, r.false_alarms, r.precision) == (0, None, 1, 0.0)
    assert rep.false_alarms_by_cause == {"fall (no alarm expected)": 1}


def test_alert_on_wrong_device_or_type() -> None:
    alerts = [alert(C, EventType.FALL, 110), alert(A, EventType.SOS, 110)]
    rep = score(FALLS, alerts, devices=10, duration_s=DAY)
    assert rep.row(EventType.FALL).detected == 0 and rep.row(EventType.FALL).false_alarms == 1
    assert rep.row(EventType.SOS).false_alarms == 1 and rep.row(EventType.SOS).events == 0
    assert rep.overall.recall == 0.0 and rep.overall.false_alarms == 2


def test_one_count_per_episode_and_severity_mismatch_is_reported() -> None:
    alerts = [
        alert(A, EventType.FALL, 110, sev=Severity.MEDIUM),
        alert(A, EventType.FALL, 400, AlertPhase.UPDATED, episode=110),
        alert(A, EventType.FALL, 900, AlertPhase.CLEARED, episode=110),
        alert(A, EventType.FALL, 110, sev=Severity.MEDIUM),  # the same raised step journaled twice
    ]
    r = score(FALLS, alerts, devices=10, duration_s=DAY).row(EventType.FALL)
    assert (r.alerts, r.detected, r.duplicates, r.severity_mismatches) == (1, 1, 0, 1)
    assert r.delays == [pytest.approx(10.0)]


def test_episode_without_its_raised_step_counts_at_its_earliest_step() -> None:
    # a pruned outbox / a current-state API view: only later steps of B's episode are present
    alerts = [
        alert(B, EventType.FALL, 5900, AlertPhase.CLEARED, episode=5020),
        alert(B, EventType.FALL, 5300, AlertPhase.UPDATED, episode=5020),
    ]
    r = score(FALLS, alerts, devices=10, duration_s=DAY).row(EventType.FALL)
    assert (r.alerts, r.detected) == (1, 1) and r.delays == pytest.approx([300.0])


def test_first_match_takes_the_earliest_open_episode() -> None:
    # two overlapping windows on one device: one alert detects only the first; a second alert the second
    two = [truth(A, EventType.SOS, 100, 200), truth(A, EventType.SOS, 250, 400)]
    r = score(two, [alert(A, EventType.SOS, 260)], devices=1, duration_s=DAY).row(EventType.SOS)
    assert r.detected == 1 and r.delays == pytest.approx([160.0])
    r = score(
        two, [alert(A, EventType.SOS, 260), alert(A, EventType.SOS, 270)], devices=1, duration_s=DAY
    ).row(EventType.SOS)
    assert (r.detected, r.duplicates) == (2, 0)


def test_outputs_table_and_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rep = score(FALLS, [alert(A, EventType.FALL, 110)], devices=10, duration_s=DAY)
    table = rep.format_table()
    assert "fall" in table and "50.0%" in table and "overall" in table
    data = json.loads(rep.to_json())
    assert data["overall"]["recall"] == 0.5
    assert data["per_event_type"][0]["event_type"] == "fall"


def test_truth_roundtrip_and_bad_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "truth.jsonl"
    write_truth(FALLS, p)
    assert load_truth(p) == sorted(FALLS, key=lambda r: r.start)
    p.write_text(p.read_text() + '{"device_id": "x", "kind": "wristband"}\n')
    from simulators.errors import TruthFormatError

    with pytest.raises(TruthFormatError, match=r"truth.jsonl:3"):
        load_truth(p)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        score(FALLS, [], devices=1, duration_s=0)


# -- invariants on random cases ---------------------------------------------------------------------------

DEVS = [A, B, C]
TYPES = [EventType.FALL, EventType.SOS, EventType.NUISANCE_TEST]


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[TruthRecord], list[AlertEvent]]:
    truths = []
    for _ in range(draw(st.integers(0, 8))):
        et = draw(st.sampled_from(TYPES))
        s = draw(st.floats(0, 20_000))
        sev = Severity.NONE if et.is_nuisance else draw(st.sampled_from([Severity.HIGH, Severity.NONE]))
        truths.append(truth(draw(st.sampled_from(DEVS)), et, s, s + draw(st.floats(0, 3000)), sev))
    alerts = [
        alert(
            draw(st.sampled_from(DEVS)),
            draw(st.sampled_from(TYPES[:2])),
            draw(st.floats(0, 25_000)),
            draw(st.sampled_from(list(AlertPhase))),
        )
        for _ in range(draw(st.integers(0, 12)))
    ]
    return truths, alerts


@settings(max_examples=200)
@given(cases())
def test_scorer_invariants(case: tuple[list[TruthRecord], list[AlertEvent]]) -> None:
    truths, alerts = case
    rep = score(truths, alerts, devices=3, duration_s=DAY)
    o = rep.overall
    assert o.alerts == len({a.alert_id for a in alerts})  # one per episode, whatever the phases
    assert o.matched_alerts + o.duplicates + o.false_alarms == o.alerts
    assert o.detected == o.matched_alerts <= o.events
    assert o.events == sum(1 for t in truths if not t.must_not_alert)
    assert len(rep.missed) == o.events - o.detected
    assert sum(rep.false_alarms_by_cause.values()) == o.false_alarms
    for r in [*rep.rows, o]:
        assert r.recall is None or 0.0 <= r.recall <= 1.0
        assert r.precision is None or 0.0 <= r.precision <= 1.0
        assert all(d >= -rep.tolerance_s for d in r.delays)
    # order of the alert list never changes the result
    again = score(truths, list(reversed(alerts)), devices=3, duration_s=DAY)
    assert again.to_dict() == rep.to_dict()
    # one alert at each positive event's start detects all of them
    perfect = [  # distinct episodes even for identical truth records (episode ids differ by 1 ms)
        alert(t.device_id, t.event_type, t.start - T0, episode=t.start - T0 + i / 1000)
        for i, t in enumerate(truths)
        if not t.must_not_alert
    ]
    assert score(truths, perfect, devices=3, duration_s=DAY).overall.detected == o.events
