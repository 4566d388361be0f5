"""The MQTT alert lane's state: in use, or on ``.../up`` until a re-probe (no I/O, the clock passed in).

:class:`~edge.uplink.mqtt.MqttUplink` decides *when* the lane is missing (on evidence, see there); this
class keeps what follows from it:

- ``in_use``: alert batches go on ``vigil/v1/gw/{id}/alert``.
- ``fallback``: the lane was judged missing; alert batches go on ``.../up`` until ``until``. The periods
  grow ``reprobe_min_s``, ``2 x``, ``4 x`` ... up to ``reprobe_max_s`` while the lane keeps failing, so an
  old cloud or a broker ACL without the lane costs one alert batch one ack timeout per period at most, and
  a lane that was merely judged wrongly comes back within ``reprobe_min_s``.
- ``probing``: a fallback period ended (or the broker connection was re-made, which re-probes at once):
  the next alert batch tries the lane again; the next period is the doubled one if it fails again.
- ``disabled``: the setting ``uplink.mqtt_alert_topic = false``.

Any answer the cloud sends for a copy published on the lane (:meth:`answered`: an ack saying
``via="alert"``, or, from a cloud that does not say, one answer more than the copies on ``.../up``) puts
the lane back in use and the next period back to ``reprobe_min_s``. Each change of state is logged once
(Chinese, then English), never per batch.

>>> t = [0.0]
>>> lane = AlertLane(reprobe_min_s=30, reprobe_max_s=900, clock=lambda: t[0], wallclock=lambda: t[0])
>>> lane.missing(), lane.use_lane()
(30.0, False)
>>> t[0] = 30.0
>>> lane.use_lane(), lane.state
(True, 'probing')
>>> lane.missing(), lane.missing(), lane.missing()  # periods double while the lane keeps failing
(60.0, 120.0, 240.0)
>>> lane.answered(); lane.state, lane.next_period_s
('in_use', 30.0)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

log = logging.getLogger(__name__)

LaneState = Literal["in_use", "probing", "fallback", "disabled"]
STATES: tuple[LaneState, ...] = ("in_use", "probing", "fallback", "disabled")


class AlertLane:
    def __init__(
        self,
        *,
        enabled: bool = True,
        reprobe_min_s: float = 30.0,
        reprobe_max_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        topic: str = "the alert topic",
        up_topic: str = "the up topic",
    ) -> None:
        self.enabled = enabled
        self.reprobe_max_s = max(0.0, float(reprobe_max_s))
        self.reprobe_min_s = min(max(0.0, float(reprobe_min_s)), self.reprobe_max_s)
        self._clock, self._wallclock = clock, wallclock
        self.topic, self.up_topic = topic, up_topic
        self._state: LaneState = "in_use" if enabled else "disabled"
        self._until = 0.0  # clock(): alert batches go on .../up before then
        self.next_period_s = self.reprobe_min_s  # the fallback period if the lane is judged missing now
        self.fallbacks_total = 0

    @property
    def state(self) -> LaneState:
        if self._state == "fallback" and self._clock() >= self._until:
            self._set("probing", "告警通道回退期已过，下一批告警重新试用告警通道", "fallback period over")
        return self._state

    def use_lane(self) -> bool:
        """Alert batches go on the lane now."""
        return self.state in ("in_use", "probing")

    def fallback_until(self) -> float | None:
        """UTC epoch seconds until which alert batches go on ``.../up``; ``None`` when not in fallback."""
        if self.state != "fallback":
            return None
        return self._wallclock() + max(0.0, self._until - self._clock())

    def missing(self) -> float:
        """The lane was judged missing (on evidence): fall back for the next period; returns its length."""
        period = self.next_period_s
        self._until = self._clock() + period
        self.next_period_s = min(self.reprobe_max_s, max(period * 2, self.reprobe_min_s))
        self.fallbacks_total += 1
        self._set(
            "fallback",
            f"云端未在告警通道 {self.topic} 上确认，而 {self.up_topic} 上的批次已确认："
            f"{period:g} 秒内告警改走 {self.up_topic}，之后重试告警通道",
            f"the cloud answered on {self.up_topic} but not on the alert topic {self.topic}: alert batches "
            f"go on {self.up_topic} for {period:g} s, then the lane is tried again (cloud predates the alert "
            "lane, or the broker ACL lacks the .../alert line)",
            force=True,
        )
        return period

    def answered(self) -> None:
        """The cloud answered a copy published on the lane: the lane is in use, backoff starts over."""
        self.next_period_s = self.reprobe_min_s
        self._until = 0.0
        if self._state in ("probing", "fallback"):
            self._set("in_use", f"告警通道 {self.topic} 已确认，告警重新走告警通道", "the lane answered")

    def reconnected(self) -> None:
        """A new broker connection: a lane judged missing is re-probed at once (the period is kept)."""
        if self.state == "fallback":
            self._until = 0.0
            self._set("probing", "已重新连接 MQTT 服务器，立即重试告警通道", "reconnected to the broker")

    def _set(self, state: LaneState, zh: str, en: str, *, force: bool = False) -> None:
        if state == self._state and not force:
            return
        old, self._state = self._state, state
        level = logging.WARNING if state == "fallback" else logging.INFO
        log.log(level, "告警通道：%s / alert lane %s -> %s: %s", zh, old, state, en)
