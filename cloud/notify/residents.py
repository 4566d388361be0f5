"""Residents: report a problem, follow the case, rate the result once, reopen it within the window.

- A report (category, description, location, optional photo) gets a case number and a promised
  first-response time (``report_promise_s`` per category, 2 h by default) back, plus a case link. The
  promise is kept measurable: the first responder action on the case stamps ``first_response_at``.
- Abuse limits are counted in the database (so they hold across workers): ``report_limit_per_hour``
  per client (its address only as a keyed hash, :class:`cloud.crypto.BlindIndex`: written under the
  primary key, counted under every key of the ring; ``vigil cloud key reseal`` blanks the hashes of
  reports older than the hour the limit looks at) and ``report_limit_global_per_hour`` overall. A location
  outside the community (``report_area``, else the registered devices' box plus 0.02°) is refused.
- A wearer's family gets a ``case`` link of actor ``family`` in its SMS (:meth:`_family_case`): the
  progress only, a rating once the case is closed, no reopen.
- A case link (purpose ``case``) lets its holder rate once (1-5 and a comment; the rating is filed under
  the incident's department, the Nanjing rule) and reopen within ``reopen_window_s`` of the case's
  closing (or of the link's issue when the loop does not say when it closed).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from cloud.crypto import BlindIndex
from cloud.db import Database, Device
from cloud.errors import BadRequestError, CloudError, ConflictError, NotFoundError, PermissionDeniedError
from cloud.notify.actions import IncidentPort
from cloud.notify.config import NotifyConfig
from cloud.notify.links import FAMILY_ACTOR, LinkSigner, Purpose, require_purpose
from cloud.notify.models import Rating, Report
from cloud.notify.photos import PhotoStore
from cloud.notify.render import family_event
from firmware_bridge.kernel.locale import display_zone, iso

CATEGORIES = ("manhole", "smoke", "fire", "elderly", "road", "water", "gas", "other")

#: a family's view of a case's progress: code -> (Chinese, English); the loop's stages map onto four
FAMILY_PROGRESS = {
    "dispatched": ("已派单", "dispatched"),
    "accepted": ("已接单", "accepted"),
    "on_site": ("已到场", "on site"),
    "closed": ("已办结", "closed"),
}
_FAMILY_STAGE = {
    "accepted": "accepted",
    "on_site": "on_site",
    "handled": "on_site",  # handled on site, awaiting the desk's check: still "someone is there"
    "verified": "on_site",
    "closed": "closed",
    "rated": "closed",
    "dismissed": "closed",
}


def family_progress(info: dict[str, Any]) -> str:
    """The loop's stage as a family reads it: 已派单 until someone accepts (registered, dispatched,
    returned, parked: the desk has it), 已接单, 已到场 (on site, handled, verified), 已办结 (closed, rated,
    dismissed, or no longer open)."""
    stage = str(info.get("status") or "")
    if stage in _FAMILY_STAGE:
        return _FAMILY_STAGE[stage]
    return "closed" if info.get("open") is False else "dispatched"


class TooManyRequestsError(CloudError):
    status_code = 429
    code = "rate_limited"


class ResidentDesk:
    def __init__(
        self,
        db: Database,
        *,
        links: LinkSigner,
        photos: PhotoStore,
        port: IncidentPort,
        config: NotifyConfig,
        index: BlindIndex,
    ) -> None:
        self.db = db
        self.links = links
        self.photos = photos
        self.port = port
        self.config = config
        self.index = index

    def case_link(self, incident_id: str, *, now: float) -> str:
        ttl = self.config.reopen_window_s + self.config.link_ttl_s
        return self.links.url(self.links.token(Purpose.CASE, incident_id, "case", now=now, ttl_s=ttl))

    # -- reports -------------------------------------------------------------------------------------------
    def area(self) -> tuple[float, float, float, float] | None:
        if len(self.config.report_area) == 4:
            a = self.config.report_area
            return a[0], a[1], a[2], a[3]
        with self.db.read() as s:
            row = s.execute(
                select(func.min(Device.lat), func.min(Device.lon), func.max(Device.lat), func.max(Device.lon))
            ).one()
        lat0, lon0, lat1, lon1 = row
        if lat0 is None or lon0 is None or lat1 is None or lon1 is None:
            return None
        m = 0.02
        return float(lat0) - m, float(lon0) - m, float(lat1) + m, float(lon1) + m

    def report(
        self,
        *,
        category: str,
        description: str,
        lat: float,
        lon: float,
        client: str,
        photo: bytes | None = None,
        now: float,
    ) -> dict[str, Any]:
        if category not in CATEGORIES:
            raise BadRequestError(f"category must be one of {list(CATEGORIES)}")
        if not description.strip():
            raise BadRequestError("description is empty: say what is wrong and where")
        box = self.area()
        if box is not None and not (box[0] <= lat <= box[2] and box[1] <= lon <= box[3]):
            raise BadRequestError(
                f"location ({lat:.5f}, {lon:.5f}) is outside this community's area "
                f"({box[0]:.4f}..{box[2]:.4f} N, {box[1]:.4f}..{box[3]:.4f} E)"
            )
        if photo is not None:
            self.photos.check(photo)
        # written under the primary key; counted under every key of the ring (a rotation mid-hour)
        client_hash = self.index.hash(client)
        with self.db.read() as s:
            mine = s.scalar(
                select(func.count()).where(
                    Report.client_hash.in_(self.index.candidates(client)), Report.created_at > now - 3600
                )
            )
            total = s.scalar(select(func.count()).where(Report.created_at > now - 3600))
        if int(mine or 0) >= self.config.report_limit_per_hour:
            raise TooManyRequestsError(
                f"at most {self.config.report_limit_per_hour} reports an hour from one address; "
                "call the community office for anything urgent"
            )
        if int(total or 0) >= self.config.report_limit_global_per_hour:
            raise TooManyRequestsError(
                "too many reports right now; call the community office for anything urgent"
            )
        promise = self.config.report_promise_s.get(
            category, self.config.report_promise_s.get("default", 7200.0)
        )
        day = datetime.fromtimestamp(now, display_zone()).strftime("%Y%m%d")
        photo_id = self.photos.store(photo, incident_id="", now=now) if photo is not None else None
        for _ in range(5):
            case_number = f"R{day}{secrets.randbelow(10**6):06d}"
            try:
                with self.db.write() as s:
                    s.add(
                        Report(
                            case_number=case_number,
                            category=category,
                            description=description[:2000],
                            lat=lat,
                            lon=lon,
                            photo_id=photo_id,
                            incident_id="",
                            client_hash=client_hash,
                            created_at=now,
                            promised_by=now + promise,
                            reopened=0,
                        )
                    )
                break
            except ConflictError:
                continue
        else:  # pragma: no cover - 5 collisions in a million-wide daily space
            raise ConflictError("could not allocate a case number; try again")
        incident_id = self.port.open_report(
            {
                "case_number": case_number,
                "category": category,
                "description": description,
                "lat": lat,
                "lon": lon,
                "photo_id": photo_id,
                "promised_by": now + promise,
            },
            now=now,
        )
        if incident_id:
            with self.db.write() as s:
                row = s.get(Report, case_number)
                assert row is not None
                row.incident_id = incident_id
        return {
            "case_number": case_number,
            "promised_by": iso(now + promise),
            "promised_within_s": promise,
            "follow_url": self.case_link(incident_id or case_number, now=now),
        }

    def reports(self, *, now: float, limit: int = 200) -> list[dict[str, Any]]:
        with self.db.read() as s:
            rows = s.scalars(select(Report).order_by(Report.created_at.desc()).limit(limit)).all()
        return [
            {
                "case_number": r.case_number,
                "category": r.category,
                "description": r.description,
                "lat": r.lat,
                "lon": r.lon,
                "photo_id": r.photo_id,
                "incident_id": r.incident_id,
                "created_at": r.created_at,
                "promised_by": r.promised_by,
                "first_response_at": r.first_response_at,
                "on_time": None if r.first_response_at is None else r.first_response_at <= r.promised_by,
                "overdue": r.first_response_at is None and now > r.promised_by,
                "reopened": r.reopened,
            }
            for r in rows
        ]

    # -- case links: follow, rate, reopen --------------------------------------------------------------------
    def case(self, token: str, *, now: float) -> dict[str, Any]:
        claims = self.links.verify(token, now=now)
        require_purpose(claims, Purpose.CASE)
        info = self.port.describe(claims.incident_id) or {}
        if claims.actor == FAMILY_ACTOR:
            return self._family_case(claims.incident_id, info)
        with self.db.read() as s:
            rating = s.get(Rating, claims.incident_id)
            report = (
                s.get(Report, claims.incident_id)
                or s.scalars(select(Report).where(Report.incident_id == claims.incident_id)).first()
            )
        return {
            "incident_id": claims.incident_id,
            "status": info.get("status", "open"),
            "title": info.get("title", report.category if report else ""),
            "promised_by": iso(report.promised_by) if report else None,
            "first_response_at": iso(report.first_response_at)
            if report and report.first_response_at
            else None,
            "rating": {"score": rating.score, "comment": rating.comment} if rating else None,
            # as :meth:`rate` decides: once the case is closed (or not a loop incident), and once
            "can_rate": rating is None and info.get("status") in (None, "closed", "rated"),
            "reopen_until": iso(
                self._reopen_base(claims.incident_id, claims.issued_at) + self.config.reopen_window_s
            ),
        }

    def _family_case(self, incident_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """What a wearer's family's follow link shows: the progress only (已派单 / 已接单 / 已到场 / 已办结),
        the event word and the masked wearer; the rating form once the case is closed. No address, grid,
        position, health value, responder or phone; no reopen (the family calls the community, and an
        operator's reopen pages them again). The answer's shape is the resident case page's
        (``dashboards/public.py``: ``status`` is shown as it is), so that page serves it unchanged."""
        with self.db.read() as s:
            rating = s.get(Rating, incident_id)
        progress = family_progress(info)
        closed = progress == "closed"
        return {
            "incident_id": incident_id,
            "family": True,
            "status": FAMILY_PROGRESS[progress][0],
            "progress": progress,
            "progress_en": FAMILY_PROGRESS[progress][1],
            "title": family_event(str(info.get("event_type") or "")),
            "promised_by": None,
            "first_response_at": None,
            "rating": {"score": rating.score, "comment": rating.comment} if rating else None,
            "can_rate": closed and rating is None,
            "reopen_until": None,
        }

    def _reopen_base(self, incident_id: str, issued_at: float) -> float:
        info = self.port.describe(incident_id) or {}
        closed = info.get("closed_at")
        return float(closed) if isinstance(closed, int | float) else issued_at

    def rate(self, token: str, *, score: int, comment: str, now: float) -> dict[str, Any]:
        claims = self.links.verify(token, now=now)
        require_purpose(claims, Purpose.CASE)
        if not 1 <= score <= 5:
            raise BadRequestError("score must be 1 to 5")
        info = self.port.describe(claims.incident_id) or {}
        family = claims.actor == FAMILY_ACTOR
        if family and family_progress(info) != "closed":
            raise ConflictError("the case is still being handled; it can be rated once it is closed")
        if info.get("status") not in (None, "closed", "rated"):
            raise ConflictError(f"the case is still {info['status']!r}; it can be rated once it is closed")
        with self.db.read() as s:
            existing = s.get(Rating, claims.incident_id)
        if existing is not None:
            raise ConflictError(f"this case was already rated ({existing.score}/5); a case is rated once")
        self.port.rate(claims.incident_id, score, comment, now=now, actor="family" if family else "resident")
        try:
            with self.db.write() as s:
                s.add(
                    Rating(
                        incident_id=claims.incident_id,
                        score=score,
                        comment=comment[:1000],
                        department=str(info.get("department", ""))[:64],
                        created_at=now,
                    )
                )
        except ConflictError as exc:
            raise ConflictError("this case was already rated; a case is rated once") from exc
        return {"incident_id": claims.incident_id, "score": score, "department": info.get("department", "")}

    def reopen(self, token: str, *, reason: str, now: float) -> dict[str, Any]:
        claims = self.links.verify(token, now=now)
        require_purpose(claims, Purpose.CASE)
        if claims.actor == FAMILY_ACTOR:
            raise PermissionDeniedError(
                "家属链接不能重开案件，请致电社区服务电话 / a family's link cannot reopen the case: "
                "please call the community's service number"
            )
        if not reason.strip():
            raise BadRequestError("say why the case is not solved (reason is empty)")
        until = self._reopen_base(claims.incident_id, claims.issued_at) + self.config.reopen_window_s
        if now > until:
            raise ConflictError(f"the reopen window ended at {iso(until)}; please file a new report")
        self.port.reopen(claims.incident_id, reason=reason, now=now)
        with self.db.write() as s:
            report = (
                s.get(Report, claims.incident_id)
                or s.scalars(select(Report).where(Report.incident_id == claims.incident_id)).first()
            )
            if report is not None:
                report.reopened += 1
        return {"incident_id": claims.incident_id, "reopened": True}

    def ratings_by_department(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            rows = s.execute(
                select(Rating.department, func.count(), func.avg(Rating.score)).group_by(Rating.department)
            ).all()
        return [
            {"department": d or "", "ratings": int(n), "average": round(float(avg), 2)} for d, n, avg in rows
        ]

    def get_rating(self, incident_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            r = s.get(Rating, incident_id)
        if r is None:
            raise NotFoundError(f"case {incident_id!r} is not rated")
        return {
            "incident_id": r.incident_id,
            "score": r.score,
            "comment": r.comment,
            "department": r.department,
        }
