"""A plausible, seeded neighbourhood: streets, wells, buildings, homes, residents and responders' bases.

Why: the console's map and the nearest-responder dispatch need coordinates that look like a real
community (wells along roads, some on the carriageway and some on the pavement; alarms in flats; elderly
residents living in those flats), and CI needs the same map from the same seed. The default centre is a
Haidian-like area of Beijing (39.96 N, 116.30 E). Distances use a local equirectangular projection, good
to centimetres over a few kilometres.

Phone numbers are synthetic and deliberately *not* valid Chinese mobile numbers (``+86-100-...``; real
mobiles start with 13-19), so a misconfigured SMS action can never reach a real person.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from firmware_bridge.kernel.records import DeviceKind

M_PER_DEG_LAT = 111_320.0
#: Haidian-like street names, as a real community's devices.csv and its street signs carry them
STREET_NAMES = (
    "中关村",
    "学院",
    "成府",
    "苏州",
    "万泉河",
    "丹棱",
    "彩和坊",
    "黄庄",
    "魏公村",
    "双榆树",
    "知春",
    "海淀",
    "白石桥",
    "西直门",
    "大慧寺",
    "明光",
    "北四环",
    "莲花池",
    "五道口",
    "清华",
    "颐和园",
    "蓝靛厂",
    "西苑",
    "世纪城",
)
STREET_SUFFIX = ("路", "大街", "北路", "南路", "东街", "西街", "胡同", "巷")
COMMUNITY_NAMES = (
    "黄庄",
    "双榆树",
    "知春里",
    "魏公村",
    "彩和坊",
    "当代",
    "海淀路",
    "小南庄",
    "万柳",
    "人民大学",
    "北太平庄",
    "明光",
    "甘家口",
    "紫竹院",
    "八里庄",
    "永定",
)
SURNAMES = ("王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "马", "朱")
GIVEN = (
    "秀英",
    "桂英",
    "玉兰",
    "淑芬",
    "桂芝",
    "建国",
    "国强",
    "志强",
    "保国",
    "凤英",
    "兰英",
    "淑兰",
    "德成",
    "永福",
    "惠民",
    "金花",
    "玉梅",
    "春兰",
)
ROLES = (
    "grid_worker",
    "municipal_crew",
    "traffic_police",
    "property_management",
    "community_doctor",
    "family",
    "volunteer",
    "fire_119",
    "ambulance_120",
)
CELL_M = 500.0  # one grid (网格) cell
COMMUNITY_M = 1000.0  # one community (社区)
GATEWAY_CELL_M = 800.0  # one gateway's coverage cell in the simulation


def fake_phone(i: int) -> str:
    """A synthetic phone number that is never a real Chinese mobile number (mobiles start with 13-19)."""
    return f"+86-100-{(i // 10000) % 10000:04d}-{i % 10000:04d}"


@dataclass(frozen=True)
class Street:
    name: str
    points: npt.NDArray[np.float64]  # (k, 2) local metres (x east, y north)
    traffic: bool  # carries through traffic (trucks)


@dataclass
class Sites:
    """Where the devices of one kind are, as columns (index = device index within the kind)."""

    kind: DeviceKind
    device_id: list[str]
    xy: npt.NDArray[np.float64]  # (n, 2) local metres
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    street: npt.NDArray[np.int64]  # street index
    on_road: npt.NDArray[np.bool_]
    kitchen: npt.NDArray[np.bool_]  # smoke alarms near a kitchen (cooking nuisance possible)
    address: list[str]
    name: list[str]
    wearer: list[tuple[str, str, str]] = field(default_factory=list)  # (name, phone, emergency contact)

    def __len__(self) -> int:
        return len(self.device_id)


@dataclass
class Neighbourhood:
    """The whole map. Built by :func:`build_neighbourhood`; deterministic from the seed."""

    lat0: float
    lon0: float
    streets: list[Street]
    sites: dict[DeviceKind, Sites]
    gateways: list[tuple[str, float, float]]  # (gateway_id, x, y)
    responders: list[dict[str, object]]

    def to_latlon(
        self, xy: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        lat = self.lat0 + xy[:, 1] / M_PER_DEG_LAT
        lon = self.lon0 + xy[:, 0] / (M_PER_DEG_LAT * math.cos(math.radians(self.lat0)))
        return lat, lon

    def grid_of(self, xy: npt.NDArray[np.float64]) -> list[str]:
        c = np.floor(xy / CELL_M).astype(int)
        return [f"G{r + 50:02d}{q + 50:02d}" for q, r in c.tolist()]

    def community_of(self, xy: npt.NDArray[np.float64]) -> list[str]:
        c = np.floor(xy / COMMUNITY_M).astype(int)
        return [f"{COMMUNITY_NAMES[(q * 7 + r * 3) % len(COMMUNITY_NAMES)]}社区" for q, r in c.tolist()]

    def gateway_of(self, xy: npt.NDArray[np.float64]) -> list[str]:
        g = np.array([[x, y] for _, x, y in self.gateways])
        d = ((xy[:, None, :] - g[None, :, :]) ** 2).sum(axis=2)
        nearest = d.argmin(axis=1)
        return [self.gateways[i][0] for i in nearest.tolist()]


def _points_along(
    streets: list[Street],
    which: npt.NDArray[np.int64],
    frac: npt.NDArray[np.float64],
    offset: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Points at fraction ``frac`` of each chosen street's length, ``offset`` metres to its left."""
    out = np.empty((len(which), 2))
    for s_idx in np.unique(which):
        sel = np.flatnonzero(which == s_idx)
        pts = streets[int(s_idx)].points
        seg = np.diff(pts, axis=0)
        seg_len = np.hypot(seg[:, 0], seg[:, 1])
        cum = np.concatenate([[0.0], np.cumsum(seg_len)])
        dist = frac[sel] * cum[-1]
        k = np.clip(np.searchsorted(cum, dist, side="right") - 1, 0, len(seg) - 1)
        u = (dist - cum[k]) / np.maximum(seg_len[k], 1e-9)
        base = pts[k] + seg[k] * u[:, None]
        normal = np.stack([-seg[k, 1], seg[k, 0]], axis=1) / np.maximum(seg_len[k], 1e-9)[:, None]
        out[sel] = base + normal * offset[sel, None]
    return out


def _streets(rng: np.random.Generator, side_m: float) -> list[Street]:
    n_each = max(2, round(side_m / 300.0))
    streets: list[Street] = []
    names = [f"{a}{b}" for b in STREET_SUFFIX for a in STREET_NAMES]
    order = rng.permutation(len(names))
    for axis in (0, 1):
        for i in range(n_each):
            pos = -side_m / 2 + (i + 0.5) * side_m / n_each + rng.uniform(-40, 40)
            k = int(rng.integers(3, 7))
            along = np.linspace(-side_m / 2 - 50, side_m / 2 + 50, k)
            across = pos + np.cumsum(rng.normal(0, 12, k))
            pts = np.stack([along, across], axis=1) if axis == 0 else np.stack([across, along], axis=1)
            name = names[int(order[len(streets) % len(names)])]
            streets.append(Street(name, pts, traffic=bool(i % 2 == 0 or rng.random() < 0.3)))
    return streets


def _ids(rng: np.random.Generator, n: int, seen: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        for v in rng.integers(0, 2**63, size=n - len(out), dtype=np.int64).tolist():
            s = f"{v:016x}"
            if s not in seen:
                seen.add(s)
                out.append(s)
    return out


def build_neighbourhood(
    counts: dict[DeviceKind, int],
    rng: np.random.Generator,
    *,
    lat0: float = 39.96,
    lon0: float = 116.30,
    homes_per_building: tuple[int, int] = (18, 60),
) -> Neighbourhood:
    """Lay out a community big enough for ``counts`` devices around ``(lat0, lon0)``."""
    total = max(1, sum(counts.values()))
    side_m = 600.0 + 450.0 * math.sqrt(total / 300.0)
    streets = _streets(rng, side_m)
    nb = Neighbourhood(lat0, lon0, streets, {}, [], [])
    g_n = max(1, math.ceil(side_m / GATEWAY_CELL_M))
    centres = (np.arange(g_n) + 0.5) * side_m / g_n - side_m / 2
    nb.gateways = [
        (f"gw-{i * g_n + j + 1:03d}", float(x), float(y))
        for i, x in enumerate(centres)
        for j, y in enumerate(centres)
    ]
    seen: set[str] = set()
    n_st = len(streets)

    # buildings along streets, each holding homes (flats)
    n_homes_needed = counts.get(DeviceKind.SMOKE_ALARM, 0) + counts.get(DeviceKind.WRISTBAND, 0) + 1
    n_buildings = max(1, math.ceil(n_homes_needed / np.mean(homes_per_building)))
    b_street = rng.integers(0, n_st, n_buildings)
    b_xy = _points_along(
        streets,
        b_street,
        rng.uniform(0.03, 0.97, n_buildings),
        rng.choice([-1.0, 1.0], n_buildings) * rng.uniform(25, 60, n_buildings),
    )
    b_no = rng.integers(1, 300, n_buildings)
    b_homes = rng.integers(homes_per_building[0], homes_per_building[1] + 1, n_buildings)

    def homes(n: int) -> tuple[npt.NDArray[np.int64], list[str], list[str]]:
        """Buildings, addresses and stairwells (楼道) of n homes: 中关村大街27号3号楼2单元1203室."""
        b = rng.choice(n_buildings, size=n, p=b_homes / b_homes.sum())
        unit = rng.integers(1, 5, n)
        room = rng.integers(1, 19, n) * 100 + rng.integers(1, 5, n)
        stair = [
            f"{streets[b_street[i]].name}{b_no[i]}号{i + 1}号楼{u}单元"
            for i, u in zip(b.tolist(), unit.tolist(), strict=True)
        ]
        return b, [f"{s}{r}室" for s, r in zip(stair, room.tolist(), strict=True)], stair

    for kind in (DeviceKind.MANHOLE, DeviceKind.SMOKE_ALARM, DeviceKind.WRISTBAND):
        n = counts.get(kind, 0)
        ids = _ids(rng, n, seen)
        kitchen = np.zeros(n, dtype=bool)
        on_road = np.zeros(n, dtype=bool)
        wearer: list[tuple[str, str, str]] = []
        if kind is DeviceKind.MANHOLE:
            street = rng.integers(0, n_st, n)
            on_road = rng.random(n) < 0.6
            offset = np.where(
                on_road, rng.uniform(-4, 4, n), rng.choice([-1.0, 1.0], n) * rng.uniform(8, 12, n)
            )
            xy = _points_along(streets, street, rng.uniform(0.02, 0.98, n), offset)
            address = [
                f"{streets[s].name}{k}号附近{'机动车道' if r else '人行道'}"
                for s, r, k in zip(
                    street.tolist(), on_road.tolist(), rng.integers(1, 300, n).tolist(), strict=True
                )
            ]
            names = [f"井盖{i + 1:05d}" for i in range(n)]
        else:
            b, address, stairwell = homes(n)
            street = b_street[b]
            xy = b_xy[b] + rng.normal(0, 4, (n, 2))
            if kind is DeviceKind.SMOKE_ALARM:
                shared = rng.random(n) < 0.1
                kitchen = (~shared) & (rng.random(n) < 0.4)
                address = [
                    f"{w}楼道" if s else a
                    for a, w, s in zip(address, stairwell, shared.tolist(), strict=True)
                ]
                names = [f"烟感{i + 1:05d}" for i in range(n)]
            else:
                sn = rng.integers(0, len(SURNAMES), n).tolist()
                gn = rng.integers(0, len(GIVEN), n).tolist()
                wearer = [
                    (f"{SURNAMES[s]}{GIVEN[g]}", fake_phone(20_000 + i), fake_phone(40_000 + i))
                    for i, (s, g) in enumerate(zip(sn, gn, strict=True))
                ]
                names = [f"手环{i + 1:05d}" for i in range(n)]
        lat, lon = nb.to_latlon(xy) if n else (np.empty(0), np.empty(0))
        nb.sites[kind] = Sites(
            kind, ids, xy, lat, lon, street.astype(np.int64), on_road, kitchen, address, names, wearer
        )
    nb.responders = _responders(nb, rng, side_m)
    return nb


def _responders(nb: Neighbourhood, rng: np.random.Generator, side_m: float) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []

    def add(role: str, name: str, xy: tuple[float, float], base: str) -> None:
        lat, lon = nb.to_latlon(np.array([xy]))
        rows.append(
            {
                "responder_id": f"r-{len(rows) + 1:04d}",
                "name": name,
                "role": role,
                "phone": fake_phone(len(rows) + 1),
                "lat": round(float(lat[0]), 6),
                "lon": round(float(lon[0]), 6),
                "base": base,
            }
        )

    def spot(r: float = 0.5) -> tuple[float, float]:
        return (float(rng.uniform(-side_m * r, side_m * r)), float(rng.uniform(-side_m * r, side_m * r)))

    cells = max(1, math.ceil(side_m / CELL_M))
    for i in range(cells * cells):
        q, r = divmod(i, cells)
        xy = ((q + 0.5) * side_m / cells - side_m / 2, (r + 0.5) * side_m / cells - side_m / 2)
        add("grid_worker", f"网格员{i + 1}", xy, f"第{i + 1}网格工作站")
    for i in range(max(1, cells // 2)):
        add("municipal_crew", f"市政抢修{i + 1}队", spot(0.6), "市政养护站")
        add("traffic_police", f"交警{i + 1}组", spot(), "交警岗亭")
        add("property_management", f"物业{i + 1}处", spot(), "物业服务中心")
        add("community_doctor", f"{SURNAMES[i % len(SURNAMES)]}医生", spot(0.3), "社区卫生服务站")
        add("volunteer", f"志愿者{i + 1}", spot(), "社区服务中心")
    add("fire_119", "消防救援站 (119)", spot(0.7), "消防救援站")
    add("ambulance_120", "急救中心 (120)", spot(0.7), "急救中心")
    wb = nb.sites.get(DeviceKind.WRISTBAND)
    if wb is not None:
        for i, (wname, _, contact) in enumerate(wb.wearer):
            xy = (float(wb.xy[i, 0] + rng.normal(0, 800)), float(wb.xy[i, 1] + rng.normal(0, 800)))
            add("family", f"{wname}的家属", xy, f"family of {wb.device_id[i]}")
            rows[-1]["phone"] = contact
    return rows
