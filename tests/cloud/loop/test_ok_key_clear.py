"""A wristband fall cleared by the wearer's "I'm OK" key (bit 8, fw >= 1.7; docs/detection-wristband.md)
says why on the timeline (``ok_key_cleared``: 佩戴者按下"我没事"键，请回拨确认), through the loop's intake
(the sink's queue, and the reconcile pass for a step the sink never saw); nothing else changes: the case
is still dispatched and escalates (the centre calls back, 回拨确认). A clear without the mark (walking)
stays a plain ``alert_cleared``.

The cleared step carries the cause as ``alerts.loop.reasons.OK_KEY_MARK`` in its message, written by
detection (``alerts.detection.rulekit.OK_KEY_MARK``, docs/loop.md). Most tests build the step as detection
writes it; ``test_a_clear_detection_writes_reads_as_the_ok_key_only_when_it_was`` takes it from the real
detection engine."""

from __future__ import annotations

from typing import Any

import pytest

from alerts.contract import AlertEvent
from alerts.loop.reasons import OK_KEY_CLEARED, OK_KEY_MARK, cleared_by_ok_key
from cloud.alertstore import store_alert_steps
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import GW1, T0, Cloud, alert_step
from tests.cloud.loop.test_end_to_end import detail, ingest, intents, loop, only_incident
from tests.cloud.loop.test_timers import BAND_1

OK_TEXT = '佩戴者按下"我没事"键，请回拨确认'


def _fall(t: float) -> AlertEvent:
    return alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.RAISED, t)


def _cleared(raised_t: float, t: float, *, ok: bool) -> AlertEvent:
    step = alert_step(BAND_1, DeviceKind.WRISTBAND, EventType.FALL, AlertPhase.CLEARED, t, episode_t=raised_t)
    why = f" {OK_KEY_MARK}" if ok else ""
    return step.model_copy(update={"message": f"wristband {BAND_1}: fall cleared (value 87){why}"})


def _clears(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in body["timeline"] if e["action"] == "alert_cleared"]


async def test_an_ok_key_clear_says_why_and_the_case_carries_on(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    await ingest(c, _fall(T0 - 2))
    iid = int((await only_incident(c))["id"])
    before = await detail(c, iid)
    assert before["incident"]["accepted_at"] is None  # nobody accepted the case yet
    c.clock.advance(10)
    await ingest(c, _cleared(T0 - 2, T0 + 9, ok=True))
    body = await detail(c, iid)
    (clear,) = _clears(body)
    assert clear["reason_code"] == OK_KEY_CLEARED
    assert clear["reason_text"] == OK_TEXT
    assert clear["channel"] == "telemetry"
    inc = body["incident"]
    assert inc["stage"] == before["incident"]["stage"] and inc["alerts_open"] == 0
    # dispatch and escalation carry on: the medical step still pages after its 3 minutes
    c.clock.advance(181)
    assert loop(c).run_due() >= 1
    assert any(s == 1 for s, _, _ in intents(c, iid))


async def test_a_clear_without_the_mark_stays_plain(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    await ingest(c, _fall(T0 - 2))
    iid = int((await only_incident(c))["id"])
    await ingest(c, _cleared(T0 - 2, T0 + 30, ok=False))  # walking: no cause on the step
    (clear,) = _clears(await detail(c, iid))
    assert clear["reason_code"] in ("", None) and clear["reason_text"] != OK_TEXT


async def test_an_ok_key_clear_the_sink_missed_is_reconciled_with_its_reason(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    c.clock.t = T0
    await ingest(c, _fall(T0 - 2))
    iid = int((await only_incident(c))["id"])
    with c.state.db.write() as s:  # committed by ingest, the process died before the sink call
        store_alert_steps(s, [_cleared(T0 - 2, T0 + 1, ok=True)], source=GW1, received_at=T0 + 1)
    c.clock.advance(7)
    assert loop(c).reconcile() == 1
    (clear,) = _clears(await detail(c, iid))
    assert clear["reason_code"] == OK_KEY_CLEARED and clear["reason_text"] == OK_TEXT


def test_only_a_marked_wristband_clear_is_the_ok_key() -> None:
    m = f"wristband b: fall cleared {OK_KEY_MARK}"
    assert cleared_by_ok_key("wristband", "cleared", m)
    assert not cleared_by_ok_key("wristband", "raised", m)
    assert not cleared_by_ok_key("smoke_alarm", "cleared", m)
    assert not cleared_by_ok_key("wristband", "cleared", "wristband b: fall cleared (value 87)")
    assert not cleared_by_ok_key("wristband", "cleared", None)


def _detected(*, ok: bool) -> list[AlertEvent]:
    """The FALL steps the real detection engine writes for a band on firmware 1.7 (vendor semantics,
    docs/payloads.md): an impact, 40 s still on the floor (paged), then at 3 min an event uplink with
    ``ok`` (the long press) - or, without ``ok``, a walk of 40 steps at 3 min."""
    import dataclasses

    from alerts.detection.engine import DetectionEngine
    from tests.alerts.detection.detect_helpers import feed, reading

    fall = dict(accel_peak_g=4.0, stillness_s=2.0, orientation_change_deg=80.0, steps=0.0)
    frames = [
        reading(DeviceKind.WRISTBAND, BAND_1, 1, T0 - 200, "fall", **fall),
        reading(DeviceKind.WRISTBAND, BAND_1, 2, T0 - 160, stillness_s=42.0, steps=0.0),
        reading(DeviceKind.WRISTBAND, BAND_1, 3, T0 - 20, "ok", accel_peak_g=1.18, stillness_s=6.0)
        if ok
        else reading(DeviceKind.WRISTBAND, BAND_1, 3, T0 - 20, accel_peak_g=1.4, stillness_s=0.0, steps=40.0),
    ]
    frames = [dataclasses.replace(r, fw_version=0x0107) for r in frames]
    return [e for e in feed(DetectionEngine(), frames) if e.event_type is EventType.FALL]


@pytest.mark.parametrize("ok", [True, False], ids=["ok-key", "walked"])
async def test_a_clear_detection_writes_reads_as_the_ok_key_only_when_it_was(
    lc_sqlite: Cloud, ok: bool
) -> None:
    """Detection's own steps (not built by hand): its OK-key clear carries the mark the loop reads and
    shows ``ok_key_cleared``; its walking clear does not. Fails while detection writes no mark."""
    raised, cleared = _detected(ok=ok)
    assert (raised.phase, cleared.phase) == (AlertPhase.RAISED, AlertPhase.CLEARED)
    assert (OK_KEY_MARK in (cleared.message or "")) is ok
    assert cleared_by_ok_key(cleared.kind.value, cleared.phase.value, cleared.message) is ok
    c = lc_sqlite
    c.clock.t = T0
    await ingest(c, raised)
    iid = int((await only_incident(c))["id"])
    c.clock.advance(5)
    await ingest(c, cleared)
    (clear,) = _clears(await detail(c, iid))
    if ok:
        assert clear["reason_code"] == OK_KEY_CLEARED and clear["reason_text"] == OK_TEXT
    else:
        assert clear["reason_code"] in ("", None) and clear["reason_text"] != OK_TEXT


def test_the_mark_is_the_one_detection_writes() -> None:
    from alerts.detection import rulekit

    assert rulekit.OK_KEY_MARK == OK_KEY_MARK
