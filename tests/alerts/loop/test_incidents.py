"""From signals to incidents: dedup, grouping, open-after-N, inhibition, silences and risk grading."""

from __future__ import annotations

from dataclasses import replace

import pytest

from alerts.loop.incidents import (
    Context,
    GroupingConfig,
    GroupRule,
    Matcher,
    Signal,
    Silence,
    Source,
    Verdict,
    decide,
    default_grouping,
    grade,
    group_key,
    matcher_from_dict,
    rule_for,
)
from firmware_bridge.kernel.events import Severity

T0 = 1_790_000_000.0
CFG = default_grouping()


def sig(**kw: object) -> Signal:
    base: dict[str, object] = dict(
        alert_id="70B3D57ED0000001/cover_open/1790000000000",
        source=Source.GATEWAY,
        kind="manhole",
        event="cover_open",
        severity=Severity.HIGH,
        phase="raised",
        time=T0,
        device_id="70B3D57ED0000001",
        gateway_id="gw1",
        grid="G01",
        street="中关村大街",
        on_road=True,
    )
    base.update(kw)
    return Signal(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        (sig(event="cover_displaced", severity=Severity.MEDIUM, on_road=True), Severity.HIGH),
        (sig(event="cover_displaced", severity=Severity.LOW, on_road=False), Severity.MEDIUM),
        (
            sig(kind="wristband", event="heart_rate_high", severity=Severity.MEDIUM, lives_alone=True),
            Severity.HIGH,
        ),
        (sig(kind="wristband", event="heart_rate_high", severity=Severity.MEDIUM), Severity.MEDIUM),
        (sig(event="low_battery", severity=Severity.LOW, on_road=True), Severity.LOW),
    ],
)
def test_risk_grade_from_event_and_context(s: Signal, expected: Severity) -> None:
    assert grade(s) is expected


def test_new_alert_opens_and_its_later_steps_attach() -> None:
    d = decide(sig(), CFG, Context())
    assert d.verdict is Verdict.OPEN and d.rule == "per_device"
    assert decide(sig(phase="cleared"), CFG, Context(linked_incident=4)).incident_id == 4
    assert decide(sig(phase="cleared"), CFG, Context()).verdict is Verdict.IGNORE


def test_grouping_smoke_alarms_in_one_stairwell_and_flooded_street() -> None:
    a = sig(kind="smoke_alarm", event="fire", device_id="s1", alert_id="s1/fire/1", grid="B3")
    b = replace(a, device_id="s2", alert_id="s2/fire/1")
    assert decide(a, CFG, Context()).key == decide(b, CFG, Context()).key
    assert decide(b, CFG, Context(open_incident=11)).incident_id == 11
    w1 = sig(event="overflow", severity=Severity.MEDIUM, device_id="m1", grid="G01")
    w2 = replace(w1, device_id="m9", grid="G07")
    assert decide(w1, CFG, Context()).key == decide(w2, CFG, Context()).key  # same street, other grid


def test_flapping_episodes_join_the_open_incident() -> None:
    again = sig(alert_id="70B3D57ED0000001/cover_open/1790000600000", time=T0 + 600)
    d = decide(again, CFG, Context(open_incident=5))
    assert d.verdict is Verdict.ATTACH and d.incident_id == 5


def test_open_only_after_n_alerts() -> None:
    cfg = GroupingConfig(
        rules=(GroupRule("batt", Matcher({"event": frozenset({"low_battery"})}), ("grid",), 3600, 3),)
    )
    s = sig(event="low_battery", severity=Severity.LOW)
    assert decide(s, cfg, Context(recent_in_group=0)).verdict is Verdict.PENDING
    assert "2 of 3" in decide(s, cfg, Context(recent_in_group=1)).reason
    assert decide(s, cfg, Context(recent_in_group=2)).verdict is Verdict.OPEN


def test_inhibition() -> None:
    silent = sig(event="device_silent", severity=Severity.LOW)
    offline = {"event": "gateway_offline", "gateway_id": "gw1"}
    d = decide(silent, CFG, Context(active=[offline]))
    assert d.verdict is Verdict.INHIBITED and "gateway_offline" in d.reason
    assert decide(silent, CFG, Context(active=[{**offline, "gateway_id": "gw2"}])).verdict is Verdict.OPEN
    displaced = sig(event="cover_displaced")
    assert (
        decide(
            displaced, CFG, Context(active=[{"event": "cover_open", "device_id": "70B3D57ED0000001"}])
        ).verdict
        is Verdict.INHIBITED
    )


def test_silence_with_expiry_creator_and_reason() -> None:
    roadworks = Silence(
        1, matcher_from_dict({"street": "中关村大街"}, "s"), T0 - 10, T0 + 3600, "admin", "roadworks"
    )
    d = decide(sig(), CFG, Context(silences=[roadworks]))
    assert d.verdict is Verdict.SILENCED and d.silence_id == 1 and d.reason == "roadworks"
    assert decide(sig(time=T0 + 3600), CFG, Context(silences=[roadworks])).verdict is Verdict.OPEN


def test_group_keys_are_stable_text() -> None:
    labels = sig().labels()
    assert (
        group_key(rule_for(CFG, labels), labels) == "per_device|device_id=70B3D57ED0000001|event=cover_open"
    )
