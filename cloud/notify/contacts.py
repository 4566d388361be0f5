"""Binding platform users to their WeCom / DingTalk accounts, phone and e-mail; groups; target resolution.

A target of the loop (``alerts.loop.intents.TargetKind``) resolves to recipients here:

- ``user``: a platform username, or a roster responder id bound to a user (``responder_id``);
- ``role``: every bound user whose ``duty_roles`` holds the role (the loop usually resolves on-call
  people itself and sends ``user`` targets; this is the fallback);
- ``group``: a named group: its robot (one group message), or each member when it has no robot;
- ``webhook``: a configured outgoing webhook by name;
- ``role`` ``family_contact/<device_id>`` (:func:`alerts.loop.routing.family_target`): the emergency
  contact registered for that device (``emergency_contact_phone``, sealed in the device registry); the
  recipient is ``family:<device_id>``, reached by SMS / voice with the family's own templates
  (``sms_family`` / ``voice_family``, :mod:`cloud.notify.family`), and always by the in-app "请致电家属"
  task of the call takers on duty (:meth:`Contacts.on_duty_users`) or, with nobody on call, every
  operator. The number is unsealed only by :meth:`Contacts.family_address` (at send time)
  and :meth:`Contacts.family_view` with ``reveal`` (the console's audited reveal), never stored elsewhere.

A group that does not exist, or has neither a robot nor members, resolves to the operators' in-app queue
(``fallback`` says why; the planner warns once per group per 10 minutes): a desk page always reaches a
human, on a fresh install too.

Phones and e-mail addresses are sealed with :class:`cloud.crypto.SecretBox`; ``phone_hash`` is
``HMAC-SHA256(blind-index key, normalised number)`` (:class:`cloud.crypto.BlindIndex`, the primary key's)
so an inbound SMS finds its sender with one indexed lookup; the lookup tries the hash under every key of
the ring (``phone_hash IN (...)``), so a number is found during a key rotation whichever key its row's
hash was computed under (``vigil cloud key reseal`` recomputes them under the new primary, moves the
inbound-SMS log rows of bound numbers to the new hash, and re-wraps the other log rows' hashes under it:
:func:`cloud.privacy.rewrap_unbound`).
Blocking (call from a worker thread).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from alerts.loop.routing import family_device
from cloud.crypto import BlindIndex, SecretBox, mask_name, mask_phone
from cloud.db import Database, Device, User
from cloud.errors import BadRequestError, NotFoundError
from cloud.notify.models import Contact, Group, GroupMember

USER_CHANNELS = ("wecom", "sms", "voice", "email", "inapp")
_PHONE = re.compile(r"^1\d{10}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise_phone(phone: str) -> str:
    """Mainland mobile numbers as 11 digits: ``+86 138-1234-1234`` -> ``13812341234``."""
    digits = re.sub(r"\D", "", phone)
    if len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    return digits


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who gets a delivery: ``key`` is ``user:<id>`` or ``group:<name>``; ``channels`` in order."""

    key: str
    lang: str
    channels: tuple[str, ...]
    target: str = ""  # robot name for a group
    #: why this recipient stands in for the target: "" (it is the target), "no_group", "empty_group"
    fallback: str = ""


#: a device's family: the recipient key's prefix and the channels that can reach a phone number
FAMILY_PREFIX = "family:"
FAMILY_CHANNELS = ("sms", "voice")
#: the channels a family row is actually sent on (their own templates: cloud.notify.family)
FAMILY_SEND_CHANNELS = ("sms_family", "voice_family")


@dataclass(frozen=True, slots=True)
class FamilyView:
    """A device's emergency contact as the console shows it: ``phone`` masked unless revealed."""

    device_id: str
    wearer: str  # masked always: the call taker needs whose family it is, not the wearer's full name
    phone: str


@dataclass(frozen=True, slots=True)
class ContactView:
    username: str
    display_name: str
    responder_id: str
    wecom_userid: str
    dingtalk_userid: str
    phone: str  # masked unless revealed
    email: str
    lang: str
    channels: list[str]
    duty_roles: list[str]


class Contacts:
    def __init__(self, db: Database, box: SecretBox, *, index: BlindIndex) -> None:
        self.db = db
        self.box = box
        self.index = index

    def phone_hash(self, phone: str) -> str:
        """The blind index of ``phone`` as written now (under the primary key)."""
        return self.index.hash(normalise_phone(phone))

    def phone_hashes(self, phone: str) -> list[str]:
        """Every blind index ``phone`` may be stored under (one per key of the ring, primary first)."""
        return self.index.candidates(normalise_phone(phone))

    # -- binding -----------------------------------------------------------------------------------------
    def bind(
        self,
        username: str,
        *,
        now: float,
        display_name: str = "",
        responder_id: str = "",
        wecom_userid: str = "",
        dingtalk_userid: str = "",
        phone: str = "",
        email: str = "",
        lang: str = "zh",
        channels: Sequence[str] = (),
        duty_roles: Sequence[str] = (),
    ) -> None:
        """Create or replace the binding of ``username`` (every field at once, like a form)."""
        phone = normalise_phone(phone) if phone else ""
        if phone and not _PHONE.match(phone):
            raise BadRequestError(
                f"phone must be a mainland mobile number (11 digits starting with 1), got {mask_phone(phone)}"
            )
        if email and not _EMAIL.match(email):
            raise BadRequestError("email is not an e-mail address")
        unknown = [c for c in channels if c not in USER_CHANNELS]
        if unknown:
            raise BadRequestError(
                f"unknown channel(s) {unknown}; a user's channels are {list(USER_CHANNELS)}"
            )
        if lang not in ("zh", "en"):
            raise BadRequestError("lang is 'zh' or 'en'")
        with self.db.write() as s:
            user = s.scalars(select(User).where(User.username == username)).first()
            if user is None:
                raise NotFoundError(f"no user {username!r}")
            row = s.get(Contact, user.id) or Contact(user_id=user.id)
            row.display_name = display_name
            row.responder_id = responder_id
            row.wecom_userid = wecom_userid
            row.dingtalk_userid = dingtalk_userid
            row.private_enc = self.box.seal({"phone": phone, "email": email})
            row.phone_hash = self.phone_hash(phone) if phone else None
            row.lang = lang
            row.channels = list(channels)
            row.duty_roles = list(duty_roles)
            row.updated_at = now
            s.add(row)

    def view(self, username: str, *, reveal: bool) -> ContactView:
        with self.db.read() as s:
            row = s.execute(
                select(User.username, Contact)
                .join(Contact, Contact.user_id == User.id)
                .where(User.username == username)
            ).first()
        if row is None:
            raise NotFoundError(f"user {username!r} has no contact binding")
        name, c = row
        private = self.box.open(c.private_enc)
        phone, email = str(private.get("phone", "")), str(private.get("email", ""))
        if not reveal:
            phone = mask_phone(phone) if phone else ""
            email = (email[:1] + "***@" + email.partition("@")[2]) if email else ""
        return ContactView(
            username=name,
            display_name=c.display_name,
            responder_id=c.responder_id,
            wecom_userid=c.wecom_userid,
            dingtalk_userid=c.dingtalk_userid,
            phone=phone,
            email=email,
            lang=c.lang,
            channels=list(c.channels),
            duty_roles=list(c.duty_roles),
        )

    def set_group(self, name: str, *, title: str = "", robot: str = "", members: Sequence[str] = ()) -> None:
        with self.db.write() as s:
            group = s.get(Group, name) or Group(name=name)
            group.title, group.robot = title, robot
            s.add(group)
            s.flush()
            for m in s.scalars(select(GroupMember).where(GroupMember.group == name)):
                s.delete(m)
            s.flush()
            for username in dict.fromkeys(members):
                user = s.scalars(select(User).where(User.username == username)).first()
                if user is None:
                    raise NotFoundError(f"no user {username!r} (member of group {name!r})")
                s.add(GroupMember(group=name, user_id=user.id))

    # -- resolution --------------------------------------------------------------------------------------
    def _recipient(self, c: Contact, default_channels: Sequence[str]) -> Recipient:
        private = self.box.open(c.private_enc)
        bound = {
            "wecom": bool(c.wecom_userid),
            "sms": bool(private.get("phone")),
            "voice": bool(private.get("phone")),
            "email": bool(private.get("email")),
            "inapp": True,
        }
        order = list(c.channels) or [ch for ch in default_channels if ch in USER_CHANNELS]
        if "inapp" not in order:
            order.append("inapp")  # the console always shows it: the last resort never fails silently
        return Recipient(
            key=f"user:{c.user_id}", lang=c.lang, channels=tuple(ch for ch in order if bound.get(ch))
        )

    def resolve(self, kind: str, target: str, *, default_channels: Sequence[str]) -> list[Recipient]:
        with self.db.read() as s:
            if kind == "user":
                row = s.execute(
                    select(Contact).join(User, User.id == Contact.user_id).where(User.username == target)
                ).scalar_one_or_none()
                if row is None:
                    row = s.scalars(select(Contact).where(Contact.responder_id == target)).first()
                if row is None:
                    user = s.scalars(select(User).where(User.username == target)).first()
                    # a platform user without a binding still sees it in the console
                    return [Recipient(key=f"user:{user.id}", lang="zh", channels=("inapp",))] if user else []
                return [self._recipient(row, default_channels)]
            if kind == "role" and (device := family_device(target)) is not None:
                dev = s.get(Device, device)
                private = self.box.open(dev.private_enc) if dev is not None else {}
                if not private.get("emergency_contact_phone"):
                    return []  # no contact registered: "nobody to notify", raised to operators
                return [Recipient(key=f"{FAMILY_PREFIX}{device}", lang="zh", channels=FAMILY_CHANNELS)]
            if kind == "role":
                rows = [c for c in s.scalars(select(Contact)) if target in (c.duty_roles or [])]
                return [self._recipient(c, default_channels) for c in rows]
            if kind == "webhook":
                return [Recipient(key=f"webhook:{target}", lang="zh", channels=("webhook",), target=target)]
            if kind == "group":
                group = s.get(Group, target)
                if group is None:
                    return [_ops_fallback(target, "no_group")]
                if group.robot:
                    return [
                        Recipient(
                            key=f"group:{group.name}", lang="zh", channels=("robot",), target=group.robot
                        )
                    ]
                members = s.scalars(
                    select(Contact)
                    .join(GroupMember, GroupMember.user_id == Contact.user_id)
                    .where(GroupMember.group == target)
                ).all()
                if not members:
                    return [_ops_fallback(target, "empty_group")]
                return [self._recipient(c, default_channels) for c in members]
        raise BadRequestError(f"unknown target kind {kind!r} (user, role or group)")

    def address(self, user_id: int, channel: str) -> str | None:
        """Where ``channel`` reaches the user right now (decrypted at send time, never stored elsewhere)."""
        return self.addresses([(user_id, channel)])[(user_id, channel)]

    def addresses(self, wanted: Sequence[tuple[int, str]]) -> dict[tuple[int, str], str | None]:
        """:meth:`address` for a round of sends, with one database read."""
        ids = sorted({uid for uid, ch in wanted if ch != "inapp"})
        with self.db.read() as s:
            rows = (
                {c.user_id: c for c in s.scalars(select(Contact).where(Contact.user_id.in_(ids)))}
                if ids
                else {}
            )
        return {(uid, ch): self._address(rows.get(uid), uid, ch) for uid, ch in wanted}

    def _address(self, c: Contact | None, user_id: int, channel: str) -> str | None:
        if channel == "inapp":
            return str(user_id)
        if c is None:
            return None
        if channel == "wecom":
            return c.wecom_userid or None
        private = self.box.open(c.private_enc)
        if channel in ("sms", "voice"):
            return str(private["phone"]) if private.get("phone") else None
        if channel == "email":
            return str(private["email"]) if private.get("email") else None
        return None

    # -- a device's family (the registry's sealed emergency contact) ------------------------------------
    def _family_private(self, device_id: str) -> dict[str, object] | None:
        with self.db.read() as s:
            dev = s.get(Device, device_id)
            sealed = dev.private_enc if dev is not None else None
        return dict(self.box.open(sealed)) if dev is not None else None

    def family_address(self, recipient: str, channel: str) -> str | None:
        """The phone that ``channel`` (sms / voice) reaches ``family:<device_id>`` at, unsealed at send time
        (the delivery worker's call; the number is never stored, logged or put in a URL)."""
        if channel not in FAMILY_SEND_CHANNELS or not recipient.startswith(FAMILY_PREFIX):
            return None
        private = self._family_private(recipient.removeprefix(FAMILY_PREFIX))
        phone = normalise_phone(str((private or {}).get("emergency_contact_phone") or ""))
        return phone or None

    def family_view(self, device_id: str, *, reveal: bool) -> FamilyView:
        """The emergency contact of ``device_id``; the caller decides ``reveal`` and audits it."""
        private = self._family_private(device_id)
        if private is None:
            raise NotFoundError(f"no device {device_id!r}")
        phone = normalise_phone(str(private.get("emergency_contact_phone") or ""))
        if not phone:
            raise NotFoundError(f"device {device_id!r} has no emergency contact registered")
        wearer = str(private.get("wearer_name") or "")
        return FamilyView(
            device_id=device_id,
            wearer=mask_name(wearer) if wearer else "",
            phone=phone if reveal else mask_phone(phone),
        )

    # -- who is on duty (the loop's roster) ------------------------------------------------------------
    def on_duty_users(self, role: str, incident_id: str, device_id: str, now: float) -> list[int]:
        """Platform users on call for ``role`` at ``now`` in the incident's zone (its grid; the device's
        registered grid when the incident is not in this database), through the loop's roster
        (``alerts.loop.rosters.Roster.on_call``, overrides applied). A roster entry is a platform user by
        its contact binding's ``responder_id`` or by username; entries that are neither are skipped.
        Empty when nobody is on call (the caller falls back to every operator)."""
        from cloud.loop.config import load as load_loop_config  # the loop's tables; imported lazily
        from cloud.loop.models import Incident

        with self.db.read() as s:
            zone = ""
            if incident_id.isdigit() and len(incident_id) <= 18:
                row = s.get(Incident, int(incident_id))
                zone = (row.grid or "") if row is not None else ""
            if not zone and device_id:
                dev = s.get(Device, device_id)
                zone = (dev.grid or "") if dev is not None else ""
            people = [p.id for p in load_loop_config(s).roster.on_call(role, zone, now)]
            if not people:
                return []
            by_responder = {
                str(rid): int(uid)
                for rid, uid in s.execute(
                    select(Contact.responder_id, Contact.user_id).where(Contact.responder_id.in_(people))
                )
            }
            by_name = {
                str(name): int(uid)
                for name, uid in s.execute(select(User.username, User.id).where(User.username.in_(people)))
            }
        found = [by_responder.get(p, by_name.get(p)) for p in people]
        return list(dict.fromkeys(u for u in found if u is not None))

    def user_by_phone(self, phone: str) -> int | None:
        with self.db.read() as s:
            hashes = self.phone_hashes(phone)
            rows = s.execute(
                select(Contact.user_id, Contact.phone_hash)
                .where(Contact.phone_hash.in_(hashes))
                .order_by(Contact.user_id)
            ).all()
        # the primary's hash first: a number re-bound since the rotation wins over a stale row
        best = min(rows, key=lambda r: hashes.index(str(r[1])), default=None)
        return int(best[0]) if best is not None else None

    def user_id(self, username: str) -> int:
        with self.db.read() as s:
            user = s.scalars(select(User).where(User.username == username)).first()
            if user is None:
                raise NotFoundError(f"no user {username!r}")
            return user.id

    def username(self, user_id: int) -> str:
        with self.db.read() as s:
            user = s.get(User, user_id)
            return user.username if user else f"user:{user_id}"


def _ops_fallback(group: str, why: str) -> Recipient:
    """A desk or group nobody can be paged through: the operators' in-app queue instead."""
    return Recipient(key=f"group:{group}", lang="zh", channels=("inapp_ops",), fallback=why)
