"""A simulated fleet: neighbourhood + one vectorised signal model per kind + link faults, from one seed.

Why one object: the gateway and demo engineers need the same thing in tests and on the command line:
frames in time order (:meth:`Fleet.run`), the ground truth of what happened (:attr:`Fleet.truth`, filled
when a run is planned), the faults injected (:attr:`Fleet.faults_log`) and the device manifest
(:meth:`Fleet.manifest_rows`, ``devices.csv``). Same seed -> byte-identical frames, truth and manifest:
every component draws from its own child of one :class:`numpy.random.SeedSequence`, so enabling an output
or adding a kind does not shift the others' random streams.

Example (seeded, runnable)::

    >>> from firmware_bridge.kernel.records import DeviceKind
    >>> fleet = Fleet.build({DeviceKind.WRISTBAND: 20}, seed=7)
    >>> frames = list(fleet.run(start=1_780_272_000.0, duration_s=3600))
    >>> all(a.time <= b.time for a, b in zip(frames, frames[1:]))
    True
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from firmware_bridge.devicelist import DEVICE_CSV_COLUMNS
from firmware_bridge.kernel.records import DeviceKind
from simulators.base import KindModel
from simulators.faults import FaultInjector, LinkFaultRates, SimFrame
from simulators.neighbourhood import Neighbourhood, build_neighbourhood
from simulators.registry import MODELS
from simulators.truth import TruthRecord, sort_key

if TYPE_CHECKING:
    from simulators.config import FleetConfig

MANIFEST_COLUMNS = DEVICE_CSV_COLUMNS  # the installers' device list, firmware_bridge/devicelist.py
RESPONDER_COLUMNS = ("responder_id", "name", "role", "phone", "lat", "lon", "base")


@dataclass
class FleetStats:
    frames: dict[str, int] = field(default_factory=dict)
    simulated_s: float = 0.0


class Fleet:
    """See the module docstring. Build with :meth:`build` or :meth:`from_config`."""

    def __init__(
        self,
        counts: dict[DeviceKind, int],
        seed: int,
        *,
        lat0: float = 39.96,
        lon0: float = 116.30,
        rates: dict[DeviceKind, dict[str, float]] | None = None,
        faults: LinkFaultRates | None = None,
        step_s: float = 300.0,
    ) -> None:
        self.counts = {k: int(counts.get(k, 0)) for k in MODELS}
        self.seed = int(seed)
        self.rates = rates or {}
        self.fault_rates = faults or LinkFaultRates()
        self.step_s = float(step_s)
        ss = np.random.SeedSequence(self.seed)
        self._nb_seed, self._keys_seed, self._faults_seed, *kind_seeds = ss.spawn(3 + len(MODELS))
        self._kind_seeds = dict(zip(MODELS, kind_seeds, strict=True))
        self.neighbourhood: Neighbourhood = build_neighbourhood(
            self.counts, np.random.default_rng(self._nb_seed), lat0=lat0, lon0=lon0
        )
        self.gateway_ids = [g for g, _, _ in self.neighbourhood.gateways]
        self._gw: dict[DeviceKind, list[str]] = {}
        for kind, sites in self.neighbourhood.sites.items():
            self._gw[kind] = self.neighbourhood.gateway_of(sites.xy) if len(sites) else []
        self._keys = self._lora_keys()
        self.truth: list[TruthRecord] = []
        self.faults_log: list[dict[str, object]] = []
        self.stats = FleetStats()
        self.models: dict[DeviceKind, KindModel] = {}
        self.injector: FaultInjector | None = None
        self._index: dict[DeviceKind, dict[str, int]] = {}

    @classmethod
    def build(cls, counts: dict[DeviceKind, int], seed: int, **kwargs: object) -> Fleet:
        return cls(counts, seed, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, cfg: FleetConfig) -> Fleet:
        f = cfg.faults
        rates = LinkFaultRates(
            f.corrupt,
            f.truncate,
            f.duplicate,
            f.reorder,
            f.skewed_gateways,
            f.skew_s,
            f.outages_per_gateway_day,
            (f.outage_min_s, max(f.outage_max_s, f.outage_min_s)),
        )
        return cls(
            cfg.devices.counts(),
            cfg.seed,
            lat0=cfg.area.lat,
            lon0=cfg.area.lon,
            rates={k: cfg.scenarios.for_kind(k) for k in DeviceKind},
            faults=rates,
            step_s=cfg.step_s,
        )

    # -- identities -----------------------------------------------------------------------------------
    def _lora_keys(self) -> dict[str, tuple[str, str, str]]:
        rng = np.random.default_rng(self._keys_seed)
        out: dict[str, tuple[str, str, str]] = {}
        used: set[str] = set()
        for kind in MODELS:
            for dev in self.neighbourhood.sites[kind].device_id:
                raw = rng.bytes(36)
                addr = raw[:4].hex()
                while addr in used:
                    addr = rng.bytes(4).hex()
                used.add(addr)
                out[dev] = (addr, raw[4:20].hex(), raw[20:36].hex())
        return out

    def lora_keys(self, device_id: str) -> tuple[str, str, str]:
        """``(dev_addr, nwk_skey, app_skey)`` as lowercase hex for a device."""
        return self._keys[device_id]

    def lora_key_table(self) -> dict[str, tuple[str, str, str]]:
        """Every device's ``(dev_addr, nwk_skey, app_skey)`` (a copy)."""
        return dict(self._keys)

    def device_count(self) -> int:
        return sum(self.counts.values())

    # -- running --------------------------------------------------------------------------------------
    def plan(self, start: float, duration_s: float) -> None:
        """Create fresh models, schedule every effect of the run and compute the ground truth."""
        self.start, self.duration_s = float(start), float(duration_s)
        self.models = {}
        for kind, model_cls in MODELS.items():
            sites = self.neighbourhood.sites[kind]
            model = model_cls(
                sites,
                self.start,
                np.random.default_rng(self._kind_seeds[kind]),
                rates=dict(self.rates.get(kind, {})),
            )
            model.plan(self.start, self.duration_s)
            self.models[kind] = model
        end = self.start + self.duration_s
        self.truth = sorted((r for m in self.models.values() for r in m.truth(end)), key=sort_key)
        self.injector = FaultInjector(
            self.fault_rates,
            self.gateway_ids,
            np.random.default_rng(self._faults_seed),
            self.start,
            self.duration_s,
        )
        self.faults_log = self.injector.log
        self.stats = FleetStats(frames={k.value: 0 for k in MODELS})

    def handle(self, device_id: str, event_type: str, *, on_site: float, done: float) -> float | None:
        """A responder on site at ``device_id`` since ``on_site`` ends its running ``event_type`` episode
        at ``done`` (:meth:`simulators.base.KindModel.handle`): the device's own frames then show it over
        (and the gateway's detection clears the alert), and :attr:`truth` records the end, marked
        ``handled``. Returns the end applied (``done``, or the end of the tick already generated if that
        is later), or None when nothing there reacts (an unknown device, a nuisance, rain, a walk)."""
        from firmware_bridge.kernel.events import EventType

        try:
            label = EventType(event_type)
        except ValueError:
            return None
        for kind, model in self.models.items():
            ids = self.neighbourhood.sites[kind].device_id
            index = self._index.get(kind)
            if index is None:
                index = self._index[kind] = {d: i for i, d in enumerate(ids)}
            dev = index.get(device_id)
            if dev is None:
                continue
            rows = model.handle(dev, label, on_site=on_site, done=done)
            if not rows:
                return None
            end = self.start + self.duration_s
            self.truth = sorted((r for m in self.models.values() for r in m.truth(end)), key=sort_key)
            return float(model.schedule.end[rows[0]])
        return None

    def run_ticks(self, start: float, duration_s: float) -> Iterator[tuple[float, list[SimFrame]]]:
        """Yield ``(tick_end, frames delivered before tick_end)``; frames are in time order overall."""
        self.plan(start, duration_s)
        assert self.injector is not None
        inj = self.injector
        end = self.start + self.duration_s
        t = self.start
        kinds = list(self.models)
        while t < end:
            t1 = min(t + self.step_s, end)
            times: list[npt.NDArray[np.float64]] = []
            kind_no: list[npt.NDArray[np.int64]] = []
            rows: list[npt.NDArray[np.int64]] = []
            payloads: list[npt.NDArray[np.uint8]] = []
            seqs: list[npt.NDArray[np.uint32]] = []
            present: list[DeviceKind] = []
            for kind in kinds:
                em = self.models[kind].step(t, t1)
                if len(em):
                    times.append(em.time)
                    kind_no.append(np.full(len(em), len(rows)))
                    present.append(kind)
                    rows.append(em.idx)
                    payloads.append(em.payloads)
                    seqs.append(em.seq)
                    self.stats.frames[kind.value] += len(em)
            frames: list[SimFrame] = []
            if times:
                tt = np.concatenate(times)
                kk = np.concatenate(kind_no)
                order = np.argsort(tt, kind="stable").tolist()
                blobs = [p.tobytes() for p in payloads]
                sizes = [p.shape[1] for p in payloads]
                offsets = np.cumsum([0] + [len(r) for r in rows]).tolist()
                rr = np.concatenate(rows).tolist()
                ss = np.concatenate(seqs).tolist()
                tl = tt.tolist()
                kl = kk.tolist()
                for j in order:
                    k_i = kl[j]
                    kind = present[k_i]
                    local = j - offsets[k_i]
                    size = sizes[k_i]
                    dev = rr[j]
                    frames.append(
                        SimFrame(
                            tl[j],
                            self.neighbourhood.sites[kind].device_id[dev],
                            kind,
                            blobs[k_i][local * size : (local + 1) * size],
                            ss[j],
                            self._gw[kind][dev],
                            tl[j],
                        )
                    )
            inj.push(frames)
            self.stats.simulated_s = t1 - self.start
            yield t1, inj.pop_until(t1)
            t = t1
        rest = inj.drain()
        self.faults_log.extend(inj.outage_records())
        inj.counts["outage"] = len(inj.outage_records())
        if rest:
            yield end, rest

    def run(self, start: float, duration_s: float) -> Iterator[SimFrame]:
        """All frames of ``[start, start + duration_s)`` after link faults, in arrival-time order."""
        for _, frames in self.run_ticks(start, duration_s):
            yield from frames

    # -- manifest -------------------------------------------------------------------------------------
    def manifest_rows(self) -> list[dict[str, object]]:
        nb = self.neighbourhood
        rows: list[dict[str, object]] = []
        for kind in MODELS:
            s = nb.sites[kind]
            if not len(s):
                continue
            grids = nb.grid_of(s.xy)
            comms = nb.community_of(s.xy)
            for i, dev in enumerate(s.device_id):
                addr, nwk, app = self._keys[dev]
                wearer = s.wearer[i] if s.wearer else ("", "", "")
                rows.append(
                    {
                        "device_id": dev,
                        "kind": kind.value,
                        "name": s.name[i],
                        "lat": round(float(s.lat[i]), 6),
                        "lon": round(float(s.lon[i]), 6),
                        "address": s.address[i],
                        "grid": grids[i],
                        "community": comms[i],
                        "street": nb.streets[int(s.street[i])].name,
                        "on_road": "true" if bool(s.on_road[i]) else "false",
                        "gateway_id": self._gw[kind][i],
                        "profile": "default",
                        "dev_addr": addr,
                        "nwk_skey": nwk,
                        "app_skey": app,
                        "wearer_name": wearer[0],
                        "wearer_phone": wearer[1],
                        "emergency_contact_phone": wearer[2],
                    }
                )
        return rows

    def write_manifest(self, outdir: Path) -> None:
        """``devices.csv`` and ``responders.csv`` (and ``neighbourhood.json`` with streets and gateways)."""
        outdir.mkdir(parents=True, exist_ok=True)
        with (outdir / "devices.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(self.manifest_rows())
        with (outdir / "responders.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=RESPONDER_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(self.neighbourhood.responders)
        nb = self.neighbourhood
        streets = []
        for st in nb.streets:
            lat, lon = nb.to_latlon(st.points)
            streets.append(
                {
                    "name": st.name,
                    "traffic": st.traffic,
                    "points": [
                        [round(a, 6), round(b, 6)] for a, b in zip(lat.tolist(), lon.tolist(), strict=True)
                    ],
                }
            )
        gws = []
        for g, x, y in nb.gateways:
            lat, lon = nb.to_latlon(np.array([[x, y]]))
            gws.append({"gateway_id": g, "lat": round(float(lat[0]), 6), "lon": round(float(lon[0]), 6)})
        (outdir / "neighbourhood.json").write_text(
            json.dumps({"centre": [nb.lat0, nb.lon0], "streets": streets, "gateways": gws}, indent=1),
            encoding="utf-8",
        )
