"""device ids stored before normalisation take their canonical spelling

Before device ids were normalised where they enter (``cloud.registry.canonical_device_id``: a DevEUI in
lower case, an IMEI as Vigil's 16-hex id), an import could store ``70B3D57ED0000001``; every batch of that
device's gateway then named ``70b3d57ed0000001`` and was refused as ``unknown_device``. This revision
rewrites every stored device id to its canonical spelling, in each table that holds one: ``devices``
(primary key), ``alerts``, ``alert_events`` and ``loop_incidents`` (``device_id`` columns).

Merging, when several stored spellings name one device (``devices`` only; the other tables have no
unique device id and are simply rewritten):

* the row already stored under the canonical spelling wins (it was written after normalisation, by a
  re-import or the API: the newest intent); without one, the row seen most recently (``last_seen``, then
  the earliest ``created_at``, then the spelling) wins and is renamed;
* the winner keeps its registry fields (kind, name, place, gateway, profile, thresholds, sealed personal
  data); its history is combined: ``created_at`` = the earliest, ``last_seen`` / ``last_received_at`` =
  the latest, ``readings_total`` / ``seq_gaps_total`` = the sums, ``last_seq`` / ``last_battery_pct`` from
  the row seen last;
* the other rows are deleted; each merge is logged (``alembic.runtime.migration``, warning level) with
  both spellings, and a kind conflict is named.

Alert ids are not rewritten: they are opaque keys referenced by alert events, incident links and the
notification log, and a gateway never sends an alert for an id the cloud refused. Telemetry in the
time-series store (a separate database) keeps the spelling it was written with.

Downgrade is a no-op: the old spellings are not recorded and the canonical ones are valid before this
revision too.

Revision ID: 0014_device_id_case
Revises: 0002_loop, 0003_notify, 0012_job_leases, 0013_detect_inbox
Create Date: 2026-11-26 14:30:00
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from alembic import op

from cloud.registry import canonical_device_id

revision = "0014_device_id_case"
down_revision = ("0002_loop", "0003_notify", "0012_job_leases", "0013_detect_inbox")
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

#: tables with a plain (non-unique) ``device_id`` column, rewritten in place
REFERENCING = ("alerts", "alert_events", "loop_incidents")

devices = sa.table(
    "devices",
    sa.column("device_id", sa.String),
    sa.column("kind", sa.String),
    sa.column("created_at", sa.Float),
    sa.column("last_seen", sa.Float),
    sa.column("last_received_at", sa.Float),
    sa.column("last_seq", sa.BigInteger),
    sa.column("last_battery_pct", sa.Float),
    sa.column("seq_gaps_total", sa.BigInteger),
    sa.column("readings_total", sa.BigInteger),
)


def _recency(row: Any) -> tuple[float, float, str]:
    """Sort key: seen most recently first, then created first, then by spelling (deterministic)."""
    return (-(row.last_seen if row.last_seen is not None else float("-inf")), row.created_at, row.device_id)


def _latest(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def merge_devices(bind: sa.Connection) -> int:
    """Rename or merge every non-canonical ``devices`` row; returns how many rows were changed."""
    rows = bind.execute(sa.select(devices)).all()
    groups: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        groups[canonical_device_id(row.device_id)].append(row)
    changed = 0
    for canonical, group in groups.items():
        if all(r.device_id == canonical for r in group):
            continue
        ordered = sorted(group, key=_recency)
        winner = next((r for r in group if r.device_id == canonical), ordered[0])
        losers = [r for r in group if r is not winner]
        kinds = sorted({r.kind for r in group})
        if len(kinds) > 1:
            log.warning(
                "device %s: spellings %s are registered as different kinds %s; keeping %s (%s)",
                canonical,
                [r.device_id for r in group],
                kinds,
                winner.kind,
                winner.device_id,
            )
        if losers:
            log.warning(
                "device %s: merging %s into %s",
                canonical,
                [r.device_id for r in losers],
                winner.device_id,
            )
            bind.execute(devices.delete().where(devices.c.device_id.in_([r.device_id for r in losers])))
        seen_last = ordered[0]
        bind.execute(
            devices.update()
            .where(devices.c.device_id == winner.device_id)
            .values(
                device_id=canonical,
                created_at=min(r.created_at for r in group),
                last_seen=_latest([r.last_seen for r in group]),
                last_received_at=_latest([r.last_received_at for r in group]),
                last_seq=seen_last.last_seq,
                last_battery_pct=seen_last.last_battery_pct,
                seq_gaps_total=sum(r.seq_gaps_total or 0 for r in group),
                readings_total=sum(r.readings_total or 0 for r in group),
            )
        )
        changed += len(group) - (1 if winner.device_id == canonical else 0)
    return changed


def rewrite_references(bind: sa.Connection, table_name: str) -> int:
    """``UPDATE table SET device_id = canonical`` for each stored non-canonical spelling."""
    t = sa.table(table_name, sa.column("device_id", sa.String))
    changed = 0
    for (stored,) in bind.execute(sa.select(t.c.device_id).distinct()).all():
        canonical = canonical_device_id(stored)
        if canonical != stored:
            result = bind.execute(t.update().where(t.c.device_id == stored).values(device_id=canonical))
            changed += result.rowcount or 0
    return changed


def upgrade() -> None:
    bind = op.get_bind()
    n = merge_devices(bind)
    refs = {name: rewrite_references(bind, name) for name in REFERENCING}
    if n or any(refs.values()):
        log.warning("device ids normalised: %d device row(s); references %s", n, refs)


def downgrade() -> None:
    pass
