"""A wristband's live position in the time-series store is minimised (cloud/privacy.py, docs/privacy.md).

Ordinary readings keep the GPS fix on the ~100 m grid; SOS / fall readings, impacts and every reading of
a band with an alarm open keep the exact fix (where the responder goes); a reading without ``gps_valid``
keeps no position at all (a band repeating its last fix is not where the wearer is now); vitals and
other kinds are stored as sent; the shipped Grafana dashboards query no position.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import numpy as np

from cloud.db import Database
from cloud.db.models import Alert
from cloud.privacy import EXACT_FIX_FLAGS, IMPACT_G, OpenAlarms, minimise
from firmware_bridge import wristband
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import BAND_1, GW1, T0, Cloud, alert_step, batch, readings

ROOT = Path(__file__).resolve().parents[2]
NAMES = [c.name for c in wristband.CHANNELS]
LAT, LON = 39.971234, 116.305678
SOS = 1 << next(f.bit for f in wristband.FLAGS if f.name == "sos")
FALL = 1 << next(f.bit for f in wristband.FLAGS if f.name == "fall")
GPS = 1 << next(f.bit for f in wristband.FLAGS if f.name == "gps_valid")


def _band(
    flags: list[int], lat: float = LAT, lon: float = LON, peak_g: float = 1.0, seq0: int = 0
) -> ReadingBatch:
    values = dict.fromkeys(NAMES, 0.0) | {"heart_rate_bpm": 72.0, "spo2_pct": 97.0, "lat": lat, "lon": lon}
    values["accel_peak_g"] = peak_g
    rs = [
        Reading(
            kind=DeviceKind.WRISTBAND, device_id=str(BAND_1), seq=seq0 + i, time=T0 + 60.0 * (seq0 + i),
            battery_pct=80.0, flags=f, values=tuple(values[n] for n in NAMES), fw_version=0x0106,
        )
        for i, f in enumerate(flags)
    ]  # fmt: skip
    return ReadingBatch.from_readings(DeviceKind.WRISTBAND, rs)


def test_ordinary_fixes_go_on_the_grid_sos_and_fall_keep_theirs() -> None:
    b = _band([GPS, GPS | SOS, GPS | FALL, GPS | SOS | FALL, GPS])
    out = minimise(b)
    lat, lon = out.values[:, NAMES.index("lat")], out.values[:, NAMES.index("lon")]
    assert lat.tolist() == [39.971, LAT, LAT, LAT, 39.971]
    assert lon.tolist() == [116.306, LON, LON, LON, 116.306]
    # vitals and every other column as sent; the input batch is not changed
    rest = [j for j, n in enumerate(NAMES) if n not in ("lat", "lon")]
    assert np.array_equal(out.values[:, rest], b.values[:, rest])
    assert b.values[0, NAMES.index("lat")] == LAT
    assert (out.flags == b.flags).all() and (out.time == b.time).all()
    assert EXACT_FIX_FLAGS == SOS | FALL


def test_an_impact_or_an_open_alarm_keeps_the_exact_fix() -> None:
    lat = NAMES.index("lat")
    assert minimise(_band([GPS], peak_g=IMPACT_G)).values[0, lat] == LAT  # a fall Vigil may confirm
    assert minimise(_band([GPS], peak_g=1.2)).values[0, lat] == 39.971
    assert minimise(_band([GPS]), frozenset({str(BAND_1)})).values[0, lat] == LAT
    assert minimise(_band([GPS]), frozenset({"another-band"})).values[0, lat] == 39.971


def test_open_alarms_are_the_bands_with_an_alert_not_cleared(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        alarms = OpenAlarms(db, ttl_s=0.0)
        assert alarms() == frozenset()
        with db.write() as s:
            for dev, kind, phase in (
                ("band-open", "wristband", "raised"), ("band-updated", "wristband", "updated"),
                ("band-cleared", "wristband", "cleared"), ("manhole-open", "manhole", "raised"),
            ):  # fmt: skip
                s.add(
                    Alert(
                        alert_id=f"a-{dev}", device_id=dev, kind=kind, event_type="fall", severity=3,
                        phase=phase, episode_ms=1, raised_time=T0, raised_frame_time=T0, updated_time=T0,
                        frame_time=T0, source=GW1, received_at=T0,
                    )
                )  # fmt: skip
        assert alarms() == {"band-open", "band-updated"}
        cached = OpenAlarms(db, ttl_s=3600.0)
        assert "band-late" not in cached()
        with db.write() as s:
            s.add(
                Alert(
                    alert_id="a-band-late", device_id="band-late", kind="wristband", event_type="sos",
                    severity=3, phase="raised", episode_ms=1, raised_time=T0, raised_frame_time=T0,
                    updated_time=T0, frame_time=T0, source=GW1, received_at=T0,
                )
            )  # fmt: skip
        assert "band-late" not in cached()  # an hour's cache ...
        cached.invalidate()
        assert "band-late" in cached()  # ... forgotten on demand
    finally:
        db.close()


def test_a_reading_without_gps_valid_stores_no_position_whatever_else_it_says() -> None:
    """A band without a fix repeats its last one (or zeros): that is no position, even in an SOS, a fall,
    an impact or while the band's alarm is open, where a real fix would be kept exact."""
    lat, lon = NAMES.index("lat"), NAMES.index("lon")
    alarm = frozenset({str(BAND_1)})
    b = _band([0, SOS, FALL, SOS | FALL, GPS | SOS, GPS])
    for out in (minimise(b), minimise(b, alarm)):
        assert np.isnan(out.values[:4, [lat, lon]]).all()
        assert out.values[4, lat] == LAT and out.values[4, lon] == LON  # the SOS with a fix: exact
        rest = [j for j, n in enumerate(NAMES) if n not in ("lat", "lon")]
        assert np.array_equal(out.values[:, rest], b.values[:, rest])  # vitals of no-fix readings kept
        assert (out.flags == b.flags).all()
    assert minimise(b).values[5, lat] == 39.971  # an ordinary fix: the grid, as before
    assert minimise(b, alarm).values[5, lat] == LAT  # ... exact while the alarm is open
    impact = minimise(_band([0, GPS], peak_g=IMPACT_G))
    assert np.isnan(impact.values[0, lat]) and impact.values[1, lat] == LAT
    zeros = minimise(_band([FALL], lat=0.0, lon=0.0))  # the "no fix yet" zeros some bands send
    assert np.isnan(zeros.values[0, [lat, lon]]).all()


async def test_the_store_holds_no_position_for_a_reading_without_a_fix(
    cloud_sqlite: Cloud, tmp_path: Path
) -> None:
    c = cloud_sqlite
    stale = _band([GPS | FALL, SOS, GPS])  # the SOS repeats the fall's fix without gps_valid
    ack = await c.state.ingest.ingest(batch("batch-nofix-01", stale), gateway_id=GW1)
    assert ack.telemetry_stored == 3 and not ack.refused
    with sqlite3.connect(tmp_path / "vigil-ts.db") as conn:
        rows = conn.execute("SELECT seq, lat, lon, heart_rate_bpm FROM ts_wristband ORDER BY seq").fetchall()
    assert rows == [(0, LAT, LON, 72.0), (1, None, None, 72.0), (2, 39.971, 116.306, 72.0)]
    r = await c.client.get(
        f"/api/v1/devices/{BAND_1}/readings",
        params={"start": T0 - 1, "end": T0 + 3600, "channels": "lat,lon"},
        headers=c.dispatcher,
    )
    assert r.status_code == 200, r.text
    assert r.json()["values"]["lat"] == [LAT, None, 39.971]  # the dispatcher too sees no position


def test_no_fix_stays_missing_and_other_kinds_are_untouched() -> None:
    out = minimise(_band([0], lat=math.nan, lon=math.nan))
    assert math.isnan(out.values[0, NAMES.index("lat")])
    manhole = readings(DeviceKind.MANHOLE, "manhole-1", [1, 2])
    assert minimise(manhole) is manhole


async def test_the_store_behind_ingest_holds_the_coarse_track(cloud_sqlite: Cloud, tmp_path: Path) -> None:
    c = cloud_sqlite
    ack = await c.state.ingest.ingest(batch("batch-track-01", _band([GPS, GPS, GPS | FALL])), gateway_id=GW1)
    assert ack.telemetry_stored == 3 and not ack.refused
    with sqlite3.connect(tmp_path / "vigil-ts.db") as conn:
        rows = conn.execute("SELECT seq, lat, lon, heart_rate_bpm FROM ts_wristband ORDER BY seq").fetchall()
    assert rows == [(0, 39.971, 116.306, 72.0), (1, 39.971, 116.306, 72.0), (2, LAT, LON, 72.0)]
    r = await c.client.get(
        f"/api/v1/devices/{BAND_1}/readings",
        params={"start": T0 - 1, "end": T0 + 3600, "channels": "lat,lon"},
        headers=c.dispatcher,
    )
    assert r.status_code == 200, r.text
    assert r.json()["values"]["lat"] == [39.971, 39.971, LAT]  # the fall's exact fix for the dispatcher


async def test_a_band_with_an_open_alarm_is_tracked_exactly(cloud_sqlite: Cloud, tmp_path: Path) -> None:
    c = cloud_sqlite
    exit_ = alert_step(str(BAND_1), DeviceKind.WRISTBAND, EventType.GEOFENCE_EXIT, AlertPhase.RAISED, T0)
    await c.state.ingest.ingest(batch("batch-exit-01", alerts=[exit_]), gateway_id=GW1)
    await c.state.ingest.ingest(batch("batch-exit-02", _band([GPS, GPS], seq0=10)), gateway_id=GW1)
    with sqlite3.connect(tmp_path / "vigil-ts.db") as conn:
        rows = conn.execute("SELECT lat, lon FROM ts_wristband ORDER BY seq").fetchall()
    assert rows == [(LAT, LON), (LAT, LON)]  # a wandering wearer: the dispatcher sees where, exactly


async def test_readings_right_after_an_alarm_opens_keep_the_exact_fix(
    cloud_sqlite: Cloud, tmp_path: Path
) -> None:
    """The open-alarm set is cached (5 s); a committed wristband alert step refreshes it at once, so the
    band's next readings are exact, not on the grid for up to the cache's lifetime."""
    c = cloud_sqlite
    await c.state.ingest.ingest(batch("batch-early-01", _band([GPS])), gateway_id=GW1)  # caches "no alarm"
    exit_ = alert_step(str(BAND_1), DeviceKind.WRISTBAND, EventType.GEOFENCE_EXIT, AlertPhase.RAISED, T0)
    await c.state.ingest.ingest(batch("batch-early-02", alerts=[exit_]), gateway_id=GW1)
    await c.state.ingest.ingest(batch("batch-early-03", _band([GPS], seq0=10)), gateway_id=GW1)
    with sqlite3.connect(tmp_path / "vigil-ts.db") as conn:
        rows = conn.execute("SELECT seq, lat, lon FROM ts_wristband ORDER BY seq").fetchall()
    assert rows == [(0, 39.971, 116.306), (10, LAT, LON)]


def test_grafana_dashboards_query_no_position() -> None:
    for path in sorted((ROOT / "dashboards" / "grafana").glob("*.json")):
        doc = json.loads(path.read_text("utf-8"))
        queries: list[str] = []

        def walk(node: object, queries: list[str] = queries) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in ("expr", "query", "rawSql") and isinstance(v, str):
                        queries.append(v)
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(doc)
        assert queries, path
        for q in queries:
            assert not re.search(r"\b(lat|lon)\b|_(lat|lon)\b|\"(lat|lon)\"", q), (path.name, q)
