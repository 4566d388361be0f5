"""Acting from a message: a link's action, an SMS reply code, and the port to the incident loop.

Every way in ends in :meth:`ResponderDesk.apply`: the action is recorded in ``notify_actions`` (who, from
which link or number, note, photos) and handed to the loop through :class:`IncidentPort`, which decides
whether the incident's state allows it (issue 8 owns that state machine). A refused action (the port
raises a :class:`~cloud.errors.CloudError`) leaves nothing behind: the link stays usable.

Links are single-use: the nonce is claimed (``notify_link_uses``, primary key) before the loop is asked;
a second use answers ``link_used`` and changes nothing. SMS replies (GoAlert style): ``1`` accept,
``2`` decline, ``3`` on my way, ``4`` arrived, optionally followed by the case number (``1 37``); the
sender must be a bound phone that was paged for that case.

A link page (:meth:`ResponderDesk.link_state`) shows the case. For an open wristband case and a link sent
to one person (``user:<id>``), the place is the wearer's home and, given the time-series store, the
wearer's latest exact position (:meth:`IncidentPort.whereabouts`); a group's link keeps the grid, and a
closed case shows neither (docs/privacy.md). The page re-reads that position with
:meth:`ResponderDesk.live_position` every ``position_refresh_s`` seconds while it is open and visible,
until the case closes or the link expires.

**A group's decline** (docs/notifications.md, "A decline through a group's link"). A link sent to a group
(``group:<name>``: one WeCom / DingTalk robot message read by every member of the chat) does not say who
tapped it. Its decline therefore means "one member cannot take it", not "the group hands the order back":
it is recorded here (actor ``group:<name>``, the member's note) and on the incident's timeline
(:meth:`IncidentPort.member_declined`, action ``member_declined``), and the order stays where it is, open
to the group's other members through the same message's accept link, until the policy's acknowledgement
timeout escalates it. It does not stop the paging. It is not single-use (several members may each say they
cannot), up to :data:`GROUP_DECLINES_MAX` per link; it is refused with 409 once someone holds the order or
the case is closed. A decline by a person's own link (``user:<id>``, an SMS reply ``2``) still hands the
order back (``return``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import delete, select

from cloud.db import Database
from cloud.errors import BadRequestError, CloudError, ConflictError, PermissionDeniedError
from cloud.loop.models import OUTCOMES
from cloud.notify.contacts import Contacts
from cloud.notify.links import RESPONDER_PURPOSES, LinkClaims, LinkError, LinkSigner, Purpose, require_purpose
from cloud.notify.models import Delivery, InboundSms, LinkUse, Report, ResponderAction
from cloud.notify.outbox import Outbox
from cloud.notify.photos import PhotoStore
from cloud.notify.render import REPLY_CODES
from cloud.timeseries import TimeSeriesStore

#: seconds between two re-reads of the wearer's position by an open link page
REFRESH_S = 30
_REPLY = re.compile(r"^\s*([1-4])\s*[-#,.\s]?\s*(\d{1,8})?\s*$")
#: the links whose page may show a wristband wearer's home and position: not a decline (the person who
#: declines does not go; docs/phone-pages.md)
POSITION_PURPOSES = tuple(p for p in RESPONDER_PURPOSES if p is not Purpose.DECLINE)
#: actions after which the incident's remaining queued pages are pointless
_STOPS_PAGING = (Purpose.ACCEPT, Purpose.ARRIVED, Purpose.RESOLVED, Purpose.ON_THE_WAY)
#: a group's shared decline link records at most this many members' declines (a timeline stays readable)
GROUP_DECLINES_MAX = 10
#: the timeline action of a group member's decline (the order is not handed back)
MEMBER_DECLINED = "member_declined"


def shared_link(actor: str) -> bool:
    """A link every member of a group reads (a chat robot's message): its tapper is not known."""
    return actor.startswith("group:")


class IncidentPort(Protocol):
    """The closed loop's side of an action (blocking; raise ``CloudError`` to refuse)."""

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
    ) -> None: ...

    def reopen(self, incident_id: str, *, reason: str, now: float) -> None: ...

    def rate(
        self, incident_id: str, score: int, comment: str, *, now: float, actor: str = "resident"
    ) -> None: ...

    def describe(self, incident_id: str) -> dict[str, Any] | None:
        """The case; ``owner`` (the loop's id of who accepted it, None while nobody holds it) included."""
        ...

    def actor_id(self, actor: str) -> str:
        """The loop's id of a link's actor (``user:7`` -> the responder id the loop records as owner)."""
        ...

    def whereabouts(
        self, incident_id: str, store: TimeSeriesStore, *, viewer: str, now: float, refresh: bool = False
    ) -> dict[str, Any] | None:
        """Where an open wristband case's wearer is, for ``viewer``'s personal link (audited; a
        ``refresh`` of an open page at most every few minutes per viewer and case); else None."""
        ...

    def open_report(self, report: dict[str, Any], *, now: float) -> str | None: ...

    def member_declined(self, incident_id: str, *, actor: str, note: str, now: float) -> None:
        """A member of group ``actor`` cannot take the case: on the timeline, the order unchanged; raise
        ``ConflictError`` once someone holds the order or the case is closed."""
        ...


class NullIncidentPort:
    """Used until the loop is wired: actions are recorded here only, incidents are not described."""

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
        return None

    def reopen(self, incident_id: str, *, reason: str, now: float) -> None:
        return None

    def rate(
        self, incident_id: str, score: int, comment: str, *, now: float, actor: str = "resident"
    ) -> None:
        return None

    def describe(self, incident_id: str) -> dict[str, Any] | None:
        return None

    def actor_id(self, actor: str) -> str:
        return actor

    def whereabouts(
        self, incident_id: str, store: TimeSeriesStore, *, viewer: str, now: float, refresh: bool = False
    ) -> dict[str, Any] | None:
        return None

    def open_report(self, report: dict[str, Any], *, now: float) -> str | None:
        return None

    def member_declined(self, incident_id: str, *, actor: str, note: str, now: float) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ActionResult:
    incident_id: str
    action: str
    actor: str
    via: str
    at: float
    photo_ids: tuple[str, ...] = ()
    #: a group member's decline: recorded, the order not handed back (still open to the group)
    member_only: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "action": self.action,
            "actor": self.actor,
            "via": self.via,
            "at": self.at,
            "photo_ids": list(self.photo_ids),
            "member_only": self.member_only,
        }


class ResponderDesk:
    def __init__(
        self,
        db: Database,
        *,
        links: LinkSigner,
        contacts: Contacts,
        outbox: Outbox,
        photos: PhotoStore,
        port: IncidentPort,
    ) -> None:
        self.db = db
        self.links = links
        self.contacts = contacts
        self.outbox = outbox
        self.photos = photos
        self.port = port

    # -- links ---------------------------------------------------------------------------------------------
    def link_state(self, token: str, *, now: float, store: TimeSeriesStore | None = None) -> dict[str, Any]:
        """What a link page shows: its action, whether it can still be used, and the case (role-filtered).

        With ``store`` (the time-series store), a personal link to an open wristband case also gets
        ``incident.position``: where the wearer is (:func:`cloud.notify.loopbridge.position_view`).
        """
        claims = self.links.verify(token, now=now)
        with self.db.read() as s:
            used = s.get(LinkUse, claims.nonce)
        info = self.port.describe(claims.incident_id) or {}
        incident: dict[str, Any] = {
            k: info[k] for k in ("title", "status", "place", "opened_at", "department") if k in info
        }
        personal = claims.purpose in POSITION_PURPOSES and claims.actor.startswith("user:")
        if personal and info.get("home_address") and self.on_case(claims, info):
            # an open wristband case: the one person it was sent to goes to the wearer's home
            # (docs/privacy.md); a group's link (a chat robot, many readers) keeps the grid
            incident["place"] = info["home_address"]
            incident["home"] = info["home_address"]
            if store is not None:
                incident["position_refresh_s"] = REFRESH_S
                # outdoors the wearer is not at home: the latest exact fix since the alarm, for this person
                position = self.port.whereabouts(claims.incident_id, store, viewer=claims.actor, now=now)
                if position is not None:
                    incident["position"] = position
        return {
            "purpose": claims.purpose.value,
            "incident_id": claims.incident_id,
            "expires_at": claims.expires_at,
            "used_at": used.used_at if used else None,
            "usable": used is None,
            "incident": incident,
        }

    def live_position(self, token: str, *, now: float, store: TimeSeriesStore) -> dict[str, Any]:
        """The position block of a personal responder link, re-read by the open page (phone.js).

        ``open`` is false once the case is closed (the page then drops the position and stops asking);
        ``position`` is :meth:`IncidentPort.whereabouts` (``None`` while there is no exact fix yet).
        Only a link of a responder purpose but decline sent to one person (``user:<id>``) may ask: a
        group's link gets 403, a resident's case link or a decline link 400, and nothing is read. Used
        links may ask (the responder who accepted is on the way); a forged or expired link gets 403 like
        every other link endpoint.
        """
        claims = self.links.verify(token, now=now)
        require_purpose(claims, *POSITION_PURPOSES)
        if not claims.actor.startswith("user:"):
            raise PermissionDeniedError("the wearer's position is only for a link sent to one person")
        info = self.port.describe(claims.incident_id) or {}
        # an open wristband case (LoopPort.describe) this person is still on
        live = bool(info.get("home_address")) and self.on_case(claims, info)
        position = None
        if live:
            position = self.port.whereabouts(
                claims.incident_id, store, viewer=claims.actor, now=now, refresh=True
            )
        return {
            "incident_id": claims.incident_id,
            "open": bool(info.get("open", live)),
            "live": live,
            "position": position,
            "refresh_s": REFRESH_S,
        }

    def on_case(self, claims: LinkClaims, info: dict[str, Any]) -> bool:
        """Whether a personal link's person is still on the case, so may see where the wearer is: not
        after their own decline (their last action on it), and, once someone accepted, only the one who
        did (the owner): a colleague whose order was handed to another, or who was paged alongside the
        one who accepted, no longer follows the wearer (docs/phone-pages.md)."""
        with self.db.read() as s:
            last = s.scalar(
                select(ResponderAction.action)
                .where(
                    ResponderAction.incident_id == claims.incident_id,
                    ResponderAction.actor == claims.actor,
                )
                .order_by(ResponderAction.id.desc())
                .limit(1)
            )
        if last == Purpose.DECLINE.value:
            return False
        owner = info.get("owner")
        return not owner or owner == self.port.actor_id(claims.actor)

    def act_by_link(
        self,
        token: str,
        *,
        note: str = "",
        photo: bytes | None = None,
        now: float,
        outcome: str | None = None,
    ) -> ActionResult:
        """Do what the link says. ``outcome`` (a resolved link only): the responder's verdict, ``real``,
        ``nuisance`` or ``false_alarm`` (:data:`cloud.loop.models.OUTCOMES`)."""
        claims = self.links.verify(token, now=now)
        require_purpose(claims, *RESPONDER_PURPOSES)
        if claims.purpose is Purpose.RESOLVED and not note.strip():
            raise BadRequestError("a resolution needs a note saying what was done")
        if outcome is not None and claims.purpose is not Purpose.RESOLVED:
            raise BadRequestError("只有办结链接可以给出结论 / only a resolved link takes an outcome")
        if outcome is not None and outcome not in OUTCOMES:
            raise BadRequestError(f"outcome is one of {list(OUTCOMES)}, not {outcome!r}")
        if claims.purpose is Purpose.DECLINE and shared_link(claims.actor):
            if photo is not None:
                raise BadRequestError("拒绝不附照片 / a decline takes no photo")
            return self._member_declines(claims, note=note, now=now)
        photo_ids: list[str] = []
        if photo is not None:
            self.photos.check(photo)  # refuse a bad photo before anything is written
        self._claim_nonce(claims, now=now)
        try:
            if photo is not None:
                photo_ids = [self.photos.store(photo, incident_id=claims.incident_id, now=now)]
            return self.apply(
                claims.incident_id,
                claims.purpose,
                actor=claims.actor,
                via="link",
                note=note,
                photo_ids=photo_ids,
                now=now,
                outcome=outcome,
            )
        except CloudError:
            self._release_nonce(claims)
            raise

    def _member_declines(self, claims: LinkClaims, *, note: str, now: float) -> ActionResult:
        """A group's shared decline link: one member cannot take it (module docstring). The nonce is not
        claimed; the link's uses are counted instead (at most :data:`GROUP_DECLINES_MAX`)."""
        with self.db.read() as s:
            done = len(
                s.scalars(
                    select(ResponderAction.id)
                    .where(
                        ResponderAction.incident_id == claims.incident_id,
                        ResponderAction.actor == claims.actor,
                        ResponderAction.action == Purpose.DECLINE.value,
                    )
                    .limit(GROUP_DECLINES_MAX)
                ).all()
            )
        if done >= GROUP_DECLINES_MAX:
            raise LinkError("used", f"this group's decline link was used {done} times; nothing changed")
        self.port.member_declined(claims.incident_id, actor=claims.actor, note=note[:1000], now=now)
        with self.db.write() as s:
            s.add(
                ResponderAction(
                    incident_id=claims.incident_id,
                    action=Purpose.DECLINE.value,
                    actor=claims.actor,
                    via="link",
                    note=note[:1000],
                    photo_ids=[],
                    at=now,
                )
            )
        return ActionResult(
            claims.incident_id, Purpose.DECLINE.value, claims.actor, "link", now, member_only=True
        )

    def _claim_nonce(self, claims: LinkClaims, *, now: float) -> None:
        try:
            with self.db.write() as s:
                s.add(
                    LinkUse(
                        nonce=claims.nonce,
                        purpose=claims.purpose.value,
                        incident_id=claims.incident_id,
                        actor=claims.actor,
                        used_at=now,
                    )
                )
        except ConflictError as exc:
            raise LinkError("used", "this link was already used; nothing changed") from exc

    def _release_nonce(self, claims: LinkClaims) -> None:
        with self.db.write() as s:
            s.execute(delete(LinkUse).where(LinkUse.nonce == claims.nonce))

    # -- the one way an action happens ---------------------------------------------------------------------
    def apply(
        self,
        incident_id: str,
        purpose: Purpose,
        *,
        actor: str,
        via: str,
        note: str = "",
        photo_ids: Sequence[str] = (),
        now: float,
        outcome: str | None = None,
    ) -> ActionResult:
        self.port.responder_action(
            incident_id, purpose.value, actor=actor, note=note, photo_ids=photo_ids, now=now, outcome=outcome
        )
        with self.db.write() as s:
            s.add(
                ResponderAction(
                    incident_id=incident_id,
                    action=purpose.value,
                    actor=actor,
                    via=via,
                    note=note[:1000],
                    photo_ids=list(photo_ids),
                    at=now,
                )
            )
            report = s.scalars(select(Report).where(Report.incident_id == incident_id)).first() or s.get(
                Report, incident_id
            )
            if report is not None and report.first_response_at is None and purpose in _STOPS_PAGING:
                report.first_response_at = now
        if purpose in _STOPS_PAGING:
            self.outbox.cancel_incident(incident_id, now=now, reason=f"{purpose.value} by {actor}")
        return ActionResult(incident_id, purpose.value, actor, via, now, tuple(photo_ids))

    def actions(self, incident_id: str) -> list[dict[str, Any]]:
        with self.db.read() as s:
            rows = s.scalars(
                select(ResponderAction)
                .where(ResponderAction.incident_id == incident_id)
                .order_by(ResponderAction.id)
            ).all()
        return [
            {
                "action": r.action,
                "actor": r.actor,
                "via": r.via,
                "note": r.note,
                "photo_ids": r.photo_ids,
                "at": r.at,
            }
            for r in rows
        ]

    # -- SMS replies ---------------------------------------------------------------------------------------
    def sms_reply(self, provider: str, phone: str, text: str, *, now: float) -> dict[str, Any]:
        """Apply a reply code; always answers (the provider needs a 200) with ``accepted`` and ``reason``."""
        result = self._sms_reply(phone, text, now=now)
        with self.db.write() as s:
            s.add(
                InboundSms(
                    provider=provider[:16],
                    phone_hash=self.contacts.phone_hash(phone),
                    text=text[:160],
                    received_at=now,
                    result=str(result["reason"])[:200],
                )
            )
        return result

    def _sms_reply(self, phone: str, text: str, *, now: float) -> dict[str, Any]:
        m = _REPLY.match(unicodedata.normalize("NFKC", text))
        if m is None:
            return {
                "accepted": False,
                "reason": "unknown_code: reply 1 accept, 2 decline, 3 on my way, 4 arrived",
            }
        purpose, ref = REPLY_CODES[m.group(1)], m.group(2) or ""
        user_id = self.contacts.user_by_phone(phone)
        if user_id is None:
            return {"accepted": False, "reason": "unknown_sender: this number is not bound to any responder"}
        recipient = f"user:{user_id}"
        with self.db.read() as s:
            q = select(Delivery.incident_id).where(
                Delivery.recipient == recipient, Delivery.reply_ref != "", Delivery.created_at > now - 86400
            )
            if ref:
                q = q.where(Delivery.reply_ref == ref)
            incidents = sorted(set(s.scalars(q).all()))
        if not incidents:
            why = f"no page for case {ref} was sent to this number" if ref else "no open page for this number"
            return {"accepted": False, "reason": f"no_page: {why}"}
        if len(incidents) > 1:
            return {
                "accepted": False,
                "reason": f"ambiguous: several open cases {incidents}; reply e.g. '1 {incidents[0]}'",
            }
        try:
            done = self.apply(incidents[0], purpose, actor=recipient, via="sms", now=now)
        except CloudError as exc:
            return {"accepted": False, "reason": f"refused: {exc.detail}", "incident_id": incidents[0]}
        return {"accepted": True, "reason": "ok", **done.to_json()}
