"""The shipped nginx configuration (deploy/nginx/vigil-cloud.conf) in front of a plain-HTTP `vigil cloud`.

The file is used as shipped, with only its ports, host name, certificate paths and upstream address
replaced; nginx runs as our own child process in a temporary directory. A gateway's real HTTP uplink,
trusting the test CA (tests/cloud/test_tls.py make_pki) and presenting its client certificate, sends a batch
through it; plain HTTP is redirected; a TLS 1.2 client offering only legacy suites is refused.

The gateway certificate binding behind the proxy (docs/mtls.md): nginx verifies the client certificate and
states it in ``X-Vigil-Client-*``; the cloud (``VIGIL_CLOUD_TLS_BIND_GATEWAY=true``, trusting 127.0.0.1)
refuses a token with another gateway's certificate or with none, and ignores the same headers forged by a
client that reaches it directly from another address.

nginx comes from Debian's ``nginx-light`` package; without it this module is skipped (say so in CI).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from alerts.contract import HTTP_PATH
from edge.outbox import Outbox, PendingBatch
from edge.uplink import UplinkAuthError
from edge.uplink.http import HttpUplink
from tests.cloud.crlkit import empty_crl
from tests.cloud.test_tls import Pki, issue_client, make_pki, running_cloud
from tests.cloud.test_tls_binding import client_ctx, json_batch, provision
from tests.edge.helpers import alert, device_id
from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "nginx" / "vigil-cloud.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")


def render(conf: str, *, http_port: int, https_port: int, upstream_port: int, pki: Pki) -> str:
    """The shipped server blocks with this test's ports and files; nothing else changed."""
    out = conf.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    out = out.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    out = re.sub(r"^\s*listen \[::\].*$", "", out, flags=re.M)  # no IPv6 in every container
    out = out.replace("server_name vigil.example.cn;", "server_name localhost;")
    out = out.replace("/etc/vigil/tls/fullchain.pem", str(pki.server_cert))
    out = out.replace("/etc/vigil/tls/privkey.pem", str(pki.server_key))
    out = out.replace("/etc/vigil/tls/gateway-ca.pem", str(pki.ca))
    out = out.replace("/etc/vigil/tls/gateway-ca.crl", str(empty_crl(pki)))  # ssl_crl: must exist
    out = out.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};")
    # nginx's refusal log (docs/mtls.md): beside the test's certificates, not in /var/log/nginx (root only)
    out = out.replace(
        "/var/log/nginx/vigil-cert-refusals.log", str(pki.server_cert.parent / "vigil-cert-refusals.log")
    )
    assert str(https_port) in out and str(upstream_port) in out and str(pki.server_cert) in out
    assert f"ssl_client_certificate {pki.ca};" in out
    return out


def nginx_main_conf(d: Path, site: Path) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "".join(
        f"    {name}_temp_path {d / name};\n" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {d / 'nginx.pid'};\nerror_log {d / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log off;\n{temps}    include {site};\n}}\n"
    )


def start_nginx(d: Path, site_text: str, port: int) -> subprocess.Popen[bytes]:
    d.mkdir(parents=True, exist_ok=True)
    site = d / "vigil-cloud.conf"
    site.write_text(site_text)
    main = d / "nginx.conf"
    main.write_text(nginx_main_conf(d, site))
    assert NGINX is not None
    check = subprocess.run([NGINX, "-t", "-c", str(main), "-p", str(d)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # the shipped file is valid nginx configuration
    proc = subprocess.Popen([NGINX, "-c", str(main), "-p", str(d)], stderr=subprocess.DEVNULL)
    wait_for_port(port, proc, log=d / "error.log")
    return proc


@dataclass(frozen=True)
class Proxy:
    token: str
    http_port: int
    https_port: int
    pki: Pki
    db_path: Path
    cloud_port: int


#: behind the proxy: gateway tokens need their certificate; only the proxy's address states it
BEHIND_PROXY = {"VIGIL_CLOUD_TLS_BIND_GATEWAY": "true", "VIGIL_CLOUD_TRUSTED_PROXIES": "127.0.0.1"}


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    pki = make_pki(tmp_path)
    with running_cloud(tmp_path / "cloud", pki, tls=False, env=BEHIND_PROXY) as cloud:
        http_port, https_port = free_port(), free_port()
        site = render(
            SHIPPED.read_text(), http_port=http_port, https_port=https_port, upstream_port=cloud.port, pki=pki
        )
        proc = start_nginx(tmp_path / "nginx", site, https_port)
        try:
            yield Proxy(cloud.token, http_port, https_port, pki, cloud.db_path, cloud.port)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_gateway_through_the_shipped_nginx_config(proxy: Proxy, tmp_path: Path) -> None:
    token, http_port, https_port, pki, db_path = (
        proxy.token,
        proxy.http_port,
        proxy.https_port,
        proxy.pki,
        proxy.db_path,
    )
    url = f"https://localhost:{https_port}"
    outbox = Outbox(tmp_path / "outbox.db")
    try:
        outbox.commit([], [alert(1, t=time.time())])
        batch: PendingBatch | None = outbox.next_batch("gw-tls")
        assert batch is not None
        # without its client certificate the gateway's upload is refused by nginx
        bare = HttpUplink(url, token, timeout_s=10, ca_file=pki.ca)
        try:
            with pytest.raises(UplinkAuthError, match="403"):
                await bare.send(batch)
        finally:
            await bare.aclose()
        up = HttpUplink(
            url, token, timeout_s=10, ca_file=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key
        )
        try:
            ack = await up.send(batch)
        finally:
            await up.aclose()
    finally:
        outbox.close()
    assert ack.alerts_stored == 1 and ack.alerts_refused == 0
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("SELECT device_id FROM alerts").fetchall() == [(device_id(1),)]

    # plain HTTP is only a redirect to HTTPS, never served
    r = httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=5)
    assert r.status_code == 301 and r.headers["location"].startswith("https://")
    # a client that does not trust the CA is refused
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/healthz", timeout=5)
    # TLS 1.2 offering only legacy CBC/SHA-1 suites: no shared cipher
    legacy = ssl.create_default_context(cafile=str(pki.ca))
    legacy.maximum_version = ssl.TLSVersion.TLSv1_2
    legacy.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw,
    ):
        legacy.wrap_socket(raw, server_hostname="localhost")
    ok = httpx.get(f"{url}/healthz", verify=ssl.create_default_context(cafile=str(pki.ca)), timeout=5)
    assert ok.status_code == 200 and ok.headers.get("strict-transport-security")


async def test_the_proxy_binds_the_certificate_to_the_gateway_and_forged_headers_do_not(
    proxy: Proxy, tmp_path: Path
) -> None:
    pki = proxy.pki
    token_b = provision(proxy.db_path, "gw-b", 2)
    b_cert, b_key = issue_client(pki, "gw-b")
    url = f"https://localhost:{proxy.https_port}"
    body_b = json_batch("gw-b", 2)
    forged = {"X-Vigil-Client-Verify": "SUCCESS", "X-Vigil-Client-Subject": "CN=gw-b"}

    def post(
        client: httpx.Client, base: str, token: str, extra: dict[str, str] | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(extra or {})}
        return client.post(base + HTTP_PATH, content=body_b, headers=headers)

    # gw-tls's certificate with gw-b's token, even claiming gw-b's subject in the headers: nginx states the
    # verified subject, the cloud refuses
    with httpx.Client(verify=client_ctx(pki, pki.client_cert, pki.client_key), timeout=10) as c:
        stolen = post(c, url, token_b, forged)
        assert stolen.status_code == 403, stolen.text
        assert stolen.json()["reason"] == "certificate_mismatch" and "CN=gw-tls" in stolen.json()["detail"]
    # no certificate, forged headers, on a route nginx does not guard itself: verify NONE reaches the cloud
    with httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca)), timeout=10) as c:
        whoami = c.get(f"{url}/api/v1/auth/whoami", headers={"Authorization": f"Bearer {token_b}", **forged})
        assert whoami.status_code == 403 and whoami.json()["reason"] == "certificate_required"
    # straight to the cloud from an address that is not the proxy's: the same forged headers count for nothing
    direct = f"http://127.0.0.1:{proxy.cloud_port}"
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10) as c:
        r = post(c, direct, token_b, forged)
        assert r.status_code == 403 and r.json()["reason"] == "certificate_required"
    with closing(sqlite3.connect(proxy.db_path)) as db:
        assert db.execute("SELECT count(*) FROM alerts").fetchone() == (0,)
    # control: from the trusted address the headers are believed (why the cloud must listen on loopback
    # only, behind the proxy)
    with httpx.Client(timeout=10) as c:
        assert post(c, direct, token_b, forged).status_code == 200
    # gw-b with its own certificate through nginx, from 127.0.0.2: uvicorn's X-Forwarded-For handling makes
    # that the request's client address, yet the headers are believed because the connection is nginx's
    remote = httpx.HTTPTransport(verify=client_ctx(pki, b_cert, b_key), local_address="127.0.0.2")
    with httpx.Client(transport=remote, timeout=10) as c:
        own = post(c, url, token_b)
        assert own.status_code == 200 and own.json()["duplicate"] is True  # the control stored it already
