"""A gateway's client certificate is bound to its gateway id (docs/mtls.md), on `vigil cloud`'s own HTTPS.

The real cloud runs as a subprocess with a client CA (tests/cloud/test_tls.py ``running_cloud``); two
gateways, ``gw-tls`` and ``gw-b``, each with a device and a certificate whose CN is its id. A gateway holding
another's token (a stolen token) is refused with 403 ``certificate_mismatch``, audited and counted; its
own pair is stored. The rule itself (:func:`cloud.tls.request_certificate`, which headers are trusted from
where) is checked without a server below.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import ssl
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from alerts.contract import HTTP_PATH, UplinkBatch
from cloud.auth import Credentials, GatewayCertificateError, Principal, Role, check_gateway_certificate
from cloud.crypto import SecretBox, load_or_create_key
from cloud.db import Database
from cloud.errors import ConfigError
from cloud.registry import DeviceIn, Registry
from cloud.tls import (
    PEER_EXTENSION,
    SUBJECT_HEADER,
    VERIFY_HEADER,
    ClientIdentity,
    GatewayBinding,
    identity_of_subject,
    request_certificate,
)
from edge.outbox import Outbox, PendingBatch
from edge.uplink import UplinkAuthError
from edge.uplink.http import HttpUplink
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.test_tls import Cloud, Pki, issue_client, make_pki, running_cloud
from tests.edge.helpers import alert, device_id
from tests.servers import free_port


def provision(db_path: Path, gateway_id: str, device: int) -> str:
    """A second gateway with its own device, in a running cloud's database (``running_cloud``'s layout:
    the key file beside the database); returns its token."""
    db = Database(f"sqlite:///{db_path}")
    try:
        token = Credentials(db, rotation_grace_s=0).add_gateway(gateway_id, now=time.time())
        Registry(db, SecretBox(load_or_create_key(db_path.parent / "secret.key"))).upsert(
            [DeviceIn(device_id=device_id(device), kind=DeviceKind.SMOKE_ALARM, gateway_id=gateway_id)],
            now=time.time(),
        )
        return token
    finally:
        db.close()


def alert_batch(tmp: Path, gateway_id: str, device: int) -> PendingBatch:
    """A batch as the gateway's outbox makes it, for the real uplink."""
    with Outbox(tmp / f"outbox-{gateway_id}-{device}.db") as outbox:
        outbox.commit([], [alert(device, t=time.time())])
        batch = outbox.next_batch(gateway_id)
    assert batch is not None
    return batch


def json_batch(gateway_id: str, device: int) -> bytes:
    """One alert for ``device`` as a JSON contract document (for requests made by hand)."""
    now = time.time()
    batch_id = f"{gateway_id}-{device}-{int(now * 1e6)}"
    return (
        UplinkBatch(batch_id=batch_id, gateway_id=gateway_id, sent_at=now, alerts=[alert(device, t=now)])
        .model_dump_json()
        .encode()
    )


def client_ctx(pki: Pki, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def stored_alert_devices(cloud: Cloud) -> list[str]:
    with contextlib.closing(sqlite3.connect(cloud.db_path)) as db:
        return sorted(r[0] for r in db.execute("SELECT device_id FROM alerts"))


async def test_a_stolen_token_is_refused_with_another_gateways_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    b_cert, b_key = issue_client(pki, "gw-b")
    odd_cert, odd_key = issue_client(
        pki,
        "ops-laptop",
        subject=x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "ops laptop"),  # a space: no gateway id
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Vigil"),
            ]
        ),
    )
    with running_cloud(tmp_path / "cloud", pki, client_ca=pki.ca) as cloud:
        token_b = provision(cloud.db_path, "gw-b", 2)
        url = cloud.url + HTTP_PATH

        # gateway gw-tls (its own certificate) with gw-b's stolen token: 403, a reason, nothing stored
        batch_b = alert_batch(tmp_path, "gw-b", 2)
        thief = HttpUplink(
            cloud.url,
            token_b,
            timeout_s=10,
            ca_file=pki.ca,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
        )
        try:
            # the installer reads why in `vigil gateway status` (the sender's last error)
            with pytest.raises(UplinkAuthError, match=r"\(403\): certificate_mismatch: .*CN=gw-tls"):
                await thief.send(batch_b)
        finally:
            await thief.aclose()
        headers = {"Authorization": f"Bearer {token_b}", "Content-Type": "application/json"}
        body_b = json_batch("gw-b", 2)
        with httpx.Client(verify=client_ctx(pki, pki.client_cert, pki.client_key), timeout=10) as c:
            r = c.post(url, content=body_b, headers=headers)
        assert r.status_code == 403
        assert r.json()["reason"] == "certificate_mismatch" and "CN=gw-tls" in r.json()["detail"]
        # a certificate from the same CA whose CN is no gateway id names no gateway either
        with httpx.Client(verify=client_ctx(pki, odd_cert, odd_key), timeout=10) as c:
            r = c.post(url, content=body_b, headers=headers)
        assert r.status_code == 403 and r.json()["reason"] == "certificate_mismatch"
        assert stored_alert_devices(cloud) == []

        # each gateway with its own certificate and token is stored
        for token, cert, key, gw, dev in (
            (token_b, b_cert, b_key, "gw-b", 2),
            (cloud.token, pki.client_cert, pki.client_key, "gw-tls", 1),
        ):
            with httpx.Client(verify=client_ctx(pki, cert, key), timeout=10) as c:
                r = c.post(
                    url, content=json_batch(gw, dev), headers={**headers, "Authorization": f"Bearer {token}"}
                )
            assert r.status_code == 200, r.text
            assert r.json()["alerts_stored"] == 1
        assert stored_alert_devices(cloud) == sorted([device_id(1), device_id(2)])

        # counted per refusal; audited once a minute per (gateway, reason, certificate)
        with httpx.Client(verify=client_ctx(pki, b_cert, b_key), timeout=10) as c:
            metrics = c.get(f"{cloud.url}/metrics").text
        assert 'vigil_cloud_gateway_certificate_refusals_total{reason="certificate_mismatch"} 3.0' in metrics
        # the other reasons are exported at 0 before they happen (an alert rule can use them from the start)
        assert 'vigil_cloud_gateway_certificate_refusals_total{reason="certificate_required"} 0.0' in metrics
        assert 'vigil_cloud_gateway_certificate_refusals_total{reason="certificate_revoked"} 0.0' in metrics
        with contextlib.closing(sqlite3.connect(cloud.db_path)) as db:
            rows = db.execute(
                "SELECT actor, target, detail FROM loop_audit WHERE action = ?",
                ("auth.gateway_certificate_refused",),
            ).fetchall()
        details = sorted((a, t, json.loads(d)["certificate"], json.loads(d)["reason"]) for a, t, d in rows)
        assert details == [
            ("gw-b", "gateway:gw-b", "CN=gw-tls", "certificate_mismatch"),
            ("gw-b", "gateway:gw-b", "O=Vigil,CN=ops laptop", "certificate_mismatch"),
        ]


def test_user_tokens_are_not_bound_to_a_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with running_cloud(tmp_path / "cloud", pki, client_ca=pki.ca) as cloud:
        db = Database(f"sqlite:///{cloud.db_path}")
        try:
            admin = Credentials(db, rotation_grace_s=0).add_user("ops", "admin", now=time.time())
        finally:
            db.close()
        with httpx.Client(verify=client_ctx(pki, pki.client_cert, pki.client_key), timeout=10) as c:
            me = c.get(f"{cloud.url}/api/v1/auth/whoami", headers={"Authorization": f"Bearer {admin}"})
            gw = c.get(f"{cloud.url}/api/v1/auth/whoami", headers={"Authorization": f"Bearer {cloud.token}"})
        assert me.status_code == 200 and me.json()["role"] == "admin"
        assert gw.status_code == 200 and gw.json()["role"] == "gateway"


# -- the rule, without a server -----------------------------------------------------------------------
def _scope(
    host: str | None, identity: ClientIdentity | None = None, *, extension: bool = True
) -> dict[str, object]:
    ext = {PEER_EXTENSION: {"host": host, "port": 40000, "identity": identity}} if extension else {}
    return {"type": "http", "client": ("203.0.113.9", 1), "extensions": ext}


def _forged(subject: str) -> dict[str, str]:
    return {VERIFY_HEADER: "SUCCESS", SUBJECT_HEADER: subject}


def test_certificate_headers_count_only_from_a_trusted_proxy() -> None:
    default = GatewayBinding.from_env({})
    # from the proxy on loopback: the header's subject is the identity, and binding becomes required
    cert = request_certificate(_scope("127.0.0.1"), _forged("CN=gw-a,O=Vigil"), default, client_ca=False)
    assert cert.identity is not None and cert.identity.gateway_id == "gw-a" and cert.required
    # nginx without a client certificate: verified NONE, no identity, still required
    none = request_certificate(_scope("127.0.0.1"), {VERIFY_HEADER: "NONE"}, default, client_ca=False)
    assert none.identity is None and none.required
    failed = {VERIFY_HEADER: "FAILED:certificate has expired", SUBJECT_HEADER: "CN=gw-a"}
    assert request_certificate(_scope("127.0.0.1"), failed, default, client_ca=False).identity is None
    # the same headers from any other address, or without the connection's own peer, are ignored
    for scope in (_scope("198.51.100.7"), _scope("127.0.0.1", extension=False), _scope(None)):
        forged = request_certificate(scope, _forged("CN=gw-a"), default, client_ca=False)
        assert forged.identity is None and not forged.required
    # the cloud's own handshake wins over any header
    own = ClientIdentity("gw-b", "CN=gw-b", "tls")
    direct = request_certificate(_scope("127.0.0.1", own), _forged("CN=gw-a"), default, client_ca=True)
    assert direct.identity == own and direct.required
    # settings: an explicit choice wins; the trusted list is the operator's
    strict = GatewayBinding.from_env(
        {"VIGIL_CLOUD_TLS_BIND_GATEWAY": "true", "VIGIL_CLOUD_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"}
    )
    assert strict.trusts("10.2.3.4") and strict.trusts("192.0.2.1") and not strict.trusts("127.0.0.1")
    assert strict.trusts("::ffff:10.2.3.4") and default.trusts("::ffff:127.0.0.1") and default.trusts("::1")
    assert not default.trusts("::ffff:192.0.2.1") and not default.trusts("localhost")
    assert request_certificate(_scope("198.51.100.7"), {}, strict, client_ca=False).required
    off = GatewayBinding.from_env({"VIGIL_CLOUD_TLS_BIND_GATEWAY": "false"})
    assert not request_certificate(_scope("127.0.0.1"), {VERIFY_HEADER: "NONE"}, off, client_ca=True).required
    assert GatewayBinding.from_env({"VIGIL_CLOUD_TRUSTED_PROXIES": ""}).trusted_proxies == ()
    with pytest.raises(ConfigError, match="VIGIL_CLOUD_TLS_BIND_GATEWAY"):
        GatewayBinding.from_env({"VIGIL_CLOUD_TLS_BIND_GATEWAY": "maybe"})
    with pytest.raises(ConfigError, match=r"VIGIL_CLOUD_TRUSTED_PROXIES.*'nginx'"):
        GatewayBinding.from_env({"VIGIL_CLOUD_TRUSTED_PROXIES": "127.0.0.1,nginx"})


def test_the_gateway_id_is_the_single_common_name() -> None:
    assert identity_of_subject("CN=gw-a,OU=Haidian,O=Vigil").gateway_id == "gw-a"
    assert identity_of_subject("O=Vigil,CN=district-7.gw:03").gateway_id == "district-7.gw:03"
    for dn in ("O=Vigil", "CN=gw-a,CN=gw-b", "CN=gw a", "CN=gw-a\\,O=x", "CN=" + "g" * 65, "not a dn"):
        assert identity_of_subject(dn).gateway_id is None, dn
    gw = Principal(Role.GATEWAY, "gw-a")
    check_gateway_certificate(gw, "gw-a", "CN=gw-a", required=True)
    check_gateway_certificate(gw, None, None, required=False)  # no certificate, binding not required
    check_gateway_certificate(Principal(Role.ADMIN, "ops"), None, None, required=True)
    with pytest.raises(GatewayCertificateError) as missing:
        check_gateway_certificate(gw, None, None, required=True)
    assert missing.value.status_code == 403 and missing.value.body()["reason"] == "certificate_required"
    with pytest.raises(GatewayCertificateError) as other:
        check_gateway_certificate(gw, "gw-b", "CN=gw-b", required=False)  # presented: always checked
    assert other.value.body()["reason"] == "certificate_mismatch"


def test_vigil_cloud_with_a_bad_binding_setting_fails_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vigil_cli

    monkeypatch.setenv("VIGIL_CLOUD_TRUSTED_PROXIES", "127.0.0.1,nginx")
    db = tmp_path / "never.db"
    assert vigil_cli.main(["cloud", "--port", str(free_port()), "--database-url", f"sqlite:///{db}"]) == 1
    assert "VIGIL_CLOUD_TRUSTED_PROXIES" in capsys.readouterr().err
    assert not db.exists()
