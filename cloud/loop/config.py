"""The loop's editable configuration: routing tree, escalation policies, roster, SLA table, desk settings.

Each is a JSON document in ``loop_documents`` with a version; an absent document means the shipped
default (``alerts.loop.*.default_*``). A PUT validates with the pure parsers (which name the offending
rule) before anything is written, so a bad document is a 422 and the running configuration is unchanged.
Every change is written to the audit log in the same transaction.

``desk``: the call takers' desk's own settings. ``family_call_retry_s`` (default 600): after "not reached"
the desk is reminded to call a wristband wearer's family again this many seconds later. The environment
variable ``VIGIL_CLOUD_FAMILY_RETRY_S`` still overrides it (a demo's short reminder); an invalid value in
either place is refused with the key's name (:class:`~alerts.loop.errors.InvalidConfig`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from alerts.loop.errors import InvalidConfig
from alerts.loop.escalation import EscalationPolicy, default_policies, policies_from_dict
from alerts.loop.incidents import GroupingConfig, default_grouping
from alerts.loop.rosters import Roster, roster_from_dict
from alerts.loop.routing import Route, default_routes, route_from_dict
from alerts.loop.sla import SlaTable, default_sla, sla_from_dict
from cloud.loop.models import AuditEntry, Document

DOCUMENTS = ("routing", "escalation", "roster", "sla", "desk")
#: the desk's settings and their defaults (document ``desk``)
FAMILY_CALL_RETRY_S = 600.0
FAMILY_CALL_RETRY_KEY = "desk.family_call_retry_s"
#: the reminder's bounds: at least a second, at most a day (a bigger number is a typo, not a policy)
FAMILY_CALL_RETRY_MAX_S = 86400.0


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
    "desk": lambda: {"family_call_retry_s": FAMILY_CALL_RETRY_S},
}


@dataclass(frozen=True, slots=True)
class DeskConfig:
    family_call_retry_s: float = FAMILY_CALL_RETRY_S


def retry_seconds(raw: object, key: str) -> float:
    """A reminder interval in seconds (1 .. 86400), or :class:`InvalidConfig` naming ``key``."""
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            raise InvalidConfig(key, f"a number of seconds, not {raw!r}") from None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidConfig(key, f"a number of seconds, not {raw!r}")
    value = float(raw)
    if not 1.0 <= value <= FAMILY_CALL_RETRY_MAX_S:  # NaN fails too
        raise InvalidConfig(key, f"seconds between 1 and {FAMILY_CALL_RETRY_MAX_S:g}, not {raw!r}")
    return value


def desk_from_dict(raw: Mapping[str, Any]) -> DeskConfig:
    unknown = sorted(set(raw) - {"family_call_retry_s"})
    if unknown:
        raise InvalidConfig(f"desk.{unknown[0]}", "unknown key (known: family_call_retry_s)")
    retry = raw.get("family_call_retry_s", FAMILY_CALL_RETRY_S)
    return DeskConfig(retry_seconds(retry, FAMILY_CALL_RETRY_KEY))


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """One consistent view of every document, parsed (built per transaction, cheap)."""

    routes: Route
    policies: Mapping[str, EscalationPolicy]
    roster: Roster
    sla: SlaTable
    grouping: GroupingConfig
    versions: Mapping[str, int]
    desk: DeskConfig = DeskConfig()


def raw_document(s: Session, name: str) -> tuple[dict[str, Any], int]:
    row = s.get(Document, name)
    if row is None:
        return DEFAULTS[name](), 0
    return dict(row.body), row.version


def parse(docs: Mapping[str, Mapping[str, Any]], versions: Mapping[str, int]) -> LoopConfig:
    """Validate the documents together (routing names policies, rotations name responders)."""
    policies = policies_from_dict(docs["escalation"])
    routes = route_from_dict(docs["routing"], policies=frozenset(policies))
    roster = roster_from_dict(docs["roster"])
    sla = sla_from_dict(docs["sla"])
    desk = desk_from_dict(docs.get("desk") or DEFAULTS["desk"]())
    return LoopConfig(routes, policies, roster, sla, default_grouping(), dict(versions), desk)


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
