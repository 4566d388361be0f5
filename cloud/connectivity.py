"""Connectivity: raises DEVICE_SILENT and GATEWAY_OFFLINE alerts, repeats them, clears them.

A background task (one named task in the app's TaskGroup) runs :meth:`ConnectivityMonitor.check_once`
every ``connectivity_check_s``:

- a **gateway** is offline when no batch arrived for ``gateway_offline_s``; it gets one GATEWAY_OFFLINE
  alert (``alert_id = {gateway_id}/gateway_offline/{last_seen_ms}``, ``kind = "gateway"``). A gateway
  never heard from is not judged (it may not be installed yet).
- a **device** is silent when its newest reading (or its registration, if it never reported) is older
  than ``silent_factor`` x its profile interval. It gets one DEVICE_SILENT alert per silence episode
  (id ``device/device_silent/episode@cloud``: never the id a gateway gives its own), unless its gateway is
  offline: then the gateway alert covers it (one page, not hundreds), and the device alert is raised only
  if the device is still silent after its gateway comes back. Nor is one raised while the gateway's own
  DEVICE_SILENT alert for the device is open, or while the gateway reports a backlog (``outbox_depth``,
  ``outbox_oldest_age_s`` in its status) reaching back before the device became overdue: its readings
  may be in that backlog, and an ingest lag must not turn into a storm of silent-device pages (soak,
  issue 11). Held devices are counted in ``vigil_cloud_silence_held_devices``.
- open connectivity alerts get an ``updated`` step every ``reminder_interval_s`` (a repeat reminder:
  users of other systems complain that an offline device is reported once and then forgotten);
- when data returns, the alert gets a ``cleared`` step on the next check.

The silence test runs in SQL (``coalesce(last_seen, created_at) < now - factor * interval_s``), so a
district of 10^6 devices costs one indexed query, not a Python loop over every device.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alerts.contract import AlertEvent
from cloud.alertstore import store_alert_steps
from cloud.db import Alert, Database, Device, Gateway
from cloud.errors import CloudError
from cloud.ingest import AlertSink, NullAlertSink
from cloud.jobs import JobContext
from cloud.metrics import CloudMetrics
from firmware_bridge.kernel.clock import Clock, SystemClock
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id

log = logging.getLogger(__name__)
SOURCE = "cloud"
GATEWAY_KIND = "gateway"
_CONNECTIVITY = (EventType.DEVICE_SILENT.value, EventType.GATEWAY_OFFLINE.value)


class ConnectivityMonitor:
    def __init__(
        self,
        db: Database,
        *,
        silent_factor: float,
        gateway_offline_s: float,
        reminder_interval_s: float,
        metrics: CloudMetrics | None = None,
        sink: AlertSink | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.silent_factor = silent_factor
        self.gateway_offline_s = gateway_offline_s
        self.reminder_interval_s = reminder_interval_s
        self.metrics = metrics or CloudMetrics()
        self.sink: AlertSink = sink or NullAlertSink()
        self.clock: Clock = clock or SystemClock()

    async def run(self, interval_s: float) -> None:
        """Check forever; a failed check is logged and counted, and the loop goes on."""
        while True:
            try:
                await self.check_once()
            except CloudError:
                log.exception("connectivity check failed")
            await self.clock.sleep(interval_s)

    async def job(self, ctx: JobContext) -> None:
        """The periodic job (``JobRunner.register("connectivity", s, monitor.job)``): one fenced pass."""
        await self.check_once(fence=ctx.fence)

    async def check_once(self, fence: Callable[[Session], None] | None = None) -> list[AlertEvent]:
        """One pass; returns the steps it stored (raised / reminders / cleared).

        ``fence`` (a :class:`cloud.jobs.JobContext`'s ``fence``) is called first inside the pass's
        transaction: when this process no longer holds the job's lease it raises and nothing is stored.
        """
        steps = await asyncio.to_thread(self._check, self.clock.now(), fence)
        if steps:
            try:
                await self.sink.alerts_committed(steps, source=SOURCE)
            except Exception:  # supervisor boundary: the steps are committed whatever the sink does
                self.metrics.sink_errors.inc()
                log.exception("alert sink failed on connectivity alerts")
        return steps

    def _check(self, now: float, fence: Callable[[Session], None] | None = None) -> list[AlertEvent]:
        with self.db.write() as s:
            if fence is not None:
                fence(s)
            open_alerts = {
                (a.event_type, a.device_id): a
                for a in s.scalars(
                    select(Alert).where(
                        Alert.source == SOURCE,
                        Alert.event_type.in_(_CONNECTIVITY),
                        Alert.phase != AlertPhase.CLEARED.value,
                    )
                )
            }
            gateways = list(
                s.execute(
                    select(Gateway.gateway_id, Gateway.last_seen, Gateway.last_status).where(
                        Gateway.revoked_at.is_(None), Gateway.last_seen.is_not(None)
                    )
                )
            )
            last_seen_gw: dict[str, float] = {g: float(seen or 0.0) for g, seen, _ in gateways}
            offline = {g for g, seen in last_seen_gw.items() if now - seen > self.gateway_offline_s}
            backlog_since = {g: t for g, seen, st in gateways if (t := _backlog_since(seen, st)) is not None}
            # open silence alerts the gateways raised themselves: the cloud does not page a second time
            by_gateway = set(
                s.scalars(
                    select(Alert.device_id).where(
                        Alert.source != SOURCE,
                        Alert.event_type == EventType.DEVICE_SILENT.value,
                        Alert.phase != AlertPhase.CLEARED.value,
                    )
                )
            )
            silent = list(
                s.execute(
                    select(
                        Device.device_id,
                        Device.kind,
                        Device.gateway_id,
                        Device.last_seen,
                        Device.created_at,
                        Device.interval_s,
                    ).where(
                        func.coalesce(Device.last_seen, Device.created_at)
                        < now - self.silent_factor * Device.interval_s
                    )
                )
            )
            steps: list[AlertEvent] = []
            # gateways
            for gw in sorted(offline):
                steps += self._raise_or_remind(
                    open_alerts.pop((EventType.GATEWAY_OFFLINE.value, gw), None),
                    gw,
                    GATEWAY_KIND,
                    EventType.GATEWAY_OFFLINE,
                    last_seen_gw[gw],
                    now,
                    f"gateway {gw} sent nothing for {now - last_seen_gw[gw]:.0f} s",
                )
            # devices
            silent_ids = set()
            held = 0
            for dev_id, kind, dev_gw, seen, created, interval in silent:
                base = float(seen if seen is not None else created)
                overdue_at = base + self.silent_factor * float(interval)
                if dev_gw in backlog_since and backlog_since[dev_gw] <= overdue_at:
                    # its gateway still holds records from before the device became overdue: its readings
                    # may be in that backlog. Judged when the backlog drains (the gateway's own silence
                    # detection still raises meanwhile); an open alert stays open, without reminders.
                    held += 1
                    if (EventType.DEVICE_SILENT.value, dev_id) in open_alerts:
                        silent_ids.add(dev_id)
                        open_alerts.pop((EventType.DEVICE_SILENT.value, dev_id))
                    continue
                silent_ids.add(dev_id)
                existing = open_alerts.pop((EventType.DEVICE_SILENT.value, dev_id), None)
                if dev_gw in offline:
                    continue  # covered by the gateway's alert: no new page, no reminder
                if existing is None and dev_id in by_gateway:
                    continue  # the gateway raised this silence itself: one alert, not two
                steps += self._raise_or_remind(
                    existing,
                    dev_id,
                    kind,
                    EventType.DEVICE_SILENT,
                    base,
                    now,
                    f"no reading for {now - base:.0f} s (expected every {interval:.0f} s)",
                )
            # whatever is still open has recovered
            for (etype, subject), a in open_alerts.items():
                if etype == EventType.DEVICE_SILENT.value and subject in silent_ids:
                    continue
                steps.append(
                    _step(
                        a.alert_id,
                        subject,
                        a.kind,
                        EventType(etype),
                        Severity(a.severity),
                        AlertPhase.CLEARED,
                        a.episode_ms,
                        now,
                        "data received again",
                    )
                )
            stored = store_alert_steps(s, steps, source=SOURCE, received_at=now)
        for st in stored:
            self.metrics.connectivity_alerts.labels(_v(st.event_type), st.phase.value).inc()
            self.metrics.alert_steps.labels(SOURCE, st.phase.value).inc()
        self.metrics.offline_gateways.set(len(offline))
        self.metrics.silent_devices.set(len(silent_ids))
        self.metrics.silence_held_devices.set(held)
        if stored:
            log.info(
                "connectivity alerts",
                extra={
                    "steps": len(stored),
                    "offline_gateways": len(offline),
                    "silent_devices": len(silent_ids),
                },
            )
        return stored

    def _raise_or_remind(
        self,
        existing: Alert | None,
        subject: str,
        kind: str,
        etype: EventType,
        since: float,
        now: float,
        message: str,
    ) -> list[AlertEvent]:
        severity = Severity.MEDIUM if etype is EventType.GATEWAY_OFFLINE else Severity.LOW
        if existing is None:
            episode = round(since * 1000)
            return [
                _step(
                    cloud_alert_id(subject, etype, episode),
                    subject,
                    kind,
                    etype,
                    severity,
                    AlertPhase.RAISED,
                    episode,
                    now,
                    message,
                )
            ]
        if now - existing.updated_time >= self.reminder_interval_s:
            return [
                _step(
                    existing.alert_id,
                    subject,
                    kind,
                    etype,
                    severity,
                    AlertPhase.UPDATED,
                    existing.episode_ms,
                    now,
                    "reminder: " + message,
                )
            ]
        return []


def cloud_alert_id(subject: str, etype: EventType, episode_ms: int) -> str:
    """The id of an alert the cloud raises: the kernel's ``device/event/episode`` plus ``@cloud``.

    A gateway raises DEVICE_SILENT from the same last frame, so the plain id would be the same alert: its
    steps were then refused as the cloud's (``alert_not_owned``) and quarantined. Gateways can never send
    this id (screening requires the plain form), so the two never collide.
    """
    return f"{alert_id(subject, etype, episode_ms)}@cloud"


def _backlog_since(seen: float | None, status: object) -> float | None:
    """When the gateway's oldest unsent record was taken (its last status), or ``None`` without a backlog."""
    if not isinstance(status, dict) or seen is None:
        return None
    try:
        depth = int(status.get("outbox_depth", 0) or 0)
        age = float(status.get("outbox_oldest_age_s", 0.0) or 0.0)
    except (TypeError, ValueError):
        return None
    return float(seen) - age if depth > 0 and age > 0 else None


def _v(x: object) -> str:
    return str(getattr(x, "value", x))


def _step(
    aid: str,
    subject: str,
    kind: str,
    etype: EventType,
    severity: Severity,
    phase: AlertPhase,
    episode_ms: int,
    now: float,
    message: str,
) -> AlertEvent:
    # model_construct: a gateway alert's kind is "gateway", which is not a DeviceKind (documented)
    return AlertEvent.model_construct(
        alert_id=aid,
        device_id=subject,
        kind=kind,
        event_type=etype,
        severity=severity,
        phase=phase,
        episode_ms=episode_ms,
        time=now,
        frame_time=now,
        value=None,
        message=message[:500],
    )


__all__: Sequence[str] = ("ConnectivityMonitor",)
