"""The loop's editable configuration: routing tree, escalation policies, roster, SLA table.

Each is a JSON document in ``loop_documents`` with a version; an absent document means the shipped
default (``alerts.loop.*.default_*``). A PUT validates with the pure parsers (which name the offending
rule) before anything is written, so a bad document is a 422 and the running configuration is unchanged.
Every change is written to the audit log in the same transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from alerts.loop.escalation import EscalationPolicy, default_policies, policies_from_dict
from alerts.loop.incidents import GroupingConfig, default_grouping
from alerts.loop.rosters import Roster, roster_from_dict
from alerts.loop.routing import Route, default_routes, route_from_dict
from alerts.loop.sla import SlaTable, default_sla, sla_from_dict
from cloud.loop.models import AuditEntry, Document

DOCUMENTS = ("routing", "escalation", "roster", "sla")


def _default_sla_doc() -> dict[str, Any]:
    t = default_sla()
    return {
        u.value: {"stages": dict(lim.stages), "case_s": lim.case_s, "working_time": lim.working_time}
        for u, lim in t.limits.items()
    }


DEFAULTS: dict[str, Callable[[], dict[str, Any]]] = {
    "routing": default_routes,
    "escalation": default_policies,
    "roster": lambda: {"zone": "Asia/Shanghai", "responders": [], "rotations": [], "overrides": []},
    "sla": _default_sla_doc,
}


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """One consistent view of every document, parsed (built per transaction, cheap)."""

    routes: Route
    policies: Mapping[str, EscalationPolicy]
    roster: Roster
    sla: SlaTable
    grouping: GroupingConfig
    versions: Mapping[str, int]


def raw_document(s: Session, name: str) -> tuple[dict[str, Any], int]:
    row = s.get(Document, name)
    if row is None:
        return DEFAULTS[name](), 0
    return dict(row.body), row.version


def parse(docs: Mapping[str, Mapping[str, Any]], versions: Mapping[str, int]) -> LoopConfig:
    """Validate the four documents together (routing names policies, rotations name responders)."""
    policies = policies_from_dict(docs["escalation"])
    routes = route_from_dict(docs["routing"], policies=frozenset(policies))
    roster = roster_from_dict(docs["roster"])
    sla = sla_from_dict(docs["sla"])
    return LoopConfig(routes, policies, roster, sla, default_grouping(), dict(versions))


@functools.cache
def _defaults() -> LoopConfig:
    return parse({n: DEFAULTS[n]() for n in DOCUMENTS}, dict.fromkeys(DOCUMENTS, 0))


def load(s: Session, cache: dict[tuple[int, ...], LoopConfig] | None = None) -> LoopConfig:
    """The configuration in force (stored documents, defaults for the absent ones).

    ``cache`` (one per service, i.e. per database) keeps the parsed configuration while the documents'
    versions do not change: a timer tick reads four small version numbers, not four JSON documents.
    """
    versions = tuple(
        int(v or 0)
        for v in (s.scalar(select(Document.version).where(Document.name == name)) for name in DOCUMENTS)
    )
    if not any(versions):
        return _defaults()
    if cache is not None and versions in cache:
        return cache[versions]
    docs: dict[str, dict[str, Any]] = {}
    got: dict[str, int] = {}
    for name in DOCUMENTS:
        docs[name], got[name] = raw_document(s, name)
    cfg = parse(docs, got)
    if cache is not None:
        cache.clear()
        cache[versions] = cfg
    return cfg


def save(s: Session, name: str, body: Mapping[str, Any], *, actor: str, role: str, now: float) -> int:
    """Validate ``body`` with the others as they are, store it as a new version, audit; returns it."""
    if name not in DOCUMENTS:
        raise KeyError(name)
    docs = {n: raw_document(s, n)[0] for n in DOCUMENTS}
    docs[name] = dict(body)
    parse(docs, {})  # raises InvalidConfig naming the rule; nothing is written
    row = s.get(Document, name, with_for_update=s.get_bind().dialect.name != "sqlite")
    version = (row.version if row else 0) + 1
    if row is None:
        s.add(Document(name=name, version=version, body=dict(body), updated_at=now, updated_by=actor))
    else:
        row.version, row.body, row.updated_at, row.updated_by = version, dict(body), now, actor
    audit(s, actor=actor, role=role, action=f"{name}.update", target=name, now=now, version=version)
    return version


def audit(s: Session, *, actor: str, role: str, action: str, target: str, now: float, **detail: Any) -> None:
    s.add(AuditEntry(at=now, actor=actor, role=role, action=action, target=target, detail=detail))
