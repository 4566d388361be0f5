"""The demo's clock (`simulators.demo.HeldClock`): it stands still until the radio starts, never runs
more than ``slack_s`` past a frame the gateway has not judged yet, and never goes back (docs/demo.md,
"The demo's clock is the devices' time")."""

from __future__ import annotations

import time

from simulators.demo import HeldClock

T0 = 1_780_272_000.0


def _until_past(clock: HeldClock, t: float) -> float:
    deadline = time.monotonic() + 5.0
    while (now := clock.now()) <= t and time.monotonic() < deadline:
        time.sleep(0.01)
    return now


def test_stands_still_until_the_radio_starts() -> None:
    clock = HeldClock(T0, 1000.0)
    time.sleep(0.05)  # 50 simulated seconds, were it running
    assert clock.now() == T0
    clock.run()
    assert _until_past(clock, T0 + 1.0) > T0 + 1.0


def test_waits_for_the_gateway_to_judge_a_frame_in_flight() -> None:
    judged = [0]
    clock = HeldClock(T0, 1000.0, slack_s=20.0, max_hold_real_s=60.0)
    clock.judged_by(lambda: judged[0])
    clock.run()
    given_at = clock.now()
    clock.gave()  # the gateway has it, not judged yet
    time.sleep(0.2)  # 200 simulated seconds of wall time
    held = [clock.now() for _ in range(3)]
    assert all(given_at <= t <= given_at + 20.0 for t in held)
    assert held == sorted(held)
    real_before = time.time()
    last_held = clock.now()
    judged[0] = 1
    after = _until_past(clock, last_held + 1.0)
    # simulated time resumes from where it stood: the 200 s the gateway took are not made up in a jump,
    # it advances only by the real time since (x 1000)
    assert last_held + 1.0 < after <= last_held + (time.time() - real_before) * 1000.0
    assert clock.held_real_s >= 0.15


def test_a_frame_never_judged_stops_holding_the_clock() -> None:
    clock = HeldClock(T0, 1000.0, slack_s=5.0, max_hold_real_s=0.1)
    clock.run()
    clock.gave()  # judged_by never told: the count stays 0
    time.sleep(0.15)
    first = clock.now()
    assert _until_past(clock, first + 10.0) > first + 10.0
