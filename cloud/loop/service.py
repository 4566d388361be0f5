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
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from alerts.contract import AlertEvent
from alerts.loop import escalation
from alerts.loop.errors import AlreadyClaimed, InvalidAction, InvalidConfig, LoopError
from alerts.loop.incidents import Signal, Source, grade, rule_for
from alerts.loop.intents import NotificationIntent, TargetKind
from alerts.loop.reasons import desk_summary, stop_code
from alerts.loop.sla import Urgency, overdue
from alerts.loop.stages import Action, Command, Stage, apply
from cloud.crypto import SecretBox
from cloud.db import Alert, AlertStep, Database
from cloud.errors import BadRequestError, ConflictError, NotFoundError
from cloud.loop import intake, rows
from cloud.loop.config import (
    FAMILY_CALL_RETRY_KEY,
    FAMILY_CALL_RETRY_S,
    LoopConfig,
    load,
    retry_seconds,
)
from cloud.loop.idle import LoopIdleGate, gate_for
from cloud.loop.models import OUTCOMES, AlertLink, AuditEntry, Incident, IncidentEvent, Photo, Timer
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
#: the desk's outcomes of a call to a wristband wearer's family (``POST .../family-call``)
FAMILY_CALL_OUTCOMES = ("reached", "not_reached", "wrong_number")
#: the timeline action of a call's outcome, and of the reminder to call again
FAMILY_CALL = "family_call"
FAMILY_CALL_DUE = "family_call_due"
#: the timer that reminds the desk to call a family not reached again
FAMILY_RETRY = "family_retry"
#: after ``not_reached`` the desk is reminded this many (clock) seconds later unless a call was recorded
#: meanwhile: the loop configuration's ``desk.family_call_retry_s``, overridden by this variable (or by
#: ``LoopService(family_retry_s=...)``)
FAMILY_RETRY_S = FAMILY_CALL_RETRY_S
FAMILY_RETRY_ENV = "VIGIL_CLOUD_FAMILY_RETRY_S"
#: the wristband kind: the only cases with a family to call
FAMILY_KIND = "wristband"
FAMILY_NOTE_MAX = 200
#: the desk's rule-out after calling the site (``POST .../rule-out``): the outcomes it may give
RULE_OUT_REASONS = ("nuisance", "false_alarm")
RULE_OUT = "rule_out"
RULED_OUT = "ruled_out"  # the escalation's stop reason
RULE_OUT_NOTE_MAX = 200
#: roles outside the neighbourhood whose step a rule-out cancels (the 119 / 120 desks)
EXTERNAL_ROLES = ("desk_119", "desk_120")


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
    def __init__(
        self,
        db: Database,
        *,
        box: SecretBox | None = None,
        clock: Clock | None = None,
        family_retry_s: float | None = None,
    ) -> None:
        self.db = db
        self.box = box
        self.clock: Clock = clock or SystemClock()
        #: an override of ``desk.family_call_retry_s`` (the argument, else the environment), or None
        self._retry_override = (
            _family_retry_s() if family_retry_s is None else retry_seconds(family_retry_s, "family_retry_s")
        )
        self._cfg_cache: dict[tuple[int, ...], LoopConfig] = {}
        self._reconciled_until: float | None = None
        #: skips the job's passes that would find nothing (embedded SQLite only): see :mod:`cloud.loop.idle`
        self.gate_idle = True  # False: every tick runs both passes (as before the gate)
        self._gate: LoopIdleGate | None = None
        self._gate_tried = False

    def _lock(self) -> bool:
        return self.db.for_update()

    @property
    def family_retry_s(self) -> float:
        """Seconds from a "not reached" to the reminder to call again: the override, else the loop
        configuration's ``desk.family_call_retry_s`` as stored now."""
        if self._retry_override is not None:
            return self._retry_override
        with self.db.read() as s:
            return load(s, self._cfg_cache).desk.family_call_retry_s

    def _retry_s(self, cfg: LoopConfig) -> float:
        return self._retry_override if self._retry_override is not None else cfg.desk.family_call_retry_s

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
            found: list[Any] = list(
                s.execute(
                    select(Alert, AlertLink.phase)
                    .outerjoin(AlertLink, AlertLink.alert_id == Alert.alert_id)
                    .where(
                        Alert.alert_id.in_(recent),
                        # the alert's current state is older than the grace too: an alert picked by an
                        # old step whose newest step (the one that moved ``phase``) is still in the sink's
                        # hands is not missed, it is being handled (the demo's 9 warnings per 2 h)
                        Alert.received_at <= upto,
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
                )
            )
        missed: list[Alert] = [a for a, _ in found]
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
        log.warning(
            "loop reconciled alerts the sink had not handled",
            extra={
                "count": len(missed),
                "alerts": [
                    f"{a.alert_id} {a.source} alert={a.phase} link={lp} age={now - a.received_at:.1f}"
                    for a, lp in found[:10]
                ],
            },
        )
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
        code: str = "",
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
            if outcome is not None or row.esc_reason != RULED_OUT:
                row.outcome = outcome  # a second handle (after a reject) says anew; the desk's rule-out
                # verdict stays unless the responder on site gives their own
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
            code=code,
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
                rows.add_event(
                    s,
                    row,
                    "escalation_stopped",
                    actor=SYSTEM,
                    now=now,
                    reason="acknowledged",
                    code="esc_acknowledged",
                )
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
            rows.add_event(
                s, row, "escalation_stopped", actor=SYSTEM, now=now, reason=reason, code=stop_code(reason)
            )

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
            state = rows.esc_state_of(row)
            if row.esc_reason == RULED_OUT:
                # the desk ruled it out, then learnt it is a fire after all (a call back, a neighbour):
                # withdraw the verdict and escalate from the step after the confirmation, new snapshot
                row.outcome = None
                rows.add_event(
                    s, row, "rule_out_withdrawn", actor=actor, now=now, channel=channel,
                    reason="the desk confirmed a fire after ruling it out", code="rule_out_withdrawn",
                )  # fmt: skip
                policy = cfg.policies.get(snap.policy.name) or cfg.policies["default"]
                version = row.snapshot_version
                snap = escalation.freeze(policy, snap.receivers, previous_version=version, now=now)
                row.snapshot, row.snapshot_version = rows.snapshot_json(snap), snap.version
                after = next((i + 1 for i, st in enumerate(snap.policy.steps) if st.confirm), 0)
                state = escalation.EscalationState(step=after)
                if after == 0:
                    intake.apply_outcome(s, cfg, row, escalation.start(snap, row.id, now, row.title), now)
                    row.row_version += 1
                    return
            out = escalation.confirm(snap, state, row.id, now, row.title)
            intake.apply_outcome(s, cfg, row, out, now)
            row.row_version += 1

    def rule_out(
        self,
        incident_id: int,
        actor: str,
        reason: str,
        note: str = "",
        *,
        stand_down: bool = False,
        role: str = "",
        channel: str = "api",
    ) -> dict[str, Any]:
        """The call taker called the site and it is not a fire (核警：非火情): stop the external escalation.

        ``reason`` is ``nuisance`` (cooking, steam) or ``false_alarm`` (the device). The escalation stops
        (``esc_reason = ruled_out``: every pending escalation timer, the 119 / 120 step among them, is
        stale from now on), ``outcome`` is set, the timeline gets ``rule_out`` (code
        ``ruled_out_<reason>``: who, the external steps it stopped, the note) and ``loop_audit``
        ``incident.rule_out``. The local responder's dispatch stays (someone resets the alarm and looks for
        smouldering) unless ``stand_down``: then the pages not yet sent are cancelled and the timeline says
        so; the work order stays open for the desk to close.

        Refused with :class:`ConflictError` (nothing changed) when the device's CO alarm is active, the
        smoke is dense enough to be a fire on its own, a second device of the incident's group (same grid
        cell: ``fire_in_building``) alarmed, or the desk already confirmed a real fire. A new alarm after a
        rule-out starts the escalation again (:func:`cloud.loop.intake.lift_rule_out`). A repeat is a
        no-op. Returns :meth:`rule_out_state`.
        """
        if reason not in RULE_OUT_REASONS:
            raise BadRequestError(f"reason is one of {list(RULE_OUT_REASONS)}, not {reason!r}")
        note = " ".join(note.split())[:RULE_OUT_NOTE_MAX]
        now = self.clock.now()
        with self.db.write() as s:
            row = self._row(s, incident_id, lock=True)
            if row.esc_reason == RULED_OUT and row.outcome in RULE_OUT_REASONS:
                return self._rule_out_state(s, row)  # already ruled out: idempotent
            if not row.is_open:
                raise ConflictError(
                    f"事件 {row.id} 已{row.stage}，无需排除；未做任何更改。"
                    f" / Incident {row.id} is {row.stage}: nothing to rule out. Nothing changed."
                )
            why = rule_out_refusal(s, row)
            if why:
                raise ConflictError(why)
            snap = rows.snapshot_of(row)
            external = _external_roles(snap, row.esc_step) if snap is not None else []
            was = rows.esc_state_of(row)
            rows.store_esc_state(row, escalation.stop(was, RULED_OUT))
            row.outcome = reason
            params: dict[str, Any] = {"external": external, "note": note, "stand_down": stand_down}
            rows.add_event(
                s,
                row,
                RULE_OUT,
                actor=actor,
                now=now,
                channel=channel,
                reason=f"ruled out by the desk: {reason}",
                code=f"ruled_out_{reason}",
                params=params,
                outcome=reason,
                stopped_step=was.step,
                stopped_loop=was.loop,
                escalation_was_done=was.done,
            )
            if not was.done:
                rows.add_event(
                    s, row, "escalation_stopped", actor=actor, now=now, reason=RULED_OUT,
                    code=stop_code(RULED_OUT),
                )  # fmt: skip
            if stand_down:
                rows.cancel_pending_intents(s, row, now)
            audit = {"reason": reason, "stand_down": stand_down, "external": external}  # not the note
            _audit_incident(s, row, "incident.rule_out", audit, actor=actor, role=role, now=now)
            row.row_version += 1
            row.updated_at = now
            return self._rule_out_state(s, row)

    def rule_out_state(self, incident_id: int) -> dict[str, Any]:
        with self.db.read() as s:
            return self._rule_out_state(s, self._row(s, incident_id, lock=False))

    def _rule_out_state(self, s: Session, row: Incident) -> dict[str, Any]:
        """``ruled_out``, ``outcome``, ``by``, ``at``, ``escalation`` (``done``, ``reason``, ``step``) and
        ``pending_escalation_timers`` (0 once stopped)."""
        last = s.scalars(
            select(IncidentEvent)
            .where(IncidentEvent.incident_id == row.id, IncidentEvent.action == RULE_OUT)
            .order_by(IncidentEvent.id.desc())
            .limit(1)
        ).first()
        ruled = row.esc_reason == RULED_OUT and row.outcome in RULE_OUT_REASONS
        timers = s.scalar(
            select(func.count())
            .select_from(Timer)
            .where(Timer.incident_id == row.id, Timer.purpose == "escalation", Timer.state == "pending",
                   Timer.snapshot_version == row.snapshot_version)
        )  # fmt: skip
        live = 0 if row.esc_done else int(timers or 0)
        return {
            "ruled_out": ruled,
            "outcome": row.outcome,
            "by": last.actor if last is not None else None,
            "at": last.at if last is not None else None,
            "escalation": {"done": bool(row.esc_done), "reason": row.esc_reason or "", "step": row.esc_step},
            "pending_escalation_timers": live,
        }

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

    # -- the desk's call to the family -----------------------------------------------------------------
    def record_call(
        self,
        incident_id: int,
        actor: str,
        outcome: str,
        note: str = "",
        *,
        role: str = "",
        channel: str = "api",
    ) -> dict[str, Any]:
        """The desk called the family of a wristband case: ``reached`` / ``not_reached`` / ``wrong_number``.

        One transaction: the timeline entry (``family_call``, code ``family_call_<outcome>``, the attempt
        number, the call taker's note), a ``loop_audit`` row (``incident.family_call``: who, role, outcome,
        attempt; not the note) and the reminder: after ``not_reached`` a ``family_retry`` timer
        :attr:`family_retry_s` later (an earlier pending one is dropped, so a second "not reached" moves it);
        any other outcome drops it. 409 when the incident is not a wristband case with a family contact.
        Returns :meth:`call_state`.
        """
        if outcome not in FAMILY_CALL_OUTCOMES:
            raise BadRequestError(f"outcome is one of {list(FAMILY_CALL_OUTCOMES)}, not {outcome!r}")
        note = " ".join(note.split())[:FAMILY_NOTE_MAX]
        now = self.clock.now()
        with self.db.write() as s:
            row = self._row(s, incident_id, lock=True)
            self._family_case(s, row)
            attempt = self._calls(s, row.id) + 1
            s.execute(
                update(Timer)
                .where(Timer.incident_id == row.id, Timer.purpose == FAMILY_RETRY, Timer.state == "pending")
                .values(state="stale")
            )
            params: dict[str, Any] = {"attempt": attempt, "note": note}
            if outcome == "not_reached" and row.is_open:
                retry_s = self._retry_s(load(s, self._cfg_cache))
                rows.add_timer(s, row, FAMILY_RETRY, now + retry_s, now)
                params["minutes"] = _minutes(retry_s)
            rows.add_event(
                s,
                row,
                FAMILY_CALL,
                actor=actor,
                now=now,
                channel=channel,
                reason=f"family call: {outcome} (call {attempt})",
                code=f"family_call_{outcome}",
                params=params,
                outcome=outcome,
                attempt=attempt,
            )
            audit = {"outcome": outcome, "attempt": attempt}  # the note stays in the timeline only
            _audit_incident(s, row, "incident.family_call", audit, actor=actor, role=role, now=now)
            row.row_version += 1
        return self.call_state(incident_id)

    def call_state(self, incident_id: int) -> dict[str, Any]:
        """The desk's calls to the family of an incident: ``attempts``, ``last`` (``outcome``, ``at`` UTC
        epoch seconds, ``by``, ``note``) or None, ``reached`` (the last outcome was ``reached``) and
        ``next_reminder_at`` (a pending reminder to call again)."""
        with self.db.read() as s:
            self._row(s, incident_id, lock=False)
            calls = s.scalars(
                select(IncidentEvent)
                .where(IncidentEvent.incident_id == incident_id, IncidentEvent.action == FAMILY_CALL)
                .order_by(IncidentEvent.id)
            ).all()
            due = s.scalar(
                select(func.min(Timer.due_at)).where(
                    Timer.incident_id == incident_id, Timer.purpose == FAMILY_RETRY, Timer.state == "pending"
                )
            )
        last = calls[-1] if calls else None
        out_last = None
        if last is not None:
            detail = dict(last.detail or {})
            out_last = {
                "outcome": str(detail.get("outcome", "")),
                "at": last.at,
                "by": last.actor,
                "note": str((last.reason_params or {}).get("note", "")),
            }
        return {
            "attempts": len(calls),
            "last": out_last,
            "reached": out_last is not None and out_last["outcome"] == "reached",
            "next_reminder_at": due,
        }

    def may_call(self, incident_id: int, username: str) -> bool:
        """Whether an ``operator`` user handles the family call: one who holds the incident's call task,
        or whom the roster knows as a call taker, or whom the roster does not know at all (a desk operator);
        a field responder (the roster knows them in other roles only) does not."""
        from cloud.notify.family import roster_ids, task_holders  # the notifier's tables; imported lazily

        with self.db.read() as s:
            self._row(s, incident_id, lock=False)
            cfg = load(s, self._cfg_cache)
            ids = roster_ids(s, username)
            holders = task_holders(s, str(incident_id))
        if ids & holders:
            return True
        known = [cfg.roster.responders[i] for i in ids if i in cfg.roster.responders]
        return not known or any("call_taker" in r.roles for r in known)

    def _family_case(self, s: Session, row: Incident) -> None:
        """409 unless ``row`` is a wristband case one of whose devices has a family contact registered."""
        if row.kind != FAMILY_KIND:
            raise ConflictError(
                f"事件 {row.id} 不是手环事件，没有家属可致电；未做任何更改。"
                f" / Incident {row.id} is not a wristband case: there is no family to call. Nothing changed."
            )
        from cloud.db import Device

        for device_id in rows.incident_devices(s, row):
            dev = s.get(Device, device_id)
            if dev is None:
                continue
            if self.box is None:
                if dev.private_enc:
                    return  # cannot unseal here: a sealed record is taken to hold the contact
                continue
            if str(self.box.open(dev.private_enc).get("emergency_contact_phone") or "").strip():
                return
        raise ConflictError(
            f"事件 {row.id} 的手环未登记家属联系方式；未做任何更改。"
            f" / Incident {row.id}: no family contact is registered for its wristband. Nothing changed."
        )

    def _calls(self, s: Session, incident_id: int) -> int:
        return int(
            s.scalar(
                select(func.count())
                .select_from(IncidentEvent)
                .where(IncidentEvent.incident_id == incident_id, IncidentEvent.action == FAMILY_CALL)
            )
            or 0
        )

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
                # a timer made due before its step's wait ran out: nobody could be paged at that step
                # (cloud.notify.loopbridge, escalate_now), not "no acknowledgement in time"
                steps = snap.policy.steps
                wait = steps[t.step - 1].wait_s if 0 < t.step <= len(steps) else None
                early = wait is not None and t.due_at < t.created_at + wait - 1e-3
                rows.add_event(
                    s,
                    row,
                    "escalate",
                    actor=SYSTEM,
                    now=now,
                    step=t.step,
                    loop=t.loop,
                    reason="nobody could be paged at the previous step"
                    if early
                    else "no acknowledgement within the step's wait",
                    code="escalated_unreachable" if early else "escalated",
                    params={"step": t.step, "loop": t.loop},
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
        if t.purpose == FAMILY_RETRY:
            if not row.is_open:
                return False
            last = s.scalar(
                select(IncidentEvent.reason_code)
                .where(IncidentEvent.incident_id == row.id, IncidentEvent.action == FAMILY_CALL)
                .order_by(IncidentEvent.id.desc())
                .limit(1)
            )
            if last != "family_call_not_reached":
                return False  # reached (or another outcome) meanwhile: nothing to remind
            attempts = self._calls(s, row.id)
            minutes = _minutes(now - t.created_at)
            rows.add_event(
                s,
                row,
                FAMILY_CALL_DUE,
                actor=SYSTEM,
                now=now,
                reason=f"family not reached for {minutes} min: call again",
                code=FAMILY_CALL_DUE,
                params={"attempts": attempts, "minutes": minutes},
            )
            rows.write_intents(s, row, self._call_reminder(s, cfg, row, now, attempts), now)
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
                    code="alerts_quiet",
                )
            return True
        return False

    def _call_reminder(
        self, s: Session, cfg: LoopConfig, row: Incident, now: float, attempts: int
    ) -> list[NotificationIntent]:
        """The "call the family again" page: to the call task's current holders by name (after a
        hand-over, the incoming shift) who are still on duty as call takers, else to the desk
        (``call_taker``) when none of them is (their shift ended, nobody got the task)."""
        from cloud.notify.family import current_holders  # the notifier's tables; imported lazily

        why = f"family_call:{attempts}"
        holders = current_holders(s, str(row.id))
        duty = {p.id for p in rows.on_call(s, cfg.roster, "call_taker", row.grid, now)}
        people = [h for h in holders if h in duty]
        if not people:
            return _desk_intent(row, now, why=why)
        summary = desk_summary(row.title, why)[:300]
        return [
            NotificationIntent(
                incident_id=row.id,
                step=-1,
                target_kind=TargetKind.USER,
                target_id=p,
                channel_hint="",
                dedup_key=f"{row.id}:{row.row_version}:{why}:{p}",
                created_at=now,
                department=row.department,
                summary=summary,
            )
            for p in people
        ]

    # -- periodic job ---------------------------------------------------------------------------------
    async def job(self, ctx: Any) -> None:
        """The ``loop`` periodic job (:mod:`cloud.jobs`): reconcile, then fire due timers, fenced.

        On the embedded SQLite file a pass that would find nothing is skipped (:mod:`cloud.loop.idle`:
        nothing committed since the last pass began and no step / timer has become due by time since); a
        skipped ``run_due`` does not fence, the job runner records the tick."""
        gate = self._idle_gate()
        if gate is None:
            await asyncio.to_thread(self.reconcile)
            await asyncio.to_thread(self.run_due, None, fence=ctx.fence)
            return
        now = self.clock.now()
        began = gate.version()
        try:
            if not gate.skip_reconcile(now, began):
                await asyncio.to_thread(self._reconcile_gated, gate, began, now)
            if not gate.skip_timers(now, began):
                await asyncio.to_thread(self._run_due_gated, gate, began, ctx.fence)
        except BaseException:
            gate.forget()
            raise

    def _reconcile_gated(self, gate: LoopIdleGate, began: int | None, now: float) -> None:
        took = self.reconcile(now)
        gate.after_reconcile(began, took, self._reconciled_until, self._clock_seconds(RECONCILE_GRACE_S))

    def _run_due_gated(self, gate: LoopIdleGate, began: int | None, fence: Any) -> None:
        gate.after_timers(began, self.run_due(None, fence=fence))

    def _idle_gate(self) -> LoopIdleGate | None:
        if not self.gate_idle:
            return None
        if self._gate is None and not self._gate_tried:
            self._gate_tried = True
            self._gate = gate_for(self.db)
        return self._gate

    def close_gate(self) -> None:
        """Close the idle gate's connection (the app is stopping); a later tick opens a new one."""
        gate, self._gate, self._gate_tried = self._gate, None, False
        if gate is not None:
            gate.close()

    # -- helpers --------------------------------------------------------------------------------------
    def _row(self, s: Session, incident_id: int, *, lock: bool) -> Incident:
        row = s.get(Incident, incident_id, with_for_update=lock and self._lock())
        if row is None:
            raise NotFoundError(f"no incident {incident_id}")
        return row


def _audit_incident(
    s: Session, row: Incident, action: str, detail: dict[str, Any], *, actor: str, role: str, now: float
) -> None:
    """A desk action on an incident in ``loop_audit``: who (at most 64 characters), their role (``user``
    when not known), ``incident:<id>`` and ``detail``."""
    target = f"incident:{row.id}"
    s.add(
        AuditEntry(at=now, actor=actor[:64], role=role or "user", action=action, target=target, detail=detail)
    )


def _external_roles(snap: escalation.EscalationSnapshot, next_step: int) -> list[str]:
    """The 119 / 120 roles of the steps not run yet (from ``next_step`` on) that a rule-out cancels."""
    out: list[str] = []
    for step in snap.policy.steps[next_step:]:
        for role, _ in escalation.step_targets(snap, step):
            if role in EXTERNAL_ROLES and role not in out:
                out.append(role)
    return out


def rule_out_refusal(s: Session, row: Incident) -> str:
    """Why a rule-out is refused (Chinese first), or "" when it is allowed.

    - the desk already confirmed a real fire;
    - a second alarm in the same building: the ``fire_in_building`` grouping rule puts the smoke alarms
      (and, separately, the CO alarms) of one grid cell (a building / stairwell) within 30 min into one
      incident, so a second device in this incident, or another open ``fire_in_building`` incident of
      the same grid cell (the CO alarm's), is a second alarm: not somebody's toast;
    - the device's CO alarm (``co``) is active: CO at the fire threshold (``co_fire_ppm`` / the CO bit)
      is a smouldering fire, whatever the site says;
    - the smoke is dense enough to be a fire on its own (the fire alert's value >= ``FIRE_DENSITY_DB_M``;
      burnt food stays below ~0.8 dB/m). Heat is evidence inside the fire verdict at the gateway and
      reaches the cloud only as the fire alert (its value is the smoke density): not checked separately.
    """
    if row.confirmed:
        return (
            f"事件 {row.id} 已由接警员确认为火情，不能排除；未做任何更改。"
            f" / Incident {row.id} was confirmed as a fire: it cannot be ruled out. Nothing changed."
        )
    devices = rows.incident_devices(s, row)
    found = (
        list(
            s.scalars(
                select(Alert).where(
                    Alert.device_id.in_(devices),
                    Alert.phase != "cleared",
                    Alert.event_type.in_(["co", "fire"]),
                )
            )
        )
        if devices
        else []
    )
    for a in found:
        if a.event_type == "co":
            return (
                f"设备 {a.device_id} 一氧化碳报警仍在，可能是阴燃，不能排除；未做任何更改。"
                f" / Device {a.device_id}'s CO alarm is active: possibly smouldering. Not ruled out."
                " Nothing changed."
            )
        if a.value is not None and a.value >= FIRE_DENSITY_DB_M:
            return (
                f"设备 {a.device_id} 烟雾浓度 {a.value:g} dB/m 已达火情阈值，不能排除；未做任何更改。"
                f" / Device {a.device_id} reports smoke at {a.value:g} dB/m, a fire's density: not ruled"
                " out. Nothing changed."
            )
    others = 0
    if row.grid:
        others = int(
            s.scalar(
                select(func.count())
                .select_from(Incident)
                .where(
                    Incident.is_open.is_(True),
                    Incident.id != row.id,
                    Incident.grid == row.grid,
                    Incident.group_rule == BUILDING_RULE,
                )
            )
            or 0
        )
    if len(devices) > 1 or others:
        n = max(len(devices), 1) + others
        return (
            f"同一楼栋（网格 {row.grid or '-'}）已有 {n} 起烟感/一氧化碳报警，不能排除，请按火情处置；"
            f"未做任何更改。 / {n} smoke / CO alarms in the same building (grid cell {row.grid or '-'}):"
            " not ruled out, treat it as a fire. Nothing changed."
        )
    return ""


#: the grouping rule that puts one building's (grid cell's) smoke / CO alarms into one incident
BUILDING_RULE = "fire_in_building"
#: smoke this dense at the ceiling is a fire on its own (alerts.detection.profiles fire_density_db_m)
FIRE_DENSITY_DB_M = 1.0


def _minutes(seconds: float) -> int:
    return max(1, round(seconds / 60.0))


def _family_retry_s() -> float | None:
    """``VIGIL_CLOUD_FAMILY_RETRY_S`` (seconds, 1 .. 86400) when set: it overrides the loop configuration's
    ``desk.family_call_retry_s``. An invalid value stops the start with the variable's and the key's name
    (a reminder silently at the default is a reminder nobody expected)."""
    raw = os.environ.get(FAMILY_RETRY_ENV, "").strip()
    if not raw:
        return None
    try:
        return retry_seconds(raw, FAMILY_RETRY_ENV)
    except InvalidConfig as exc:
        raise InvalidConfig(
            FAMILY_RETRY_ENV, f"{exc.message} (it overrides the loop configuration's {FAMILY_CALL_RETRY_KEY})"
        ) from None


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
            summary=desk_summary(row.title, why)[:300],
        )
    ]


__all__ = ["PHOTO_MAX_BYTES", "PHOTO_TYPES", "InvalidAction", "LoopService", "Report"]
