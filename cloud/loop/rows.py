"""Between rows and the pure policy: work orders, snapshots, timers, intents, timeline events.

Everything here runs inside the caller's write session; nothing commits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

from sqlalchemy import Table, func, insert, select, text, update
from sqlalchemy.orm import Session

from alerts.loop.escalation import EscalationPolicy, EscalationSnapshot, EscalationState, EscalationStep
from alerts.loop.intents import IntentState, NotificationIntent, TargetKind, dedup_key
from alerts.loop.rosters import Responder, Roster
from alerts.loop.routing import FAMILY_ROLE, Receiver, family_target
from alerts.loop.sla import SlaTable, Urgency
from alerts.loop.stages import Action, Stage, WorkOrder
from cloud.loop.models import AlertLink, Incident, IncidentEvent, NotificationIntentRow, Timer
from firmware_bridge.kernel.records import DeviceKind

_ORDER_FIELDS = [f.name for f in fields(WorkOrder)]


def order_of(row: Incident) -> WorkOrder:
    return WorkOrder(
        stage=Stage(row.stage),
        created_at=row.created_at,
        stage_entered_at=row.stage_entered_at,
        assignee=row.assignee,
        owner=row.owner,
        department=row.department,
        registered_at=row.registered_at,
        dispatched_at=row.dispatched_at,
        accepted_at=row.accepted_at,
        arrived_at=row.arrived_at,
        handled_at=row.handled_at,
        verified_at=row.verified_at,
        closed_at=row.closed_at,
        rated_at=row.rated_at,
        rating=row.rating,
        parked_at=row.parked_at,
        paused_s=row.paused_s or 0.0,
        reopen_count=row.reopen_count or 0,
        rework=bool(row.rework),
        returned_reasons=tuple(row.returned_reasons or ()),
        last_action=Action(row.last_action) if row.last_action else None,
        last_actor=row.last_actor or "",
    )


def store_order(row: Incident, order: WorkOrder, sla: SlaTable, now: float) -> None:
    for name in _ORDER_FIELDS:
        value = getattr(order, name)
        if name == "stage":
            value = value.value
        elif name == "returned_reasons":
            value = list(value)
        elif name == "last_action":
            value = value.value if value is not None else None
        setattr(row, name, value)
    row.is_open = order.stage.is_open
    urgency = Urgency(row.urgency)
    row.stage_deadline = sla.stage_deadline(urgency, order)
    row.case_deadline = sla.case_deadline(urgency, order)
    if order.stage is not Stage(row.stage) or not order.stage.is_open:
        row.overdue = []
    row.row_version = (row.row_version or 0) + 1
    row.updated_at = now


# -- escalation snapshots ---------------------------------------------------------------------------------
def snapshot_json(snap: EscalationSnapshot) -> dict[str, Any]:
    return {
        "policy": {
            "name": snap.policy.name,
            "steps": [asdict(s) for s in snap.policy.steps],
            "repeat": snap.policy.repeat,
            "stop_on": snap.policy.stop_on,
        },
        "receivers": [{"department": r.department, "roles": list(r.roles)} for r in snap.receivers],
        "version": snap.version,
        "started_at": snap.started_at,
    }


def snapshot_of(row: Incident) -> EscalationSnapshot | None:
    raw = row.snapshot
    if not raw:
        return None
    p = raw["policy"]
    steps = tuple(
        EscalationStep(tuple(s["roles"]), float(s["wait_s"]), tuple(s["channels"]), bool(s["confirm"]))
        for s in p["steps"]
    )
    policy = EscalationPolicy(p["name"], steps, int(p["repeat"]), str(p["stop_on"]))
    receivers = tuple(Receiver(r["department"], tuple(r["roles"])) for r in raw["receivers"])
    return EscalationSnapshot(policy, receivers, int(raw["version"]), float(raw["started_at"]))


def esc_state_of(row: Incident) -> EscalationState:
    return EscalationState(row.esc_step, row.esc_loop, bool(row.esc_done), row.esc_reason or "")


def store_esc_state(row: Incident, st: EscalationState) -> None:
    row.esc_step, row.esc_loop, row.esc_done, row.esc_reason = st.step, st.loop, st.done, st.reason


# -- effects ----------------------------------------------------------------------------------------------
_TX_BULK = "vigil.loop.bulk"
_BULK_ROWS = 1000


def bulk_begin(s: Session) -> None:
    """From here on, timeline rows, timers and intents of this transaction are collected as plain rows
    and written by :func:`bulk_end` in one multi-row INSERT per table (a storm's batch writes tens of
    thousands of them; as ORM objects their bookkeeping cost more than the database did)."""
    s.info.setdefault(_TX_BULK, {IncidentEvent: [], Timer: [], NotificationIntentRow: []})


def bulk_end(s: Session) -> None:
    """Write what :func:`bulk_begin` collected (inside the transaction: it commits or rolls back with it)."""
    pending: dict[Any, list[dict[str, Any]]] = s.info.pop(_TX_BULK, {})
    for model, values in pending.items():
        insert_rows(s, model.__table__, values)


def insert_rows(s: Session, table: Table, values: list[dict[str, Any]]) -> None:
    """Insert plain rows (dicts with the same keys) in as few statements as the database allows.

    PostgreSQL: one statement per table, the rows travelling as one JSON parameter that
    ``json_to_recordset`` expands (psycopg's executemany sends one INSERT per row, and building the
    ORM's multi-VALUES statement for thousands of parameters cost more than the database did). SQLite:
    ``executemany``, which sqlite3 runs in C.
    """
    if not values:
        return
    dialect = s.get_bind().dialect
    if dialect.name != "postgresql":
        for i in range(0, len(values), _BULK_ROWS):
            s.execute(insert(table), values[i : i + _BULK_ROWS])
        return
    q = dialect.identifier_preparer.quote
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for v in values:
        groups.setdefault(tuple(v), []).append(v)
    for cols, rows_ in groups.items():
        names = ", ".join(q(c) for c in cols)
        spec = ", ".join(f"{q(c)} {table.c[c].type.compile(dialect=dialect)}" for c in cols)
        s.execute(
            text(
                f"INSERT INTO {q(table.name)} ({names}) SELECT {names}"
                f" FROM json_to_recordset(CAST(:rows AS json)) AS x({spec})"
            ),
            {"rows": json.dumps(rows_, allow_nan=False)},
        )


def _bulk(s: Session, model: Any) -> list[dict[str, Any]] | None:
    pending: dict[Any, list[dict[str, Any]]] | None = s.info.get(_TX_BULK)
    return pending[model] if pending is not None else None


def add_event(
    s: Session,
    row: Incident,
    action: str,
    *,
    actor: str,
    now: float,
    channel: str = "system",
    from_stage: str = "",
    reason: str = "",
    idempotency_key: str | None = None,
    code: str = "",
    params: dict[str, Any] | None = None,
    **detail: Any,
) -> None:
    """One timeline entry. A system entry says why with ``code`` and ``params`` (:mod:`alerts.loop.reasons`,
    put into words when read, Chinese first) and keeps an English ``reason`` for logs and old clients; a
    person's reason (a return, a park) is ``reason`` alone, their own words."""
    values = dict(
        incident_id=row.id,
        at=now,
        actor=actor,
        channel=channel,
        action=action,
        from_stage=from_stage,
        to_stage=row.stage,
        reason=reason[:1000],
        reason_code=code,
        reason_params=params,
        detail=detail,
        idempotency_key=idempotency_key,
    )
    bulk = _bulk(s, IncidentEvent)
    if bulk is not None:
        bulk.append(values)
    else:
        s.add(IncidentEvent(**values))


def add_timer(
    s: Session, row: Incident, purpose: str, due: float, now: float, *, step: int = 0, loop: int = 0
) -> None:
    values = dict(
        incident_id=row.id,
        purpose=purpose,
        step=step,
        loop=loop,
        snapshot_version=row.snapshot_version,
        due_at=due,
        state="pending",
        created_at=now,
        fired_at=None,
    )
    bulk = _bulk(s, Timer)
    if bulk is not None:
        bulk.append(values)
    else:
        s.add(Timer(**values))


#: how many on-call people one role intent reaches: the dispatched responder alone at the first step,
#: then up to two (the dispatched one first, then whoever was paged least in the last hour); a storm of
#: incidents is spread over a team instead of ringing every phone for every incident
FIRST_STEP_PEOPLE, LATER_STEP_PEOPLE = 1, 2


_TX_ON_CALL = "vigil.loop.on_call"


def on_call(s: Session, roster: Roster, role: str, zone: str, now: float) -> list[Responder]:
    """:meth:`Roster.on_call`, remembered for this transaction: a storm's incidents ask for the same few
    (role, zone) pairs thousands of times, at one ``now``. Callers must not modify the list."""
    cache: dict[tuple[int, str, str, float], list[Responder]] = s.info.setdefault(_TX_ON_CALL, {})
    key = (id(roster), role, zone, now)
    found = cache.get(key)
    if found is None:
        found = cache[key] = roster.on_call(role, zone, now)
    return found


_TX_RECENT_PAGES = "vigil.loop.recent_pages"
_TX_INTENT_KEYS = "vigil.loop.intent_keys"
_TX_NEW_INCIDENTS = "vigil.loop.new_incidents"
RECENT_PAGES_S = 3600.0


def recent_pages(s: Session, now: float) -> dict[str, int]:
    """Intents per target in the last hour, loaded once per transaction and kept current by
    :func:`write_intents` (a storm's hundreds of incidents in one transaction need one query, not one
    query and one flush each, and each incident sees the pages the ones before it just wrote)."""
    pages: dict[str, int] | None = s.info.get(_TX_RECENT_PAGES)
    if pages is None:
        with s.no_autoflush:
            pages = {
                str(who): int(cnt)
                for who, cnt in s.execute(
                    select(NotificationIntentRow.target_id, func.count())
                    .where(NotificationIntentRow.created_at >= now - RECENT_PAGES_S)
                    .group_by(NotificationIntentRow.target_id)
                )
            }
        if s.info.get(_TX_INTENT_KEYS):  # written before this lookup and not flushed: not in the query
            for obj in s.new:
                if isinstance(obj, NotificationIntentRow):
                    pages[obj.target_id] = pages.get(obj.target_id, 0) + 1
            for values in _bulk(s, NotificationIntentRow) or ():
                pages[values["target_id"]] = pages.get(values["target_id"], 0) + 1
        s.info[_TX_RECENT_PAGES] = pages
    return pages


def expand_intents(
    s: Session, intents: tuple[NotificationIntent, ...], row: Incident, roster: Roster, now: float
) -> list[NotificationIntent]:
    """Role intents -> the responders on call for that role in the incident's zone (``user`` targets).

    The 119 / 120 desks are ``group`` targets; a role with nobody on call stays a ``role`` intent (the
    notifier falls back to everyone with that duty role) and the timeline records the coverage gap.

    ``family_contact`` of an incident on worn devices is per wearer, not per place: one
    :func:`~alerts.loop.routing.family_target` per device of the incident (a grouped incident pages each
    device's family), keyed so that each family is paged once per incident whatever the step, loop or
    snapshot (a relative is told, not escalated to); the notifier resolves it to the device's registered
    emergency contact. An incident without a worn device keeps the roster's ``family_contact`` (if any).
    """
    out: list[NotificationIntent] = []
    devices: list[str] | None = None
    for it in intents:
        if it.target_id.startswith("desk_"):
            out.append(_retarget(it, row, TargetKind.GROUP, it.target_id))
            continue
        if it.target_id == FAMILY_ROLE and row.kind in _WORN_KINDS:
            devices = incident_devices(s, row) if devices is None else devices
            if devices:
                out.extend(_retarget(it, row, TargetKind.ROLE, family_target(d), once=True) for d in devices)
                continue
        people = [p.id for p in on_call(s, roster, it.target_id, row.grid, now)]
        if not people:
            out.append(it)
            continue
        n = FIRST_STEP_PEOPLE if it.step == 0 else LATER_STEP_PEOPLE
        recent = recent_pages(s, now) if len(people) > n else {}
        people.sort(key=lambda p: (p != row.assignee, recent.get(p, 0)))
        out.extend(_retarget(it, row, TargetKind.USER, p) for p in people[:n])
    return out


#: kinds worn by a person (``cloud.registry.PERSONAL_KINDS``): their family is paged per device
_WORN_KINDS = frozenset({DeviceKind.WRISTBAND.value})


def incident_devices(s: Session, row: Incident) -> list[str]:
    """The devices of an incident: its first device, then those of the alerts grouped into it."""
    found = [row.device_id] if row.device_id else []
    if row.id is not None:
        with s.no_autoflush:
            labels = s.scalars(select(AlertLink.labels).where(AlertLink.incident_id == row.id))
            found += [str(lab.get("device_id") or "") for lab in labels if isinstance(lab, dict)]
    return [d for d in dict.fromkeys(found) if d]


def _retarget(
    it: NotificationIntent, row: Incident, kind: TargetKind, target: str, *, once: bool = False
) -> NotificationIntent:
    prefix = it.dedup_key.rsplit(":", 2)[0]  # incident:version:step:loop
    inc, ver, step, loop = prefix.split(":")
    if once:  # one page per incident and target, ever
        ver = step = loop = "0"
    return NotificationIntent(
        incident_id=it.incident_id,
        step=it.step,
        target_kind=kind,
        target_id=target,
        channel_hint=it.channel_hint,
        dedup_key=dedup_key(int(inc), int(ver), int(step), int(loop), kind, target),
        created_at=it.created_at,
        department=it.department,
        summary=it.summary or row.title,
    )


def created_here(s: Session, row: Incident) -> None:
    """Note that ``row`` was inserted by this transaction: no stored intent can carry its id yet, so
    :func:`write_intents` needs no look-up for it (a storm opens hundreds per transaction)."""
    s.info.setdefault(_TX_NEW_INCIDENTS, set()).add(row.id)


def write_intents(s: Session, row: Incident, intents: list[NotificationIntent], now: float) -> int:
    """Insert intents whose dedup key is new (a replay writes nothing); returns how many were new."""
    if not intents:
        return 0
    keys = [i.dedup_key for i in intents]
    written: set[str] = s.info.setdefault(_TX_INTENT_KEYS, set())  # pending in this transaction
    existing = written.intersection(keys)
    if row.id not in s.info.get(_TX_NEW_INCIDENTS, ()):
        with s.no_autoflush:  # what this transaction wrote is in ``written``: no flush per incident
            existing |= set(
                s.scalars(
                    NotificationIntentRow.__table__.select()
                    .with_only_columns(NotificationIntentRow.dedup_key)
                    .where(NotificationIntentRow.dedup_key.in_(keys))
                )
            )
    pages = s.info.get(_TX_RECENT_PAGES)
    bulk = _bulk(s, NotificationIntentRow)
    new = 0
    for it in intents:
        if it.dedup_key in existing:
            continue
        existing.add(it.dedup_key)
        written.add(it.dedup_key)
        if pages is not None:
            pages[it.target_id] = pages.get(it.target_id, 0) + 1
        values = dict(
            incident_id=row.id,
            step=it.step,
            target_kind=it.target_kind.value,
            target_id=it.target_id,
            channel_hint=it.channel_hint[:64],
            department=it.department,
            summary=(it.summary or row.title)[:300],
            dedup_key=it.dedup_key,
            created_at=now,
            state=IntentState.PENDING.value,
            updated_at=now,
        )
        if bulk is not None:
            bulk.append(values)
        else:
            s.add(NotificationIntentRow(**values))
        new += 1
    if new and row.first_notified_at is None:
        row.first_notified_at = now
    return new


def cancel_pending_intents(s: Session, row: Incident, now: float) -> None:
    s.execute(
        update(NotificationIntentRow)
        .where(
            NotificationIntentRow.incident_id == row.id,
            NotificationIntentRow.state == IntentState.PENDING.value,
        )
        .values(state=IntentState.CANCELLED.value, updated_at=now)
    )
