"""A CO alarm clears soon after the air is clean, on any reporting cadence, and not on a short dip.

Written from the devices' documented behaviour, not from our simulator:

* UL 2034 / EN 50291 residential CO alarms reset on their own when the concentration falls: "the alarm
  automatically resets when CO is no longer detected" (Secure Wireless 433CO manual, a UL 2034 listed
  wireless CO alarm); when CO persists after a silence the horn sounds again within minutes (First Alert
  CO511CN manual: silenced "for up to 4 minutes"; UL 2034 allows ~6 min).
* Our payload contract (``docs/payloads.md``, smoke_alarm): the device uplinks at once on *every change* of
  ``co_alarm``, setting and clearing alike; while in alarm it either repeats every 30-120 s or sends state
  changes only; otherwise a heartbeat (12 h typical). ``co_ppm`` is the mean of the last minute.

The stated bound (``docs/detection.md``, CO): the alert clears at most ``co_clear_hold_s`` (300 s) after
the first clean-air uplink, i.e. within ``co_clear_hold_s`` + one reporting interval of the air becoming
clean (+ the gateway's tick period); fresh air shorter than ``co_clear_hold_s`` keeps it open.
"""

from __future__ import annotations

from alerts.contract import AlertEvent
from alerts.detection.engine import DetectionEngine
from alerts.detection.profiles import SmokeAlarmProfile
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind, Reading
from tests.alerts.detection.detect_helpers import T0, batch, of, reading

S = DeviceKind.SMOKE_ALARM
HOLD_S = SmokeAlarmProfile.model_validate({}).co_clear_hold_s
TICK_S = 10.0  # the gateway's engine.tick period in these tests (it ticks every second or so live)


def _run(frames: list[tuple[float, bool, float]], until: float, dev: str = "C1") -> list[AlertEvent]:
    """Feed ``(time, co_alarm bit, co_ppm)`` uplinks of one alarm in time order, ticking every TICK_S."""
    eng = DetectionEngine()
    out: list[AlertEvent] = []
    readings: list[Reading] = [
        reading(S, dev, i, t, *(("co_alarm",) if bit else ()), co_ppm=ppm)
        for i, (t, bit, ppm) in enumerate(frames)
    ]
    k = 0
    now = T0 - 3600.0
    while now <= until:
        while k < len(readings) and readings[k].time <= now:
            out += eng.process(batch([readings[k]]), now=readings[k].time)
            k += 1
        out += eng.tick(now)
        now += TICK_S
    return of(out, EventType.CO)


def _steps(ev: list[AlertEvent]) -> list[AlertPhase]:
    return [e.phase for e in ev if e.phase is not AlertPhase.UPDATED]


def _cleared_at(ev: list[AlertEvent]) -> float:
    (c,) = [e.time for e in ev if e.phase is AlertPhase.CLEARED]
    return c


def test_repeating_alarm_every_30_s_clears_within_hold_plus_one_interval() -> None:
    end = T0 + 20 * 60.0  # CO 150 ppm for 20 min, then clean air (2 ppm), uplinks every 30 s throughout
    frames = [(T0 + 30.0 * i, True, 150.0) for i in range(40)]
    frames += [(end + 30.0 * i, False, 2.0) for i in range(60)]
    ev = _run(frames, end + 3600.0)
    assert _steps(ev) == [AlertPhase.RAISED, AlertPhase.CLEARED]
    delay = _cleared_at(ev) - end
    assert HOLD_S <= delay <= HOLD_S + 30.0 + TICK_S


def test_alarm_reporting_every_10_min_clears_within_hold_plus_one_interval() -> None:
    """A periodic 10-min device whose clearing uplink is not sent at once (the next periodic one shows it):
    the air became clean at ``end``, somewhere inside a reporting interval."""
    frames = [(T0 + 600.0 * i, True, 150.0) for i in range(4)]  # in alarm up to T0 + 30 min
    end = T0 + 1900.0  # clean from here; the next periodic uplink is at T0 + 2400
    frames += [(T0 + 600.0 * i, False, 2.0) for i in range(4, 12)]
    ev = _run(frames, T0 + 3 * 3600.0)
    assert _steps(ev) == [AlertPhase.RAISED, AlertPhase.CLEARED]
    delay = _cleared_at(ev) - end
    assert delay <= 600.0 + HOLD_S + TICK_S
    assert _cleared_at(ev) >= T0 + 2400.0 + HOLD_S  # not before 5 min of clean air were confirmed


def test_state_change_only_alarm_clears_after_hold_without_waiting_for_the_heartbeat() -> None:
    """Variant (b) of the contract: an alarm uplink, a clearing uplink, then nothing until the 12-h
    heartbeat. The alert clears ``co_clear_hold_s`` after the clearing uplink (the device would have
    uplinked at once had its CO bit set again), not at the heartbeat."""
    end = T0 + 40 * 60.0
    frames = [(T0, True, 150.0), (end, False, 3.0), (end + 12 * 3600.0, False, 1.0)]
    ev = _run(frames, end + 13 * 3600.0)
    assert _steps(ev) == [AlertPhase.RAISED, AlertPhase.CLEARED]
    assert HOLD_S <= _cleared_at(ev) - end <= HOLD_S + TICK_S
    # the cleared step reports the clearing uplink (3 ppm at ``end``), not the alarm's 150 ppm
    (c,) = [e for e in ev if e.phase is AlertPhase.CLEARED]
    assert (c.frame_time, c.value) == (end, 3.0)


def test_short_dip_every_30_s_does_not_clear() -> None:
    """Clean air for 2 min (a door opened) while the source still burns: one alert, no clear, no re-raise."""
    frames = [(T0 + 30.0 * i, True, 150.0) for i in range(40)]  # 20 min in alarm
    dip = T0 + 1200.0
    frames += [(dip + 30.0 * i, False, 5.0) for i in range(4)]  # 2 min below 25 ppm, bit clear
    back = dip + 120.0
    frames += [(back + 30.0 * i, True, 150.0) for i in range(40)]  # 20 min in alarm again
    ev = _run(frames, back + 1199.0)
    assert _steps(ev) == [AlertPhase.RAISED]
    assert len({e.alert_id for e in ev}) == 1


def test_short_dip_on_a_state_change_alarm_does_not_clear() -> None:
    """10-min repeats; the bit clears for 4 min (clearing uplink) and sets again (setting uplink, at once)."""
    frames = [(T0 + 600.0 * i, True, 150.0) for i in range(3)]
    dip = T0 + 1500.0
    frames += [(dip, False, 10.0), (dip + 240.0, True, 160.0)]
    frames += [(dip + 240.0 + 600.0 * i, True, 160.0) for i in range(1, 4)]
    ev = _run(frames, dip + 2400.0)
    assert _steps(ev) == [AlertPhase.RAISED]


def test_elevated_co_below_the_device_threshold_keeps_it_open() -> None:
    """The device's bit cleared but the air still holds 40 ppm (above co_clear_ppm): not over."""
    frames = [(T0, True, 150.0), (T0 + 1800.0, False, 40.0), (T0 + 1800.0 + 12 * 3600.0, False, 40.0)]
    ev = _run(frames, T0 + 1800.0 + 6 * 3600.0)
    assert _steps(ev) == [AlertPhase.RAISED]


def test_batch_of_clean_frames_clears_like_frame_by_frame() -> None:
    """A gateway back online delivers the clean-air frames in one batch: the same clear, at the frame that
    completed the hold (the batch path of the episode table)."""
    eng = DetectionEngine()
    alarm = [reading(S, "B1", i, T0 + 30.0 * i, "co_alarm", co_ppm=150.0) for i in range(10)]
    end = T0 + 300.0
    clean = [reading(S, "B1", 10 + i, end + 30.0 * i, co_ppm=2.0) for i in range(20)]
    ev = eng.process(batch(alarm), now=alarm[-1].time)
    ev += eng.process(batch(clean), now=clean[-1].time)
    co = of(ev, EventType.CO)
    assert _steps(co) == [AlertPhase.RAISED, AlertPhase.CLEARED]
    assert [e.frame_time for e in co if e.phase is AlertPhase.CLEARED] == [end + HOLD_S]
