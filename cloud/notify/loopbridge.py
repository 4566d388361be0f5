"""The seam to the closed loop (``cloud/loop``, issue 8): its intents in, our actions out.

- :class:`LoopIntents` (an :class:`~cloud.notify.worker.IntentSource`) claims ``notification_intents``
  rows (``pending`` -> ``claimed`` by conditional UPDATE; a ``claimed`` row older than ``lease_s`` is
  taken again, which is safe because planning is idempotent by the intent's dedup key), attaches the
  incident's facts and settles the row ``sent`` / ``failed`` when its first delivery is settled.
- :class:`LoopPort` (an :class:`~cloud.notify.actions.IncidentPort`) turns link and SMS actions into the
  loop's work-order commands: accept -> ``accept``, decline -> ``return`` (with the reason), arrived ->
  ``arrive``, resolved -> ``handle`` (the note as reason, photos copied to the incident), on the way ->
  recorded only; a resident's rating -> ``rate``, reopen -> ``reopen``. The loop refuses what its stage
  does not allow, and then nothing changes here either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select, update

from alerts.loop.stages import Action, Command
from cloud.db import Database, Device
from cloud.loop import rows
from cloud.loop.models import Incident, NotificationIntentRow
from cloud.loop.service import LoopService
from cloud.loop.service import Report as LoopReport
from cloud.notify.contacts import Contacts
from cloud.notify.photos import PhotoStore
from cloud.notify.planner import NotifyRequest
from cloud.notify.render import IncidentFacts
from cloud.registry import PERSONAL_KINDS
from firmware_bridge.kernel.events import Severity

_ACTIONS = {
    "accept": Action.ACCEPT,
    "decline": Action.RETURN,
    "arrived": Action.ARRIVE,
    "resolved": Action.HANDLE,
}
WORN_KINDS = frozenset(k.value for k in PERSONAL_KINDS)
_CATEGORY_SEVERITY = {"fire": Severity.HIGH, "gas": Severity.HIGH, "manhole": Severity.HIGH}


def facts_of(row: Incident, summary: str = "") -> IncidentFacts:
    return IncidentFacts(
        incident_id=str(row.id),
        opened_at=row.created_at,
        severity=int(row.grade),
        event_type=row.event_type,
        place=(row.address or row.grid or row.street)[:64],
        summary=summary or row.title,
        department=row.department,
    )


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
                out.append(
                    NotifyRequest(
                        facts=facts_of(incident, it.summary),
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


class LoopPort:
    def __init__(self, service: LoopService, *, contacts: Contacts, photos: PhotoStore) -> None:
        self.loop = service
        self.contacts = contacts
        self.photos = photos

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
        self, incident_id: str, action: str, *, actor: str, note: str, photo_ids: Sequence[str], now: float
    ) -> None:
        loop_action = _ACTIONS.get(action)
        if loop_action is None or not incident_id.isdigit():
            return  # "on the way" is ours alone; a case number that is not a loop incident has no stage
        who = self._actor(actor)
        reason = note or ("declined from a notification" if loop_action is Action.RETURN else "")
        self.loop.act(int(incident_id), Command(loop_action, who, reason=reason), channel="notify")
        for photo_id in photo_ids:
            content_type, data = self.photos.get(photo_id)
            self.loop.add_photo(int(incident_id), data, content_type, actor=who)

    def rate(self, incident_id: str, score: int, comment: str, *, now: float) -> None:
        if incident_id.isdigit():
            self.loop.act(int(incident_id), Command(Action.RATE, "resident", reason=comment, rating=score))

    def reopen(self, incident_id: str, *, reason: str, now: float) -> None:
        if incident_id.isdigit():
            self.loop.act(int(incident_id), Command(Action.REOPEN, "resident", reason=reason))

    def describe(self, incident_id: str) -> dict[str, Any] | None:
        if not incident_id.isdigit():
            return None
        with self.loop.db.read() as s:
            row = s.get(Incident, int(incident_id))
            if row is None:
                return None
            out: dict[str, Any] = {
                "title": row.title,
                "status": row.stage,
                "place": row.address or row.grid,
                "opened_at": row.created_at,
                "department": row.department,
                "closed_at": row.closed_at,
            }
            if row.is_open and row.kind in WORN_KINDS and row.device_id and self.loop.box is not None:
                # the wearer's home (sealed in the registry): for the assigned responder's link page only
                dev = s.get(Device, row.device_id)
                home = self.loop.box.open(dev.private_enc).get("address") if dev is not None else None
                if home:
                    out["home_address"] = str(home)
            return out

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
