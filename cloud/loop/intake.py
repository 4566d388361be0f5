"""Signals in, incidents out: the shell around :func:`alerts.loop.incidents.decide`.

For each signal, inside one write transaction: look up what the pure decision needs (the alert's link,
the group's open incident, how many of its group arrived in the window, the active alerts that could
inhibit it, the silences), decide, and apply: open an incident (route it, dispatch it, freeze and start
its escalation, set its SLA timer), attach to one, or only record why nothing was opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, select, text
from sqlalchemy.orm import Session

from alerts.contract import AlertEvent
from alerts.loop import escalation
from alerts.loop.incidents import (
    TIER,
    Context,
    GroupRule,
    InhibitRule,
    Signal,
    Silence,
    Source,
    Verdict,
    decide,
    grade,
    group_key,
    rule_for,
)
from alerts.loop.incidents import matcher_from_dict as _matcher
from alerts.loop.reasons import OK_KEY_CLEARED, cleared_by_ok_key, stop_code
from alerts.loop.rosters import pick
from alerts.loop.routing import Receiver, route
from alerts.loop.sla import urgency_for
from alerts.loop.stages import Action, Command, WorkOrder, apply, new_order
from cloud.db import Device
from cloud.loop import rows
from cloud.loop.config import LoopConfig
from cloud.loop.models import AlertLink, Incident, SilenceRow
from firmware_bridge.kernel.events import LIFE_SAFETY, EventType, Severity
from firmware_bridge.kernel.locale import display_zone, event_label, kind_label
from firmware_bridge.kernel.records import DeviceKind

SYSTEM = "system"
#: a person's life at stake now: taken first in a backlog
DANGER_NOW: frozenset[str] = frozenset(
    e.value
    for e in (
        EventType.FIRE,
        EventType.CO,
        EventType.GAS_COMBUSTIBLE,
        EventType.GAS_TOXIC,
        EventType.FALL,
        EventType.SOS,
    )
)
#: the kernel's other life-safety events (an open cover: a hole someone can fall into): taken next
LIFE_SAFETY_OTHER: frozenset[str] = frozenset(e.value for e in LIFE_SAFETY) - DANGER_NOW
TIERS = 3


def priority(event: str) -> int:
    """0: danger to a person now; 1: the other life-safety events; 2: the rest. A backlog is taken lowest
    first: by the intake queue, inside each transaction (so a fire is dispatched first, while responders
    are free) and by the reconcile pass."""
    return 0 if event in DANGER_NOW else 1 if event in LIFE_SAFETY_OTHER else 2


def step_priority(step: AlertEvent) -> int:
    return priority(str(getattr(step.event_type, "value", step.event_type)))


def take_all(s: Session, cfg: LoopConfig, signals: Sequence[Signal], now: float) -> list[int | None]:
    """Handle a batch in order, set-based: each signal sees the effects of the ones before it.

    Three passes, so the statements do not grow with the signals (docs/loop.md, "Alarm storms"):

    1. decide every signal in memory against what a few queries loaded up front (the alert links, the
       groups' open incidents and the incidents those point to, locked in one global order on PostgreSQL);
       incidents this batch opens are placeholders (negative ids) that later signals can attach to;
    2. build the new incidents' rows (routing) and insert them in one flush, which gives their ids;
    3. apply in signal order: links, attachments, timeline rows, dispatch, escalation, timers, intents;
       the new rows are collected as plain rows and written as multi-row INSERTs at the end
       (:func:`cloud.loop.rows.bulk_begin`), the changed incidents and links by the commit's flush.
    """
    batch = batch_context(s, cfg, now)
    prepared: list[_Prepared] = []
    for sig in signals:
        g = grade(sig)
        labels = sig.labels(g)
        rule = rule_for(cfg.grouping, labels)
        prepared.append((sig, g, labels, rule, group_key(rule, labels)))
    keys = sorted({p[4] for p in prepared})
    if batch.lock:
        # take every group's lock up front, in one statement and one global order (of the lock ids): two
        # workers with overlapping storms wait for each other instead of deadlocking
        s.execute(_GROUP_LOCKS, {"keys": keys})
    _prefetch(s, batch, [sig.alert_id for sig in signals], keys)
    ops = [_decide(s, cfg, p, batch, now) for p in prepared]
    fresh = _insert_new(s, cfg, ops, now, postgres=batch.lock)
    open_load(s, flush=False)  # before any dispatch of this batch: no flush needed, none made mid-way
    rows.bulk_begin(s)
    out: list[int | None] = []
    for op in ops:
        _apply(s, cfg, op, batch, fresh, now)
        ref = op.target
        out.append(fresh[ref].id if ref is not None and ref < 0 else ref)
    new_links = [
        {f: getattr(lk, f) for f in NewLink.__slots__}
        for lk in batch.links.values()
        if isinstance(lk, NewLink)
    ]
    s.flush()  # the new incidents (PostgreSQL: not yet written) before the rows that refer to them
    rows.insert_rows(s, cast(Table, AlertLink.__table__), new_links)
    rows.bulk_end(s)
    return out


_CHUNK = 500  # ids per IN (...) list
_NEXT_IDS = text("SELECT nextval(pg_get_serial_sequence('loop_incidents', 'id')) FROM generate_series(1, :n)")
_GROUP_LOCKS = text(
    "SELECT count(pg_advisory_xact_lock(h)) FROM"
    " (SELECT DISTINCT hashtext(k) AS h FROM unnest(CAST(:keys AS text[])) AS k ORDER BY h) AS ordered"
)
#: a signal with what pass 1 computes from it alone: grade, labels, grouping rule, group key
_Prepared = tuple[Signal, Severity, dict[str, str], GroupRule, str]


def _prefetch(s: Session, batch: Batch, alert_ids: Sequence[str], keys: Sequence[str]) -> None:
    """Load the batch's alert links, its groups' open incidents and the incidents those links belong to
    in a few queries, not one per signal (after the group locks, so what is read is what the locks
    protect; the incidents are locked in id order on PostgreSQL: no deadlock between two workers)."""
    ids = sorted(set(alert_ids))
    with s.no_autoflush:
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            for link in s.scalars(select(AlertLink).where(AlertLink.alert_id.in_(chunk))):
                batch.links.setdefault(link.alert_id, link)
            batch.links_known.update(chunk)
        for i in range(0, len(keys), _CHUNK):
            chunk = list(keys[i : i + _CHUNK])
            for key, first in s.execute(
                select(Incident.group_key, func.min(Incident.id))
                .where(Incident.group_key.in_(chunk), Incident.is_open.is_(True))
                .group_by(Incident.group_key)
            ):
                batch.open_by_key.setdefault(str(key), int(first))
            batch.keys_known.update(chunk)
        ids_needed = sorted(
            {lk.incident_id for lk in batch.links.values() if lk.incident_id is not None}
            | set(batch.open_by_key.values())
        )
        for i in range(0, len(ids_needed), _CHUNK):
            q = select(Incident).where(Incident.id.in_(ids_needed[i : i + _CHUNK])).order_by(Incident.id)
            if batch.lock:
                q = q.with_for_update()
            batch.incidents.update((r.id, r) for r in s.scalars(q))


def signals_from_steps(s: Session, steps: Sequence[AlertEvent], source: str) -> list[Signal]:
    """Join each step with its device's context (grid, street, on road, lives alone, position)."""
    ids = sorted({st.device_id for st in steps})
    devices = {d.device_id: d for d in s.scalars(select(Device).where(Device.device_id.in_(ids)))}
    out = []
    for st in steps:
        kind = str(getattr(st.kind, "value", st.kind))
        d = devices.get(st.device_id)
        gateway = st.device_id if kind == "gateway" else (d.gateway_id or "" if d else "")
        phase = str(getattr(st.phase, "value", st.phase))
        thresholds: dict[str, Any] = dict(d.thresholds or {}) if d else {}
        out.append(
            Signal(
                alert_id=st.alert_id,
                source=Source.CLOUD if source == "cloud" else Source.GATEWAY,
                kind=kind,
                event=str(getattr(st.event_type, "value", st.event_type)),
                severity=Severity(int(st.severity)),
                phase=phase,
                time=float(st.time),
                device_id=st.device_id,
                gateway_id=gateway,
                grid=d.grid if d else "",
                street=d.street if d else "",
                community=d.community if d else "",
                on_road=bool(d.on_road) if d else False,
                lives_alone=bool(thresholds.get("lives_alone", False))
                or (d is not None and "alone" in d.profile),
                lat=d.lat if d else None,
                lon=d.lon if d else None,
                episode_start=st.episode_ms / 1000.0 if st.episode_ms else None,
                cause=OK_KEY_CLEARED if cleared_by_ok_key(kind, phase, st.message) else "",
            )
        )
    return out


@dataclass
class Batch:
    """What every signal of one batch shares: the silences in force and the active inhibiting alerts.

    Loaded once per transaction (not once per signal: an alarm storm arrives in batches of hundreds) and
    kept current as the batch's own signals raise or clear inhibiting alerts. The active alerts are
    loaded only when a signal some inhibition rule targets arrives (:meth:`active_alerts`): a storm of
    open covers makes thousands of them active, and a batch of covers and floods never needs them.
    """

    silences: list[Silence]
    active: dict[str, dict[str, str]] | None  # alert id -> labels, for events that inhibit others
    source_events: frozenset[str]
    inhibit: Sequence[InhibitRule] = ()
    lock: bool = False  # PostgreSQL: incidents are read FOR UPDATE
    # what this transaction already knows, so a storm's signals need no flush and no re-query each
    # alert id -> its link (stored, or new in this batch)
    links: dict[str, AlertLink | NewLink] = field(default_factory=dict)
    open_by_key: dict[str, int] = field(default_factory=dict)  # group key -> open incident id
    links_known: set[str] = field(default_factory=set)  # alert ids whose link (or its absence) is loaded
    keys_known: set[str] = field(default_factory=set)  # group keys whose open incident (or none) is loaded
    incidents: dict[int, Incident] = field(default_factory=dict)  # loaded (and locked) incidents by id
    placeholder: dict[str, int] = field(default_factory=dict)  # alert id -> incident it joined in this batch
    # group keys of the incidents this batch opens (placeholders -1, -2, ...)
    opened: list[str] = field(default_factory=list)
    noted: dict[str, dict[str, str] | None] = field(default_factory=dict)  # before ``active`` was loaded

    def note(self, sig: Signal, labels: dict[str, str]) -> None:
        if sig.event in self.source_events:
            if self.active is None:
                self.noted[sig.alert_id] = None if sig.phase == "cleared" else labels
            elif sig.phase == "cleared":
                self.active.pop(sig.alert_id, None)
            else:
                self.active[sig.alert_id] = labels

    def active_alerts(self, s: Session) -> dict[str, dict[str, str]]:
        if self.active is None:
            with s.no_autoflush:
                self.active = {
                    alert: dict(lab)
                    for alert, lab in s.execute(
                        select(AlertLink.alert_id, AlertLink.labels).where(
                            AlertLink.active.is_(True), AlertLink.event.in_(sorted(self.source_events))
                        )
                    )
                }
            for alert, lab in self.noted.items():  # this batch's own steps are newer than the table
                if lab is None:
                    self.active.pop(alert, None)
                else:
                    self.active[alert] = lab
        return self.active


def batch_context(s: Session, cfg: LoopConfig, now: float) -> Batch:
    source_events = frozenset(e for r in cfg.grouping.inhibit for e in r.source.labels.get("event", ()))
    silences = [
        Silence(r.id, _matcher(r.matchers, "silence"), r.starts_at, r.ends_at, r.created_by, r.reason)
        for r in s.scalars(
            select(SilenceRow).where(SilenceRow.ends_at > now, SilenceRow.expired_early_at.is_(None))
        )
    ]
    return Batch(
        silences, None, source_events, cfg.grouping.inhibit, s.get_bind().dialect.name == "postgresql"
    )


def _context(
    s: Session, sig: Signal, labels: dict[str, str], key: str, rule: GroupRule, batch: Batch, now: float
) -> Context:
    if key in batch.open_by_key:
        open_id: int | None = batch.open_by_key[key]
    elif key in batch.keys_known:
        open_id = None
    else:
        with s.no_autoflush:
            open_id = s.scalar(
                select(Incident.id)
                .where(Incident.group_key == key, Incident.is_open.is_(True))
                .order_by(Incident.id)
            )
        if open_id is not None:
            _incident(s, batch, open_id)
    recent = 0
    if rule.min_count > 1:
        recent = sum(  # this batch's own, not yet written
            1
            for a, lk in batch.links.items()
            if isinstance(lk, NewLink)
            and lk.group_key == key
            and lk.first_seen >= sig.time - rule.window_s
            and a != sig.alert_id
        )
        with s.no_autoflush:
            recent += int(
                s.scalar(
                    select(func.count())
                    .select_from(AlertLink)
                    .where(
                        AlertLink.group_key == key,
                        AlertLink.first_seen >= sig.time - rule.window_s,
                        AlertLink.alert_id != sig.alert_id,
                    )
                )
                or 0
            )
    # only a signal some inhibition rule targets looks at the active alerts: in a storm thousands of
    # open covers are active, and copying them for every signal made a batch quadratic
    inhibitable = any(r.target.matches(labels) for r in batch.inhibit)
    return Context(
        open_incident=open_id,
        recent_in_group=recent,
        active=[lab for a, lab in batch.active_alerts(s).items() if a != sig.alert_id] if inhibitable else (),
        silences=batch.silences,
        now=now,
    )


def _incident(s: Session, batch: Batch, incident_id: int) -> Incident | None:
    """An incident outside the prefetch (rare: a group opened by another process meanwhile), locked."""
    row = batch.incidents.get(incident_id)
    if row is None:
        with s.no_autoflush:
            row = s.get(Incident, incident_id, with_for_update=True if batch.lock else None)
        if row is not None:
            batch.incidents[incident_id] = row
    return row


@dataclass(slots=True)
class NewLink:
    """A ``loop_alert_links`` row this batch creates: a plain object, inserted with the others in one
    statement (pass 3) instead of one ORM object each."""

    alert_id: str
    incident_id: int | None
    verdict: str
    event: str
    group_key: str
    reason: str
    labels: dict[str, str]
    phase: str
    active: bool
    first_seen: float
    updated_at: float


Link = AlertLink | NewLink


@dataclass
class _Op:
    """One signal's decision (pass 1), applied in pass 3. ``target`` is an incident id, or a placeholder
    (< 0) for an incident this batch opens; ``new_link`` says whether the alert joined it just now."""

    sig: Signal
    grade: Severity
    labels: dict[str, str]
    rule: GroupRule
    key: str
    link: Link
    verdict: Verdict | None = None  # None: this phase of the alert was handled before (a replay)
    reason: str = ""
    target: int | None = None
    new_link: bool = False
    pending: list[Link] = field(default_factory=list)  # min_count: links that join what it opens
    row: Incident | None = None  # pass 2: the row of the incident it opens, its work order and policy
    order: WorkOrder | None = None
    policy: str = ""


def _ref(batch: Batch, link: Link | None) -> int | None:
    """The incident an alert belongs to: stored, or a placeholder of this batch."""
    if link is None:
        return None
    if link.incident_id is not None:
        return link.incident_id
    return batch.placeholder.get(link.alert_id)


def _decide(
    s: Session,
    cfg: LoopConfig,
    p: _Prepared,
    batch: Batch,
    now: float,
) -> _Op:
    sig, g, labels, rule, key = p
    link: Link | None = batch.links.get(sig.alert_id)
    if link is None and sig.alert_id not in batch.links_known:
        with s.no_autoflush:
            link = s.get(AlertLink, sig.alert_id)
    if link is not None and link.phase == sig.phase and sig.phase != "updated":
        return _Op(sig, g, labels, rule, key, link, target=_ref(batch, link))
    linked = _ref(batch, link)
    if linked is not None:
        ctx = Context(linked_incident=linked, now=now)
    else:
        ctx = _context(s, sig, labels, key, rule, batch, now)
    d = decide(sig, cfg.grouping, ctx)
    batch.note(sig, labels)
    active = sig.phase != "cleared"
    if link is None:
        link = NewLink(
            alert_id=sig.alert_id,
            incident_id=None,
            verdict=d.verdict.value,
            event=sig.event,
            group_key=key,
            reason=d.reason[:300],
            labels=labels,
            phase=sig.phase,
            active=active,
            first_seen=sig.time,
            updated_at=now,
        )
        batch.links[sig.alert_id] = link
    else:
        link.phase, link.active, link.updated_at = sig.phase, active, now
    op = _Op(sig, g, labels, rule, key, link, d.verdict, d.reason[:300])
    if d.verdict is Verdict.ATTACH and d.incident_id is not None:
        op.target, op.new_link = d.incident_id, linked is None
        if linked is None:
            batch.placeholder[sig.alert_id] = d.incident_id
        row = _incident(s, batch, d.incident_id) if d.incident_id > 0 else None
        joined_key = batch.opened[-d.incident_id - 1] if d.incident_id < 0 else row.group_key if row else None
        if joined_key == key and (d.incident_id < 0 or (row is not None and row.is_open)):
            batch.open_by_key[key] = d.incident_id
    elif d.verdict is Verdict.OPEN:
        batch.opened.append(key)
        op.target = -len(batch.opened)
        batch.open_by_key[key] = op.target
        batch.placeholder[sig.alert_id] = op.target
        if rule.min_count > 1:  # alerts of the group that were waiting for min_count join it now
            with s.no_autoflush:
                stored = list(
                    s.scalars(
                        select(AlertLink).where(
                            AlertLink.group_key == key, AlertLink.verdict == Verdict.PENDING.value
                        )
                    )
                )
            waiting: dict[str, Link] = {lk.alert_id: lk for lk in stored}
            waiting.update(  # this batch's own, not yet written
                (a, lk) for a, lk in batch.links.items() if isinstance(lk, NewLink) and lk.group_key == key
            )
            op.pending = [
                lk
                for a, lk in waiting.items()
                if a != sig.alert_id
                and lk.verdict == Verdict.PENDING.value
                and lk.incident_id is None
                and a not in batch.placeholder
            ]
    return op


def _insert_new(
    s: Session, cfg: LoopConfig, ops: Sequence[_Op], now: float, *, postgres: bool
) -> dict[int, Incident]:
    """Pass 2: the rows of the incidents this batch opens, routed, inserted in one flush (their ids)."""
    fresh: dict[int, Incident] = {}
    for op in ops:
        if op.verdict is Verdict.OPEN and op.target is not None:
            op.row, op.order, op.policy = new_row(cfg, op.sig, op.grade, op.key, op.rule.name, now)
            fresh[op.target] = op.row
    if fresh and postgres:
        # PostgreSQL: ids from the sequence in one statement, so the flush is a plain executemany; with
        # the ids left to the flush, SQLAlchemy builds one multi-VALUES INSERT ... RETURNING of thousands
        # of parameters, and converting it cost psycopg more than the rest of the batch
        ids = s.scalars(_NEXT_IDS, {"n": len(fresh)}).all()
        for row, new_id in zip(fresh.values(), ids, strict=True):
            row.id = int(new_id)
    if fresh:
        s.add_all(fresh.values())
        if not postgres:
            s.flush()  # SQLite: the INSERT gives the ids
        # PostgreSQL: the rows are written by the first flush after pass 3 with their final values (one
        # INSERT each, no UPDATE after it); nothing in pass 3 reads them back from the database
    return fresh


def _apply(
    s: Session, cfg: LoopConfig, op: _Op, batch: Batch, fresh: dict[int, Incident], now: float
) -> None:
    """Pass 3: one decision's effects, in signal order."""
    if op.verdict is None:
        return
    link, sig = op.link, op.sig
    target = op.target
    row: Incident | None = None
    if target is not None:
        row = fresh[target] if target < 0 else batch.incidents.get(target)
    if op.verdict is Verdict.OPEN and row is not None and op.order is not None:
        link.incident_id, link.verdict = row.id, Verdict.OPEN.value
        started(s, cfg, row, op.order, op.policy, sig, op.grade, op.rule.name, now)
        row.alert_count, row.alerts_open = 1, 1 if sig.phase != "cleared" else 0
        for pend in op.pending:
            pend.incident_id, pend.verdict = row.id, Verdict.ATTACH.value
            row.alert_count += 1
            row.alerts_open += 1 if pend.active else 0
    elif op.verdict is Verdict.ATTACH:
        if row is not None:
            if op.new_link:
                link.incident_id, link.verdict = row.id, Verdict.ATTACH.value
            _attach(s, row, op.new_link, sig, now)
            if sig.phase == "raised" or (op.new_link and sig.phase != "cleared"):
                lift_rule_out(s, cfg, row, sig, now)
    else:
        link.verdict, link.reason = op.verdict.value, op.reason


def _attach(s: Session, row: Incident, new_link: bool, sig: Signal, now: float) -> None:
    if new_link:
        row.alert_count += 1
        row.alerts_open += 1 if sig.phase != "cleared" else 0
        rows.add_event(
            s, row, "alert_attached", actor=SYSTEM, now=now, alert_id=sig.alert_id, device_id=sig.device_id
        )
    elif sig.phase == "cleared":
        row.alerts_open = max(0, row.alerts_open - 1)
        if sig.cause == OK_KEY_CLEARED:
            # the wearer said "I'm OK" on the band: nothing else changes (dispatch and escalation carry
            # on, whatever the stage); the timeline says why, so the desk calls back (回拨确认)
            rows.add_event(
                s,
                row,
                "alert_cleared",
                actor=SYSTEM,
                channel="telemetry",
                now=now,
                reason='the wearer pressed "I\'m OK": call back to confirm',
                code=OK_KEY_CLEARED,
                params={},
                alert_id=sig.alert_id,
                accepted=row.accepted_at is not None,
            )
        else:
            rows.add_event(
                s, row, "alert_cleared", actor=SYSTEM, channel="telemetry", now=now, alert_id=sig.alert_id
            )
        if row.alerts_open == 0 and row.stage == "handled":
            rows.add_timer(s, row, "verify", now + VERIFY_QUIET_S, now)
    elif sig.phase == "raised":
        row.alerts_open += 1
    row.updated_at = now
    row.row_version += 1


def lift_rule_out(s: Session, cfg: LoopConfig, row: Incident, sig: Signal, now: float) -> bool:
    """A new alarm joined an incident the desk ruled out (nuisance / false alarm): never let the earlier
    nuisance silence a real fire. The verdict is withdrawn (``outcome`` NULL), the timeline says why
    (``rule_out_lifted``) and the escalation starts again from its first step with a new snapshot."""
    if row.esc_reason != "ruled_out" or not row.is_open:
        return False
    row.outcome = None
    rows.add_event(
        s,
        row,
        "rule_out_lifted",
        actor=SYSTEM,
        now=now,
        reason=f"a new alarm after the rule-out ({sig.device_id or sig.alert_id}): escalation started again",
        code="rule_out_lifted",
        params={"device_id": sig.device_id or sig.alert_id},
        alert_id=sig.alert_id,
    )
    restart_escalation(s, cfg, row, None, now)
    return True


#: a device incident is verified by telemetry when its alerts stay cleared this long after handling
VERIFY_QUIET_S = 300.0


def open_incident(
    s: Session,
    cfg: LoopConfig,
    sig: Signal,
    g: Severity,
    key: str,
    rule: str,
    now: float,
    *,
    title: str | None = None,
    description: str = "",
    reporter: str = "",
    address: str = "",
) -> Incident:
    """Create, route, dispatch and start escalating an incident (a manual report waits for 立案)."""
    row, order, policy_name = new_row(
        cfg, sig, g, key, rule, now, title=title, description=description, reporter=reporter, address=address
    )
    s.add(row)
    s.flush()
    started(s, cfg, row, order, policy_name, sig, g, rule, now)
    return row


def new_row(
    cfg: LoopConfig,
    sig: Signal,
    g: Severity,
    key: str,
    rule: str,
    now: float,
    *,
    title: str | None = None,
    description: str = "",
    reporter: str = "",
    address: str = "",
) -> tuple[Incident, WorkOrder, str]:
    """An incident's row, routed (receivers, department), not yet added; its work order and policy."""
    manual = sig.source is Source.MANUAL
    order = new_order(now, registered=not manual)
    labels = sig.labels(g)
    local = datetime.fromtimestamp(now, display_zone(cfg.roster.zone))
    matches = route(cfg.routes, labels, local.hour * 60 + local.minute)
    receivers = tuple(r for m in matches for r in m.receivers)
    policy_name = next((m.escalation for m in matches if m.escalation), None) or "default"
    row = Incident(
        group_key=key,
        group_rule=rule,
        is_open=True,
        stage=order.stage.value,
        source=sig.source.value,
        kind=sig.kind,
        event_type=sig.event,
        grade=int(g),
        urgency=urgency_for(g).value,
        title=title or _title(sig),
        description=description,
        device_id=sig.device_id,
        gateway_id=sig.gateway_id,
        grid=sig.grid,
        street=sig.street,
        community=sig.community,
        address=address,
        on_road=sig.on_road,
        lat=sig.lat,
        lon=sig.lon,
        reporter=reporter,
        route_rule=" + ".join(m.rule for m in matches),
        department=receivers[0].department if receivers else "",
        receivers=[{"department": r.department, "roles": list(r.roles)} for r in receivers],
        event_start=sig.episode_start if sig.episode_start is not None else sig.time,
        alert_time=None if manual else now,
        created_at=now,
        stage_entered_at=now,
        registered_at=order.registered_at,
        paused_s=0.0,
        reopen_count=0,
        rework=False,
        returned_reasons=[],
        last_actor="",
        overdue=[],
        alert_count=0,
        alerts_open=0,
        snapshot_version=0,
        esc_step=0,
        esc_loop=0,
        esc_done=False,
        esc_reason="",
        confirmed=False,
        row_version=1,
        updated_at=now,
    )
    return row, order, policy_name


def started(
    s: Session,
    cfg: LoopConfig,
    row: Incident,
    order: WorkOrder,
    policy_name: str,
    sig: Signal,
    g: Severity,
    rule: str,
    now: float,
) -> None:
    """A new incident's row has its id: its work order, timeline, dispatch, escalation and timers."""
    rows.created_here(s, row)
    rows.store_order(row, order, cfg.sla, now)
    rows.add_event(
        s,
        row,
        "opened",
        actor=SYSTEM,
        now=now,
        channel=sig.source.value,
        reason=f"grouped by {rule}",
        code="grouped",
        params={"rule": rule},
        alert_id=sig.alert_id,
        grade=g.name.lower(),
        tier=TIER[g],
        urgency=row.urgency,
    )
    rows.add_event(
        s,
        row,
        "routed",
        actor=SYSTEM,
        now=now,
        reason=row.route_rule,
        code="routed",
        params={
            "rule": row.route_rule,
            "departments": list(dict.fromkeys(r["department"] for r in row.receivers if r.get("department"))),
        },
        receivers=row.receivers,
        escalation=policy_name,
    )
    if sig.source is not Source.MANUAL:
        start_work(s, cfg, row, policy_name, now)
    else:
        sla_timer(s, row, now)


def start_work(s: Session, cfg: LoopConfig, row: Incident, policy_name: str | None, now: float) -> None:
    """Dispatch to the nearest available on-call responder, freeze the escalation and run its first step."""
    dispatch_auto(s, cfg, row, now)
    restart_escalation(s, cfg, row, policy_name, now)


_TX_LOAD = "vigil.loop.open_load"


def open_load(s: Session, *, flush: bool = True) -> dict[str, int]:
    """Open incidents per assignee, loaded once per transaction and kept current by dispatches in it (a
    storm's incidents are spread by load without a query and a flush for each). ``flush=False`` when
    nothing was assigned yet in this transaction (the intake's pass 3 loads it before its first
    dispatch, so the new incidents' rows can wait for the end of the batch)."""
    load: dict[str, int] | None = s.info.get(_TX_LOAD)
    if load is None:
        if flush:
            s.flush()  # assignments made earlier in this transaction count
        with s.no_autoflush:
            load = {
                str(who): int(n)
                for who, n in s.execute(
                    select(Incident.assignee, func.count())
                    .where(Incident.is_open.is_(True), Incident.assignee.is_not(None))
                    .group_by(Incident.assignee)
                )
            }
        s.info[_TX_LOAD] = load
    return load


def _moved_load(s: Session, old: str | None, new: str | None) -> None:
    load: dict[str, int] | None = s.info.get(_TX_LOAD)
    if load is None or old == new:
        return
    if old:
        load[old] = max(0, load.get(old, 0) - 1)
    if new:
        load[new] = load.get(new, 0) + 1


def dispatch_auto(
    s: Session, cfg: LoopConfig, row: Incident, now: float, *, exclude: Sequence[str] = ()
) -> bool:
    for rc in row.receivers:
        if rc["department"] in exclude:
            continue
        for role in rc["roles"]:
            if role.startswith("desk_") or role in ("resident", "family_contact", "call_taker"):
                continue  # desks and relatives are paged, not dispatched a work order
            people = rows.on_call(s, cfg.roster, role, row.grid, now)
            load = open_load(s) if len(people) >= 2 else {}
            who = pick(people, lat=row.lat, lon=row.lon, load=load)
            if who is None:
                rows.add_event(
                    s,
                    row,
                    "coverage_gap",
                    actor=SYSTEM,
                    now=now,
                    reason=f"nobody on call for {role} in {row.grid or '*'}",
                    code="nobody_on_call",
                    params={"role": role, "zone": row.grid or ""},
                    role=role,
                    zone=row.grid,
                )
                continue
            before, previous = row.stage, row.assignee
            tr = apply(
                rows.order_of(row),
                Command(Action.DISPATCH, SYSTEM, assignee=who.id, department=rc["department"]),
                now,
            )
            rows.store_order(row, tr.after, cfg.sla, now)
            _moved_load(s, previous, row.assignee)
            rows.add_event(
                s,
                row,
                "dispatch",
                actor=SYSTEM,
                now=now,
                from_stage=before,
                reason=f"on call for {role} in {row.grid or '*'}, nearest available",
                code="dispatch_nearest",
                params={"role": role, "zone": row.grid or ""},
                assignee=who.id,
            )
            sla_timer(s, row, now)
            return True
    sla_timer(s, row, now)
    return False


def restart_escalation(
    s: Session, cfg: LoopConfig, row: Incident, policy_name: str | None, now: float
) -> None:
    """Freeze a new snapshot (a new version fences every older timer) and run its first step."""
    old = rows.snapshot_of(row)
    name = policy_name or (old.policy.name if old else "default")
    policy = cfg.policies.get(name) or cfg.policies["default"]
    receivers = tuple(Receiver(r["department"], tuple(r["roles"])) for r in row.receivers)
    snap = escalation.freeze(policy, receivers, previous_version=row.snapshot_version, now=now)
    row.snapshot, row.snapshot_version = rows.snapshot_json(snap), snap.version
    out = escalation.start(snap, row.id, now, row.title)
    apply_outcome(s, cfg, row, out, now)


def apply_outcome(s: Session, cfg: LoopConfig, row: Incident, out: escalation.Outcome, now: float) -> None:
    rows.store_esc_state(row, out.state)
    intents = rows.expand_intents(s, out.intents, row, cfg.roster, now)
    n = rows.write_intents(s, row, intents, now)
    if n:
        rows.add_event(
            s,
            row,
            "notify",
            actor=SYSTEM,
            now=now,
            step=intents[0].step,
            targets=[f"{i.target_kind}:{i.target_id}" for i in intents],
            version=row.snapshot_version,
        )
    if out.timer is not None:
        rows.add_timer(s, row, "escalation", out.timer.due, now, step=out.timer.step, loop=out.timer.loop)
    elif out.state.done:
        rows.add_event(
            s,
            row,
            "escalation_stopped",
            actor=SYSTEM,
            now=now,
            reason=out.state.reason,
            code=stop_code(out.state.reason),
        )


def sla_timer(s: Session, row: Incident, now: float) -> None:
    dues = [d for d in (row.stage_deadline, row.case_deadline) if d is not None]
    if dues:
        rows.add_timer(s, row, "sla", min(dues) + 0.001, now)


def _title(sig: Signal) -> str:
    try:
        what = event_label(sig.event, "zh")
    except (KeyError, ValueError):
        what = sig.event
    try:
        kind = kind_label(DeviceKind(sig.kind), "zh")
    except ValueError:
        kind = sig.kind
    where = sig.street or sig.grid or sig.community
    return f"{kind}{what}" + (f" @ {where}" if where else "")
