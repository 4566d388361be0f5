"""The desk's settings (loop configuration document ``desk``): the family-call reminder interval is the
key ``desk.family_call_retry_s``; ``VIGIL_CLOUD_FAMILY_RETRY_S`` still overrides it; an invalid value
names the key. The "not reached" reminder pages the call task's holders by name, the desk when none of
them is on duty any more."""

from __future__ import annotations

import asyncio

import pytest

from alerts.loop.errors import InvalidConfig
from cloud.loop.config import load, save
from cloud.loop.service import LoopService
from tests.cloud.cloudkit import T0, Cloud
from tests.cloud.loop.test_call_task_handover import _register_wearer, _setup
from tests.cloud.loop.test_call_task_handover import desk as desk
from tests.cloud.loop.test_end_to_end import loop
from tests.cloud.loop.test_family_call import _call, _desk_reminders, _fall


def _save_desk(c: Cloud, body: dict[str, object]) -> int:
    with c.state.db.write() as s:
        return save(s, "desk", body, actor="admin", role="admin", now=T0)


async def test_the_retry_interval_is_a_loop_config_key(desk: Cloud) -> None:
    c = desk
    who = await _setup(c)
    _register_wearer(c)
    assert loop(c).family_retry_s == 600.0  # the shipped default
    with pytest.raises(InvalidConfig, match=r"^desk\.family_call_retry_s: .*'ten minutes'"):
        _save_desk(c, {"family_call_retry_s": "ten minutes"})
    with pytest.raises(InvalidConfig, match=r"^desk\.family_call_retry_s: seconds between 1 and 86400"):
        _save_desk(c, {"family_call_retry_s": 0})
    with pytest.raises(InvalidConfig, match=r"^desk\.retry: unknown key"):
        _save_desk(c, {"retry": 60})
    assert _save_desk(c, {"family_call_retry_s": 120}) == 1
    with c.state.db.read() as s:
        assert load(s).desk.family_call_retry_s == 120.0
    iid = await _fall(c)
    r = await _call(c, iid, who["ct-jia"], "not_reached")
    assert r.status_code == 200, r.text
    assert r.json()["family_call"]["next_reminder_at"] == c.clock.now() + 120
    assert loop(c).family_retry_s == 120.0


def test_the_environment_overrides_the_key_and_a_bad_value_names_both(
    desk: Cloud,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = desk
    _save_desk(c, {"family_call_retry_s": 120})
    monkeypatch.setenv("VIGIL_CLOUD_FAMILY_RETRY_S", "300")
    assert LoopService(c.state.db, clock=c.clock).family_retry_s == 300.0
    monkeypatch.setenv("VIGIL_CLOUD_FAMILY_RETRY_S", "soon")
    with pytest.raises(InvalidConfig) as err:
        LoopService(c.state.db, clock=c.clock)
    assert "VIGIL_CLOUD_FAMILY_RETRY_S" in str(err.value) and "desk.family_call_retry_s" in str(err.value)
    monkeypatch.setenv("VIGIL_CLOUD_FAMILY_RETRY_S", "-5")
    with pytest.raises(InvalidConfig, match="between 1 and 86400"):
        LoopService(c.state.db, clock=c.clock)


async def test_the_reminder_falls_back_to_the_desk_when_the_holder_is_off_duty(desk: Cloud) -> None:
    c = desk
    who = await _setup(c)
    _register_wearer(c)
    iid = await _fall(c)
    c.clock.t = T0 + 3000  # 甲's shift ends at T0 + 3600; the hand-over has not run
    r = await _call(c, iid, who["ct-jia"], "not_reached")
    assert r.status_code == 200, r.text
    c.clock.t = T0 + 3000 + 601
    assert await asyncio.to_thread(loop(c).run_due) >= 1
    assert _desk_reminders(c, iid) == [("call_taker", "（家属未接通，请再次致电或派网格员）")]
