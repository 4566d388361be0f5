"""nginx's refusals of client certificates reach the cloud's audit log (docs/mtls.md, "nginx's refusals in
the cloud's audit log"; deploy/nginx/vigil-cloud.conf ``@certificate_refused``; cloud/tls.py
``proxy_refusal``).

The gateway CA, its certificates and the CRL are made with OpenSSL by docs/mtls.md's own commands (run as
tests/cloud/test_mtls_doc.py runs them); nginx runs the shipped file (only ports, names and paths replaced,
tests/cloud/test_tls_proxy.py) in front of the real ``vigil cloud`` sharing a secret with it. A revoked
certificate through nginx: 403 ``certificate_revoked`` and one audit entry with its serial; a certificate of
no CA of ours: 403 ``certificate_invalid``, audited with nginx's reason. A report to the internal endpoint
without the secret (or with a wrong one) is refused and records nothing, and clients cannot reach that
endpoint through nginx at all. Reports are audited within a per-address rate and their values are cut to
size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import secrets
import shutil
import sqlite3
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from alerts.contract import HTTP_PATH
from cloud.errors import ConfigError
from cloud.tls import PROXY_AUDITS_BURST, REFUSAL_PATH, proxy_secret, uvicorn_tls_options
from tests.cloud.cloudkit import make_settings
from tests.cloud.crlkit import empty_crl
from tests.cloud.test_mtls_doc import doc_commands, issue
from tests.cloud.test_tls import make_pki, running_cloud
from tests.cloud.test_tls_binding import json_batch, provision
from tests.cloud.test_tls_proxy import BEHIND_PROXY, NGINX, SHIPPED, start_nginx
from tests.cloud.test_tls_proxy import render as render_nginx
from tests.servers import free_port

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
]

CRL_PATH = "/etc/vigil/tls/gateway-ca.crl"
SECRET_PATH = "/etc/vigil/tls/proxy-secret*.conf"
ACTION = "auth.gateway_certificate_refused"


def audited(db_path: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        rows = db.execute("SELECT actor, role, target, detail FROM loop_audit WHERE action = ?", (ACTION,))
        return [{"actor": a, "role": r, "target": t, **json.loads(d)} for a, r, t, d in rows.fetchall()]


def metric(port: int, name: str, label: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f"{name}{{{label}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def refusals(port: int, reason: str) -> float:
    return metric(port, "vigil_cloud_gateway_certificate_refusals_total", f'reason="{reason}"')


@dataclasses.dataclass(frozen=True)
class Site:
    url: str
    cloud_port: int
    db_path: Path
    secret: str
    ca_dir: Path
    tokens: dict[str, str]
    server_ca: Path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    # docs/mtls.md: the gateway CA and two gateways, then gw-stolen revoked and the CRL made, with OpenSSL
    d = tmp_path / "ca"
    d.mkdir()
    issuing = doc_commands()
    issue(d, "gw-kept", issuing)
    issue(d, "gw-stolen", issuing[issuing.index("# on the gateway") :])
    issue(d, "gw-stolen", doc_commands("## Revoking a gateway certificate"))
    pki = make_pki(tmp_path)  # the server's certificate (and the test CA, trusted by clients)
    bundle = tmp_path / "cas.pem"  # one file: the server's CA for clients, both CAs for nginx
    bundle.write_bytes(pki.ca.read_bytes() + (d / "gateway-ca.pem").read_bytes())
    crls = tmp_path / "cas.crl"  # nginx wants a CRL for every CA in ssl_client_certificate
    crls.write_bytes(empty_crl(pki).read_bytes() + (d / "gateway-ca.crl").read_bytes())
    secret = secrets.token_hex(32)
    secret_conf = tmp_path / "proxy-secret.conf"
    secret_conf.write_text(f'proxy_set_header X-Vigil-Proxy-Secret "{secret}";\n')
    secret_conf.chmod(0o600)
    env = {**BEHIND_PROXY, "VIGIL_CLOUD_PROXY_SECRET": secret}
    with running_cloud(tmp_path / "cloud", pki, tls=False, env=env) as cloud:
        tokens = {gw: provision(cloud.db_path, gw, n) for n, gw in ((2, "gw-kept"), (3, "gw-stolen"))}
        shipped = SHIPPED.read_text()
        assert "\n    error_page 495 496 = @certificate_refused;\n" in shipped  # shipped on
        assert f"\n        include {SECRET_PATH};\n" in shipped
        http_port, https_port = free_port(), free_port()
        conf = render_nginx(
            shipped.replace(CRL_PATH, str(crls)).replace(SECRET_PATH, str(secret_conf)),
            http_port=http_port,
            https_port=https_port,
            upstream_port=cloud.port,
            pki=dataclasses.replace(pki, ca=bundle),
        )
        proc = start_nginx(tmp_path / "nginx", conf, https_port)
        try:
            yield Site(
                f"https://localhost:{https_port}", cloud.port, cloud.db_path, secret, d, tokens, pki.ca
            )
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def upload(s: Site, gw: str, cert: Path, key: Path) -> httpx.Response:
    with httpx.Client(verify=client_ctx_for(s, cert, key), timeout=10) as c:
        return c.post(
            s.url + HTTP_PATH,
            content=json_batch(gw, 2 if gw == "gw-kept" else 3),
            headers={"Authorization": f"Bearer {s.tokens.get(gw, 'x')}", "Content-Type": "application/json"},
        )


def test_a_revoked_certificate_refused_by_nginx_is_audited_once_with_its_serial(site: Site) -> None:
    s, d = site, site.ca_dir
    stolen = x509.load_pem_x509_certificate((d / "gw-stolen.pem").read_bytes())
    assert upload(s, "gw-kept", d / "gw-kept.pem", d / "gw-kept.key").status_code == 200
    assert audited(s.db_path) == []

    r = upload(s, "gw-stolen", d / "gw-stolen.pem", d / "gw-stolen.key")
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["error"] == "forbidden" and body["reason"] == "certificate_revoked", body
    assert "吊销" in body["detail"] and "CN=gw-stolen" in body["detail"]
    (entry,) = audited(s.db_path)
    assert (
        entry["actor"] == "gw-stolen"
        and entry["role"] == "gateway"
        and entry["target"] == "gateway:gw-stolen"
    )
    assert entry["reason"] == "certificate_revoked" and entry["via"] == "proxy"
    assert entry["verify"] == "FAILED:certificate revoked" and entry["client"] == "127.0.0.1"
    assert int(entry["serial"], 16) == stolen.serial_number
    der = stolen.public_bytes(serialization.Encoding.DER)
    assert entry["fingerprint"] == hashlib.sha1(der).hexdigest().upper()  # nginx's SHA-1 identifier
    assert "gw-stolen" in entry["certificate"]
    assert refusals(s.cloud_port, "certificate_revoked") == 1.0

    # the gateway retries: refused and counted again, audited once a minute only
    assert upload(s, "gw-stolen", d / "gw-stolen.pem", d / "gw-stolen.key").status_code == 403
    assert refusals(s.cloud_port, "certificate_revoked") == 2.0
    assert len(audited(s.db_path)) == 1
    with contextlib.closing(sqlite3.connect(s.db_path)) as db:  # only gw-kept's upload was stored
        assert db.execute("SELECT count(*) FROM alerts").fetchone() == (1,)


def test_a_certificate_of_no_ca_of_ours_is_audited_with_nginx_reason(site: Site, tmp_path: Path) -> None:
    s = site
    subprocess.run(  # a self-made certificate claiming to be gw-kept
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", "self.key", "-out", "self.pem", "-days", "2", "-subj", "/CN=gw-kept"),
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    r = upload(s, "gw-kept", tmp_path / "self.pem", tmp_path / "self.key")
    assert r.status_code == 403 and r.json()["reason"] == "certificate_invalid", r.text
    (entry,) = audited(s.db_path)
    assert entry["reason"] == "certificate_invalid" and entry["verify"].startswith("FAILED:"), entry
    assert entry["verify"] != "FAILED:certificate revoked" and entry["actor"] == "gw-kept"
    assert refusals(s.cloud_port, "certificate_invalid") == 1.0


def test_a_forged_report_is_refused_and_records_nothing(site: Site) -> None:
    s = site
    forged = {
        "X-Vigil-Client-Verify": "FAILED:certificate revoked",
        "X-Vigil-Client-Subject": "CN=gw-kept",
        "X-Vigil-Client-Serial": "0ABC",
        "X-Forwarded-For": "203.0.113.9",
    }
    direct = f"http://127.0.0.1:{s.cloud_port}{REFUSAL_PATH}"  # from loopback: a trusted proxy address
    for extra in ({}, {"X-Vigil-Proxy-Secret": "0" * 64}, {"X-Vigil-Proxy-Secret": s.secret[:-1]}):
        r = httpx.post(direct, headers={**forged, **extra}, timeout=10)
        assert r.status_code == 403 and r.json()["reason"] == "proxy_unauthenticated", r.text
    # the right secret from an address that is not a trusted proxy (127.0.0.2; only 127.0.0.1 is trusted)
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=other, timeout=10) as c:
        r = c.post(direct, headers={**forged, "X-Vigil-Proxy-Secret": s.secret})
        assert r.status_code == 403 and r.json()["reason"] == "proxy_unauthenticated", r.text
    # through nginx, even a client holding the secret cannot reach the internal endpoint
    d = s.ca_dir
    with httpx.Client(verify=client_ctx_for(s, d / "gw-kept.pem", d / "gw-kept.key"), timeout=10) as c:
        r = c.post(s.url + REFUSAL_PATH, headers={**forged, "X-Vigil-Proxy-Secret": s.secret})
        assert r.status_code == 404, r.text
    assert audited(s.db_path) == []
    assert refusals(s.cloud_port, "certificate_revoked") == 0.0
    # the same report with the secret, from loopback: believed (what nginx does)
    r = httpx.post(direct, headers={**forged, "X-Vigil-Proxy-Secret": s.secret}, timeout=10)
    assert r.status_code == 403 and r.json()["reason"] == "certificate_revoked", r.text
    assert [e["client"] for e in audited(s.db_path)] == ["203.0.113.9"]


def test_reports_are_audited_within_a_rate_per_address_and_cut_to_size(site: Site) -> None:
    s = site
    direct = f"http://127.0.0.1:{s.cloud_port}{REFUSAL_PATH}"
    burst = int(PROXY_AUDITS_BURST)

    def report(i: int, address: str, **extra: str) -> httpx.Response:
        headers = {
            "X-Vigil-Proxy-Secret": s.secret,
            "X-Vigil-Client-Verify": "FAILED:unable to get local issuer certificate",
            "X-Vigil-Client-Subject": f"CN=gw-fake-{i}",
            "X-Vigil-Client-Fingerprint": f"{i:040X}",
            "X-Forwarded-For": address,
            **extra,
        }
        return httpx.post(direct, headers=headers, timeout=10)

    for i in range(burst + 5):  # one address, all different certificates: the burst is audited
        assert report(i, "198.51.100.7").status_code == 403
    n = len(audited(s.db_path))
    assert burst <= n < burst + 5  # the burst, and what the rate (10 a minute) refilled meanwhile
    assert refusals(s.cloud_port, "certificate_invalid") == burst + 5.0  # every refusal counted
    limited = 'limit="proxy_refusal_audit"'
    assert metric(s.cloud_port, "vigil_cloud_rate_limited_requests_total", limited) == burst + 5 - n
    # another address has its own allowance; what a client chooses is kept at a bounded size
    long_subject = "CN=gw-long,O=" + "A" * 6000
    r = report(999, "2001:db8::1", **{"X-Vigil-Client-Subject": long_subject, "X-Vigil-Client-Serial": "ZZ"})
    assert r.status_code == 403
    entries = audited(s.db_path)
    assert len(entries) == n + 1
    last = next(e for e in entries if e["client"] == "2001:db8::1")
    assert len(last["certificate"]) <= 256 and last["serial"] == "invalid"
    assert last["verify"] == "FAILED:unable to get local issuer certificate"


def client_ctx_for(s: Site, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(s.server_ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def test_a_weak_proxy_secret_stops_the_cloud_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``vigil cloud`` checks ``VIGIL_CLOUD_PROXY_SECRET`` before serving (cloud/cli.py calls
    ``uvicorn_tls_options``): too short, or with a space or a quote (it is pasted into nginx's file), is a
    ConfigError naming it; unset means reports are not believed."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path}/v.db")
    for bad in ("0123456789abcdef", "x" * 40 + " y", "x" * 40 + '"'):
        monkeypatch.setenv("VIGIL_CLOUD_PROXY_SECRET", bad)
        with pytest.raises(ConfigError, match="VIGIL_CLOUD_PROXY_SECRET"):
            uvicorn_tls_options(settings)
    monkeypatch.setenv("VIGIL_CLOUD_PROXY_SECRET", "a" * 64)
    assert uvicorn_tls_options(settings) == {} and proxy_secret() == b"a" * 64
    monkeypatch.delenv("VIGIL_CLOUD_PROXY_SECRET")
    assert proxy_secret() is None


def test_nginx_answers_a_flood_of_bad_certificates_itself(site: Site) -> None:
    """``limit_req`` on ``@certificate_refused``: 30 a minute per client address, 30 at once; past that
    nginx answers 429 and the cloud does not hear of it (a revoked gateway retrying every few seconds stays
    well under it)."""
    s, d = site, site.ca_dir
    statuses = [
        upload(s, "gw-stolen", d / "gw-stolen.pem", d / "gw-stolen.key").status_code for _ in range(40)
    ]
    assert statuses[:31] == [403] * 31  # the burst: every one reported and answered by the cloud
    assert 429 in statuses[31:] and set(statuses) == {403, 429}
    reported = refusals(s.cloud_port, "certificate_revoked")
    assert reported == statuses.count(403) < 40
    assert len(audited(s.db_path)) == 1  # one certificate: audited once a minute
