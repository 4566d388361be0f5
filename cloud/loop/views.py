"""What each role may see of an incident, and the KPI query.

Roles see what they need (issue 8, "Correctness"): the reporter's contact is shown only to admin and
dispatcher (to call back); a wristband incident's readings are health data, so the alert messages and
values are left out for everyone but admin and dispatcher; operators and viewers see where and what.
Times are ISO-8601 with the display zone's offset (``firmware_bridge.kernel.locale.iso``); labels are
Chinese first.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from alerts.loop import reasons
from alerts.loop.kpi import CaseRecord, KpiRow, kpis
from alerts.loop.routing import DEPARTMENTS, ROLES
from alerts.loop.sla import Urgency
from alerts.loop.stages import Stage, allowed_actions
from cloud.auth import PERSONAL_DATA_ROLES, Principal
from cloud.crypto import SecretBox
from cloud.loop.config import load
from cloud.loop.models import OUTCOMES, Incident, IncidentEvent, NotificationIntentRow
from firmware_bridge.kernel.events import Severity
from firmware_bridge.kernel.locale import Lang, event_label, iso, kind_label, severity_label

_TIMES = (
    "event_start",
    "alert_time",
    "created_at",
    "stage_entered_at",
    "registered_at",
    "dispatched_at",
    "first_notified_at",
    "accepted_at",
    "arrived_at",
    "handled_at",
    "verified_at",
    "closed_at",
    "rated_at",
    "stage_deadline",
    "case_deadline",
    "updated_at",
)


def _iso(t: float | None) -> str | None:
    return None if t is None else iso(t)


def _label(fn: Any, value: str, language: Lang) -> str:
    try:
        return str(fn(value, language))
    except (KeyError, ValueError):
        return value


def responder_names(s: Session) -> dict[str, str]:
    """Roster responder id -> name, from the roster in force (one document read)."""
    return {r.id: r.name for r in load(s).roster.responders.values()}


def incident_out(
    row: Incident,
    who: Principal,
    box: SecretBox | None,
    language: Lang = "zh",
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``names``: roster responder id -> name, so ``assignee_name`` / ``owner_name`` show a person, not an
    id (``None`` where the id is not in the roster, e.g. a responder since removed)."""
    personal = who.role in PERSONAL_DATA_ROLES
    stage = Stage(row.stage)
    out: dict[str, Any] = {
        "id": row.id,
        "title": row.title,
        "stage": row.stage,
        "stage_label": stage.label(language),
        "is_open": row.is_open,
        "source": row.source,
        "kind": row.kind,
        "kind_label": _label(kind_label, row.kind, language),
        "event_type": row.event_type,
        "event_label": _label(event_label, row.event_type, language),
        "grade": Severity(row.grade).name.lower(),
        "grade_label": severity_label(Severity(row.grade), language),
        "urgency": row.urgency,
        "urgency_label": Urgency(row.urgency).label(language),
        "device_id": row.device_id,
        "grid": row.grid,
        "street": row.street,
        "community": row.community,
        "address": row.address,
        "on_road": row.on_road,
        "lat": row.lat,
        "lon": row.lon,
        "department": row.department,
        "department_label": DEPARTMENTS.get(row.department, (row.department, row.department))[
            language == "en"
        ],
        "route_rule": row.route_rule,
        "receivers": [
            {**r, "role_labels": [ROLES.get(x, (x, x))[language == "en"] for x in r["roles"]]}
            for r in row.receivers
        ],
        "assignee": row.assignee,
        "assignee_name": (names or {}).get(row.assignee or ""),
        "owner": row.owner,
        "owner_name": (names or {}).get(row.owner or ""),
        "rating": row.rating,
        "outcome": row.outcome,
        "outcome_label": OUTCOMES[row.outcome][language == "en"] if row.outcome in OUTCOMES else None,
        "rework": row.rework,
        "reopen_count": row.reopen_count,
        "returned_reasons": row.returned_reasons,
        "overdue": row.overdue,
        "alert_count": row.alert_count,
        "alerts_open": row.alerts_open,
        "escalation": {
            "policy": (row.snapshot or {}).get("policy", {}).get("name"),
            "version": row.snapshot_version,
            "next_step": row.esc_step,
            "loop": row.esc_loop,
            "done": row.esc_done,
            "reason": row.esc_reason,
            "confirmed": row.confirmed,
        },
        "allowed_actions": [a.value for a in allowed_actions(stage)],
        "row_version": row.row_version,
        "description": row.description,
        "reporter": row.reporter if personal else ("***" if row.reporter else ""),
    }
    for name in _TIMES:
        out[name] = _iso(getattr(row, name))
    if personal and box is not None and row.reporter_contact_enc:
        out["reporter_contact"] = box.open(row.reporter_contact_enc).get("phone", "")
    if row.kind == "wristband" and not personal:
        out["description"] = ""  # health details stay with those who need them
    return out


def event_out(
    e: IncidentEvent, language: Lang = "zh", names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A timeline entry: ``reason`` as stored (English for the loop's own, a person's words), and the
    machine ``reason_code`` / ``reason_params`` (an old row's mapped from its sentence) with
    ``reason_text``, the words in ``language`` (:mod:`alerts.loop.reasons`)."""
    code, params = reasons.resolve(e.action, e.reason_code or "", e.reason_params, e.reason)
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "channel": e.channel,
        "action": e.action,
        "from_stage": e.from_stage,
        "to_stage": e.to_stage,
        "to_stage_label": Stage(e.to_stage).label() if e.to_stage else "",
        "reason": e.reason,
        "reason_code": code,
        "reason_params": params,
        "reason_text": reasons.text(e.action, code, params, e.reason, language, names),
        "detail": e.detail,
    }


def intent_out(i: NotificationIntentRow) -> dict[str, Any]:
    return {
        "id": i.id,
        "incident_id": i.incident_id,
        "step": i.step,
        "target_kind": i.target_kind,
        "target_id": i.target_id,
        "channel_hint": i.channel_hint,
        "department": i.department,
        "summary": i.summary,
        "dedup_key": i.dedup_key,
        "created_at": iso(i.created_at),
        "state": i.state,
    }


def case_records(
    s: Session, since: float, until: float, outcomes: list[str | None] | None = None
) -> list[CaseRecord]:
    """Cases due in ``[since, until)``: registered in the period (dismissed reports are not cases).

    ``outcomes``, if given, is filled with each case's verdict (:data:`OUTCOMES` or ``None``), in order."""
    rows = s.scalars(
        select(Incident).where(
            Incident.registered_at.is_not(None),
            Incident.registered_at >= since,
            Incident.registered_at < until,
            Incident.stage != Stage.DISMISSED.value,
        )
    )
    sent: dict[int, float] = {}
    for inc_id, at in s.execute(
        select(NotificationIntentRow.incident_id, NotificationIntentRow.updated_at).where(
            NotificationIntentRow.state == "sent"
        )
    ):
        sent[inc_id] = min(at, sent.get(inc_id, at))
    out = []
    for r in rows:
        if outcomes is not None:
            outcomes.append(r.outcome)
        out.append(
            CaseRecord(
                department=r.department,
                zone=r.grid,
                responder=r.owner or "",
                kind=r.kind,
                event_start=r.event_start,
                alert_time=r.alert_time or r.registered_at,
                first_notified=sent.get(r.id, r.first_notified_at),
                accepted=r.accepted_at,
                arrived=r.arrived_at,
                handled=r.handled_at,
                registered=r.registered_at,
                closed=r.closed_at,
                deadline=r.case_deadline,
                reworked=bool(r.rework),
                rating=r.rating,
            )
        )
    return out


def kpi_rows(s: Session, since: float, until: float, by: str) -> list[KpiRow]:
    return kpis(case_records(s, since, until), by=by)


#: the verdict columns added to every KPI row (:func:`kpi_table`)
VERDICT_FIELDS = ("judged", "real", "nuisance", "false_alarm", "false_alarm_rate", "nuisance_rate")


def kpi_table(s: Session, since: float, until: float, by: str) -> list[dict[str, Any]]:
    """:func:`kpi_rows` as dicts, each with the responders' verdicts of its cases: ``judged`` (cases with
    an outcome), the count of each outcome, and ``false_alarm_rate`` / ``nuisance_rate`` as fractions of
    the judged cases (``None`` when none was judged). Grouped exactly as :func:`alerts.loop.kpi.kpis`."""
    verdicts: list[str | None] = []
    cases = case_records(s, since, until, verdicts)
    tally: dict[str, Counter[str]] = defaultdict(Counter)
    for c, v in zip(cases, verdicts, strict=True):
        if v in OUTCOMES:
            tally["all" if by == "all" else str(getattr(c, by)) or "-"][v] += 1
    out = []
    for row in kpis(cases, by=by):
        t = tally.get(row.group, Counter())
        judged = sum(t.values())
        out.append(
            {
                **asdict(row),
                "judged": judged,
                **{k: t[k] for k in OUTCOMES},
                "false_alarm_rate": t["false_alarm"] / judged if judged else None,
                "nuisance_rate": t["nuisance"] / judged if judged else None,
            }
        )
    return out
