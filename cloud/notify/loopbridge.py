"""The seam to the closed loop (``cloud/loop``, issue 8): its intents in, our actions out.

- :class:`LoopIntents` (an :class:`~cloud.notify.worker.IntentSource`) claims ``notification_intents``
  rows (``pending`` -> ``claimed`` by conditional UPDATE; a ``claimed`` row older than ``lease_s`` is
  taken again, which is safe because planning is idempotent by the intent's dedup key), attaches the
  incident's facts and settles the row ``sent`` / ``failed`` when its first delivery is settled.
- :class:`ReopenWatch` turns the loop's ``reopen`` events of wristband cases into a new page of the
  wearer's family (the loop pages a family once per incident), once per reopen.
- :class:`LoopPort` (an :class:`~cloud.notify.actions.IncidentPort`) turns link and SMS actions into the
  loop's work-order commands: accept -> ``accept``, decline -> ``return`` (with the reason), arrived ->
  ``arrive``, resolved -> ``handle`` (the note as reason, photos copied to the incident), on the way ->
  recorded only; a resident's rating -> ``rate``, reopen -> ``reopen``. A decline through a group's shared
  link (a chat robot's message) is no ``return``: :meth:`LoopPort.member_declined` writes a
  ``member_declined`` timeline row and leaves the order to the group's other members and the escalation.
  The loop refuses what its stage does not allow, and then nothing changes here either.
  :meth:`LoopPort.whereabouts` is where an open wristband case's wearer is, for the one responder a link
  was sent to (below).

**Where the wearer is** (docs/notifications.md, docs/privacy.md). The exact position of a wristband wearer
reaches the cloud only in the time-series store, and only where :class:`cloud.privacy.MinimisingStore` kept
it exact: SOS / fall / impact readings and every reading while the band has an alarm open; a reading
without the band's ``gps_valid`` flag is stored without coordinates (NaN), so a band repeating an old fix
is never shown as where the wearer is now. The alert step carries no position. So the link page reads the
store at view time (no copy of the position is made anywhere else) and shows the latest exact fix from
shortly before the alarm on, with its age: fixes on the ~100 m grid are passed over, as are readings
without a position. The page refreshes that block every 30 s while it is visible
(:data:`cloud.notify.actions.REFRESH_S`, ``GET /api/v1/links/{token}/position``). A view that shows a
fix is written to the audit log (``link.position_view``: the link's actor, the incident, the fix's time,
``via`` page or refresh; never the coordinates): every page view, and a refresh only when that viewer
has no such row for that case in the last :data:`REFRESH_AUDIT_EVERY_S` seconds (12 rows an hour for a
page left open, not 120).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import numpy as np
import numpy.typing as npt
from sqlalchemy import and_, func, or_, select, update

from alerts.loop.routing import family_target
from alerts.loop.stages import Action, Command
from cloud.crypto import COARSE_DECIMALS
from cloud.db import Database, Device
from cloud.errors import ConflictError, NotFoundError
from cloud.loop import rows
from cloud.loop.config import audit
from cloud.loop.models import AuditEntry, Incident, IncidentEvent, NotificationIntentRow, Timer
from cloud.loop.service import SYSTEM, LoopService, not_the_owner
from cloud.loop.service import Report as LoopReport
from cloud.notify.actions import MEMBER_DECLINED
from cloud.notify.contacts import Contacts
from cloud.notify.models import Delivery
from cloud.notify.photos import PhotoStore
from cloud.notify.planner import NotifyRequest
from cloud.notify.render import IncidentFacts
from cloud.registry import PERSONAL_KINDS
from cloud.timeseries import TimeSeriesError, TimeSeriesStore
from firmware_bridge import wristband
from firmware_bridge.kernel.events import Severity
from firmware_bridge.kernel.locale import iso
from firmware_bridge.kernel.records import DeviceKind

_ACTIONS = {
    "accept": Action.ACCEPT,
    "decline": Action.RETURN,
    "arrived": Action.ARRIVE,
    "resolved": Action.HANDLE,
}
WORN_KINDS = frozenset(k.value for k in PERSONAL_KINDS)
_CATEGORY_SEVERITY = {"fire": Severity.HIGH, "gas": Severity.HIGH, "manhole": Severity.HIGH}
log = logging.getLogger(__name__)

#: what a group member's decline says on the timeline (the member's note follows)
MEMBER_DECLINED_WORDS = (
    "群内一名成员无法处理，工单仍待群内其他成员接单 / a group member cannot take it; still open to the group"
)

#: a fix this close to the wearer's home reads "near home" (GPS error outdoors, a building's size)
NEAR_HOME_M = 150.0
#: a fix this long before the alarm still belongs to it: one heartbeat (a fall is confirmed a frame after
#: its impact reading, which holds the exact fix)
FIX_LEAD_S = wristband.HEARTBEAT_S
#: windows searched back from now for the latest exact fix, longest first; a window the store answers
#: downsampled (bucket means are not fixes) gives way to the next. 24 h of per-minute uplinks = 1,440 rows.
FIX_SPANS_S = (86_400.0, 3_600.0, 600.0)
_FIX_POINTS = 5_000
#: a band's clock may run ahead of the cloud's by the ingest's skew allowance (IngestLimits.max_future_s)
_FIX_AHEAD_S = 300.0
EARTH_RADIUS_M = 6_371_000.0
#: a refresh writes a ``link.position_view`` audit row only if the same viewer has none for the same case
#: this recent; every page view writes one
REFRESH_AUDIT_EVERY_S = 300.0
POSITION_VIEW = "link.position_view"


#: the end of a building (and unit) in a Chinese address: what follows it, when it has a digit, is the flat
_BUILDING = re.compile(r"^(?P<building>.*(?:单元|号楼|栋|幢|座))(?P<rest>.*)$")
#: a flat number at an address's end without a building word: 27号1203, 27号1203室
_FLAT_TAIL = re.compile(r"(?<=[号楼元栋幢座])[\d-]+\s*(?:室|户|号房)?$")


def building_of(address: str) -> str:
    """An address without its flat: 中关村大街27号3号楼2单元1203室 -> 中关村大街27号3号楼2单元 (the
    stairwell a crew walks up); an address that names no flat is returned whole (科学院南路27号附近机动车道,
    ...2单元楼道)."""
    address = address.strip()
    m = _BUILDING.match(address)
    if m is not None:
        return m["building"] if re.search(r"\d", m["rest"]) else address
    return _FLAT_TAIL.sub("", address).strip() or address


def message_place(row: Incident, device: Device | None = None) -> str:
    """The place a message (SMS, chat robot, in-app) names: where to go, at the finest level a text that
    passes through a provider and sits in a group chat may carry (docs/notifications.md, "The place a
    message names"). A reported address or a fixed installation's registered address (a manhole's road
    position, a smoke alarm's flat) down to the building and unit, never the flat; a worn device's case
    (a wristband: its registered address is the wearer's home, sealed) the street, else the community:
    the home only on the personal link's page. The grid code when nothing else is known."""
    if row.kind in WORN_KINDS:
        return row.street or row.community or row.grid or row.address
    address = row.address
    if not address and device is not None:
        address = device.address
    return building_of(address) if address else (row.street or row.grid or row.community)


def facts_of(row: Incident, summary: str = "", device: Device | None = None) -> IncidentFacts:
    """The facts of ``row`` for a message; ``device`` (the incident's device row) gives a fixed
    installation's address (:func:`message_place`)."""
    return IncidentFacts(
        incident_id=str(row.id),
        opened_at=row.created_at,
        severity=int(row.grade),
        event_type=row.event_type,
        place=message_place(row, device)[:64],
        summary=summary or row.title,
        department=row.department,
    )


# -- where the wearer is ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fix:
    """One GPS fix of a band: WGS-84 degrees and the reading's time (UTC seconds)."""

    lat: float
    lon: float
    time: float


def _on_grid(v: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    scaled = v * 10.0**COARSE_DECIMALS
    return np.abs(scaled - np.round(scaled)) < 1e-6


def latest_exact_fix(store: TimeSeriesStore, device_id: str, *, since: float, now: float) -> Fix | None:
    """The band's latest exact fix from ``since`` on, or ``None``.

    Exact means not on the ~100 m grid :class:`cloud.privacy.MinimisingStore` writes everything else on
    (a real fix lands on that grid in both coordinates once in a million readings: it is then passed over).
    Missing and (0, 0) positions are no fix. Readings without the band's ``gps_valid`` flag have no
    coordinates in the store (:func:`cloud.privacy.minimise` writes NaN), so a band repeating its last
    fix without a new one leaves the earlier fix, with its own time, as the latest.
    """
    end = now + _FIX_AHEAD_S
    for span in FIX_SPANS_S:
        start = max(since, now - span)
        if start >= end:
            return None
        series = store.query(
            device_id, DeviceKind.WRISTBAND, start, end, channels=("lat", "lon"), max_points=_FIX_POINTS
        )
        if series.downsampled:
            continue
        lat, lon = series.values["lat"], series.values["lon"]
        ok = np.isfinite(lat) & np.isfinite(lon) & ((lat != 0.0) | (lon != 0.0))
        ok &= ~(_on_grid(lat) & _on_grid(lon))
        hits = np.flatnonzero(ok)
        if hits.size == 0:
            return None
        i = int(hits[-1])
        return Fix(float(lat[i]), float(lon[i]), float(series.time[i]))
    return None


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine, mean Earth radius): plenty for "how far from home"."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


# GCJ-02 ("Mars coordinates", 火星坐标): Chinese map apps (Amap, Tencent) take positions shifted by this
# published obfuscation of WGS-84 (Krasovsky 1940 ellipsoid). The formula is the one every open
# implementation uses, e.g. googollee/eviltransform (go/transform.go) and wandergis/coordtransform; its
# published test vectors are checked in tests/cloud/notify/test_responder_position.py.
_KRASOVSKY_A = 6_378_245.0
_KRASOVSKY_EE = 0.00669342162296594323


def _gcj_delta(lat: float, lon: float) -> tuple[float, float]:
    x, y = lon - 105.0, lat - 35.0
    d = 20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)
    dlat = d + 20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)
    dlon = d + 20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)
    dlat += 160.0 * math.sin(y / 12.0 * math.pi) + 320.0 * math.sin(y * math.pi / 30.0)
    dlon += 150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)
    dlat = dlat * 2.0 / 3.0 - 100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    dlon = dlon * 2.0 / 3.0 + 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    rad = lat / 180.0 * math.pi
    magic = 1.0 - _KRASOVSKY_EE * math.sin(rad) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_KRASOVSKY_A * (1.0 - _KRASOVSKY_EE)) / (magic * sqrt_magic) * math.pi)
    dlon = (dlon * 180.0) / (_KRASOVSKY_A / sqrt_magic * math.cos(rad) * math.pi)
    return dlat, dlon


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    """WGS-84 -> GCJ-02 (lat, lon); outside mainland China's box the position is returned unchanged."""
    if not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271):
        return lat, lon
    dlat, dlon = _gcj_delta(lat, lon)
    return lat + dlat, lon + dlon


def position_view(fix: Fix, home: dict[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """What the link page shows of a fix: WGS-84 coordinates, the fix's time (ISO-8601 in the display
    zone, Asia/Shanghai) and, given ``now``, its age in whole seconds (``age_s``, never negative: a band's
    clock may run a little ahead), how far from home, and two links that open it in a map app.

    ``geo:`` (RFC 5870, WGS-84) opens whatever map app the phone has (Android); Amap's URI API
    (``uri.amap.com/marker``, GCJ-02, ``callnative=1`` opens the Amap app when installed) works on
    every phone's browser. Our page loads neither: they are plain links the responder may tap.
    """
    glat, glon = wgs84_to_gcj02(fix.lat, fix.lon)
    amap = urlencode(
        {
            "position": f"{glon:.6f},{glat:.6f}",
            "name": "呼救位置",
            "src": "vigil",
            "coordinate": "gaode",
            "callnative": "1",
        },
        safe=",",  # "lon,lat" as Amap's documentation writes it
    )
    out: dict[str, Any] = {
        "lat": round(fix.lat, 6),
        "lon": round(fix.lon, 6),
        "at": iso(fix.time),
        "age_s": None if now is None else max(0, round(now - fix.time)),
        "distance_m": None,
        "near_home": None,
        "geo_uri": f"geo:{fix.lat:.6f},{fix.lon:.6f}?q={fix.lat:.6f},{fix.lon:.6f}",
        "amap_uri": f"https://uri.amap.com/marker?{amap}",
    }
    try:
        hlat, hlon = float(home["lat"]), float(home["lon"])
    except (KeyError, TypeError, ValueError):
        return out  # no home position sealed: the coordinates alone
    d = distance_m(fix.lat, fix.lon, hlat, hlon)
    out["distance_m"] = round(d)
    out["near_home"] = d <= NEAR_HOME_M
    return out


class LoopIntents:
    def __init__(self, db: Database, *, lease_s: float = 60.0) -> None:
        self.db = db
        self.lease_s = lease_s

    def claim(self, *, now: float, limit: int) -> list[NotifyRequest]:
        takeable = or_(
            NotificationIntentRow.state == "pending",
            and_(
                NotificationIntentRow.state == "claimed",
                NotificationIntentRow.updated_at < now - self.lease_s,
            ),
        )
        out: list[NotifyRequest] = []
        with self.db.read() as s:  # idle polls never take the write lock
            if s.scalar(select(NotificationIntentRow.id).where(takeable).limit(1)) is None:
                return out
        with self.db.write() as s:
            ids = s.scalars(
                select(NotificationIntentRow.id)
                .where(takeable)
                .order_by(NotificationIntentRow.created_at)
                .limit(limit)
            ).all()
            for intent_id in ids:
                won = s.execute(
                    update(NotificationIntentRow)
                    .where(NotificationIntentRow.id == intent_id, takeable)
                    .values(state="claimed", updated_at=now)
                    .execution_options(synchronize_session=False)
                )
                if won.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                it = s.get(NotificationIntentRow, intent_id)
                incident = s.get(Incident, it.incident_id) if it else None
                if it is None or incident is None:
                    continue
                device = s.get(Device, incident.device_id) if incident.device_id else None
                out.append(
                    NotifyRequest(
                        facts=facts_of(incident, it.summary, device),
                        target_kind=it.target_kind,
                        target_id=it.target_id,
                        step=it.step,
                        channel_hint=tuple(c for c in it.channel_hint.split(",") if c),
                        intent_key=it.dedup_key,
                    )
                )
        return out

    def settle(self, intent_key: str, state: str, *, now: float, detail: str = "") -> None:
        """Settle the intent once and put the outcome on the incident's timeline (``notified`` or
        ``notify_failed``, actor ``notify``, with the channel and recipient, or the reason)."""
        with self.db.write() as s:
            done = s.execute(
                update(NotificationIntentRow)
                .where(
                    NotificationIntentRow.dedup_key == intent_key, NotificationIntentRow.state == "claimed"
                )
                .values(state=state, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return  # settled before (a retried report) or cancelled by the loop
            q = select(NotificationIntentRow).where(NotificationIntentRow.dedup_key == intent_key)
            it = s.scalars(q).first()
            incident = s.get(Incident, it.incident_id) if it else None
            if it is not None and incident is not None:
                action = "notified" if state == "sent" else "notify_failed"
                rows.add_event(
                    s, incident, action, actor="notify", now=now, channel="notify", reason=detail[:300],
                    target=f"{it.target_kind}:{it.target_id}", step=it.step,
                )  # fmt: skip
                if state == "failed":
                    _next_step_now_if_unreachable(s, incident, it, now)


#: an escalation page's dedup key (alerts.loop.intents.dedup_key): incident:version:step:loop:kind:target
_STEP_KEY = re.compile(r"^(?P<incident>\d+):(?P<version>\d+):(?P<step>\d+):(?P<loop>\d+):")


def _next_step_now_if_unreachable(s: Any, incident: Incident, it: NotificationIntentRow, now: float) -> None:
    """Every page of an escalation step failed (nobody to notify: no resident or family registered, an
    empty desk; or every channel failed): the next step's timer is due now, not after the step's wait. A
    fire whose flat has no registered resident waited the resident's 60 s callback window for nobody, a
    fall with no family registered the family's 180 s before the 120 desk. A step with a page still pending
    or sent waits as before; the last step's wait stands too (a repeat pages the same people again, which
    only helps after a wait). Timers are fenced by version, step and loop, so this moves only the timer of
    the step run these pages belong to, and only forward."""
    m = _STEP_KEY.match(it.dedup_key)
    if m is None or not incident.is_open:
        return
    snap = rows.snapshot_of(incident)
    if snap is None or int(m["step"]) + 1 >= len(snap.policy.steps):
        return  # the last step: what follows is the policy's repeat (paging again after a wait) or its end
    prefix = it.dedup_key[: m.end()]
    states = s.execute(
        select(NotificationIntentRow.state).where(
            NotificationIntentRow.incident_id == incident.id,
            NotificationIntentRow.step == it.step,
            NotificationIntentRow.dedup_key.startswith(prefix, autoescape=True),
        )
    ).scalars()
    if any(st != "failed" for st in states):
        return
    moved = s.execute(
        update(Timer)
        .where(
            Timer.incident_id == incident.id,
            Timer.purpose == "escalation",
            Timer.state == "pending",
            Timer.snapshot_version == int(m["version"]),
            Timer.step == int(m["step"]) + 1,
            Timer.loop == int(m["loop"]),
            Timer.due_at > now,
        )
        .values(due_at=now)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount:
        step = int(m["step"])
        rows.add_event(
            s, incident, "escalate_now", actor=SYSTEM, now=now, step=step,
            reason=f"nobody could be paged at step {step + 1}", code="step_unreachable",
            params={"step": step},
        )  # fmt: skip


#: reopen events are looked for at most this often (a reopened case's family page may wait this long)
REOPEN_POLL_S = 5.0
#: at start, reopens this recent are looked at: a restart loses none (dedup keys repeat none)
REOPEN_LOOKBACK_S = 3600.0
#: events are re-read this far below the highest id seen: PostgreSQL may commit ids out of order
REOPEN_ID_MARGIN = 500


class ReopenWatch:
    """Reopened wristband cases whose family was paged: one family page per ``reopen`` event.

    The loop pages a family once per incident (``cloud.loop.rows.expand_intents``: its dedup key has no
    version), so a reopen writes no new family intent. A reopen of their relative's case is news to a
    family, so this reads the loop's ``reopen`` events (a resident's case link, an operator's reopen: both
    are ``loop_incident_events`` rows) and asks for one family page per event and device
    (:attr:`NotifyRequest.reopen` = the event id: part of the dedup key, so each reopen pages once,
    whatever the worker or restart). Only a family already paged about this incident is paged again.
    Cheap: the highest event id (primary key) and a range of at most :data:`REOPEN_ID_MARGIN` + new rows,
    at most every :data:`REOPEN_POLL_S`.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._seen: int | None = None  # highest event id read
        self._next_at = 0.0
        self._done: set[int] = set()  # reopen events already turned into pages (ids within the margin)

    def poll(self, *, now: float) -> list[NotifyRequest]:
        if now < self._next_at:
            return []
        self._next_at = now + REOPEN_POLL_S
        out: list[NotifyRequest] = []
        with self.db.read() as s:
            top = s.scalar(select(func.max(IncidentEvent.id))) or 0
            q = select(IncidentEvent.id, IncidentEvent.incident_id, IncidentEvent.at).where(
                IncidentEvent.action == Action.REOPEN.value
            )
            if self._seen is None:
                q = q.where(IncidentEvent.at > now - REOPEN_LOOKBACK_S)
            else:
                q = q.where(IncidentEvent.id > self._seen - REOPEN_ID_MARGIN)
            events = [e for e in s.execute(q.order_by(IncidentEvent.id)).all() if e[0] not in self._done]
            for event_id, incident_id, at in events:
                self._done.add(event_id)
                row = s.get(Incident, incident_id)
                if row is None or not row.is_open or row.kind not in WORN_KINDS:
                    continue
                paged = set(
                    s.scalars(
                        select(Delivery.recipient).where(
                            Delivery.incident_id == str(incident_id), Delivery.recipient.like("family:%")
                        )
                    )
                )
                facts = replace(facts_of(row), opened_at=at)  # the family reads the reopen's time
                out.extend(
                    NotifyRequest(
                        facts=facts,
                        target_kind="role",
                        target_id=family_target(device),
                        step=-1,
                        reopen=event_id,
                    )
                    for device in rows.incident_devices(s, row)
                    if f"family:{device}" in paged
                )
        self._seen = max(top, self._seen or 0)
        floor = self._seen - REOPEN_ID_MARGIN
        self._done = {e for e in self._done if e > floor}
        return out


class LoopPort:
    def __init__(self, service: LoopService, *, contacts: Contacts, photos: PhotoStore) -> None:
        self.loop = service
        self.contacts = contacts
        self.photos = photos

    def actor_id(self, actor: str) -> str:
        return self._actor(actor)

    def _actor(self, actor: str) -> str:
        if actor.startswith("user:"):
            uid = int(actor.removeprefix("user:"))
            try:
                view = self.contacts.view(self.contacts.username(uid), reveal=False)
                return view.responder_id or view.username
            except Exception:  # no binding any more: the username is still who it was
                return self.contacts.username(uid)
        return actor

    def responder_action(
        self,
        incident_id: str,
        action: str,
        *,
        actor: str,
        note: str,
        photo_ids: Sequence[str],
        now: float,
        outcome: str | None = None,
    ) -> None:
        loop_action = _ACTIONS.get(action)
        if loop_action is None or not incident_id.isdigit():
            return  # "on the way" is ours alone; a case number that is not a loop incident has no stage
        who = self._actor(actor)
        reason = note or ("declined from a notification" if loop_action is Action.RETURN else "")
        # a link acts for the one person it was sent to: never on an order someone else accepted
        # (a decline pressed after a colleague's accept would hand the colleague's order back)
        self.loop.act(
            int(incident_id),
            Command(loop_action, who, reason=reason),
            channel="notify",
            only_owner=loop_action is not Action.ACCEPT,
            outcome=outcome,
        )
        for photo_id in photo_ids:
            content_type, data = self.photos.get(photo_id)
            self.loop.add_photo(int(incident_id), data, content_type, actor=who)

    def member_declined(self, incident_id: str, *, actor: str, note: str, now: float) -> None:
        """A member of group ``actor`` (a shared link's tapper, not known by name) cannot take the case:
        a ``member_declined`` timeline row (actor the group, channel ``notify``, their note), the order
        and its escalation untouched, so the group's other members may still accept and the policy's
        acknowledgement timeout still escalates. Refused (:class:`ConflictError`, Chinese first) once
        someone holds the order or the case is closed: the decline would then say nothing."""
        if not incident_id.isdigit():
            return
        who = self._actor(actor)
        with self.loop.db.write() as s:
            row = s.get(Incident, int(incident_id), with_for_update=True)
            if row is None:
                raise NotFoundError(f"incident {incident_id} not found")
            if not row.is_open:
                raise ConflictError("此案件已结束；未做任何更改。 / This case is closed. Nothing changed.")
            if row.owner:
                raise ConflictError(not_the_owner(row.owner, Action.RETURN))
            reason = MEMBER_DECLINED_WORDS
            if note.strip():
                reason = f"{reason}：{note.strip()}"
            rows.add_event(
                s, row, MEMBER_DECLINED, actor=who, now=now, channel="notify", from_stage=row.stage,
                reason=reason[:1000],
            )  # fmt: skip

    def rate(
        self, incident_id: str, score: int, comment: str, *, now: float, actor: str = "resident"
    ) -> None:
        if incident_id.isdigit():
            cmd = Command(Action.RATE, actor, reason=comment, rating=score)
            self.loop.act(int(incident_id), cmd, channel="notify")  # the resident's or family's link

    def reopen(self, incident_id: str, *, reason: str, now: float) -> None:
        if incident_id.isdigit():
            cmd = Command(Action.REOPEN, "resident", reason=reason)
            self.loop.act(int(incident_id), cmd, channel="notify")  # the resident's case link

    def describe(self, incident_id: str) -> dict[str, Any] | None:
        if not incident_id.isdigit():
            return None
        with self.loop.db.read() as s:
            row = s.get(Incident, int(incident_id))
            if row is None:
                return None
            place = row.address or row.grid
            if not row.address and row.device_id and row.kind not in WORN_KINDS:
                # a fixed installation's address is the place to go (a smoke alarm's flat): in clear and
                # shown to everyone who works the alarm (docs/privacy.md); the grid alone sends nobody
                dev = s.get(Device, row.device_id)
                if dev is not None and dev.address:
                    place = dev.address
            out: dict[str, Any] = {
                "title": row.title,
                "status": row.stage,
                "place": place,
                "opened_at": row.created_at,
                "department": row.department,
                "event_type": row.event_type,
                "closed_at": row.closed_at,
                "open": bool(row.is_open),
                "owner": row.owner,
            }
            if row.is_open and row.kind in WORN_KINDS and row.device_id and self.loop.box is not None:
                # the wearer's home (sealed in the registry): for the assigned responder's link page only
                dev = s.get(Device, row.device_id)
                home = self.loop.box.open(dev.private_enc).get("address") if dev is not None else None
                if home:
                    out["home_address"] = str(home)
            return out

    def whereabouts(
        self, incident_id: str, store: TimeSeriesStore, *, viewer: str, now: float, refresh: bool = False
    ) -> dict[str, Any] | None:
        """Where the wearer of an open wristband case is (:func:`position_view`), for ``viewer``'s link.

        ``None`` for any other case, a closed one, or no exact fix since shortly before the alarm. A fix
        shown is audited (``link.position_view``); a ``refresh`` (the page re-reading it) only when the
        viewer has no such row for this case in the last :data:`REFRESH_AUDIT_EVERY_S`. The store being
        down costs the position, not the page.
        """
        if not incident_id.isdigit() or self.loop.box is None:
            return None
        with self.loop.db.read() as s:
            row = s.get(Incident, int(incident_id))
            if row is None or not row.is_open or row.kind != DeviceKind.WRISTBAND.value or not row.device_id:
                return None
            dev = s.get(Device, row.device_id)
            sealed = dev.private_enc if dev is not None else None
            device_id, alarm = row.device_id, row.event_start or row.created_at
        home = self.loop.box.open(sealed)
        try:
            fix = latest_exact_fix(store, device_id, since=alarm - FIX_LEAD_S, now=now)
        except TimeSeriesError as exc:
            log.warning(
                "wearer position unavailable",
                extra={"incident_id": incident_id, "device_id": device_id, "error": str(exc)},
            )
            return None
        if fix is None:
            return None
        actor, target = viewer[:64], f"incident:{incident_id}"
        if not (refresh and self._viewed_lately(actor, target, now=now)):
            with self.loop.db.write() as s:
                audit(
                    s, actor=actor, role="responder_link", action=POSITION_VIEW, target=target, now=now,
                    device_id=device_id, fix_at=iso(fix.time), via="refresh" if refresh else "page",
                )  # fmt: skip
        return position_view(fix, home, now=now)

    def _viewed_lately(self, actor: str, target: str, *, now: float) -> bool:
        """Whether ``actor`` has a position view of ``target`` audited in the last few minutes (indexed)."""
        with self.loop.db.read() as s:
            q = select(AuditEntry.id).where(
                AuditEntry.action == POSITION_VIEW,
                AuditEntry.actor == actor,
                AuditEntry.at > now - REFRESH_AUDIT_EVERY_S,
                AuditEntry.target == target,
            )
            return s.scalar(q.limit(1)) is not None

    def open_report(self, report: dict[str, Any], *, now: float) -> str | None:
        category = str(report["category"])
        incident_id = self.loop.report(
            LoopReport(
                type=category,
                description=str(report["description"]),
                reporter=f"resident:{report['case_number']}",
                lat=float(report["lat"]),
                lon=float(report["lon"]),
                severity=_CATEGORY_SEVERITY.get(category, Severity.MEDIUM),
            ),
            role="resident",
        )
        return str(incident_id)
