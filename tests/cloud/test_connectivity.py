"""Connectivity: DEVICE_SILENT / GATEWAY_OFFLINE raised, reminded, suppressed by an offline gateway, cleared.

Time is a :class:`ManualClock` moved by the test; the monitor is driven with ``check_once`` (no sleeps).
"""

from __future__ import annotations

from typing import Any

from alerts.contract import GatewayStatus
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import (
    BAND_1,
    GW1,
    GW2,
    MANHOLE_1,
    MANHOLE_2,
    SMOKE_1,
    Cloud,
    alert_step,
    batch,
    readings,
)

W, M, S = DeviceKind.WRISTBAND, DeviceKind.MANHOLE, DeviceKind.SMOKE_ALARM
HOUR = 3600.0


def _by(steps: list, etype: EventType) -> dict[str, list[str]]:  # type: ignore[type-arg]
    out: dict[str, list[str]] = {}
    for s in steps:
        if s.event_type == etype:
            out.setdefault(s.device_id, []).append(s.phase.value)
    return out


async def _feed_all(c: Cloud, n: int) -> None:
    """Every device reports now, through its own gateway."""
    t = c.clock.now()
    await c.state.ingest.ingest(
        batch(
            f"batch-gw1-{n:04d}",
            readings(W, BAND_1, [n], t0=t),
            readings(M, MANHOLE_1, [n], t0=t),
            readings(S, SMOKE_1, [n], t0=t),
        ),
        gateway_id=GW1,
    )
    await c.state.ingest.ingest(
        batch(f"batch-gw2-{n:04d}", readings(M, MANHOLE_2, [n], t0=t), gateway_id=GW2), gateway_id=GW2
    )


async def test_silent_device_raised_reminded_and_cleared(cloud: Cloud) -> None:
    c, mon = cloud, cloud.state.monitor
    await _feed_all(c, 1)
    assert await mon.check_once() == []
    # the wristband reports every 300 s; silent after 2.5 x 300 s. Gateways keep sending (other devices).
    for i in range(2, 5):
        c.clock.advance(299)
        t = c.clock.now()
        await c.state.ingest.ingest(
            batch(f"batch-keep-{i}", readings(M, MANHOLE_1, [i], t0=t)), gateway_id=GW1
        )
        await c.state.ingest.ingest(
            batch(f"batch-keep2-{i}", readings(M, MANHOLE_2, [i], t0=t), gateway_id=GW2), gateway_id=GW2
        )
    steps = await mon.check_once()
    assert _by(steps, EventType.DEVICE_SILENT) == {BAND_1: ["raised"]}
    assert await mon.check_once() == []  # no repeat before the reminder interval
    c.clock.advance(c.settings.reminder_interval_s)
    await _feed_all(c, 10)  # data returns: cleared, not reminded
    steps = await mon.check_once()
    assert _by(steps, EventType.DEVICE_SILENT) == {BAND_1: ["cleared"]}
    alerts = (
        await c.client.get("/api/v1/alerts", params={"event_type": "device_silent"}, headers=c.viewer)
    ).json()
    assert [(a["device_id"], a["phase"]) for a in alerts["alerts"]] == [(BAND_1, "cleared")]


async def test_reminder_repeats_an_open_silence(cloud_sqlite: Cloud) -> None:
    c, mon = cloud_sqlite, cloud_sqlite.state.monitor
    await _feed_all(c, 1)
    c.clock.advance(800)
    await c.state.ingest.ingest(
        batch("batch-rem-1", readings(M, MANHOLE_1, [2], t0=c.clock.now())), gateway_id=GW1
    )
    await c.state.ingest.ingest(
        batch("batch-rem-2", readings(M, MANHOLE_2, [2], t0=c.clock.now()), gateway_id=GW2), gateway_id=GW2
    )
    assert _by(await mon.check_once(), EventType.DEVICE_SILENT) == {BAND_1: ["raised"]}
    c.clock.advance(c.settings.reminder_interval_s)
    for i in (3, 4):  # keep the gateways alive
        await c.state.ingest.ingest(
            batch(f"batch-rem-{i}a", readings(M, MANHOLE_1, [i], t0=c.clock.now())), gateway_id=GW1
        )
        await c.state.ingest.ingest(
            batch(f"batch-rem-{i}b", readings(M, MANHOLE_2, [i], t0=c.clock.now()), gateway_id=GW2),
            gateway_id=GW2,
        )
    steps = await mon.check_once()
    silent = _by(steps, EventType.DEVICE_SILENT)
    assert silent[BAND_1] == ["updated"] and steps[0].message.startswith("reminder")


async def test_offline_gateway_covers_its_devices(cloud: Cloud) -> None:
    c, mon = cloud, cloud.state.monitor
    await _feed_all(c, 1)
    # GW1 goes quiet for 20 min, GW2 keeps sending
    for i in range(2, 6):
        c.clock.advance(300)
        await c.state.ingest.ingest(
            batch(f"batch-gw2-k{i}", readings(M, MANHOLE_2, [i], t0=c.clock.now()), gateway_id=GW2),
            gateway_id=GW2,
        )
    steps = await mon.check_once()
    assert _by(steps, EventType.GATEWAY_OFFLINE) == {GW1: ["raised"]}
    assert _by(steps, EventType.DEVICE_SILENT) == {}  # the band is silent but covered by its gateway's alert
    gws = (await c.client.get("/api/v1/gateways", headers=c.viewer)).json()
    assert {g["gateway_id"]: g["online"] for g in gws} == {GW1: False, GW2: True}
    gw_alerts = (await c.client.get("/api/v1/alerts", params={"kind": "gateway"}, headers=c.viewer)).json()[
        "alerts"
    ]
    assert [(a["device_id"], a["event_type"], a["phase"]) for a in gw_alerts] == [
        (GW1, "gateway_offline", "raised")
    ]
    # gateway alerts are not in the default (device) list
    assert (await c.client.get("/api/v1/alerts", headers=c.viewer)).json() == {"alerts": []}
    # GW1 comes back with data from every device: the gateway alert clears, no device alert was ever raised
    await _feed_all(c, 20)
    steps = await mon.check_once()
    assert (
        _by(steps, EventType.GATEWAY_OFFLINE) == {GW1: ["cleared"]}
        and _by(steps, EventType.DEVICE_SILENT) == {}
    )
    metrics = (await c.client.get("/metrics")).text
    assert 'vigil_cloud_connectivity_alerts_total{event_type="gateway_offline",phase="raised"} 1.0' in metrics


async def test_device_still_silent_after_gateway_returns_gets_its_alert(cloud_sqlite: Cloud) -> None:
    c, mon = cloud_sqlite, cloud_sqlite.state.monitor
    await _feed_all(c, 1)
    c.clock.advance(1200)
    await c.state.ingest.ingest(
        batch("batch-back-2", readings(M, MANHOLE_2, [2], t0=c.clock.now()), gateway_id=GW2), gateway_id=GW2
    )
    await mon.check_once()
    # GW1 returns with only the manhole: the band is still silent, now it is its own alert
    await c.state.ingest.ingest(
        batch("batch-back-1", readings(M, MANHOLE_1, [2], t0=c.clock.now())), gateway_id=GW1
    )
    steps = await mon.check_once()
    assert _by(steps, EventType.GATEWAY_OFFLINE) == {GW1: ["cleared"]}
    assert _by(steps, EventType.DEVICE_SILENT) == {BAND_1: ["raised"]}
    assert all(s.phase is not AlertPhase.UPDATED for s in steps)


async def test_background_task_runs_in_lifespan(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """With ``connectivity_check_s`` > 0 the monitor runs as a named task and stops cleanly at shutdown."""
    import asyncio

    from tests.cloud.cloudkit import make_settings, start_cloud

    settings = make_settings(tmp_path, sqlite_url, connectivity_check_s=1.0)
    async with start_cloud(settings) as c:
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert "job[connectivity]" in names  # a JobRunner task (cloud/jobs.py)
        c.clock.advance(30 * 86400)  # everything is long silent; wait for the task's own check
        await asyncio.wait_for(c.sink.called.wait(), timeout=20)
        assert c.sink.calls and c.sink.calls[0][0] == "cloud"
    assert "job[connectivity]" not in {t.get_name() for t in asyncio.all_tasks()}


def _quiet_band(c: Cloud) -> None:
    """Advance 800 s: the wristband (every 300 s, factor 2.5) becomes overdue."""
    c.clock.advance(800)


async def _keep_alive(c: Cloud, n: int, status: GatewayStatus | None = None) -> Any:
    """The manholes report (both gateways stay online); GW1's batch carries ``status``; returns its ack."""
    t = c.clock.now()
    b = batch(f"batch-alive-{n}", readings(M, MANHOLE_1, [n], t0=t))
    if status is not None:
        b = b.model_copy(update={"status": status})
    ack = await c.state.ingest.ingest(b, gateway_id=GW1)
    await c.state.ingest.ingest(
        batch(f"batch-alive2-{n}", readings(M, MANHOLE_2, [n], t0=t), gateway_id=GW2), gateway_id=GW2
    )
    return ack


async def test_the_gateways_own_silence_alert_is_never_refused_as_the_clouds(cloud_sqlite: Cloud) -> None:
    """Soak finding: both sides named DEVICE_SILENT after the same last frame, so the gateway's steps were
    refused as the cloud's alert (``alert_not_owned``) and quarantined."""
    c, mon = cloud_sqlite, cloud_sqlite.state.monitor
    await _feed_all(c, 1)
    last_band = c.clock.now()
    _quiet_band(c)
    await _keep_alive(c, 2)
    (raised,) = [s for s in await mon.check_once() if s.event_type == EventType.DEVICE_SILENT]
    assert raised.alert_id.endswith("@cloud") and raised.device_id == BAND_1
    mine = alert_step(
        BAND_1, W, EventType.DEVICE_SILENT, AlertPhase.RAISED, c.clock.now(), episode_t=last_band
    )
    ack = await c.state.ingest.ingest(batch("batch-gw-silent", alerts=[mine]), gateway_id=GW1)
    assert ack.refused == [] and ack.alerts_stored == 1
    cleared = alert_step(BAND_1, W, EventType.DEVICE_SILENT, AlertPhase.CLEARED, c.clock.now(), last_band)
    ack = await c.state.ingest.ingest(batch("batch-gw-silent-2", alerts=[cleared]), gateway_id=GW1)
    assert ack.refused == []


async def test_no_second_silence_alert_while_the_gateways_own_is_open(cloud_sqlite: Cloud) -> None:
    c, mon = cloud_sqlite, cloud_sqlite.state.monitor
    await _feed_all(c, 1)
    last_band = c.clock.now()
    _quiet_band(c)
    mine = alert_step(
        BAND_1, W, EventType.DEVICE_SILENT, AlertPhase.RAISED, c.clock.now(), episode_t=last_band
    )
    await c.state.ingest.ingest(batch("batch-gw-silent", alerts=[mine]), gateway_id=GW1)
    await _keep_alive(c, 2)
    assert _by(await mon.check_once(), EventType.DEVICE_SILENT) == {}


async def test_a_gateway_backlog_holds_silence_until_it_drains(cloud_sqlite: Cloud) -> None:
    """Soak finding: ingest lag made stored readings look old and raised thousands of silent-device pages.
    A device whose gateway still holds records from before it became overdue is not judged yet."""
    c, mon = cloud_sqlite, cloud_sqlite.state.monitor
    await _feed_all(c, 1)
    _quiet_band(c)
    backlog = GatewayStatus(outbox_depth=40_000, outbox_oldest_age_s=700.0)  # since 100 s after the band's
    await _keep_alive(c, 2, backlog)  # last reading: before it became overdue (750 s)
    assert _by(await mon.check_once(), EventType.DEVICE_SILENT) == {}
    assert "vigil_cloud_silence_held_devices 1.0" in (await c.client.get("/metrics")).text
    await _keep_alive(c, 3, GatewayStatus(outbox_depth=0))  # drained, and still nothing from the band
    assert _by(await mon.check_once(), EventType.DEVICE_SILENT) == {BAND_1: ["raised"]}
    # a backlog that began after the device became overdue holds nothing
    c.clock.advance(c.settings.reminder_interval_s)
    await _keep_alive(c, 4, GatewayStatus(outbox_depth=10, outbox_oldest_age_s=5.0))
    assert _by(await mon.check_once(), EventType.DEVICE_SILENT) == {BAND_1: ["updated"]}
