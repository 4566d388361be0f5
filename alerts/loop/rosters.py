"""Who is on call: responders, rotations and overrides (GoAlert's model), coverage gaps, and dispatch.

- A :class:`Responder` has roles, zones (grid cells; ``*`` = everywhere), a base position, a load limit.
- A :class:`Rotation` hands one role in one zone from participant to participant every ``shift_s``
  starting at ``start`` (``shift_s = 0``: everyone listed is on call together), optionally only inside a
  local daily window (working hours of a property office).
- An :class:`Override` replaces a responder by another for a time (a swap), or removes them (leave:
  ``by = None``).

:func:`on_call` answers who is on call at an instant; :func:`coverage_gaps` lists (zone, role, from, to)
spans with nobody in the next days; :func:`pick` chooses the nearest available, not overloaded responder.
All pure: time is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from alerts.loop.errors import InvalidConfig
from alerts.loop.routing import ROLES, parse_hours

ANY_ZONE = "*"


@dataclass(frozen=True, slots=True)
class Responder:
    id: str
    name: str
    roles: frozenset[str]
    zones: frozenset[str] = frozenset({ANY_ZONE})
    lat: float | None = None
    lon: float | None = None
    max_load: int = 5
    channels: tuple[str, ...] = ()

    def covers(self, zone: str) -> bool:
        return ANY_ZONE in self.zones or zone in self.zones


@dataclass(frozen=True, slots=True)
class Rotation:
    id: str
    role: str
    zone: str
    participants: tuple[str, ...]
    start: float
    shift_s: float = 86400.0
    hours: tuple[int, int] | None = None  # local minutes [from, to)

    def on_call_at(self, t: float, zone_info: ZoneInfo) -> tuple[str, ...]:
        if t < self.start or not self.participants:
            return ()
        if self.hours is not None:
            local = datetime.fromtimestamp(t, zone_info)
            m = local.hour * 60 + local.minute
            lo, hi = self.hours
            if not (lo <= m < hi if lo <= hi else m >= lo or m < hi):
                return ()
        if self.shift_s <= 0:
            return self.participants
        i = int((t - self.start) // self.shift_s) % len(self.participants)
        return (self.participants[i],)


@dataclass(frozen=True, slots=True)
class Override:
    responder: str
    by: str | None  # None: on leave, nobody replaces them
    start: float
    end: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Roster:
    responders: Mapping[str, Responder]
    rotations: tuple[Rotation, ...] = ()
    overrides: tuple[Override, ...] = ()
    zone: str = "Asia/Shanghai"

    def on_call(self, role: str, zone: str, t: float) -> list[Responder]:
        """Responders on call for ``role`` in ``zone`` at ``t``, overrides applied, in rotation order."""
        tz = ZoneInfo(self.zone)
        ids: list[str] = []
        for rot in self.rotations:
            if rot.role == role and (rot.zone == zone or rot.zone == ANY_ZONE):
                ids.extend(rot.on_call_at(t, tz))
        out: list[str] = []
        for rid in ids:
            for ov in self.overrides:
                if ov.responder == rid and ov.start <= t < ov.end:
                    rid = ov.by or ""
                    break
            if rid and rid not in out:
                out.append(rid)
        return [self.responders[r] for r in out if r in self.responders]


@dataclass(frozen=True, slots=True)
class Gap:
    role: str
    zone: str
    start: float
    end: float


def coverage_gaps(
    roster: Roster, needs: Sequence[tuple[str, str]], start: float, horizon_s: float = 7 * 86400.0
) -> list[Gap]:
    """Spans in ``[start, start + horizon_s)`` where a needed (role, zone) has nobody on call.

    Exact, not sampled: on-call can only change at a rotation hand-over, a daily window edge or an
    override's start or end, so the roster is evaluated once per span between those instants.
    """
    end = start + horizon_s
    points = changes(roster, start, end)
    gaps: list[Gap] = []
    for role, zone in needs:
        open_at: float | None = None
        for a in points[:-1]:
            empty = not roster.on_call(role, zone, a)
            if empty and open_at is None:
                open_at = a
            elif not empty and open_at is not None:
                gaps.append(Gap(role, zone, open_at, a))
                open_at = None
        if open_at is not None:
            gaps.append(Gap(role, zone, open_at, end))
    return gaps


def changes(roster: Roster, start: float, end: float, roles: Sequence[str] | None = None) -> list[float]:
    """The instants in ``[start, end]`` (both included) where who is on call may change: rotation starts
    and hand-overs, daily window edges, overrides' starts and ends (of ``roles``' rotations only, when
    given; overrides count whatever the role, they name a person). Sorted."""
    tz = ZoneInfo(roster.zone)
    cuts = {start, end}
    for rot in roster.rotations:
        if roles is not None and rot.role not in roles:
            continue
        if rot.start > start:
            cuts.add(min(rot.start, end))
        if rot.shift_s > 0:
            k = max(0, math.ceil((start - rot.start) / rot.shift_s))
            t = rot.start + k * rot.shift_s
            while t < end and len(cuts) < 200_000:
                cuts.add(t)
                t += rot.shift_s
        if rot.hours is not None:
            day = datetime.fromtimestamp(start, tz).date()
            while datetime.combine(day, datetime.min.time(), tz).timestamp() < end:
                for m in rot.hours:
                    cuts.add(datetime.combine(day, datetime.min.time(), tz).timestamp() + m * 60)
                day += timedelta(days=1)
    for ov in roster.overrides:
        cuts.update(x for x in (ov.start, ov.end) if start < x < end)
    return sorted(c for c in cuts if start <= c <= end)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine), metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_000 * math.asin(min(1.0, math.sqrt(h)))


def pick(
    candidates: Sequence[Responder],
    *,
    lat: float | None,
    lon: float | None,
    load: Mapping[str, int],
    positions: Mapping[str, tuple[float, float]] = {},
) -> Responder | None:
    """The nearest available responder (last known position, else base) below their load limit."""

    def dist(r: Responder) -> float:
        pos = positions.get(r.id) or ((r.lat, r.lon) if r.lat is not None and r.lon is not None else None)
        if pos is None or lat is None or lon is None or pos[0] is None or pos[1] is None:
            return math.inf
        return distance_m(lat, lon, pos[0], pos[1])

    free = [r for r in candidates if load.get(r.id, 0) < r.max_load]
    if not free:
        return None
    return min(free, key=lambda r: (dist(r), load.get(r.id, 0), r.id))


# -- parsing ---------------------------------------------------------------------------------------------
def roster_from_dict(raw: Mapping[str, object], *, roles: Mapping[str, object] = ROLES) -> Roster:
    """``{"zone": ..., "responders": [...], "rotations": [...], "overrides": [...]}``, validated."""
    resp: dict[str, Responder] = {}
    for i, r in enumerate(_list(raw, "responders")):
        p = f"roster.responders[{i}]"
        rid = _str(r, "id", p)
        if rid in resp:
            raise InvalidConfig(f"{p}.id", f"duplicate responder {rid!r}")
        rl = r.get("roles")
        if not isinstance(rl, list) or not rl:
            raise InvalidConfig(f"{p}.roles", "a non-empty list of roles")
        for role in rl:
            if role not in roles:
                raise InvalidConfig(f"{p}.roles", f"unknown role {role!r} for responder {rid!r}")
        zones = r.get("zones", [ANY_ZONE])
        if not isinstance(zones, list) or not zones:
            raise InvalidConfig(f"{p}.zones", "a non-empty list of grid cells ('*' = everywhere)")
        max_load = r.get("max_load", 5)
        if not isinstance(max_load, int) or max_load < 1:
            raise InvalidConfig(f"{p}.max_load", "a whole number of open orders, at least 1")
        channels = r.get("channels", [])
        if not isinstance(channels, list):
            raise InvalidConfig(f"{p}.channels", "a list of channel names")
        resp[rid] = Responder(
            id=rid,
            name=str(r.get("name", rid)),
            roles=frozenset(map(str, rl)),
            zones=frozenset(map(str, zones)),
            lat=_opt_float(r, "lat", p),
            lon=_opt_float(r, "lon", p),
            max_load=max_load,
            channels=tuple(map(str, channels)),
        )
    rots = []
    for i, r in enumerate(_list(raw, "rotations")):
        p = f"roster.rotations[{i}]"
        role = _str(r, "role", p)
        if role not in roles:
            raise InvalidConfig(f"{p}.role", f"unknown role {role!r}")
        parts = r.get("participants")
        if not isinstance(parts, list) or not parts:
            raise InvalidConfig(f"{p}.participants", "a non-empty list of responder ids")
        for pid in parts:
            if pid not in resp:
                raise InvalidConfig(f"{p}.participants", f"unknown responder {pid!r}")
            if role not in resp[pid].roles:
                raise InvalidConfig(f"{p}.participants", f"responder {pid!r} does not have role {role!r}")
        hours = r.get("hours")
        hrs = parse_hours(hours, f"{p}.hours")
        start = _opt_float(r, "start", p) or 0.0
        shift = _opt_float(r, "shift_s", p)
        if shift is not None and shift < 0:
            raise InvalidConfig(f"{p}.shift_s", "seconds per shift, >= 0 (0 = everyone together)")
        rots.append(
            Rotation(
                id=str(r.get("id", f"rotation-{i}")),
                role=role,
                zone=str(r.get("zone", ANY_ZONE)),
                participants=tuple(map(str, parts)),
                start=start,
                shift_s=86400.0 if shift is None else shift,
                hours=hrs,
            )
        )
    ovs = []
    for i, r in enumerate(_list(raw, "overrides")):
        ovs.append(override_from_dict(r, resp, f"roster.overrides[{i}]"))
    return Roster(resp, tuple(rots), tuple(ovs), str(raw.get("zone", "Asia/Shanghai")))


def override_from_dict(r: Mapping[str, object], responders: Mapping[str, Responder], p: str) -> Override:
    who = _str(r, "responder", p)
    if who not in responders:
        raise InvalidConfig(f"{p}.responder", f"unknown responder {who!r}")
    by = r.get("by")
    if by is not None and by not in responders:
        raise InvalidConfig(f"{p}.by", f"unknown responder {by!r}")
    s, e = r.get("start"), r.get("end")
    if not isinstance(s, int | float) or not isinstance(e, int | float) or e <= s:
        raise InvalidConfig(f"{p}.end", "start and end are epoch seconds with end after start")
    return Override(who, None if by is None else str(by), float(s), float(e), str(r.get("reason", "")))


def _list(raw: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    v = raw.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, Mapping) for x in v):
        raise InvalidConfig(f"roster.{key}", "a list of objects")
    return v


def _str(r: Mapping[str, object], key: str, p: str) -> str:
    v = r.get(key)
    if not isinstance(v, str) or not v:
        raise InvalidConfig(f"{p}.{key}", "required text")
    return v


def _opt_float(r: Mapping[str, object], key: str, p: str) -> float | None:
    v = r.get(key)
    if v is None:
        return None
    if not isinstance(v, int | float):
        raise InvalidConfig(f"{p}.{key}", "a number")
    return float(v)


def shift_changes(roster: Roster, role: str, after: float, upto: float) -> list[float]:
    """The instants in ``(after, upto]`` where who is on call for ``role`` may change (a hand-over, a
    window edge, an override's start or end): the moments a shift change hands open work over."""
    return [c for c in changes(roster, after, upto + 1.0, (role,)) if after < c <= upto]
