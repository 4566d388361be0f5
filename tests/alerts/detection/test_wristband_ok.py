"""The wearer's "I'm OK" key (``ok``, bit 8, firmware >= 1.7), from frames a vendor would send
(``vendor/datasheet.py``, struct-encoded from docs/payloads.md, not our simulators) through batch decode +
engine + ticks, at an uplink every 1 s, 10 s, 60 s and the datasheet's own cadence (a summary every 5 min,
an event uplink at once on a fall, an SOS press and an OK press).

What docs/payloads.md says the band does: after its fall alarm (its own fall detector, or an impact it
shows as a fall) the band shows "I'm OK?" and a long press (>= 2 s) of the key sets ``ok`` in one event
uplink sent at once (one-shot: not repeated, not held). Detection takes it as the wearer's statement for
FALL only: it cancels an impact not yet paged (the 30 s before a fall is paged are the cancel window) and
clears a paged fall; an SOS stays open (the operator calls back), and so does daytime inactivity. The
same bit from firmware < 1.7 is a reserved bit: ignored.
"""

from __future__ import annotations

import pytest

from alerts.detection.rulekit import OK_KEY_MARK, RuleContext
from firmware_bridge.kernel.events import AlertPhase
from tests.alerts.detection.test_wristband_recovery import CADENCES, FALL, IDLE, SOS, T0, Band, feed, of
from tests.alerts.detection.vendor import datasheet as ds

FW_OK = ds.WRIST_OK_MIN_FW  # (1, 7)
FW_OLD = (1, 6)  # the last firmware before the ok bit: bit 8 is reserved there

# detection reads the firmware version of each reading from its rule context (alerts/detection/rulekit.py
# RuleContext.fw_version); without it no press is taken
needs_fw = pytest.mark.skipif(
    "fw_version" not in RuleContext.__dataclass_fields__,
    reason="RuleContext has no fw_version yet (patch rulekit-engine-fw_version.patch not applied)",
)


@needs_fw
@pytest.mark.parametrize("cadence", CADENCES)
def test_ok_pressed_after_a_paged_fall_clears_it(cadence: str) -> None:
    """Fell at T0 (band flag 2 min), lay still, pressed OK at 3 min and sat still on the floor (no step):
    the fall is paged once and cleared by the press's uplink (the next one at a periodic cadence); sitting
    still afterwards does not open it again."""
    band = Band(1800)
    band.fall(0, flag_s=120)
    band.ok = [180]
    band.motion(178, 180, 1.3, 10.0)  # reaching for the key
    alerts = feed(band.frames(f"W-OK-{cadence}", cadence, fw=FW_OK), T0 + 1800)
    assert len(of(alerts, FALL, AlertPhase.RAISED)) == 1
    cleared = of(alerts, FALL, AlertPhase.CLEARED)
    assert len(cleared) == 1, cadence
    limit = {"1s": 1.0, "10s": 10.0, "60s": 60.0, "event": 0.0}[cadence]
    assert T0 + 180 <= cleared[0].time <= T0 + 180 + limit
    # the step says why (the loop shows ok_key_cleared, docs/loop.md); the raise and reminders do not
    assert cleared[0].message is not None and cleared[0].message.endswith(f" {OK_KEY_MARK}")
    assert [a for a in alerts if OK_KEY_MARK in (a.message or "") and a.phase is not AlertPhase.CLEARED] == []
    assert of(alerts, SOS, AlertPhase.RAISED) == []


@needs_fw
@pytest.mark.parametrize("cadence", CADENCES)
def test_a_fall_cleared_by_walking_after_an_earlier_ok_for_another_fall_is_not_marked(cadence: str) -> None:
    """OK pressed for a first fall (cleared, marked); a second fall 10 min later is paged and cleared by
    walking: that clear carries no mark (the OK is kept only until the next impact)."""
    band = Band(3600)
    band.fall(0, flag_s=120)
    band.ok = [180]
    band.motion(178, 180, 1.3, 10.0)
    band.motion(300, 303, 1.8, -80.0)
    band.walk(303, 333)
    band.fall(900, flag_s=120)
    band.motion(1500, 1503, 1.8, -80.0)
    band.walk(1503, 1533)
    alerts = feed(band.frames(f"W-OK2-{cadence}", cadence, fw=FW_OK), T0 + 3600)
    assert len(of(alerts, FALL, AlertPhase.RAISED)) == 2
    first, second = of(alerts, FALL, AlertPhase.CLEARED)
    assert OK_KEY_MARK in (first.message or "") and first.time < T0 + 900
    assert OK_KEY_MARK not in (second.message or "") and second.time >= T0 + 1503


@pytest.mark.parametrize("cadence", CADENCES)
def test_ok_bit_from_an_old_firmware_is_ignored(cadence: str) -> None:
    """The same frames from firmware 1.6, where bit 8 is reserved: the fall stays open (walking or the
    responder ends it), the bit is not read as the wearer's OK."""
    band = Band(1800)
    band.fall(0, flag_s=120)
    band.ok = [180]
    band.motion(178, 180, 1.3, 10.0)
    alerts = feed(band.frames(f"W-OLD-{cadence}", cadence, fw=FW_OLD), T0 + 1800)
    assert len(of(alerts, FALL, AlertPhase.RAISED)) == 1
    assert of(alerts, FALL, AlertPhase.CLEARED) == []


@pytest.mark.parametrize("cadence", CADENCES)
def test_ok_without_a_fall_does_nothing_and_a_later_fall_still_pages(cadence: str) -> None:
    """OK pressed at 2 min with nothing going on: no alert raised or cleared. A fall 10 min later is
    paged (the earlier OK says nothing about it) and stays open while the wearer lies still."""
    band = Band(1800)
    band.ok = [120]
    band.fall(600, flag_s=120)
    alerts = feed(band.frames(f"W-NOF-{cadence}", cadence, fw=FW_OK), T0 + 1800)
    assert [a for a in alerts if a.time < T0 + 600] == []
    raised = of(alerts, FALL, AlertPhase.RAISED)
    assert len(raised) == 1 and raised[0].time >= T0 + 600
    assert of(alerts, FALL, AlertPhase.CLEARED) == []


@needs_fw
@pytest.mark.parametrize("cadence", ["1s", "10s", "event"])
def test_ok_within_the_cancel_window_is_never_paged(cadence: str) -> None:
    """OK pressed 15 s after the impact, before the 30 s of stillness that page a fall: no FALL at all.
    (At a 60 s uplink the press and the stillness share one uplink: the next test.)"""
    band = Band(1800)
    band.fall(0, flag_s=20)
    band.ok = [15]  # a long press: the wrist does not move enough to restart the stillness
    alerts = feed(band.frames(f"W-CAN-{cadence}", cadence, fw=FW_OK), T0 + 1800)
    assert of(alerts, FALL, AlertPhase.RAISED) == []


@needs_fw
def test_ok_in_the_same_uplink_as_the_lying_evidence_cancels() -> None:
    """At a 60 s uplink the impact (0 s), the OK press (15 s) and then 40 s of lying still arrive in one
    frame: the press came after the fall alarm it cancels, so nothing is paged."""
    band = Band(1800)
    band.fall(5, flag_s=20)
    band.ok = [12]
    alerts = feed(band.frames("W-ONE60", "60s", fw=FW_OK), T0 + 1800)
    assert of(alerts, FALL, AlertPhase.RAISED) == []


@needs_fw
@pytest.mark.parametrize("cadence", CADENCES)
def test_ok_does_not_cancel_an_sos(cadence: str) -> None:
    """Fell, pressed SOS at 2 min, OK at 4 min: the fall clears, the SOS stays open (the wearer asked
    for help; the operator's call-back decides), and so does the daytime inactivity of a wearer who
    then lies still for 2 h more."""
    band = Band(3 * 3600)
    band.fall(0, flag_s=120)
    band.sos = [120]
    band.motion(119, 120, 1.3, 10.0)
    band.ok = [240]
    band.motion(239, 240, 1.3, 10.0)
    alerts = feed(band.frames(f"W-SOSOK-{cadence}", cadence, fw=FW_OK), T0 + 3 * 3600)
    assert len(of(alerts, FALL, AlertPhase.CLEARED)) == 1
    assert OK_KEY_MARK in (of(alerts, FALL, AlertPhase.CLEARED)[0].message or "")
    assert len(of(alerts, SOS, AlertPhase.RAISED)) == 1
    # open until the 2 h expiry of a down state without walking (DOWN_MAX_S), not cleared by the OK
    assert [a.time for a in of(alerts, SOS, AlertPhase.CLEARED) if a.time < T0 + 120 + 7200] == []
    assert len(of(alerts, IDLE, AlertPhase.RAISED)) == 1
    assert of(alerts, IDLE, AlertPhase.CLEARED) == []


@needs_fw
@pytest.mark.parametrize("cadence", ["10s", "event"])
def test_ok_from_a_band_off_the_wrist_is_ignored(cadence: str) -> None:
    """The band came off after the fall (the wear sensor says so) and someone pressed OK on it: no
    statement of the wearer, the fall stays open."""
    band = Band(1800)
    band.fall(0, flag_s=120)
    band.worn[band.i(170) :] = False
    band.ok = [180]
    alerts = feed(band.frames(f"W-OFFOK-{cadence}", cadence, fw=FW_OK), T0 + 1800)
    assert len(of(alerts, FALL, AlertPhase.RAISED)) == 1
    assert of(alerts, FALL, AlertPhase.CLEARED) == []
