"""Revoked gateway certificates are refused by the cloud's own HTTPS (``VIGIL_CLOUD_TLS_CRL``, docs/mtls.md).

The gateway CA, its certificates and its CRLs are made with OpenSSL by docs/mtls.md's own commands (the
``sh`` blocks under "Issuing gateway certificates" and "Revoking a gateway certificate", run by
tests/cloud/test_mtls_doc.py's helpers); the real cloud (tests/cloud/test_tls.py ``running_cloud``) trusts
that CA next to the test CA. A revoked certificate gets 403 ``certificate_revoked`` whatever the token, a
CRL replaced at runtime counts at the next request without a restart (on an open connection too), a bad
replacement keeps the last good list, an expired CRL keeps refusing what it lists and lets the rest in
(fail-open for alarms, docs/mtls.md says why). The refusals are audited and counted.

The expired CRL and the CRLs of a foreign CA are made with ``cryptography`` (OpenSSL's ``ca -gencrl``
cannot date a CRL in the past).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import sqlite3
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cloud.errors import ConfigError
from cloud.settings import CloudSettings
from cloud.tls import CrlCheck, load_crl, server_context
from tests.cloud.crlkit import DAY, crl_of
from tests.cloud.test_mtls_doc import doc_commands, issue
from tests.cloud.test_tls import issue_client, make_pki, running_cloud
from tests.cloud.test_tls_binding import client_ctx, provision
from tests.servers import free_port

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


# -- helpers -------------------------------------------------------------------------------------------
def openssl_ca(d: Path, *gateways: str) -> Path:
    """docs/mtls.md's gateway CA in ``d`` (with its empty CRL) and one certificate per gateway id."""
    d.mkdir(parents=True, exist_ok=True)
    script = doc_commands()
    issue(d, gateways[0], script)
    for gw in gateways[1:]:
        issue(d, gw, script[script.index("# on the gateway") :])
    return d / "gateway-ca.crl"


def openssl_revoke(d: Path, gw: str) -> Path:
    """docs/mtls.md's revocation commands for ``gw``: the CA's new CRL."""
    issue(d, gw, doc_commands("## Revoking a gateway certificate"))
    return d / "gateway-ca.crl"


def publish(crl: Path, target: Path) -> None:
    """Replace ``target`` atomically, as docs/mtls.md says to (copy beside it, then rename)."""
    tmp = target.with_suffix(".new")
    shutil.copyfile(crl, tmp)
    os.replace(tmp, target)


def cas(*paths: Path) -> tuple[x509.Certificate, ...]:
    return tuple(c for p in paths for c in x509.load_pem_x509_certificates(p.read_bytes()))


def whoami(url: str, ctx: ssl.SSLContext, token: str) -> httpx.Response:
    with httpx.Client(verify=ctx, timeout=10) as c:
        return c.get(f"{url}/api/v1/auth/whoami", headers={"Authorization": f"Bearer {token}"})


def refusals(url: str, ctx: ssl.SSLContext, reason: str) -> float:
    with httpx.Client(verify=ctx, timeout=10) as c:
        text = c.get(f"{url}/metrics").text
    line = f'vigil_cloud_gateway_certificate_refusals_total{{reason="{reason}"}} '
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def metric(url: str, ctx: ssl.SSLContext, name: str) -> float:
    with httpx.Client(verify=ctx, timeout=10) as c:
        text = c.get(f"{url}/metrics").text
    found = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    assert found, f"{name} not exported"
    return float(found[0].split()[-1])


# -- the real cloud ------------------------------------------------------------------------------------
def test_revoked_certificates_are_refused_over_https_and_a_new_crl_counts_without_restart(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    d = tmp_path / "ca"
    empty = openssl_ca(d, "gw-tls", "gw-b")  # the documented CA: its first CRL lists nothing
    assert list(x509.load_pem_x509_crl(empty.read_bytes())) == []
    revoked_1 = openssl_revoke(d, "gw-tls").read_bytes()  # the documented revocation of gw-tls
    bundle = tmp_path / "client-cas.pem"  # the gateway CA and the test CA (for running_cloud's probe)
    bundle.write_bytes((d / "gateway-ca.pem").read_bytes() + pki.ca.read_bytes())
    live = tmp_path / "gateway-ca.crl"  # what the cloud reads; replaced below while it runs
    live.write_bytes(revoked_1)

    env = {"VIGIL_CLOUD_TLS_CRL": str(live)}
    with running_cloud(tmp_path / "cloud", pki, client_ca=bundle, env=env) as cloud:
        token_b = provision(cloud.db_path, "gw-b", 2)
        stolen = client_ctx(pki, d / "gw-tls.pem", d / "gw-tls.key")
        own_b = client_ctx(pki, d / "gw-b.pem", d / "gw-b.key")
        probe = client_ctx(pki, pki.client_cert, pki.client_key)  # the test CA's gw-tls: no CRL of its CA

        # the revoked certificate with its own gateway's valid token: refused, the reason named
        r = whoami(cloud.url, stolen, cloud.token)
        assert r.status_code == 403, r.text
        assert r.json()["reason"] == "certificate_revoked"
        assert "CN=gw-tls" in r.json()["detail"] and "revoked" in r.json()["detail"]
        assert r.headers["connection"] == "close"
        # ... on routes that need no token too: revocation counts on its own
        with httpx.Client(verify=stolen, timeout=10) as c:
            assert c.get(f"{cloud.url}/healthz").status_code == 403
        # a certificate the CRL does not list is served
        assert whoami(cloud.url, own_b, token_b).status_code == 200
        assert whoami(cloud.url, probe, cloud.token).json()["role"] == "gateway"

        # gw-b is revoked while the cloud runs, and while gw-b holds an open keep-alive connection
        with httpx.Client(verify=own_b, timeout=10) as b:
            auth = {"Authorization": f"Bearer {token_b}"}
            assert b.get(f"{cloud.url}/api/v1/auth/whoami", headers=auth).status_code == 200
            publish(openssl_revoke(d, "gw-b"), live)
            after = b.get(f"{cloud.url}/api/v1/auth/whoami", headers=auth)
            assert after.status_code == 403 and after.json()["reason"] == "certificate_revoked"
        assert whoami(cloud.url, own_b, token_b).json()["reason"] == "certificate_revoked"

        # a broken replacement (half-copied): the last good list stays in force, and it is reported
        live.write_bytes(revoked_1[:100])
        assert whoami(cloud.url, own_b, token_b).json()["reason"] == "certificate_revoked"
        assert whoami(cloud.url, probe, cloud.token).status_code == 200
        assert metric(cloud.url, probe, "vigil_cloud_tls_crl_reload_errors_total") == 1
        assert metric(cloud.url, probe, "vigil_cloud_tls_crl_revoked_certificates") == 2

        # an expired CRL of the test CA, next to the gateway CA's: it still refuses what it lists, the rest
        # of that CA is accepted (fail-open), and the expiry is exported
        gw_old, gw_old_key = issue_client(pki, "gw-old")
        now = dt.datetime.now(dt.UTC)
        expired = crl_of(pki.ca, pki.directory / "ca.key", [gw_old], last=now - 3 * DAY, next_=now - DAY)
        publish_bytes = tmp_path / "both.crl"
        publish_bytes.write_bytes(d.joinpath("gateway-ca.crl").read_bytes() + expired)
        publish(publish_bytes, live)
        old = whoami(cloud.url, client_ctx(pki, gw_old, gw_old_key), cloud.token)
        assert old.status_code == 403 and old.json()["reason"] == "certificate_revoked"
        assert whoami(cloud.url, probe, cloud.token).status_code == 200
        assert metric(cloud.url, probe, "vigil_cloud_tls_crl_expired") == 1
        assert metric(cloud.url, probe, "vigil_cloud_tls_crl_revoked_certificates") == 3
        assert metric(cloud.url, probe, "vigil_cloud_tls_crl_next_update_timestamp_seconds") == pytest.approx(
            (now - DAY).timestamp(), abs=1
        )
        assert refusals(cloud.url, probe, "certificate_revoked") >= 5

    log = (tmp_path / "cloud" / "cloud.log").read_text()
    assert "cannot reload the certificate revocation list" in log
    assert "expired" in log and "publish a new CRL now" in log
    # audited like the other certificate refusals (at most once a minute per gateway and certificate)
    with contextlib.closing(sqlite3.connect(cloud.db_path)) as db:
        rows = db.execute(
            "SELECT actor, detail FROM loop_audit WHERE action = 'auth.gateway_certificate_refused'"
        ).fetchall()
    revoked_rows = {actor for actor, detail in rows if "certificate_revoked" in detail}
    assert revoked_rows == {"gw-tls", "gw-b", "gw-old"}


def test_vigil_cloud_with_a_bad_crl_fails_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vigil_cli

    pki = make_pki(tmp_path)
    db = tmp_path / "never.db"
    args = [
        *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)),
        *("--tls-client-ca", str(pki.ca), "--database-url", f"sqlite:///{db}"),
    ]
    for bad, says in (
        (tmp_path / "missing.crl", "cannot read the CRL"),
        (tmp_path / "garbage.crl", "is not a PEM or DER certificate revocation list"),
    ):
        if bad.name == "garbage.crl":
            bad.write_text("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
        monkeypatch.setenv("VIGIL_CLOUD_TLS_CRL", str(bad))
        assert vigil_cli.main(["cloud", "--port", str(free_port()), *args]) == 1
        err = capsys.readouterr().err
        assert "VIGIL_CLOUD_TLS_CRL" in err and says in err, err
    assert not db.exists()  # nothing was started


# -- the rules, without a server -----------------------------------------------------------------------
def test_a_crl_must_be_signed_by_a_client_ca_and_needs_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    theirs = tmp_path / "theirs.crl"
    theirs.write_bytes(crl_of(other.ca, other.directory / "ca.key", []))
    with pytest.raises(
        ConfigError, match=r"VIGIL_CLOUD_TLS_CRL.*not signed by a CA in VIGIL_CLOUD_TLS_CLIENT_CA"
    ):
        load_crl(theirs, cas(pki.ca))
    # the same issuer name, another key: an altered or forged list is refused too
    forged = tmp_path / "forged.crl"
    ours = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    fake_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    forged.write_bytes(
        x509.CertificateRevocationListBuilder()
        .issuer_name(ours.subject)
        .last_update(now - DAY)
        .next_update(now + DAY)
        .sign(fake_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(ConfigError, match="not signed by a CA"):
        load_crl(forged, cas(pki.ca))
    # DER works as well as PEM
    der = tmp_path / "ours.der"
    der.write_bytes(
        x509.load_pem_x509_crl(crl_of(pki.ca, pki.directory / "ca.key", [pki.client_cert])).public_bytes(
            serialization.Encoding.DER
        )
    )
    snap = load_crl(der, cas(pki.ca))
    assert len(snap.revoked) == 1
    # a client CA without a CRL in the file: its certificates are not checked, and that is said
    with caplog.at_level(logging.WARNING, logger="cloud.tls"):
        CrlCheck(der, cas(pki.ca, pki.other_ca))
    assert any(
        "CN=Some other CA" in r.getMessage() and "not checked" in r.getMessage() for r in caplog.records
    )
    assert "CN=Vigil test CA" not in " ".join(
        r.getMessage() for r in caplog.records if "not checked" in r.getMessage()
    )

    with pytest.raises(ConfigError, match="tls_crl needs tls_client_ca"):
        CloudSettings.from_env(
            {
                "VIGIL_CLOUD_TLS_CERT": str(pki.server_cert),
                "VIGIL_CLOUD_TLS_KEY": str(pki.server_key),
                "VIGIL_CLOUD_TLS_CRL": str(der),
            }
        )
    s = CloudSettings(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca, tls_crl=theirs)
    with pytest.raises(ConfigError, match="VIGIL_CLOUD_TLS_CRL"):
        server_context(s)
    ok = server_context(s.model_copy(update={"tls_crl": der}))
    assert isinstance(ok.vigil_crl, CrlCheck) and len(ok.vigil_crl.snapshot.revoked) == 1


def test_crl_check_reloads_keeps_the_last_good_list_and_shouts_when_expired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path)
    b_cert, _ = issue_client(pki, "gw-b")
    key = pki.directory / "ca.key"
    path = tmp_path / "ca.crl"
    path.write_bytes(crl_of(pki.ca, key, []))
    now = [dt.datetime.now(dt.UTC).timestamp()]
    check = CrlCheck(path, cas(pki.ca), clock=lambda: now[0])
    a = x509.load_pem_x509_certificate(pki.client_cert.read_bytes())
    b = x509.load_pem_x509_certificate(b_cert.read_bytes())
    assert check.revoked(a) is None and check.revoked(b) is None

    new = tmp_path / "new.crl"
    new.write_bytes(crl_of(pki.ca, key, [pki.client_cert]))
    os.replace(new, path)
    rev = check.revoked(a)
    assert rev is not None and rev.serial == a.serial_number
    assert check.revoked(b) is None

    caplog.set_level(logging.ERROR, logger="cloud.tls")
    path.write_text("not a CRL")  # rewritten in place: a new size and mtime
    assert check.revoked(a) is not None  # the last good list
    assert check.reload_errors == 1 and "VIGIL_CLOUD_TLS_CRL" in (check.last_error or "")
    assert any("cannot reload" in r.getMessage() for r in caplog.records)
    path.unlink()  # gone: still the last good list
    assert check.revoked(a) is not None

    # 31 days on, the CRL (next update in 31 days) has expired: listed certificates stay refused
    path.write_bytes(crl_of(pki.ca, key, [pki.client_cert]))
    assert check.revoked(a) is not None and not check.expired
    caplog.clear()
    now[0] += 32 * 86400
    assert check.expired
    assert check.revoked(a) is not None
    assert check.revoked(b) is None  # fail-open for what the list does not name
    expired_logs = [r for r in caplog.records if "expired" in r.getMessage()]
    assert len(expired_logs) == 1 and expired_logs[0].levelno == logging.ERROR
    check.revoked(b)  # not repeated on every request (every 5 minutes while it lasts)
    assert len([r for r in caplog.records if "expired" in r.getMessage()]) == 1


def test_the_tls_crl_flag_reaches_the_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``vigil cloud --tls-crl FILE`` is the same setting as the variable (a flag parsed but not passed on
    would serve without revocation, silently)."""
    import vigil_cli

    pki = make_pki(tmp_path)
    db = tmp_path / "never.db"
    argv = [
        *("cloud", "--port", str(free_port()), "--tls-cert", str(pki.server_cert)),
        *("--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca)),
        *("--database-url", f"sqlite:///{db}", "--tls-crl", str(tmp_path / "missing.crl")),
    ]
    assert vigil_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "VIGIL_CLOUD_TLS_CRL" in err and "cannot read the CRL" in err, err
    assert not db.exists()
