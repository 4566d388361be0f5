"""The loop's shell: persistence, the alert sink, actions on work orders, timers, reconciliation.

Blocking methods (``*_blocking`` and the plain ones) run in a worker thread; async wrappers exist where
the event loop calls in (the sink, the periodic job). Every write is one transaction: a decision, its
timeline events, its timers and its notification intents commit together or not at all.

Exactly once: timers are claimed by a conditional ``UPDATE ... WHERE state = 'pending'`` inside the
transaction that writes their effects, the periodic job holds a lease (:mod:`cloud.jobs`) and fences its
commit, and every intent has a unique dedup key. Two processes, a restart mid-tick or a replayed timer
never page twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from alerts.contract import AlertEvent
from alerts.loop import escalation
from alerts.loop.errors import AlreadyClaimed, InvalidAction, LoopError
from alerts.loop.incidents import Signal, Source, grade, rule_for
from alerts.loop.intents import NotificationIntent, TargetKind
from alerts.loop.sla import Urgency, overdue
from alerts.loop.stages import Action, Command, Stage, apply
from cloud.crypto import SecretBox
from cloud.db import Alert, AlertStep, Database
from cloud.errors import BadRequestError, ConflictError, NotFoundError
from cloud.loop import intake, rows
from cloud.loop.config import LoopConfig, load
from cloud.loop.models import OUTCOMES, AlertLink, Incident, IncidentEvent, Photo, Timer
from firmware_bridge.kernel.clock import Clock, SystemClock
from firmware_bridge.kernel.events import Severity

log = logging.getLogger(__name__)
SYSTEM = intake.SYSTEM
#: the reconciler looks this far back for committed alerts the sink never handled
RECONCILE_HORIZON_S = 2 * 86400.0
#: steps this young are left to the sink that is handling them right now: seconds of REAL time, converted
#: to the clock's seconds (``Clock.real_seconds``), so a demo's 60x clock still gives the sink 5 s, not 83 ms
RECONCILE_GRACE_S = 5.0
#: each pass re-reads this far (real seconds, converted like the grace) below the last one's upper bound:
#: a step stamped before that bound may commit after the pass read
RECONCILE_OVERLAP_S = 120.0
PHOTO_TYPES = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG\r\n\x1a\n", "image/webp": b"RIFF"}
PHOTO_MAX_BYTES = 5 * 1024 * 1024
PHOTOS_PER_INCIDENT = 20


@dataclass(frozen=True, slots=True)
class Report:
    """A manual report: a resident, a grid worker on patrol or a call taker."""

    type: str
    description: str
    reporter: str
    lat: float | None = None
    lon: float | None = None
    address: str = ""
    grid: str = ""
    street: str = ""
    community: str = ""
    severity: Severity = Severity.MEDIUM
    contact: str = ""  # phone of the reporter: sealed at rest, shown only to admin / dispatcher
    register: bool = False  # the call taker registers (立案) it at once


class LoopService:
    def __init__(self, db: Database, *, box: SecretBox | None = None, clock: Clock | None = None) -> None:
        self.db = db
        self.box = box
        self.clock: Clock = clock or SystemClock()
        self._cfg_cache: dict[tuple[int, ...], LoopConfig] = {}
        self._reconciled_until: float | None = None

    def _lock(self) -> bool:
        return self.db.for_update()

    def _clock_seconds(self, real_s: float) -> float:
        """``real_s`` seconds of real time in this clock's seconds (``real_s * speedup`` for an
        accelerated clock; unchanged for the system clock or one that does not say)."""
        real = self.clock.real_seconds(real_s)
        return real_s if not real > 0 else real_s * (real_s / real)

    # -- intake ---------------------------------------------------------------------------------------
    async def alerts_committed(self, steps: Sequence[AlertEvent], *, source: str) -> None:
        """The :class:`cloud.ingest.AlertSink` hook: called after ingest committed ``steps``."""
        await asyncio.to_thread(self.take_steps, steps, source)

    def take_steps(self, steps: Sequence[AlertEvent], source: str) -> list[int | None]:
        return self.take_batch([(steps, source)])

    def take_batch(self, batch: Sequence[tuple[Sequence[AlertEvent], str]]) -> list[int | None]:
        """Hand several sinks' worth of steps (``(steps, source)`` pairs) to the loop in one transaction.

        The drain task of :class:`cloud.loop.wiring.LoopSink` calls this with many ingest batches at once:
        one configuration load, one device lookup per source, one commit. Signals are handled most urgent
        first (:func:`cloud.loop.intake.priority`), then in time order across the whole batch.
        """
        now = self.clock.now()
        with self.db.write() as s:
            cfg = load(s, self._cfg_cache)
            signals: list[Signal] = []
            for steps, source in batch:
                signals.extend(intake.signals_from_steps(s, steps, source))
            signals.sort(key=lambda x: (intake.priority(x.event), x.time))
            return intake.take_all(s, cfg, signals, now)

    def take_signals(self, signals: Sequence[Signal]) -> list[int | None]:
        now = self.clock.now()
        with self.db.write() as s:
            cfg = load(s, self._cfg_cache)
            return intake.take_all(s, cfg, signals, now)

    def reconcile(self, now: float | None = None, limit: int = 2000) -> int:
        """Hand the loop every committed alert it has not seen (or whose newest phase it missed).

        This is what makes "an alert committed by ingest never lacks its incident" true when the process
        died between ingest's commit and the sink call.
        """
        now = self.clock.now() if now is None else now
        # After a start, look back two days; then only at steps received since the last pass (minus a
        # margin). Steps younger than the grace period are still in the sink's hands: not ours yet.
        overlap = self._clock_seconds(RECONCILE_OVERLAP_S)
        since = (
            now - RECONCILE_HORIZON_S if self._reconciled_until is None else self._reconciled_until - overlap
        )
        upto = now - self._clock_seconds(RECONCILE_GRACE_S)
        with self.db.read() as s:
            recent = (
                select(AlertStep.alert_id)
                .where(AlertStep.received_at >= since, AlertStep.received_at <= upto)
                .distinct()
                .scalar_subquery()
            )
            missed = list(
                s.execute(
                    select(Alert)
                    .outerjoin(AlertLink, AlertLink.alert_id == Alert.alert_id)
                    .where(
                        Alert.alert_id.in_(recent),
                        (AlertLink.alert_id.is_(None)) | (AlertLink.phase != Alert.phase),
                    )
                    .order_by(  # most urgent first (as the intake queue takes them), then oldest
                        case(
                            (Alert.event_type.in_(sorted(intake.DANGER_NOW)), 0),
                            (Alert.event_type.in_(sorted(intake.LIFE_SAFETY_OTHER)), 1),
                            else_=2,
                        ),
                        Alert.updated_time,
                    )
                    .limit(limit)
                ).scalars()
            )
        if len(missed) < limit:
            self._reconciled_until = upto
        if not missed:
            return 0
        # one transaction per (priority tier, source), most urgent first: a fire is not held up by covers
        by_source: dict[tuple[int, str], list[AlertEvent]] = {}
        for a in missed:
            step = AlertEvent.model_construct(
                alert_id=a.alert_id,
                device_id=a.device_id,
                kind=a.kind,
                event_type=a.event_type,
                severity=a.severity,
                phase=a.phase,
                episode_ms=a.episode_ms,
                time=a.updated_time,
                frame_time=a.frame_time,
                value=a.value,
                message=a.message,
            )
            key = (intake.step_priority(step), "cloud" if a.source == "cloud" else a.source)
            by_source.setdefault(key, []).append(step)
        for (_, source), steps in sorted(by_source.items(), key=lambda kv: kv[0][0]):
            self.take_steps(steps, source)
        log.warning("loop reconciled alerts the sink had not handled", extra={"count": len(missed)})
        return len(missed)

    # -- manual reports -------------------------------------------------------------------------------
    def report(self, rep: Report, *, role: str) -> int:
        if rep.lat is None and not rep.address.strip() and not rep.grid:
            raise BadRequestError("a report needs a location: lat/lon, an address or a grid cell")
        if not rep.type.strip() or not rep.description.strip():
            raise BadRequestError("a report needs a type and a description")
        now = self.clock.now()
        digest = hashlib.sha256(f"{rep.reporter}|{rep.type}|{rep.description}|{now}".encode()).hexdigest()[
            :16
        ]
        sig = Signal(
            alert_id=f"report/{digest}",
            source=Source.MANUAL,
            kind="report",
            event=rep.type.strip()[:64],
            severity=rep.severity,
            phase="raised",
            time=now,
            grid=rep.grid,
            street=rep.street,
            community=rep.community,
            lat=rep.lat,
            lon=rep.lon,
            device_id="",
        )
        with self.db.write() as s:
            cfg = load(s, self._cfg_cache)
            g = grade(sig)
            labels = sig.labels(g)
            rule = rule_for(cfg.grouping, labels)
            row = intake.open_incident(
                s,
                cfg,
                sig,
                g,
                f"report|{digest}",
                rule.name,
                now,
                title=rep.type.strip()[:200],
                description=rep.description[:2000],
                reporter=rep.reporter,
                address=rep.address[:256],
            )
            if rep.contact and self.box is not None:
                row.reporter_contact_enc = self.box.seal({"phone": rep.contact})
            if rep.register:
                self._act(s, cfg, row, Command(Action.REGISTER, rep.reporter), now, channel="api")
            incident_id = row.id
        return incident_id

    # -- actions --------------------------------------------------------------------------------------
    def act(
        self,
        incident_id: int,
        cmd: Command,
        *,
        channel: str = "api",
        idempotency_key: str | None = None,
        only_owner: bool = False,
        outcome: str | None = None,
    ) -> int:
        """Apply a work-order action; returns the incident's new ``row_version``.

        Raises :class:`NotFoundError`, :class:`ConflictError` (a second accept; names the owner),
        :class:`BadRequestError` (not allowed in this stage, missing reason). Nothing changes on error.

        ``only_owner``: the command acts for ``cmd.actor`` alone (a responder's personal link): on an
        order someone else has accepted it is refused with :class:`ConflictError`, checked under the
        row's lock so an accept committed a moment earlier is seen (a decline pressed after someone
        else's accept must not hand that person's order back).

        ``outcome``: with ``handle`` only, the responder's verdict (:data:`OUTCOMES`: ``real``,
        ``nuisance``, ``false_alarm``), stored on the incident and in the timeline row's detail.
        """
        if outcome is not None:
            if outcome not in OUTCOMES:
                raise BadRequestError(f"outcome is one of {list(OUTCOMES)}, not {outcome!r}")
            if cmd.action is not Action.HANDLE:
                raise BadRequestError("an outcome is given with handle (the resolution) only")
        now = self.clock.now()
        with self.db.write() as s:
            if idempotency_key and s.scalar(
                select(IncidentEvent.id).where(IncidentEvent.idempotency_key == idempotency_key)
            ):
                row = self._row(s, incident_id, lock=False)
                return row.row_version
            cfg = load(s, self._cfg_cache)
            row = self._row(s, incident_id, lock=True)
            if only_owner and row.owner and row.owner != cmd.actor:
                raise ConflictError(not_the_owner(row.owner, cmd.action))
            self._act(
                s, cfg, row, cmd, now, channel=channel, idempotency_key=idempotency_key, outcome=outcome
            )
            return row.row_version

    def _act(
        self,
        s: Session,
        cfg: LoopConfig,
        row: Incident,
        cmd: Command,
        now: float,
        *,
        channel: str,
        idempotency_key: str | None = None,
        outcome: str | None = None,
    ) -> None:
        before = rows.order_of(row)
        try:
            tr = apply(before, cmd, now)
        except LoopError as exc:
            if isinstance(exc, AlreadyClaimed):
                raise ConflictError(str(exc)) from exc
            raise BadRequestError(str(exc)) from exc
        if not tr.changed:
            return
        rows.store_order(row, tr.after, cfg.sla, now)
        detail: dict[str, Any] = {}
        if cmd.assignee:
            detail["assignee"] = cmd.assignee
        if cmd.rating is not None:
            detail["rating"] = cmd.rating
        if cmd.action is Action.HANDLE:
            row.outcome = outcome  # a second handle (after a reject) says anew
            if outcome is not None:
                detail["outcome"] = outcome
        elif cmd.action in (Action.REJECT, Action.REOPEN):
            row.outcome = None  # not handled any more: the next handle gives the verdict
        rows.add_event(
            s,
            row,
            cmd.action.value,
            actor=cmd.actor,
            now=now,
            channel=channel,
            from_stage=before.stage.value,
            reason=cmd.reason,
            idempotency_key=idempotency_key,
            **detail,
        )
        a = cmd.action
        if a is Action.REGISTER:
            intake.start_work(s, cfg, row, None, now)
            return
        if a is Action.ACCEPT:
            snap = rows.snapshot_of(row)
            if snap is not None and snap.policy.stop_on == "ack" and not row.esc_done:
                rows.store_esc_state(row, escalation.stop(rows.esc_state_of(row), "acknowledged"))
                rows.add_event(s, row, "escalation_stopped", actor=SYSTEM, now=now, reason="acknowledged")
        elif a is Action.HANDLE:
            if row.source != Source.MANUAL.value and row.alerts_open == 0:
                rows.add_timer(s, row, "verify", now + intake.VERIFY_QUIET_S, now)
            self._stop(s, row, "resolved", now)
        elif a is Action.RETURN:
            excluded = [before.department] if before.department else []
            if intake.dispatch_auto(s, cfg, row, now, exclude=excluded):
                intake.restart_escalation(s, cfg, row, None, now)
            else:
                rows.write_intents(s, row, _desk_intent(row, now), now)
            return
        elif a in (Action.CLOSE, Action.RATE):
            self._stop(s, row, "resolved", now)
            rows.cancel_pending_intents(s, row, now)
        elif a is Action.PARK:
            self._stop(s, row, "parked", now)  # a parked case pages nobody until it is taken up again
        elif a in (Action.REOPEN, Action.UNPARK):
            intake.start_work(s, cfg, row, None, now)  # dispatch again, new escalation snapshot
            return
        intake.sla_timer(s, row, now)

    def _stop(self, s: Session, row: Incident, reason: str, now: float) -> None:
        if not row.esc_done:
            rows.store_esc_state(row, escalation.stop(rows.esc_state_of(row), reason))
            rows.add_event(s, row, "escalation_stopped", actor=SYSTEM, now=now, reason=reason)

    def confirm(self, incident_id: int, actor: str, *, channel: str = "api") -> None:
        """The call taker confirmed the event with the site (a real fire): skip to the next step now."""
        now = self.clock.now()
        with self.db.write() as s:
            cfg = load(s, self._cfg_cache)
            row = self._row(s, incident_id, lock=True)
            if not row.is_open:
                raise BadRequestError(f"incident {incident_id} is {row.stage}; nothing to confirm")
            snap = rows.snapshot_of(row)
            if row.confirmed or snap is None:
                return
            row.confirmed = True
            rows.add_event(s, row, "confirm", actor=actor, now=now, channel=channel)
            out = escalation.confirm(snap, rows.esc_state_of(row), row.id, now, row.title)
            intake.apply_outcome(s, cfg, row, out, now)
            row.row_version += 1

    def add_photo(self, incident_id: int, data: bytes, content_type: str, *, actor: str) -> int:
        if content_type not in PHOTO_TYPES:
            raise BadRequestError(f"a photo is one of {sorted(PHOTO_TYPES)}, not {content_type!r}")
        if not data.startswith(PHOTO_TYPES[content_type]):
            raise BadRequestError(f"the body is not a {content_type} image")
        if len(data) > PHOTO_MAX_BYTES:
            raise BadRequestError(f"a photo is at most {PHOTO_MAX_BYTES // (1024 * 1024)} MB")
        now = self.clock.now()
        digest = hashlib.sha256(data).hexdigest()
        with self.db.write() as s:
            row = self._row(s, incident_id, lock=True)
            same = s.scalar(select(Photo.id).where(Photo.incident_id == row.id, Photo.sha256 == digest))
            if same is not None:
                return int(same)
            count = s.scalar(select(func.count()).select_from(Photo).where(Photo.incident_id == row.id)) or 0
            if count >= PHOTOS_PER_INCIDENT:
                raise BadRequestError(f"an incident holds at most {PHOTOS_PER_INCIDENT} photos")
            p = Photo(
                incident_id=row.id,
                content_type=content_type,
                size=len(data),
                sha256=digest,
                data=data,
                uploaded_by=actor,
                uploaded_at=now,
            )
            s.add(p)
            s.flush()
            rows.add_event(s, row, "photo", actor=actor, now=now, photo_id=p.id, size=len(data))
            return p.id

    # -- timers ---------------------------------------------------------------------------------------
    def run_due(self, now: float | None = None, *, limit: int = 500, fence: Any = None) -> int:
        """Fire every due timer once; returns how many fired (stale ones are marked, not counted)."""
        now = self.clock.now() if now is None else now
        fired = 0
        with self.db.write() as s:
            cfg = load(s, self._cfg_cache)
            q = (
                select(Timer)
                .where(Timer.state == "pending", Timer.due_at <= now)
                .order_by(Timer.due_at)
                .limit(limit)
            )
            if self._lock():
                q = q.with_for_update(skip_locked=True)
            due = list(s.scalars(q))
            # claim them all in one statement (a timer another worker fired meanwhile is not returned),
            # then load their incidents in one query, locked in id order: no query and flush per timer
            claimed: set[int] = set()
            for i in range(0, len(due), 500):
                claimed.update(
                    s.scalars(
                        update(Timer)
                        .where(Timer.id.in_([t.id for t in due[i : i + 500]]), Timer.state == "pending")
                        .values(state="done", fired_at=now)
                        .returning(Timer.id)
                        .execution_options(synchronize_session=False)
                    )
                )
            mine = [t for t in due if t.id in claimed]
            for t in mine:  # what the UPDATE wrote, without marking the objects dirty again
                set_committed_value(t, "state", "done")
                set_committed_value(t, "fired_at", now)
            incident_ids = sorted({t.incident_id for t in mine})
            found: dict[int, Incident] = {}
            for i in range(0, len(incident_ids), 500):
                qi = select(Incident).where(Incident.id.in_(incident_ids[i : i + 500])).order_by(Incident.id)
                if self._lock():
                    qi = qi.with_for_update()
                found.update((r.id, r) for r in s.scalars(qi))
            for t in mine:
                row = found.get(t.incident_id)
                if row is None:
                    raise NotFoundError(f"no incident {t.incident_id}")
                if self._fire(s, cfg, row, t, now):
                    fired += 1
                else:
                    t.state = "stale"
            if fence is not None:
                fence(s)
        return fired

    def _fire(self, s: Session, cfg: LoopConfig, row: Incident, t: Timer, now: float) -> bool:
        if t.purpose == "escalation":
            snap = rows.snapshot_of(row)
            if snap is None or not row.is_open:
                return False
            timer = escalation.Timer(row.id, t.snapshot_version, t.step, t.loop, t.due_at)
            acked = row.accepted_at is not None and row.stage not in (
                Stage.DISPATCHED.value,
                Stage.REGISTERED.value,
            )
            resolved = row.stage in (Stage.HANDLED.value, Stage.VERIFIED.value) or not row.is_open
            out = escalation.on_timer(
                snap,
                rows.esc_state_of(row),
                timer,
                now,
                acknowledged=acked,
                resolved=resolved,
                summary=row.title,
            )
            if out.stale:
                return False
            if out.intents:
                rows.add_event(
                    s,
                    row,
                    "escalate",
                    actor=SYSTEM,
                    now=now,
                    step=t.step,
                    loop=t.loop,
                    reason="no acknowledgement within the step's wait",
                )
            intake.apply_outcome(s, cfg, row, out, now)
            row.row_version += 1
            return True
        if t.purpose == "sla":
            late = overdue(cfg.sla, _urgency(row), rows.order_of(row), now)
            new = [c for c in late if c not in (row.overdue or [])]
            if not new:
                return False
            row.overdue = sorted({*(row.overdue or []), *new})
            rows.add_event(s, row, "overdue", actor=SYSTEM, now=now, clocks=new)
            rows.write_intents(s, row, _desk_intent(row, now, why="overdue:" + ",".join(new)), now)
            if "case" not in row.overdue and row.case_deadline is not None:
                rows.add_timer(s, row, "sla", row.case_deadline + 0.001, now)
            row.row_version += 1
            return True
        if t.purpose == "verify":
            if row.stage != Stage.HANDLED.value or row.alerts_open > 0:
                return False
            for action in (Action.VERIFY, Action.CLOSE):
                self._act(
                    s,
                    cfg,
                    row,
                    Command(action, "telemetry", reason="alerts quiet since handling"),
                    now,
                    channel="telemetry",
                )
            return True
        return False

    # -- periodic job ---------------------------------------------------------------------------------
    async def job(self, ctx: Any) -> None:
        """The ``loop`` periodic job (:mod:`cloud.jobs`): reconcile, then fire due timers, fenced."""
        await asyncio.to_thread(self.reconcile)
        await asyncio.to_thread(self.run_due, None, fence=ctx.fence)

    # -- helpers --------------------------------------------------------------------------------------
    def _row(self, s: Session, incident_id: int, *, lock: bool) -> Incident:
        row = s.get(Incident, incident_id, with_for_update=lock and self._lock())
        if row is None:
            raise NotFoundError(f"no incident {incident_id}")
        return row


_DOING = {
    Action.RETURN: ("退回", "return"),
    Action.ARRIVE: ("报到场", "report arrival on"),
    Action.HANDLE: ("办结", "resolve"),
}


def not_the_owner(owner: str, action: Action) -> str:
    """Why a responder's own action is refused on an order someone else accepted (Chinese first)."""
    zh, en = _DOING.get(action, ("操作", action.value))
    return (
        f"此工单已由 {owner} 接单，只有接单人可以{zh}；未做任何更改。"
        f" / This order was accepted by {owner}; only they may {en} it. Nothing changed."
    )


def _urgency(row: Incident) -> Urgency:
    return Urgency(row.urgency)


def _desk_intent(row: Incident, now: float, why: str = "returned") -> list[NotificationIntent]:
    """Tell the call takers' desk (a returned case with nowhere to go, an overdue case)."""
    key = f"{row.id}:{row.row_version}:{why}:desk"
    return [
        NotificationIntent(
            incident_id=row.id,
            step=-1,
            target_kind=TargetKind.ROLE,
            target_id="call_taker",
            channel_hint="",
            dedup_key=key,
            created_at=now,
            department=row.department,
            summary=f"{row.title} ({why})",
        )
    ]


__all__ = ["PHOTO_MAX_BYTES", "PHOTO_TYPES", "InvalidAction", "LoopService", "Report"]
