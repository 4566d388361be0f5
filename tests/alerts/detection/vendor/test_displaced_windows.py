"""A displaced cover still pages, at once when the uplinks prove no vehicle, at every cadence and firmware.

Written from docs/payloads.md only ("What detection relies on (manhole)"): a heartbeat every 1-24 h;
``vibration_g`` is the peak since the *previous uplink*; an alarm uplink at once when
``|tilt - tilt_ref|`` crosses 10° and the return to normal within 30 s of the recovery; firmware >= 1.3
may debounce (``tilt_settled``: the tilt held with vibration below 0.05 g for >= 5 s before sending).

So consecutive uplinks below a truck's vibration cover the road since the uplink before them: a cover
lifted off its seat by hand (or knocked askew and left) on a quiet road is proved displaced by its own
alarm uplink, even when that comes 0.1 s after a heartbeat; a quiet uplink 10 s after a truck's alarm,
still tilted, proves it too (a truck rocks a cover for ~2 s). On a busy road the alarm uplink's window
holds a truck, and the cover pages once the return to normal has not come (45 s; the harness ticks every
15 s, so the step may come up to 15 s later). The counterpart, a heartbeat 0.1 s after a truck's alarm
uplink paging no one, is ``test_truck_heartbeat.py``; here it is checked at every cadence and firmware.
Frames from ``datasheet.py`` through ``harness.run`` at its 5 s windows and at a 50 ms gateway's.
"""

from __future__ import annotations

from itertools import count

import pytest

from alerts.contract import AlertEvent
from alerts.detection.engine import DetectionEngine
from firmware_bridge.kernel.events import AlertPhase, EventType
from tests.alerts.detection.vendor import datasheet as ds
from tests.alerts.detection.vendor.harness import Frame, run

T0 = 1_795_780_000.0  # 2026-11-27 11:46:40 local
REF = 1.8
CONFIRM_S = 45.0  # displaced_confirm_s: no return to normal within this long
TICK_SLACK_S = 15.0  # the harness's dense tick

CADENCES_H = (1.0, 12.0, 24.0)
FIRMWARE = ((1, 2), (1, 3))
WINDOWS = (5.0, 0.05)


def _heartbeats(dev: str, seq: count[int], every_h: float, vib: float, fw: tuple[int, int]) -> list[Frame]:
    """Three heartbeats at ``every_h``, the last one 30 min before T0 (``vib``: the road's traffic)."""
    return [
        Frame(
            dev,
            T0 - 1800.0 - every_h * 3600.0 * k,
            ds.manhole(
                seq=next(seq),
                flags=("heartbeat",),
                fw=fw,
                tilt_deg=REF + 0.02 * k,
                vibration_g=vib + 0.01 * k,
                tilt_ref_deg=REF,
                temperature_c=12.0 + 0.3 * k,
            ),
        )
        for k in range(2, -1, -1)
    ]


def _frame(
    dev: str, seq: count[int], t: float, tilt: float, vib: float, fw: tuple[int, int], *flags: str
) -> Frame:
    return Frame(
        dev,
        t,
        ds.manhole(seq=next(seq), flags=flags, fw=fw, tilt_deg=tilt, vibration_g=vib, tilt_ref_deg=REF),
    )


def _raised(steps: list[AlertEvent]) -> list[AlertEvent]:
    return [a for a in steps if a.event_type is EventType.COVER_DISPLACED and a.phase is AlertPhase.RAISED]


@pytest.mark.parametrize("window_s", WINDOWS)
@pytest.mark.parametrize("fw", FIRMWARE)
@pytest.mark.parametrize("every_h", CADENCES_H)
def test_a_cover_lifted_on_a_quiet_road_pages_on_its_alarm_uplink(
    every_h: float, fw: tuple[int, int], window_s: float
) -> None:
    seq = count(1)
    frames = _heartbeats("MH-Q", seq, every_h, 0.03, fw)
    # no vehicle since the last heartbeat: the alarm uplink is quiet (no debounce bit: fw 1.2, or 1.3
    # sending at once on the crossing, which the datasheet allows)
    frames.append(_frame("MH-Q", seq, T0, 24.0, 0.04, fw, "alarm"))
    got = _raised(run(frames, DetectionEngine(), window_s=window_s))
    assert len(got) == 1 and got[0].time == pytest.approx(T0, abs=0.01), [a.time - T0 for a in got]


@pytest.mark.parametrize("window_s", WINDOWS)
@pytest.mark.parametrize("every_h", CADENCES_H)
def test_a_cover_lifted_0_1_s_after_a_quiet_heartbeat_still_pages_at_once(
    every_h: float, window_s: float
) -> None:
    # the alarm uplink's own window is 0.1 s, but the heartbeat before it was quiet too: no vehicle for
    # a whole heartbeat interval
    seq = count(1)
    frames = _heartbeats("MH-Q1", seq, every_h, 0.03, (1, 2))
    frames.append(_frame("MH-Q1", seq, T0, REF + 0.05, 0.02, (1, 2), "heartbeat"))
    frames.append(_frame("MH-Q1", seq, T0 + 0.1, 21.5, 0.03, (1, 2), "alarm"))
    got = _raised(run(frames, DetectionEngine(), window_s=window_s))
    assert len(got) == 1 and got[0].time == pytest.approx(T0 + 0.1, abs=0.01), [a.time - T0 for a in got]


@pytest.mark.parametrize("window_s", WINDOWS)
@pytest.mark.parametrize("fw", FIRMWARE)
@pytest.mark.parametrize("every_h", CADENCES_H)
def test_a_cover_knocked_askew_by_a_truck_and_left_pages_within_the_confirmation(
    every_h: float, fw: tuple[int, int], window_s: float
) -> None:
    # a busy road: every uplink holds a truck; the truck's alarm uplink, then its heartbeat 0.1 s later
    # (still tilted, quiet for 0.1 s), and no return to normal
    seq = count(1)
    frames = _heartbeats("MH-B", seq, every_h, 1.1, fw)
    frames.append(_frame("MH-B", seq, T0, 13.9, 1.7, fw, "alarm"))
    frames.append(_frame("MH-B", seq, T0 + 0.1, 13.95, 0.02, fw, "alarm", "heartbeat"))
    got = _raised(run(frames, DetectionEngine(), window_s=window_s))
    assert len(got) == 1 and T0 + CONFIRM_S <= got[0].time <= T0 + CONFIRM_S + TICK_SLACK_S, [
        a.time - T0 for a in got
    ]


@pytest.mark.parametrize("window_s", WINDOWS)
@pytest.mark.parametrize("fw", FIRMWARE)
def test_a_quiet_uplink_10_s_after_the_truck_still_tilted_pages_at_once(
    fw: tuple[int, int], window_s: float
) -> None:
    # 10 s with no vehicle and the cover still askew: longer than any truck's rock
    seq = count(1)
    frames = _heartbeats("MH-B10", seq, 12.0, 1.1, fw)
    frames.append(_frame("MH-B10", seq, T0, 13.9, 1.7, fw, "alarm"))
    frames.append(_frame("MH-B10", seq, T0 + 10.0, 13.95, 0.02, fw, "alarm", "heartbeat"))
    got = _raised(run(frames, DetectionEngine(), window_s=window_s))
    assert len(got) == 1 and got[0].time == pytest.approx(T0 + 10.0, abs=0.01), [a.time - T0 for a in got]


@pytest.mark.parametrize("window_s", WINDOWS)
def test_a_debounced_alarm_5_s_after_the_truck_pages_at_once(window_s: float) -> None:
    # firmware 1.3: the truck's uplink, then the debounced alarm (tilt_settled) once the cover rested 5 s
    seq = count(1)
    frames = _heartbeats("MH-D", seq, 12.0, 1.1, (1, 3))
    frames.append(_frame("MH-D", seq, T0, 13.9, 1.7, (1, 3), "alarm"))
    frames.append(_frame("MH-D", seq, T0 + 5.2, 13.95, 0.02, (1, 3), "alarm", "tilt_settled"))
    got = _raised(run(frames, DetectionEngine(), window_s=window_s))
    assert len(got) == 1 and got[0].time == pytest.approx(T0 + 5.2, abs=0.01), [a.time - T0 for a in got]


@pytest.mark.parametrize("window_s", WINDOWS)
@pytest.mark.parametrize("fw", FIRMWARE)
@pytest.mark.parametrize("every_h", CADENCES_H)
def test_a_truck_with_a_heartbeat_0_1_s_after_it_pages_no_one_at_any_cadence(
    every_h: float, fw: tuple[int, int], window_s: float
) -> None:
    seq = count(1)
    frames = _heartbeats("MH-T", seq, every_h, 1.1, fw)
    frames.append(_frame("MH-T", seq, T0, 14.5, 1.9, fw, "alarm"))
    frames.append(_frame("MH-T", seq, T0 + 0.1, 14.6, 0.02, fw, "alarm", "heartbeat"))
    frames.append(_frame("MH-T", seq, T0 + 1.4, REF + 0.04, 0.03, fw))  # the return to normal
    steps = run(frames, DetectionEngine(), window_s=window_s)
    assert _raised(steps) == [], [(a.event_type.value, a.phase.value, a.time - T0) for a in steps]


@pytest.mark.parametrize("window_s", WINDOWS)
@pytest.mark.parametrize("fw", FIRMWARE)
def test_the_first_uplink_a_gateway_sees_a_quiet_tilted_alarm_pages_at_once(
    fw: tuple[int, int], window_s: float
) -> None:
    # a gateway started without a snapshot (or a cover just provisioned): the alarm uplink's window began
    # at an uplink it never saw, hours back at any heartbeat cadence; nothing in it showed a vehicle
    seq = count(1)
    got = _raised(
        run([_frame("MH-N", seq, T0, 23.0, 0.03, fw, "alarm")], DetectionEngine(), window_s=window_s)
    )
    assert len(got) == 1 and got[0].time == pytest.approx(T0, abs=0.01), [a.time - T0 for a in got]
