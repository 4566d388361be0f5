"""The "I'm OK" key (flag bit 8, firmware >= 1.7) in the simulated wristband fleet (docs/simulators.md
"I'm OK"): a share of bands on 1.7, cancelled falls (``fall_ok``), presses after a paged fall and after a
recovered fall; old firmware never sends the bit; the detection engine pages no cancelled fall and clears
a paged fall at the press. Read from the encoded uplinks (flags at bytes 4-5, fw at 7-8)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from alerts.detection.engine import DetectionEngine
from edge.offline import run_fleet
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind as K
from simulators.config import Scenarios
from simulators.fleet import Fleet
from simulators.wristband import FW_OK, FW_OLD

T0 = 1_780_243_200.0  # 2026-06-01 00:00 local (UTC+8)
DUR = 2 * 86400.0
OK, HB = 0x0100, 0x0040
RATES = {K.WRISTBAND: {"fw_1_7": 0.5, "fall_ok": 0.3, "fall": 0.2, "fall_recovered": 0.3, "sos": 0.1}}

Up = tuple[float, int, int, int]  # time, flags, fw, steps


def _sim(rates: dict[K, dict[str, float]], seed: int = 3) -> tuple[Fleet, dict[str, list[Up]]]:
    fleet = Fleet.build({K.WRISTBAND: 60}, seed=seed, rates=rates)
    ups: dict[str, list[Up]] = defaultdict(list)
    for fr in fleet.run(T0, DUR):
        p = fr.payload
        ups[fr.device_id].append(
            (
                fr.time,
                int.from_bytes(p[4:6], "big"),
                int.from_bytes(p[7:9], "big"),
                int.from_bytes(p[16:18], "big"),
            )
        )
    return fleet, ups


@pytest.fixture(scope="module")
def sim() -> tuple[Fleet, dict[str, list[Up]]]:
    return _sim(RATES)


def test_a_share_of_bands_runs_17_and_the_rest_keep_their_version(
    sim: tuple[Fleet, dict[str, list[Up]]],
) -> None:
    _, ups = sim
    fw = {d: {u[2] for u in us} for d, us in ups.items()}
    assert all(len(v) == 1 for v in fw.values())
    n17 = sum(v == {FW_OK} for v in fw.values())
    assert 15 <= n17 <= 45 and all(v in ({FW_OK}, {FW_OLD}) for v in fw.values())


def test_a_cancelled_fall_sends_exactly_one_ok_event_uplink(sim: tuple[Fleet, dict[str, list[Up]]]) -> None:
    fleet, ups = sim
    cancelled = [
        t for t in fleet.truth if t.event_type is EventType.FALL and t.severity is Severity.NONE and t.ok_at
    ]
    cancelled = [t for t in cancelled if t.ok_at is not None and t.ok_at - t.start < 30.0]
    assert len(cancelled) >= 5
    for t in cancelled:
        assert t.ok_at is not None
        mine = [u for u in ups[t.device_id] if t.start <= u[0] <= t.end + 600.0]
        oks = [u for u in mine if u[1] & OK]
        assert len(oks) == 1, (t, mine)
        time, flags, fw, _ = oks[0]
        assert fw == FW_OK and not flags & HB and t.ok_at <= time <= t.ok_at + 0.5
        assert time - t.start < 30.0  # inside the band's cancel window


def test_old_firmware_never_sends_the_bit_and_has_no_cancelled_falls(
    sim: tuple[Fleet, dict[str, list[Up]]],
) -> None:
    fleet, ups = sim
    old = {d for d, us in ups.items() if us[0][2] == FW_OLD}
    assert old and not any(u[1] & OK for d in old for u in ups[d])
    assert not any(t.ok_at is not None for t in fleet.truth if t.device_id in old)
    falls_old = [t for t in fleet.truth if t.device_id in old and t.event_type is EventType.FALL]
    assert falls_old  # old bands do fall: they just have no key


def test_ok_after_a_recovered_fall_comes_before_the_first_steps(
    sim: tuple[Fleet, dict[str, list[Up]]],
) -> None:
    fleet, ups = sim
    seated = [t for t in fleet.truth if t.ok_at is not None and t.ok_at > t.end and t.end - t.start <= 25.0]
    assert seated
    for t in seated:
        mine = [u for u in ups[t.device_id] if t.end <= u[0] <= t.end + 600.0]
        assert mine[0][1] & OK and mine[0][3] == 0  # pressed seated: no steps yet
        assert mine[1][3] >= 3 and not mine[1][1] & OK  # then the first steps, bit not repeated


def test_share_zero_is_the_default_and_sends_no_ok() -> None:
    fleet, ups = _sim({K.WRISTBAND: {"fall": 0.3, "fall_recovered": 0.3, "fall_ok": 1.0}})
    assert all(u[2] == FW_OLD and not u[1] & OK for us in ups.values() for u in us)
    assert not any(t.ok_at is not None for t in fleet.truth)


def test_config_accepts_the_settings_and_refuses_a_typo() -> None:
    Scenarios(wristband={"fw_1_7": 0.2, "ok_press": 0.5})
    with pytest.raises(ValueError, match="unknown effect"):
        Scenarios(wristband={"fw_17": 0.2})


def test_the_engine_pages_no_cancelled_fall_and_clears_a_paged_fall_at_the_press() -> None:
    fleet = Fleet.build({K.WRISTBAND: 60}, seed=5, rates=RATES)
    run = run_fleet(fleet, T0, DUR, DetectionEngine())
    falls = [a for a in run.alerts if a.event_type is EventType.FALL]
    raised = [a for a in falls if a.phase is AlertPhase.RAISED]
    cancelled = [t for t in fleet.truth if t.ok_at is not None and t.severity is Severity.NONE]
    assert cancelled
    for t in cancelled:
        assert not [
            a for a in raised if a.device_id == t.device_id and t.start - 5 <= a.time <= t.end + 600
        ], t
    paged = [t for t in fleet.truth if t.ok_at is not None and t.severity is Severity.HIGH]
    assert paged
    for t in paged:
        assert t.ok_at is not None
        mine = [a for a in raised if a.device_id == t.device_id and t.start <= a.time <= t.ok_at]
        assert mine, t
        clears = [a.time for a in falls if a.alert_id == mine[0].alert_id and a.phase is AlertPhase.CLEARED]
        assert clears and t.ok_at <= min(clears) <= t.ok_at + 1.0, (t, clears)


def test_the_scorer_counts_cancelled_falls_false_pages_and_clears_after_the_press() -> None:
    import dataclasses

    from simulators.scorer import score
    from tests.simulators.test_scorer import DAY, T0, A, B, C, alert, truth

    F, CL = EventType.FALL, AlertPhase.CLEARED
    t = [
        dataclasses.replace(truth(A, F, 100, 200, Severity.NONE), ok_at=T0 + 115),  # cancelled, not paged
        dataclasses.replace(truth(B, F, 100, 200, Severity.NONE), ok_at=T0 + 120),  # cancelled, paged
        dataclasses.replace(truth(C, F, 100, 2000), ok_at=T0 + 1900),  # real: paged, cleared 0.4 s after
        dataclasses.replace(truth(A, F, 5000, 5010, Severity.NONE), ok_at=T0 + 5010.5),  # recovered
    ]
    alerts = [alert(B, F, 131), alert(C, F, 131), alert(C, F, 1900.4, CL, episode=131)]
    rep = score(t, alerts, devices=3, duration_s=DAY)
    assert rep.ok == {
        "cancelled": 2,
        "cancelled_paged": 1,
        "false_pages_avoided": 1,
        "recovered": 1,
        "recovered_paged": 0,
        "paged": 1,
        "cleared_by_ok": 1,
        "clear_after_ok_p50_s": pytest.approx(0.4),
        "clear_after_ok_p95_s": pytest.approx(0.4),
    }
    assert rep.row(F).false_alarms == 1 and rep.row(F).events == 1 and rep.row(F).detected == 1
    assert "falls cancelled by OK: 2 (paged anyway 1, false pages avoided 1)" in rep.format_table()
    assert score(t[2:3], alerts[1:], devices=3, duration_s=DAY).to_dict()["ok"]["cancelled"] == 0
    assert "ok" not in score([truth(A, F, 1, 2)], [], devices=1, duration_s=DAY).to_dict()
