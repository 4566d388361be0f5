"""The durable notification outbox and delivery log (Alertmanager's nflog, in the database).

Invariants, and how each is kept:

- **Never page twice.** A delivery's ``dedup_key`` (incident / step / recipient / channel) is unique:
  enqueueing it again inserts nothing (``INSERT .. ON CONFLICT DO NOTHING``). Workers claim rows with a
  conditional ``UPDATE .. WHERE status = 'pending' AND next_at <= now`` (or an expired lease): of two
  workers racing for a row exactly one sees ``rowcount == 1``, on SQLite and PostgreSQL alike.
- **Never lose a page.** The claim writes an ``in_flight`` attempt row and a lease in the same
  transaction, before anything is sent. A worker that dies mid-send leaves the lease to expire; the next
  claim marks that attempt ``lost`` (outcome unknown) and sends again: at-least-once, with the provider's
  own duplicate check where it has one (WeCom ``enable_duplicate_check``, the webhook delivery key).
  A graceful shutdown lets in-flight sends finish first (:mod:`cloud.notify.worker`).
- **Retries** back off exponentially with equal jitter (``backoff_initial_s`` doubling to
  ``backoff_max_s``, never sooner than the provider's ``Retry-After``); after ``max_attempts`` the
  channel gives up.
- **Fallback, and no silent failure.** A channel that gives up hands over to the recipient's next
  channel (a new row). When none is left the failure is raised in-app to every operator and to the
  recipient, counted, and logged.
- **Rate limits** per robot (``per_minute``, 20 by default) are counted from the attempt log across all
  workers; rows over the limit wait for a free slot, and several due rows for one robot go out as one
  digest message instead of being dropped.

Blocking (call from a worker thread); time is passed in.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cloud.db import Database, User
from cloud.notify.channel import Delivered, GiveUp, Outcome, Retry
from cloud.notify.models import Attempt, Contact, Delivery, InApp

#: the family's own SMS / voice channels (``cloud.notify.family`` names them; repeated here, below it)
FAMILY_SMS = "sms_family"
FAMILY_VOICE = "voice_family"
#: a wearer's family as a delivery's recipient (``family:<device_id>``, cloud.notify.contacts.FAMILY_PREFIX)
FAMILY_RECIPIENT = "family:"
#: the desk's 请致电家属 call task: in-app, addressed to whoever is on duty when it is delivered
CALL_TASK = "call_task"
#: channels whose address is a configured name (robot / webhook), not a user
NAMED_TARGET_CHANNELS = ("dingtalk_robot", "wecom_robot", "webhook")


@dataclass(frozen=True, slots=True)
class NewDelivery:
    dedup_key: str
    incident_id: str
    recipient: str
    channel: str
    notice: dict[str, Any]
    step: int = 0
    target: str = ""
    fallback: tuple[str, ...] = ()
    priority: int = 0
    reply_ref: str = ""
    intent_key: str = ""


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    dedup_key: str
    incident_id: str
    recipient: str
    channel: str
    target: str
    notice: dict[str, Any]
    attempt_id: int
    attempt_no: int


@dataclass(frozen=True, slots=True)
class Settled:
    """What :meth:`Outbox.finish` did: ``status`` of the row, and follow-ups."""

    status: str
    fallback_channel: str = ""
    failure_raised: bool = False
    intent_key: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_s: float = 2.0
    maximum_s: float = 300.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int, after: float | None) -> float:
        """Equal-jitter exponential backoff for the ``attempt``-th failure, at least ``after``."""
        cap = min(self.maximum_s, self.initial_s * 2 ** min(max(attempt - 1, 0), 32))
        return float(max(after or 0.0, cap / 2 + self.rng.uniform(0, cap / 2)))


def _due(now: float) -> Any:
    return or_(
        and_(Delivery.status == "pending", Delivery.next_at <= now),
        and_(Delivery.status == "sending", Delivery.lease_until < now),
    )


class Outbox:
    def __init__(
        self,
        db: Database,
        *,
        worker: str,
        policy: RetryPolicy,
        lease_s: float = 60.0,
        robot_limits: dict[str, int] | None = None,
    ) -> None:
        self.db = db
        self.worker = worker
        self.policy = policy
        self.lease_s = lease_s
        self.robot_limits = robot_limits or {}

    # -- enqueue -----------------------------------------------------------------------------------------
    def enqueue(self, rows: Sequence[NewDelivery], *, now: float) -> int:
        """Insert what is not there yet; returns how many rows are new."""
        if not rows:
            return 0
        insert = sqlite.insert if self.db.is_sqlite else postgresql.insert
        added = 0
        with self.db.write() as s:
            for r in rows:
                stmt = (
                    insert(Delivery)
                    .values(
                        dedup_key=r.dedup_key[:255],
                        intent_key=r.intent_key[:255],
                        incident_id=r.incident_id,
                        step=r.step,
                        recipient=r.recipient,
                        channel=r.channel,
                        target=r.target,
                        fallback=list(r.fallback),
                        notice=r.notice,
                        priority=r.priority,
                        reply_ref=r.reply_ref,
                        status="pending",
                        attempts=0,
                        next_at=now,
                        lease_owner="",
                        lease_until=0.0,
                        last_error="",
                        provider_id="",
                        created_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["dedup_key"])
                    .returning(Delivery.id)
                )
                added += len(s.execute(stmt).all())  # rowcount is not reliable here on psycopg
        return added

    # -- claim ---------------------------------------------------------------------------------------------
    def claim(self, *, now: float, limit: int) -> list[Claimed]:
        """Take up to ``limit`` due rows for this worker: a handful of statements per round, not per row."""
        with self.db.read() as s:  # idle rounds never take the (SQLite: process-wide) write lock
            if s.scalar(select(Delivery.id).where(_due(now)).limit(1)) is None:
                return []
        with self.db.write() as s:
            q = (
                select(Delivery.id, Delivery.target)
                .where(_due(now))
                .order_by(Delivery.priority.desc(), Delivery.next_at)
                .limit(limit * 4)
            )
            if self.db.for_update():  # PostgreSQL: skip rows another worker is claiming right now
                q = q.with_for_update(skip_locked=True)
            candidates = s.execute(q).all()
            chosen: list[int] = []
            budget: dict[str, int] = {}
            digest: set[str] = set()  # robots claimed in this round: further rows join their digest
            for row_id, target in candidates:
                if len(chosen) >= limit:
                    break
                if target and target in self.robot_limits and target not in digest:
                    if target not in budget:
                        # one send = one claim instant (a digest's rows share it), counted over all workers
                        used = s.scalar(
                            select(func.count(func.distinct(Attempt.started_at))).where(
                                Attempt.target == target, Attempt.started_at > now - 60.0
                            )
                        )
                        budget[target] = self.robot_limits[target] - int(used or 0)
                    if budget[target] <= 0:
                        continue  # over the robot's minute budget: stays pending, goes out in a digest later
                    digest.add(target)
                    budget[target] -= 1
                chosen.append(row_id)
            if not chosen:
                return []
            # the conditional UPDATE is the claim: a row another worker took meanwhile is no longer due
            won = set(
                s.scalars(
                    update(Delivery)
                    .where(Delivery.id.in_(chosen), _due(now))
                    .values(
                        status="sending",
                        lease_owner=self.worker,
                        lease_until=now + self.lease_s,
                        attempts=Delivery.attempts + 1,
                    )
                    .returning(Delivery.id)
                    .execution_options(synchronize_session=False)
                ).all()
            )
            if not won:
                return []
            s.execute(
                update(Attempt)
                .where(Attempt.delivery_id.in_(won), Attempt.outcome == "in_flight")
                .values(outcome="lost", finished_at=now, detail="worker stopped mid-send; outcome unknown")
            )
            rows = {d.id: d for d in s.scalars(select(Delivery).where(Delivery.id.in_(won)))}
            pairs = []
            for row_id in chosen:
                d = rows.get(row_id)
                if d is None:
                    continue
                attempt = Attempt(
                    delivery_id=d.id,
                    number=d.attempts,
                    channel=d.channel,
                    target=d.target,
                    worker=self.worker,
                    started_at=now,
                    outcome="in_flight",
                    detail="",
                )
                s.add(attempt)
                pairs.append((d, attempt))
            s.flush()
            return [
                Claimed(
                    id=d.id,
                    dedup_key=d.dedup_key,
                    incident_id=d.incident_id,
                    recipient=d.recipient,
                    channel=d.channel,
                    target=d.target,
                    notice=dict(d.notice),
                    attempt_id=a.id,
                    attempt_no=d.attempts,
                )
                for d, a in pairs
            ]

    # -- finish --------------------------------------------------------------------------------------------
    def finish(self, claimed: Claimed, outcome: Outcome, *, now: float) -> Settled:
        return self.finish_many([(claimed, outcome)], now=now)[0]

    def finish_many(self, items: Sequence[tuple[Claimed, Outcome]], *, now: float) -> list[Settled]:
        """Record the outcomes of a round of sends in one transaction (SQLite has one writer)."""
        with self.db.write() as s:
            # load the round's rows in two queries; _finish then finds them in the session
            s.scalars(select(Delivery).where(Delivery.id.in_([c.id for c, _ in items]))).all()
            s.scalars(select(Attempt).where(Attempt.id.in_([c.attempt_id for c, _ in items]))).all()
            return [self._finish(s, claimed, outcome, now) for claimed, outcome in items]

    def _finish(self, s: Any, claimed: Claimed, outcome: Outcome, now: float) -> Settled:
        attempt = s.get(Attempt, claimed.attempt_id)
        d = s.get(Delivery, claimed.id)
        assert d is not None
        if attempt is not None:
            attempt.finished_at = now
            attempt.outcome = {Delivered: "delivered", Retry: "retry", GiveUp: "give_up"}[type(outcome)]
            attempt.detail = "" if isinstance(outcome, Delivered) else outcome.reason[:300]
        if d.lease_owner != self.worker or d.status != "sending":
            return Settled(status=d.status, intent_key=d.intent_key)  # fenced: our lease was taken over
        d.lease_owner, d.lease_until = "", 0.0
        if isinstance(outcome, Delivered):
            d.status, d.finished_at, d.provider_id, d.last_error = (
                "delivered",
                now,
                outcome.provider_id[:128],
                "",
            )
            return Settled(status="delivered", intent_key=d.intent_key)
        d.last_error = outcome.reason[:300]
        if isinstance(outcome, Retry) and d.attempts < self.policy.max_attempts:
            d.status = "pending"
            d.next_at = now + self.policy.delay(d.attempts, outcome.after)
            return Settled(status="pending", intent_key=d.intent_key)
        if isinstance(outcome, Retry):
            d.last_error = f"gave up after {d.attempts} attempts: {outcome.reason}"[:300]
        d.status, d.finished_at = "failed", now
        if d.fallback:
            nxt, rest = d.fallback[0], list(d.fallback[1:])
            s.add(
                Delivery(
                    dedup_key=_swap_channel(d.dedup_key, d.channel, nxt),
                    intent_key=d.intent_key,
                    incident_id=d.incident_id,
                    step=d.step,
                    recipient=d.recipient,
                    channel=nxt,
                    target="",
                    fallback=rest,
                    notice=d.notice,
                    priority=d.priority,
                    reply_ref=d.reply_ref,
                    status="pending",
                    attempts=0,
                    next_at=now,
                    lease_owner="",
                    lease_until=0.0,
                    last_error="",
                    provider_id="",
                    created_at=now,
                )
            )
            if nxt == "inapp":  # every outside channel failed: operators must see it now
                self._raise_failure(s, d, now, copy_to_recipient=False)
            raised = nxt == "inapp"
            return Settled(
                status="failed", fallback_channel=nxt, failure_raised=raised, intent_key=d.intent_key
            )
        self._raise_failure(s, d, now)
        return Settled(status="failed", failure_raised=True, intent_key=d.intent_key)

    def release(self, claimed: Claimed, *, until: float, now: float, reason: str) -> None:
        """Give a claimed row back without counting an attempt (a robot's minute budget is used up)."""
        with self.db.write() as s:
            attempt = s.get(Attempt, claimed.attempt_id)
            if attempt is not None:
                s.delete(attempt)
            s.execute(
                update(Delivery)
                .where(Delivery.id == claimed.id, Delivery.lease_owner == self.worker)
                .values(
                    status="pending",
                    lease_owner="",
                    lease_until=0.0,
                    next_at=until,
                    attempts=Delivery.attempts - 1,
                    last_error=reason[:300],
                )
            )

    def raise_unreachable(
        self, incident_id: str, title: str, target: str, severity: int, *, now: float
    ) -> None:
        """Operators see, in-app, that a page had nobody to go to (no recipient, or none with a channel)."""
        failure = {
            "title": f"无人可通知 / nobody to notify: {title}"[:200],
            "lines": [f"{target}: 没有可用的联系人或通道 / no recipient with a reachable channel"],
            "actions": [],
            "severity": severity,
            "lang": "zh",
        }
        with self.db.write() as s:
            s.add(
                InApp(user_id=None, incident_id=incident_id, kind="failure", notice=failure, created_at=now)
            )

    def _raise_failure(self, s: Any, d: Delivery, now: float, *, copy_to_recipient: bool = True) -> None:
        """Nothing is dropped silently: operators (and the recipient, in-app) see every final failure."""
        title = d.notice.get("title", "")
        failure = {
            "title": f"通知失败 / notification failed: {title}"[:200],
            "lines": [f"{d.recipient} · {d.channel}: {d.last_error}"],
            "actions": [],
            "severity": d.notice.get("severity", 2),
            "lang": "zh",
        }
        s.add(InApp(user_id=None, incident_id=d.incident_id, kind="failure", notice=failure, created_at=now))
        if copy_to_recipient and d.recipient.startswith("user:") and d.channel != "inapp":
            s.add(
                InApp(
                    user_id=int(d.recipient.removeprefix("user:")),
                    incident_id=d.incident_id,
                    kind="notice",
                    notice=d.notice,
                    dedup_key=f"{d.dedup_key}/failed-copy"[:255],
                    created_at=now,
                )
            )

    # -- cancel and read -----------------------------------------------------------------------------------
    def cancel_incident(self, incident_id: str, *, now: float, reason: str = "incident acknowledged") -> int:
        """Cancel the incident's queued pages to responders (someone took it). A wearer's family is still
        told, and the desk still calls them: their rows (recipient ``family:<device>``) stay queued."""
        with self.db.write() as s:
            res = s.execute(
                update(Delivery)
                .where(
                    Delivery.incident_id == incident_id,
                    Delivery.status == "pending",
                    Delivery.recipient.not_like(f"{FAMILY_RECIPIENT}%"),
                )
                .values(status="cancelled", finished_at=now, last_error=reason[:300])
            )
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    def log(self, incident_id: str) -> list[dict[str, Any]]:
        """Every delivery of an incident with every attempt: the timeline's delivery log."""
        with self.db.read() as s:
            rows = s.scalars(
                select(Delivery).where(Delivery.incident_id == incident_id).order_by(Delivery.id)
            ).all()
            attempts = s.scalars(
                select(Attempt).where(Attempt.delivery_id.in_([d.id for d in rows])).order_by(Attempt.id)
            ).all()
            # who by name (the console shows a person, not ``user:25``) and when an in-app notice was read
            uids = {_user_id(d.recipient) for d in rows} - {None}
            names: dict[int, str] = {}
            if uids:
                q = (
                    select(User.id, User.username, Contact.display_name)
                    .outerjoin(Contact, Contact.user_id == User.id)
                    .where(User.id.in_(uids))
                )
                names = {int(uid): (display or username) for uid, username, display in s.execute(q)}
            read: dict[str, float | None] = {}
            if rows:
                q2 = select(InApp.dedup_key, InApp.read_at).where(
                    InApp.dedup_key.in_([d.dedup_key for d in rows])
                )
                read = {str(k): r for k, r in s.execute(q2)}
        by: dict[int, list[dict[str, Any]]] = {}
        for a in attempts:
            by.setdefault(a.delivery_id, []).append(
                {
                    "number": a.number,
                    "worker": a.worker,
                    "started_at": a.started_at,
                    "finished_at": a.finished_at,
                    "outcome": a.outcome,
                    "detail": a.detail,
                }
            )
        return [
            {
                "id": d.id,
                "dedup_key": d.dedup_key,
                "step": d.step,
                "recipient": d.recipient,
                "recipient_name": names.get(_user_id(d.recipient) or 0),
                "read_at": read.get(d.dedup_key) if d.channel.startswith("inapp") else None,
                "channel": d.channel,
                "target": d.target,
                "status": d.status,
                "attempts": by.get(d.id, []),
                "last_error": d.last_error,
                "created_at": d.created_at,
                "finished_at": d.finished_at,
                "next_at": d.next_at if d.status == "pending" else None,
            }
            for d in rows
        ]

    def family_reached(self, incident_id: str, device_id: str) -> dict[str, Any]:
        """Whether a text or call of ``device_id``'s family about this incident was delivered (the
        console's 家属联系方式 block): ``status`` ``sent`` (the latest delivered one: its time in UTC epoch
        seconds and channel), else ``pending`` (one is queued or on the wire), else ``failed`` (every one
        gave up or was cancelled: ``at`` the last of them), else ``none`` (no text or call was planned:
        no family template, or no contact). Never the number: the rows hold none."""
        channels = {FAMILY_SMS: "sms", FAMILY_VOICE: "voice"}
        with self.db.read() as s:
            rows = s.execute(
                select(Delivery.channel, Delivery.status, Delivery.finished_at).where(
                    Delivery.incident_id == incident_id,
                    Delivery.recipient == f"{FAMILY_RECIPIENT}{device_id}",
                    Delivery.channel.in_(list(channels)),
                )
            ).all()
        done = [(at or 0.0, ch) for ch, st, at in rows if st == "delivered"]
        if done:
            at, ch = max(done)
            return {"status": "sent", "at": at, "channel": channels[ch]}
        if any(st in ("pending", "sending") for _, st, _ in rows):
            return {"status": "pending", "at": None, "channel": None}
        ended = [(at or 0.0, ch) for ch, st, at in rows if st in ("failed", "cancelled")]
        if ended:
            at, ch = max(ended)
            return {"status": "failed", "at": at, "channel": channels[ch]}
        return {"status": "none", "at": None, "channel": None}

    def counts(self) -> dict[str, int]:
        with self.db.read() as s:
            return {
                st: int(n)
                for st, n in s.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
            }


def _user_id(recipient: str) -> int | None:
    """The database id of a ``user:<id>`` recipient; ``None`` for a group, a family, a webhook."""
    head, _, rest = recipient.partition(":")
    return int(rest) if head == "user" and rest.isdigit() else None


def _swap_channel(key: str, old: str, new: str) -> str:
    return (key[: -len(old)] + new if key.endswith("/" + old) else f"{key}/{new}")[:255]
