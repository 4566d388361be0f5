"""The shipped nginx configuration (deploy/nginx/vigil-cloud.conf) in front of a plain-HTTP `vigil cloud`.

The file is used as shipped, with only its ports, host name, certificate paths and upstream address
replaced; nginx runs as our own child process in a temporary directory. A gateway's real HTTP uplink,
trusting the test CA (tests/cloud/test_tls.py make_pki), sends a batch through it; plain HTTP is
redirected; a TLS 1.2 client offering only legacy suites is refused.

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

from edge.outbox import Outbox, PendingBatch
from edge.uplink.http import HttpUplink
from tests.cloud.test_tls import Pki, make_pki, running_cloud
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
    out = out.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};")
    assert str(https_port) in out and str(upstream_port) in out and str(pki.server_cert) in out
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


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    pki = make_pki(tmp_path)
    with running_cloud(tmp_path / "cloud", pki, tls=False) as cloud:
        http_port, https_port = free_port(), free_port()
        site = render(
            SHIPPED.read_text(), http_port=http_port, https_port=https_port, upstream_port=cloud.port, pki=pki
        )
        proc = start_nginx(tmp_path / "nginx", site, https_port)
        try:
            yield Proxy(cloud.token, http_port, https_port, pki, cloud.db_path)
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
        up = HttpUplink(url, token, timeout_s=10, ca_file=pki.ca)
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
