"""Migration 0014_device_id_case: device ids stored before normalisation take their canonical spelling.

Rows are inserted in the old spellings into a database migrated to the revisions before 0014, then 0014
runs; on SQLite and on PostgreSQL (tests/servers.py). The merge rule is the one documented in the
migration's docstring and docs/security.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command

from cloud.db.migrate import alembic_config
from cloud.db.session import normalise_url
from cloud.registry import canonical_device_id

BEFORE = ("0002_loop", "0003_notify", "0012_job_leases", "0013_detect_inbox")  # the heads 0014 revises
IMEI = "490154203237518"


def _filler(col: sa.Column[Any]) -> Any:
    t = col.type
    if isinstance(t, sa.Boolean):
        return False
    if isinstance(t, sa.Integer):
        return 0
    if isinstance(t, sa.Float | sa.Numeric):
        return 0.0
    if isinstance(t, sa.JSON):
        return {}
    if isinstance(t, sa.LargeBinary):
        return b""
    return ""


def insert(conn: sa.Connection, table: sa.Table, **values: Any) -> None:
    """A row with every other NOT NULL column filled with a neutral value."""
    row = {
        c.name: _filler(c)
        for c in table.columns
        if not c.nullable and not (c.primary_key and c.autoincrement is not False and c.name == "id")
    }
    row.pop("id", None)
    row.update(values)
    conn.execute(table.insert().values(**row))


def device(conn: sa.Connection, t: sa.Table, device_id: str, **kw: Any) -> None:
    values: dict[str, Any] = {"kind": "manhole", "created_at": 1000.0, "interval_s": 600.0, "thresholds": {}}
    insert(conn, t, device_id=device_id, **{**values, **kw})


def run_migration(url: str) -> None:
    cfg = alembic_config(url)
    for rev in BEFORE:
        command.upgrade(cfg, rev)
    engine = sa.create_engine(normalise_url(url))
    try:
        md = sa.MetaData()
        md.reflect(engine, only=["devices", "alerts", "alert_events", "loop_incidents"])
        d, a, e, i = (md.tables[n] for n in ("devices", "alerts", "alert_events", "loop_incidents"))
        with engine.begin() as conn:
            # 1: only an upper-case DevEUI: renamed
            device(conn, d, "70B3D57ED0000001", readings_total=5, name="alone", last_seen=50.0)
            # 2: both spellings: the canonical row wins, histories are combined
            device(
                conn, d, "70B3D57ED0000002", readings_total=3, name="old", created_at=10.0, last_seen=300.0
            )
            device(
                conn, d, "70b3d57ed0000002", readings_total=4, name="new", created_at=20.0, last_seen=200.0
            )
            # 3: two old spellings and no canonical one: the one seen last wins
            device(conn, d, "70B3D57ED0000003", name="stale", last_seen=100.0, seq_gaps_total=1)
            device(conn, d, "70b3d57eD0000003", name="fresh", last_seen=400.0, last_seq=77, seq_gaps_total=2)
            # 4: an IMEI stored as 15 digits: Vigil's 16-hex id
            device(conn, d, IMEI, kind="smoke_alarm", name="imei")
            # 5: already canonical, and an id that is not a DevEUI: untouched
            device(conn, d, "70b3d57ed0000009", name="fine", readings_total=9)
            device(conn, d, "serial-ABC", name="serial")
            for n, dev in enumerate(
                ["70B3D57ED0000001", "70B3D57ED0000002", "70B3D57EDFFFFFFF", "serial-ABC"]
            ):
                aid = f"{dev}/cover_open/{n}"
                insert(conn, a, alert_id=aid, device_id=dev, phase="raised", raised_time=1.0, received_at=1.0)
                insert(conn, e, alert_id=aid, device_id=dev, phase="raised", time=1.0, received_at=1.0)
            insert(conn, i, device_id="70B3D57ED0000003", group_key="k", title="t", created_at=1.0)
        command.upgrade(cfg, "0014_device_id_case")
        with engine.connect() as conn:
            rows = {r.device_id: r for r in conn.execute(sa.select(d)).all()}
            alerts = sorted(conn.execute(sa.select(a.c.alert_id, a.c.device_id)).all())
            events = sorted(conn.execute(sa.select(e.c.device_id)).scalars().all())
            incidents = conn.execute(sa.select(i.c.device_id)).scalars().all()
    finally:
        engine.dispose()

    kept = ["70b3d57ed0000001", "70b3d57ed0000002", "70b3d57ed0000003", "70b3d57ed0000009", "serial-ABC"]
    assert sorted(rows) == sorted([*kept, canonical_device_id(IMEI)])
    one, two, three = rows["70b3d57ed0000001"], rows["70b3d57ed0000002"], rows["70b3d57ed0000003"]
    assert (one.name, one.readings_total, one.last_seen) == ("alone", 5, 50.0)
    assert (two.name, two.readings_total, two.created_at, two.last_seen) == ("new", 7, 10.0, 300.0)
    assert (three.name, three.last_seq, three.seq_gaps_total, three.last_seen) == ("fresh", 77, 3, 400.0)
    assert rows[canonical_device_id(IMEI)].name == "imei" and canonical_device_id(IMEI) != IMEI
    assert rows["70b3d57ed0000009"].readings_total == 9 and rows["serial-ABC"].name == "serial"
    # references follow, alert ids (opaque keys) do not change; a spelling with no device row too
    assert alerts == [
        ("70B3D57ED0000001/cover_open/0", "70b3d57ed0000001"),
        ("70B3D57ED0000002/cover_open/1", "70b3d57ed0000002"),
        ("70B3D57EDFFFFFFF/cover_open/2", "70b3d57edfffffff"),
        ("serial-ABC/cover_open/3", "serial-ABC"),
    ]
    assert events == ["70b3d57ed0000001", "70b3d57ed0000002", "70b3d57edfffffff", "serial-ABC"]
    assert incidents == ["70b3d57ed0000003"]


def test_device_ids_normalised_and_merged_on_sqlite(tmp_path: Path) -> None:
    run_migration(f"sqlite:///{tmp_path / 'old.db'}")


def test_device_ids_normalised_and_merged_on_postgresql(pg_url: str) -> None:
    run_migration(pg_url)
