"""Migration 0015_pii_at_rest on SQLite and PostgreSQL: clear wristband homes written by an older Vigil
are sealed, the clear columns keep a ~100 m position, smoke alarms are left alone, and a database with
rows to seal refuses to migrate without the key file."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import insert, text

from cloud.auth import Role
from cloud.crypto import SecretBox, load_or_create_key
from cloud.db import Database, Device, upgrade_head
from cloud.db.migrate import alembic_config
from cloud.loop.models import Incident
from cloud.registry import Registry
from tests.cloud.cloudkit import BAND_1, SMOKE_1, T0

BAND_ID = str(BAND_1)  # the canonical id of the wearer's band (never None for this IMEI)
HOME = "海淀区科学院南路5号楼101室"
LAT, LON = 39.971234, 116.305678
SMOKE_LAT, SMOKE_LON = 39.981234, 116.315678
BEFORE = ("0002_loop", "0003_notify", "0012_job_leases", "0013_detect_inbox")  # the heads 0015 merges


@pytest.fixture(params=["sqlite", "postgres"])
def old_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database at the schema before 0015, with a wristband and a smoke alarm as older Vigil wrote them."""
    url = (
        f"sqlite:///{tmp_path}/old.db"
        if request.param == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    cfg = alembic_config(url)
    for head in BEFORE:
        command.upgrade(cfg, head)
    box = SecretBox(load_or_create_key(tmp_path / "key"))
    db = Database(url)
    try:
        with db.write() as s:
            common = {"interval_s": 600.0, "created_at": T0, "seq_gaps_total": 0, "readings_total": 0}
            s.add(
                Device(
                    device_id=BAND_ID, kind="wristband", lat=LAT, lon=LON, address=HOME, grid="G02",
                    private_enc=box.seal({"wearer_name": "张三丰", "wearer_phone": "13812341234"}), **common,
                )
            )  # fmt: skip
            s.add(
                Device(
                    device_id=SMOKE_1,
                    kind="smoke_alarm",
                    lat=SMOKE_LAT,
                    lon=SMOKE_LON,
                    address="3号楼201",
                    **common,
                )
            )
            # a Core insert of the columns given (the ORM would also write columns later migrations added,
            # e.g. 0019's outcome, which this older schema does not have)
            s.execute(
                insert(Incident).values(
                    group_key="k", group_rule="r", stage="dispatched", source="gateway", kind="wristband",
                    event_type="fall", grade=3, urgency="urgent", created_at=T0, stage_entered_at=T0,
                    updated_at=T0, device_id=BAND_ID, lat=LAT, lon=LON,
                )
            )  # fmt: skip
    finally:
        db.close()
    return url


def _raw(url: str) -> dict[str, tuple[object, ...]]:
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT device_id, address, lat, lon, private_enc FROM devices")).all()
            incident = conn.execute(text("SELECT lat, lon FROM loop_incidents")).one()
        return {**{r.device_id: tuple(r)[1:] for r in rows}, "incident": tuple(incident)}
    finally:
        db.close()


def test_0015_seals_existing_wristband_homes(old_db: str, tmp_path: Path) -> None:
    upgrade_head(old_db, secret_key_file=tmp_path / "key")
    raw = _raw(old_db)
    address, lat, lon, sealed = raw[BAND_ID]
    assert (address, lat, lon) == ("", 39.971, 116.306)
    assert HOME not in str(raw) and str(LAT) not in str(raw) and str(LON) not in str(raw)
    box = SecretBox(load_or_create_key(tmp_path / "key"))
    private = box.open(str(sealed))
    wearer = {"wearer_name": "张三丰", "wearer_phone": "13812341234"}
    assert private == {**wearer, "address": HOME, "lat": LAT, "lon": LON}
    assert raw[SMOKE_1][:3] == ("3号楼201", SMOKE_LAT, SMOKE_LON)  # a fixed installation: untouched
    assert raw["incident"] == (39.971, 116.306)
    # the app reads what the migration sealed: exact for a dispatcher, coarse and masked for a viewer
    db = Database(old_db)
    try:
        reg = Registry(db, box)
        exact, masked = reg.get(BAND_ID, Role.DISPATCHER), reg.get(BAND_ID, Role.VIEWER)
    finally:
        db.close()
    assert (exact.address, exact.lat, exact.lon, exact.wearer_name) == (HOME, LAT, LON, "张三丰")
    assert (masked.address, masked.lat, masked.lon, masked.wearer_name) == (
        "海淀区科学***",
        39.971,
        116.306,
        "张**",
    )
    # running it again changes nothing; downgrading puts the home back in clear
    upgrade_head(old_db, secret_key_file=tmp_path / "key")
    assert _raw(old_db)[BAND_ID][:3] == ("", 39.971, 116.306)
    cfg = alembic_config(old_db)
    cfg.attributes["vigil_secret_key_file"] = tmp_path / "key"
    command.downgrade(cfg, "0013_detect_inbox")
    address, lat, lon, sealed = _raw(old_db)[BAND_ID]
    assert (address, lat, lon) == (HOME, LAT, LON)
    assert box.open(str(sealed)) == wearer


def test_0015_refuses_to_seal_without_the_key_file(
    old_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_CLOUD_SECRET_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(RuntimeError, match=r"key file .*missing\.key does not exist"):
        upgrade_head(old_db)
    assert _raw(old_db)[BAND_ID][:3] == (HOME, LAT, LON)  # nothing half-done
    assert not (tmp_path / "missing.key").exists()  # and no new key that would seal unreadable data
