"""GNSS fixes of the simulated wristband: indoors mostly none, outdoors valid after a time to first fix,
and the three vendor behaviours for lat/lon without a fix (docs/simulators.md "GNSS fixes";
docs/payloads.md: ``gps_valid`` only with a fresh fix).

The model is stepped directly (no link faults), tick by tick, and its payloads decoded with the codec's
own record layout, so every uplink the band sent is seen once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from firmware_bridge.kernel.events import EventType
from firmware_bridge.kernel.records import DeviceKind as K
from simulators import wristband
from simulators.fleet import Fleet
from simulators.wristband import GPS_NAN, GPS_REPEAT, GPS_ZERO, WristbandModel

T0 = 1_780_243_200.0  # 2026-06-01 00:00 local (UTC+8)
RATES = {K.WRISTBAND: {"geofence_exit": 0.5, "fall": 0.3, "band_removed": 0.2}}


@dataclass
class Uplinks:
    fleet: Fleet
    model: WristbandModel
    initial_fix: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
    idx: npt.NDArray[np.int64]
    time: npt.NDArray[np.float64]
    rec: npt.NDArray[np.void]  # decoded raw payload records (codec dtype)
    outdoors: npt.NDArray[np.bool_]  # by the walk model (daytime walks beyond OUTDOOR_M)
    since_out: npt.NDArray[np.float64]

    @property
    def valid(self) -> npt.NDArray[np.bool_]:
        return np.asarray((self.rec["flags"].astype(np.int64) & self.model.spec.flag("gps_valid").mask) > 0)


def simulate(seed: int, n: int = 150, days: float = 1.0, rates: dict | None = None) -> Uplinks:  # type: ignore[type-arg]
    fleet = Fleet.build({K.WRISTBAND: n}, seed=seed, rates=RATES if rates is None else rates)
    fleet.plan(T0, days * 86400.0)
    m = fleet.models[K.WRISTBAND]
    assert isinstance(m, WristbandModel)
    initial = (m.fix_lat.copy(), m.fix_lon.copy())
    cols: list[tuple[np.ndarray, ...]] = []
    t = T0
    while t < T0 + days * 86400.0:
        e = m.step(t, t + 60.0)
        t += 60.0
        if len(e):
            _, _, since = m._walk(e.idx, e.time)
            cols.append((e.idx, e.time, e.payloads.view(m.codec.dtype).reshape(-1), since))
    idx, time, rec, since = (np.concatenate([c[j] for c in cols]) for j in range(4))
    return Uplinks(fleet, m, initial, idx, time, rec, np.isfinite(since), since)


@pytest.fixture(scope="module", params=[1, 2, 3])
def ups(request: pytest.FixtureRequest) -> Uplinks:
    return simulate(int(request.param))


def local_hour(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(((t + 8 * 3600.0) % 86400.0) / 3600.0)


def test_indoors_mostly_no_fix_outdoors_mostly_a_fix(ups: Uplinks) -> None:
    v = ups.valid
    night = (local_hour(ups.time) >= 23.0) | (local_hour(ups.time) < 5.0)  # asleep at home
    assert night.sum() > 1000
    assert v[night].mean() <= 0.10, v[night].mean()
    day_in = ~night & ~ups.outdoors
    assert v[day_in].mean() <= 0.15, v[day_in].mean()
    # out on a walk, past the time to first fix
    out = ups.outdoors & (ups.since_out >= wristband.TTFF_S[1])
    assert out.sum() > 200
    assert v[out].mean() >= 0.85, v[out].mean()
    # an elderly person living alone is indoors most of the day and all night
    assert 0.03 <= ups.outdoors.mean() <= 0.25, ups.outdoors.mean()


@pytest.mark.parametrize("seed", [1, 2])
def test_no_fix_before_the_time_to_first_fix(seed: int) -> None:
    # walks only (no geofence exit or fall moving the wearer): outdoors exactly when the walk says so
    ups = simulate(seed, n=300, rates={K.WRISTBAND: {e.name: 0.0 for e in WristbandModel.EFFECTS}})
    ttff = ups.model.ttff[ups.idx]
    early = ups.outdoors & (ups.since_out < ttff)
    assert early.sum() > 10  # some uplinks are sent in the first seconds outdoors (heartbeats land there)
    assert not ups.valid[early].any()
    assert ups.valid[ups.outdoors & ~early].mean() >= 0.85
    assert wristband.TTFF_S[0] >= 10.0  # "tens of seconds", never an instant fix


def test_geofence_exit_has_fixes_after_leaving_home(ups: Uplinks) -> None:
    ids = list(ups.model.sites.device_id)
    exits = [r for r in ups.fleet.truth if r.event_type is EventType.GEOFENCE_EXIT]
    assert exits
    n_out = n_fix = 0
    for r in exits:
        d = ids.index(r.device_id)
        sel = (ups.idx == d) & (ups.time >= r.start) & (ups.time < r.end)
        n_out += int(sel.sum())
        n_fix += int(ups.valid[sel].sum())
    assert n_out > 20
    assert n_fix >= 0.85 * n_out, (n_fix, n_out)


def test_band_off_the_wrist_lies_at_home_without_a_fix(ups: Uplinks) -> None:
    worn = (ups.rec["flags"].astype(np.int64) & ups.model.spec.flag("worn").mask) > 0
    off = ~worn
    assert off.sum() > 50
    assert ups.valid[off].mean() <= 0.10


def test_vendor_behaviours_without_a_fix(ups: Uplinks) -> None:
    m, v = ups.model, ups.valid
    vendor = m.gps_vendor[ups.idx]
    lat = ups.rec["lat"].astype(np.int64)
    lon = ups.rec["lon"].astype(np.int64)
    na = int(np.iinfo(np.int32).max)  # the "not available" pattern of an i32 channel (docs/payloads.md)
    assert set(np.unique(m.gps_vendor)) == {GPS_REPEAT, GPS_ZERO, GPS_NAN}
    z = ~v & (vendor == GPS_ZERO)
    assert z.sum() > 100 and (lat[z] == 0).all() and (lon[z] == 0).all()
    n = ~v & (vendor == GPS_NAN)
    assert n.sum() > 100 and (lat[n] == na).all() and (lon[n] == na).all()
    # with a fix, a real position whatever the vendor
    assert ((lat[v] != 0) & (lat[v] != na)).all()
    # "repeat": every uplink without a fix carries the band's latest fix (or the one it held at start)
    rep = np.flatnonzero(m.gps_vendor == GPS_REPEAT)
    checked = 0
    for d in rep[:40]:
        rows = np.flatnonzero(ups.idx == d)
        rows = rows[np.argsort(ups.time[rows], kind="stable")]
        held = (round(ups.initial_fix[0][d] * 1e6), round(ups.initial_fix[1][d] * 1e6))
        for r in rows:
            if v[r]:
                held = (int(lat[r]), int(lon[r]))
            else:
                assert (int(lat[r]), int(lon[r])) == held, (d, r)
                checked += 1
    assert checked > 500


def test_vendor_mix_is_per_seed_and_per_band() -> None:
    a, b = simulate(5, n=200, days=0.05), simulate(6, n=200, days=0.05)
    assert not np.array_equal(a.model.gps_vendor, b.model.gps_vendor)
    shares = np.bincount(a.model.gps_vendor, minlength=3) / 200
    assert shares[GPS_REPEAT] > 0.3 and shares[GPS_ZERO] > 0.1 and shares[GPS_NAN] > 0.1


def test_deterministic_per_seed() -> None:
    a, b = simulate(7, n=60, days=0.5), simulate(7, n=60, days=0.5)
    assert np.array_equal(a.idx, b.idx) and np.array_equal(a.time, b.time)
    assert a.rec.tobytes() == b.rec.tobytes()
    c = simulate(8, n=60, days=0.5)
    assert a.rec.tobytes() != c.rec.tobytes()


def test_gnss_stream_leaves_the_other_channels_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GNSS draws have their own stream: another GNSS stream changes fixes and positions only,
    never the schedule, the uplink times or the vital signs of a seed."""
    a = simulate(9, n=60, days=0.5)
    monkeypatch.setattr(wristband, "GPS_STREAM", wristband.GPS_STREAM + 1)
    b = simulate(9, n=60, days=0.5)
    assert np.array_equal(a.idx, b.idx) and np.array_equal(a.time, b.time)
    for name in ("heart_rate_bpm", "spo2_pct", "accel_peak_g", "stillness_s", "steps", "battery"):
        assert np.array_equal(a.rec[name], b.rec[name]), name
    gps = a.model.spec.flag("gps_valid").mask
    assert np.array_equal(a.rec["flags"].astype(np.int64) & ~gps, b.rec["flags"].astype(np.int64) & ~gps)
    assert not np.array_equal(a.rec["lat"], b.rec["lat"])


def test_a_fallen_wearer_stays_where_they_fell() -> None:
    u = simulate(4, n=150, days=1.0, rates={K.WRISTBAND: {"fall": 1.0}})
    ids = list(u.model.sites.device_id)
    falls = [r for r in u.fleet.truth if r.event_type is EventType.FALL and r.end - r.start > 600]
    assert falls
    spans = []
    for r in falls:
        d = ids.index(r.device_id)
        sel = (u.idx == d) & (u.time >= r.start + 5) & (u.time < r.end) & u.valid
        if sel.sum() >= 2:
            la, lo = u.rec["lat"][sel] * 1e-6, u.rec["lon"][sel] * 1e-6
            dy = (la.max() - la.min()) * 111_320.0
            dx = (lo.max() - lo.min()) * 111_320.0 * np.cos(np.radians(la.mean()))
            spans.append(max(dx, dy))
    assert spans  # some falls happen outdoors, and the fix keeps coming while the person lies there
    assert max(spans) < 120.0, spans  # GNSS scatter only (walks span 300 m)
