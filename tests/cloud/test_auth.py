"""Credentials: hashed tokens and passwords, rotation with a grace period, revocation, roles, key file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from alerts.contract import HTTP_PATH
from cloud.auth import hash_password, token_hash, verify_password
from cloud.crypto import load_or_create_key, mask_name, mask_phone
from cloud.errors import ConfigError
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import GW1, MANHOLE_1, Cloud, batch, body, readings


def test_password_hash_is_salted_scrypt_and_verifies() -> None:
    h1, h2 = hash_password("correct horse"), hash_password("correct horse")
    assert h1.startswith("scrypt$") and h1 != h2
    assert verify_password("correct horse", h1) and not verify_password("wrong horse", h1)
    assert not verify_password("x", "garbage") and not verify_password("x", None)


def test_token_hash_is_sha256_hex() -> None:
    # FIPS 180-2 test vector: SHA-256("abc")
    assert token_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_key(path)


def test_masks() -> None:
    assert mask_name("张三") == "张*" and mask_name("") == "" and mask_name("王") == "王*"
    assert mask_phone("13812341234") == "138****1234" and mask_phone("110") == "*10"


async def test_missing_and_wrong_tokens_are_401_and_counted(cloud: Cloud) -> None:
    r = await cloud.client.get("/api/v1/devices")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"] == "unauthenticated"
    r = await cloud.client.get("/api/v1/devices", headers={"Authorization": "Bearer vus_nope"})
    assert r.status_code == 401
    r = await cloud.client.get("/api/v1/devices", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401
    assert (
        'vigil_cloud_rejects_total{reason="unauthenticated"} 3.0' in (await cloud.client.get("/metrics")).text
    )


async def test_rotation_grace_then_old_token_refused(cloud: Cloud) -> None:
    old = cloud.gw1
    r = await cloud.client.post(f"/api/v1/gateways/{GW1}/rotate", headers=cloud.admin)
    assert r.status_code == 200
    new = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (
        r.json()["previous_token_valid_until"] == cloud.clock.now() + cloud.settings.gateway_rotation_grace_s
    )
    b1 = batch("batch-rot-1", readings(DeviceKind.MANHOLE, MANHOLE_1, [1]))
    hdr = {"content-type": "application/json"}
    assert (await cloud.client.post(HTTP_PATH, content=body(b1), headers={**old, **hdr})).status_code == 200
    cloud.clock.advance(cloud.settings.gateway_rotation_grace_s + 1)
    b2 = batch("batch-rot-2", readings(DeviceKind.MANHOLE, MANHOLE_1, [2], t0=2e9))
    r = await cloud.client.post(HTTP_PATH, content=body(b2), headers={**old, **hdr})
    assert r.status_code == 401 and "grace" in r.json()["detail"]
    assert (await cloud.client.post(HTTP_PATH, content=body(b2), headers={**new, **hdr})).status_code == 200


async def test_revoked_gateway_is_refused_at_once(cloud: Cloud) -> None:
    assert (await cloud.client.post(f"/api/v1/gateways/{GW1}/revoke", headers=cloud.admin)).json()[
        "revoked"
    ] is True
    b = batch("batch-rev-1", readings(DeviceKind.MANHOLE, MANHOLE_1, [1]))
    r = await cloud.client.post(
        HTTP_PATH, content=body(b), headers={**cloud.gw1, "content-type": "application/json"}
    )
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert (await cloud.client.post(f"/api/v1/gateways/{GW1}/rotate", headers=cloud.admin)).status_code == 409


async def test_gateway_admin_endpoints(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    r = await c.client.post(
        "/api/v1/gateways", json={"gateway_id": "gw-new", "name": "新网关"}, headers=c.admin
    )
    assert r.status_code == 201 and r.json()["token"].startswith("vgw_")
    assert (
        await c.client.post("/api/v1/gateways", json={"gateway_id": "gw-new"}, headers=c.admin)
    ).status_code == 409
    assert (
        await c.client.post("/api/v1/gateways", json={"gateway_id": "gw-x"}, headers=c.viewer)
    ).status_code == 403
    assert (await c.client.post("/api/v1/gateways/nope/rotate", headers=c.admin)).status_code == 404
    # the token is stored only hashed
    from sqlalchemy import select

    from cloud.db import Gateway

    with c.state.db.read() as s:
        gw = s.scalars(select(Gateway).where(Gateway.gateway_id == "gw-new")).one()
        assert gw.token_hash == token_hash(r.json()["token"]) and r.json()["token"] not in str(gw.__dict__)


async def test_login_and_whoami(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    c.state.credentials.add_user("root", "admin", password="correct horse", now=c.clock.now())
    r = await c.client.post("/api/v1/auth/login", json={"username": "root", "password": "wrong password"})
    assert r.status_code == 401
    r = await c.client.post("/api/v1/auth/login", json={"username": "root", "password": "correct horse"})
    assert r.status_code == 200
    tok = r.json()["token"]
    who = await c.client.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {tok}"})
    assert who.json() == {"role": "admin", "name": "root"}
    c.clock.advance(13 * 3600)
    assert (
        await c.client.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {tok}"})
    ).status_code == 401
    gw = await c.client.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {c.gw1_token}"})
    assert gw.json() == {"role": "gateway", "name": GW1}
    # a gateway may not read the registry
    assert (await c.client.get("/api/v1/devices", headers=c.gw1)).status_code == 403


async def test_tokens_never_logged(cloud_sqlite: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    c = cloud_sqlite
    caplog.set_level(logging.DEBUG)
    r = await c.client.post("/api/v1/gateways", json={"gateway_id": "gw-log"}, headers=c.admin)
    token = r.json()["token"]
    b = batch("batch-log-1", readings(DeviceKind.MANHOLE, "70B3D57ED0000002", [1]), gateway_id="gw-log")
    bad = await c.client.post(
        HTTP_PATH,
        content=body(b),
        headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    # refused per record (not assigned to gw-log), logged as a warning with device ids only
    assert bad.status_code == 200 and [r["device_id"] for r in bad.json()["refused"]] == ["70b3d57ed0000002"]
    assert caplog.records
    text = "\n".join(f"{rec.getMessage()} {rec.__dict__}" for rec in caplog.records)
    assert token not in text and token_hash(token) not in text and c.gw1_token not in text


async def test_logout_revokes_only_that_token(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    assert (await c.client.post("/api/v1/auth/logout", headers=c.viewer)).status_code == 204
    assert (await c.client.get("/api/v1/auth/whoami", headers=c.viewer)).status_code == 401
    assert (await c.client.get("/api/v1/auth/whoami", headers=c.admin)).status_code == 200
    assert (await c.client.post("/api/v1/auth/logout", headers=c.gw1)).status_code == 403


def test_token_lookup_with_the_database_unreachable_is_a_storage_error() -> None:
    """The gateway-token lookup runs on a pooled driver connection: a refused connect (a PostgreSQL being
    restarted) must be the 503 ``StorageError`` a session gives, never an unhandled driver error (500)."""
    from cloud.auth import Credentials
    from cloud.db import Database
    from cloud.errors import StorageError
    from tests.servers import free_port

    db = Database(f"postgresql+psycopg://vigil@127.0.0.1:{free_port()}/nowhere?connect_timeout=2")
    try:
        with pytest.raises(StorageError):
            Credentials(db, rotation_grace_s=0).gateway_for_token("vgw_" + "x" * 43, now=0.0)
    finally:
        db.close()
