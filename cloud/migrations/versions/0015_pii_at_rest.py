"""personal data at rest: seal a wristband wearer's home address and exact position

A wristband's ``address`` and exact ``lat`` / ``lon`` move into its sealed document (``private_enc``,
Fernet, :mod:`cloud.crypto`); the clear columns keep an empty address and the position snapped to a
~100 m grid. Incidents raised by wristbands keep only that coarse position. Manhole covers and smoke
alarms (fixed installations, not personal) are left as they are. docs/privacy.md.

The key is the app's key file (``upgrade_head(..., secret_key_file=...)``, else
``VIGIL_CLOUD_SECRET_KEY_FILE`` or the default path); without a key file and with rows to seal, the
migration stops and says so (a new key would seal data the server could not read).

Downgrade puts the address and exact device position back in clear; the incidents' exact positions are not
restored (they were copies of the device's position).

Revision ID: 0015_pii_at_rest
Revises: 0002_loop, 0003_notify, 0012_job_leases, 0013_detect_inbox
Create Date: 2026-11-26 14:40:00
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision = "0015_pii_at_rest"
down_revision = ("0002_loop", "0003_notify", "0012_job_leases", "0013_detect_inbox")
branch_labels = None
depends_on = None

WORN_KINDS = ("wristband",)  # cloud.registry.PERSONAL_KINDS at the time of this revision
DECIMALS = 3  # cloud.crypto.COARSE_DECIMALS at the time of this revision

devices = sa.table(
    "devices",
    sa.column("device_id", sa.String),
    sa.column("kind", sa.String),
    sa.column("address", sa.String),
    sa.column("lat", sa.Float),
    sa.column("lon", sa.Float),
    sa.column("private_enc", sa.Text),
)
incidents = sa.table(
    "loop_incidents",
    sa.column("id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("lat", sa.Float),
    sa.column("lon", sa.Float),
)


def _coarse(x: float | None) -> float | None:
    return None if x is None else round(x, DECIMALS)


def _box() -> Any:
    from cloud.crypto import SecretBox, load_or_create_key
    from cloud.settings import CloudSettings

    path = context.config.attributes.get("vigil_secret_key_file")
    if path is None:
        path = CloudSettings.from_env().secret_key_file
    if not Path(path).exists():
        raise RuntimeError(
            f"0015_pii_at_rest must seal wristband addresses but the key file {path} does not exist: "
            "migrate with the server's key (VIGIL_CLOUD_SECRET_KEY_FILE or --secret-key-file)"
        )
    return SecretBox(load_or_create_key(Path(path)))


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(devices).where(devices.c.kind.in_(WORN_KINDS))).all()
    box = None
    for r in rows:
        needs = bool(r.address) or (r.lat is not None and r.lat != _coarse(r.lat))
        needs = needs or (r.lon is not None and r.lon != _coarse(r.lon))
        if not needs:
            continue
        box = box or _box()
        private = box.open(r.private_enc)
        if r.address:
            private["address"] = r.address
        if r.lat is not None and "lat" not in private:
            private["lat"] = r.lat
        if r.lon is not None and "lon" not in private:
            private["lon"] = r.lon
        bind.execute(
            devices.update()
            .where(devices.c.device_id == r.device_id)
            .values(address="", lat=_coarse(r.lat), lon=_coarse(r.lon), private_enc=box.seal(private))
        )
    for i in bind.execute(sa.select(incidents).where(incidents.c.kind.in_(WORN_KINDS))).all():
        if (i.lat, i.lon) != (_coarse(i.lat), _coarse(i.lon)):
            bind.execute(
                incidents.update()
                .where(incidents.c.id == i.id)
                .values(lat=_coarse(i.lat), lon=_coarse(i.lon))
            )


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(devices).where(devices.c.kind.in_(WORN_KINDS))).all()
    box = None
    for r in rows:
        if not r.private_enc:
            continue
        box = box or _box()
        private = box.open(r.private_enc)
        if not {"address", "lat", "lon"} & set(private):
            continue
        address = str(private.pop("address", "") or r.address)
        lat = float(private.pop("lat")) if "lat" in private else r.lat
        lon = float(private.pop("lon")) if "lon" in private else r.lon
        bind.execute(
            devices.update()
            .where(devices.c.device_id == r.device_id)
            .values(address=address, lat=lat, lon=lon, private_enc=box.seal(private))
        )
