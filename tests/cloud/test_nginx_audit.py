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
import os
import secrets
import shutil
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from alerts.contract import HTTP_PATH
from cloud.db import Database, upgrade_head
from cloud.errors import ConfigError
from cloud.loop.models import AuditEntry
from cloud.tls import PROXY_AUDITS_BURST, REFUSAL_PATH, proxy_secret, uvicorn_tls_options
from tests.cloud.cloudkit import make_settings
from tests.cloud.crlkit import empty_crl
from tests.cloud.test_mtls_doc import doc_commands, issue
from tests.cloud.test_tls import _MAIN as MAIN
from tests.cloud.test_tls import ROOT, Pki, make_pki, running_cloud
from tests.cloud.test_tls import _wait_https as wait_https
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
REFUSAL_LOG_PATH = "/var/log/nginx/vigil-cert-refusals.log"
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
    tls: Tls


@dataclasses.dataclass(frozen=True)
class Tls:
    """What nginx needs besides the shipped file: certificates, CRLs, the secret's file, its log's path."""

    pki: Pki  # the server's certificate; ca: the server's CA and the gateway CA in one file
    crls: Path
    secret_conf: Path
    refusal_log: Path
    server_ca: Path  # what clients trust


def make_tls(tmp_path: Path) -> tuple[Tls, Path, str]:
    """docs/mtls.md: the gateway CA and two gateways, then gw-stolen revoked and the CRL made, with OpenSSL;
    the server's certificate; the shared secret. Returns the files, the CA's directory and the secret."""
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
    log = tmp_path / "vigil-cert-refusals.log"
    tls = Tls(dataclasses.replace(pki, ca=bundle), crls, secret_conf, log, pki.ca)
    return tls, d, secret


@contextlib.contextmanager
def shipped_nginx(
    d: Path, tls: Tls, upstream_port: int, change: tuple[str, str] | None = None
) -> Iterator[str]:
    """The shipped nginx file (ports, names and paths replaced; ``change``: one more replacement) in
    front of ``upstream_port``; yields its https:// address."""
    shipped = SHIPPED.read_text()
    assert "\n    error_page 495 496 = @certificate_refused;\n" in shipped  # shipped on
    assert f"\n        include {SECRET_PATH};\n" in shipped
    assert f"access_log {REFUSAL_LOG_PATH} vigil_cert_refusal;" in shipped
    if change is not None:
        assert change[0] in shipped
        shipped = shipped.replace(*change)
    http_port, https_port = free_port(), free_port()
    conf = render_nginx(
        shipped.replace(CRL_PATH, str(tls.crls))
        .replace(SECRET_PATH, str(tls.secret_conf))
        .replace(REFUSAL_LOG_PATH, str(tls.refusal_log)),
        http_port=http_port,
        https_port=https_port,
        upstream_port=upstream_port,
        pki=tls.pki,
    )
    proc = start_nginx(d, conf, https_port)
    try:
        yield f"https://localhost:{https_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    tls, d, secret = make_tls(tmp_path)
    env = {**BEHIND_PROXY, "VIGIL_CLOUD_PROXY_SECRET": secret}
    with running_cloud(tmp_path / "cloud", tls.pki, tls=False, env=env) as cloud:
        tokens = {gw: provision(cloud.db_path, gw, n) for n, gw in ((2, "gw-kept"), (3, "gw-stolen"))}
        with shipped_nginx(tmp_path / "nginx", tls, cloud.port) as url:
            yield Site(url, cloud.port, cloud.db_path, secret, d, tokens, tls.server_ca, tls)


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


def no_certificate(s: Site, local_address: str = "127.0.0.1") -> httpx.Client:
    """A client that trusts the server and presents no certificate."""
    ctx = ssl.create_default_context(cafile=str(s.server_ca))
    return httpx.Client(transport=httpx.HTTPTransport(verify=ctx, local_address=local_address), timeout=10)


def refusal_log(s: Site) -> list[dict[str, Any]]:
    return refusal_log_of(s.tls) if s.tls.refusal_log.exists() else []


def test_an_upload_without_a_certificate_is_nginx_496_audited_once_per_client(site: Site) -> None:
    """The shipped ingest location answers a request without a client certificate with nginx's 496, which
    goes the way of every refusal: reported, 403 ``certificate_required`` from the cloud, audited once a
    minute per client address (no certificate: the address is what identifies it), bounded by nginx's
    limit_req past 30 (then 429 from nginx, unreported)."""
    s = site
    batch = json_batch("gw-kept", 2)
    headers = {"Authorization": f"Bearer {s.tokens['gw-kept']}", "Content-Type": "application/json"}
    with no_certificate(s) as c:
        statuses = [c.post(s.url + HTTP_PATH, content=batch, headers=headers) for _ in range(3)]
    for r in statuses:
        assert r.status_code == 403 and r.json()["reason"] == "certificate_required", r.text
        assert "客户端证书" in r.json()["detail"]
    (entry,) = audited(s.db_path)
    assert entry["reason"] == "certificate_required" and entry["verify"] == "NONE", entry
    assert entry["actor"] == "-" and entry["client"] == "127.0.0.1" and entry["via"] == "proxy"
    assert entry["serial"] == "" and entry["fingerprint"] == ""
    assert refusals(s.cloud_port, "certificate_required") == 3.0
    # another client address without a certificate: its own entry
    with no_certificate(s, "127.0.0.2") as c:
        assert c.post(s.url + HTTP_PATH, content=batch, headers=headers).status_code == 403
    assert sorted(e["client"] for e in audited(s.db_path)) == ["127.0.0.1", "127.0.0.2"]
    # a flood from one address: nginx answers past its burst itself; the audit log does not grow
    with no_certificate(s) as c:
        flood = [c.post(s.url + HTTP_PATH, content=batch, headers=headers).status_code for _ in range(40)]
    assert set(flood) == {403, 429} and flood.index(429) >= 25, flood
    assert len(audited(s.db_path)) == 2
    assert refusals(s.cloud_port, "certificate_required") == 4.0 + flood.count(403)
    with contextlib.closing(sqlite3.connect(s.db_path)) as db:
        assert db.execute("SELECT count(*) FROM alerts").fetchone() == (0,)  # nothing stored
    # every refusal is in nginx's refusal log, the cloud's answer (403) with it: nothing for it to catch up
    wait_for(lambda: len(refusal_log(s)) == 44)  # nginx logs after it has answered
    lines = refusal_log(s)
    assert len(lines) == 44 and {ln["verify"] for ln in lines} == {"NONE"}
    answered = [ln for ln in lines if ln["upstream_status"] == "403"]
    assert len(answered) == 4 + flood.count(403) and all(ln["status"] == "403" for ln in answered)
    assert all(ln["status"] == "429" and ln["upstream_status"] == "" for ln in lines if ln not in answered)


def test_ssl_verify_client_on_refuses_a_connection_without_a_certificate_with_496(
    site: Site, tmp_path: Path
) -> None:
    """With ``ssl_verify_client on`` (a gateway-only site: no browser console) nginx refuses every request
    without a certificate with 496 before any location: reported and audited like the others."""
    s, d = site, site.ca_dir
    with shipped_nginx(
        tmp_path / "nginx-on", s.tls, s.cloud_port, ("ssl_verify_client optional;", "ssl_verify_client on;")
    ) as url:
        with no_certificate(s) as c:
            for _ in range(3):
                r = c.get(url + "/healthz")
                assert r.status_code == 403 and r.json()["reason"] == "certificate_required", r.text
        (entry,) = audited(s.db_path)
        assert entry["verify"] == "NONE" and entry["client"] == "127.0.0.1" and entry["via"] == "proxy"
        with httpx.Client(verify=client_ctx_for(s, d / "gw-kept.pem", d / "gw-kept.key"), timeout=10) as c:
            assert c.get(url + "/healthz").status_code == 200  # with its certificate: served
    assert refusals(s.cloud_port, "certificate_required") == 3.0


def wait_for(check: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_refusals_while_the_cloud_is_down_are_audited_once_when_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nginx cannot report a refusal to a cloud that is down (it answers the client 403 with the reason
    itself), but it logs every refusal to its refusal log; the cloud, started, reads the log (job
    ``nginx-refusal-log``) and audits each refusal it never answered (upstream 502) exactly once: at the
    refusal's time, with nginx's request id.
    A lost position (offset file) does not audit anything twice; refusals the cloud answered live are not
    audited again."""
    tls, d, secret = make_tls(tmp_path)
    port = free_port()
    offset = tmp_path / "offset.json"
    with shipped_nginx(tmp_path / "nginx", tls, port) as url:
        before = time.time()
        # revoked (495) and none (496): not reported (cloud down), answered by nginx itself with the reason
        with httpx.Client(verify=client_ctx_for_tls(tls, d / "gw-stolen.pem", d / "gw-stolen.key")) as c:
            r = c.get(url + "/healthz")
            assert r.status_code == 403 and r.json()["reason"] == "certificate_revoked", r.text
        with httpx.Client(verify=ssl.create_default_context(cafile=str(tls.server_ca))) as c:
            r = c.post(url + HTTP_PATH, content=b"{}")
            assert r.status_code == 403 and r.json()["reason"] == "certificate_required", r.text
            assert "已记录" in r.json()["detail"]
        wait_for(lambda: len(refusal_log_of(tls)) == 2)  # nginx logs after it has answered
        lines = refusal_log_of(tls)
        assert [(ln["status"], ln["upstream_status"]) for ln in lines] == [("403", "502")] * 2
        env = {
            **BEHIND_PROXY,
            "VIGIL_CLOUD_PROXY_SECRET": secret,
            "VIGIL_CLOUD_NGINX_REFUSAL_LOG": str(tls.refusal_log),
            "VIGIL_CLOUD_NGINX_REFUSAL_OFFSET": str(offset),
            "VIGIL_CLOUD_NGINX_REFUSAL_INTERVAL_S": "0.3",
        }
        monkeypatch.setattr("tests.cloud.test_tls.free_port", lambda: port)  # the cloud nginx expects
        with running_cloud(tmp_path / "cloud", tls.pki, tls=False, env=env) as cloud:
            wait_for(lambda: len(audited(cloud.db_path)) == 2 and offset.exists())
            entries = sorted(audited(cloud.db_path), key=lambda e: e["reason"])
            assert [e["reason"] for e in entries] == ["certificate_required", "certificate_revoked"]
            assert {e["via"] for e in entries} == {"nginx_log"} and {e["status"] for e in entries} == {"403"}
            assert {e["request_id"] for e in entries} == {ln["request_id"] for ln in lines}
            revoked = entries[1]
            assert revoked["actor"] == "gw-stolen" and revoked["verify"] == "FAILED:certificate revoked"
            stolen = x509.load_pem_x509_certificate((d / "gw-stolen.pem").read_bytes())
            assert int(revoked["serial"], 16) == stolen.serial_number
            with contextlib.closing(sqlite3.connect(cloud.db_path)) as db:  # at the refusal's own time
                ats = [at for (at,) in db.execute("SELECT at FROM loop_audit WHERE action = ?", (ACTION,))]
            assert all(before - 1 <= at <= float(lines[-1]["msec"]) + 1 for at in map(float, ats)), ats
            assert refusals(cloud.port, "certificate_revoked") == 1.0
            # the position is lost (a crash before it was saved): the log is read again, nothing doubled
            offset.unlink()
            wait_for(offset.exists)
            time.sleep(1.0)
            assert len(audited(cloud.db_path)) == 2
            # a refusal while the cloud is up: reported and audited live, not again from the log
            with httpx.Client(verify=client_ctx_for_tls(tls, d / "gw-stolen.pem", d / "gw-stolen.key")) as c:
                r = c.get(url + "/healthz")
                assert r.status_code == 403 and r.json()["reason"] == "certificate_revoked", r.text
            wait_for(lambda: len(refusal_log_of(tls)) == 3)
            size = tls.refusal_log.stat().st_size
            wait_for(lambda: json.loads(offset.read_text())["offset"] == size)
            time.sleep(0.7)
            vias = sorted(e["via"] for e in audited(cloud.db_path))
            assert vias == ["nginx_log", "nginx_log", "proxy"]


def client_ctx_for_tls(tls: Tls, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.server_ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def refusal_log_of(tls: Tls) -> list[dict[str, Any]]:
    return [json.loads(line) for line in tls.refusal_log.read_text().splitlines()]


@contextlib.contextmanager
def cloud_worker(tmp: Path, database_url: str, key_file: Path, env: dict[str, str]) -> Iterator[int]:
    """One `vigil cloud` worker process on ``database_url`` (a district's API worker); yields its port."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env_all = {
        **os.environ,
        "VIGIL_CLOUD_DATABASE_URL": database_url,
        "VIGIL_CLOUD_TIMESERIES_URL": f"sqlite:///{tmp / 'ts.db'}",
        "VIGIL_CLOUD_SECRET_KEY_FILE": str(key_file),
        "VIGIL_CLOUD_CONNECTIVITY_CHECK_S": "0",
        **env,
    }
    log = tmp / "cloud.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", MAIN, "cloud", "--port", str(port)],
            cwd=ROOT,
            env=env_all,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_https(port, proc, None, log)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def audited_pg(url: str) -> list[dict[str, Any]]:
    db = Database(url)
    try:
        with db.read() as s:
            rows = s.execute(select(AuditEntry).where(AuditEntry.action == ACTION)).scalars().all()
            return [{"actor": r.actor, **r.detail} for r in rows]
    finally:
        db.close()


def test_a_refusal_retried_through_two_workers_on_postgresql_is_audited_once(
    tmp_path: Path, pg_url: str
) -> None:
    """A district: nginx balancing two `vigil cloud` processes on one PostgreSQL. A revoked gateway retrying
    reaches both workers; its refusal is audited once a minute in all (the rule lives in the shared
    ``rate_limit_buckets``), not once per worker, and both count it."""
    tls, d, secret = make_tls(tmp_path)
    upgrade_head(pg_url)
    key_file = tmp_path / "secret.key"
    env = {**BEHIND_PROXY, "VIGIL_CLOUD_PROXY_SECRET": secret, "VIGIL_CLOUD_MIGRATE_ON_START": "false"}
    with (
        cloud_worker(tmp_path / "w1", pg_url, key_file, env) as p1,
        cloud_worker(tmp_path / "w2", pg_url, key_file, env) as p2,
    ):
        two = ("server 127.0.0.1:8080;", f"server 127.0.0.1:{p1};\n    server 127.0.0.1:{p2};")
        with shipped_nginx(tmp_path / "nginx", tls, p1, two) as url:
            ctx = client_ctx_for_tls(tls, d / "gw-stolen.pem", d / "gw-stolen.key")
            for _ in range(6):
                with httpx.Client(verify=ctx, timeout=10) as c:  # nginx closes after each refusal
                    r = c.get(url + "/healthz")
                    assert r.status_code == 403 and r.json()["reason"] == "certificate_revoked", r.text
        counted = [refusals(p, "certificate_revoked") for p in (p1, p2)]
        assert sum(counted) == 6 and min(counted) >= 1, counted  # both workers heard the gateway
        entries = audited_pg(pg_url)
        assert len(entries) == 1, entries
        assert entries[0]["actor"] == "gw-stolen" and entries[0]["via"] == "proxy"
