"""Revoked gateway certificates behind the shipped nginx file (``ssl_crl``) and on the shipped Mosquitto
listener (``crlfile``), both reloaded as docs/mtls.md says, without a restart.

nginx and Mosquitto run as our own children (tests/cloud/test_tls_proxy.py, tests/cloud/test_tls_mqtt_acl.py)
with the shipped files, only ports and paths replaced; the CRLs are the test CA's (tests/cloud/crlkit.py).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import ssl
import subprocess
import time
from pathlib import Path

import aiomqtt
import httpx
import pytest

from alerts.contract import HTTP_PATH
from firmware_bridge.transports.mqtt import close_on_failed_handshake
from tests.cloud.crlkit import empty_crl, write_crl
from tests.cloud.test_tls import issue_client, make_pki, running_cloud
from tests.cloud.test_tls_binding import client_ctx, json_batch, provision
from tests.cloud.test_tls_mqtt_acl import ShippedMosquitto
from tests.cloud.test_tls_mqtt_acl import render as render_mosquitto
from tests.cloud.test_tls_proxy import BEHIND_PROXY, NGINX, SHIPPED, start_nginx
from tests.cloud.test_tls_proxy import render as render_nginx
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
CRL_PATH = "/etc/vigil/tls/gateway-ca.crl"


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(stat.parent.name))
    return out


def reload_nginx(proc: subprocess.Popen[bytes]) -> None:
    """``nginx -s reload`` (SIGHUP to the master), returning once no worker of the old configuration is
    left: the master starts new workers only after the new configuration loaded."""
    old = children(proc.pid)
    assert old, "nginx has no worker"
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = children(proc.pid)
        if now and not (now & old):
            return
        assert proc.poll() is None, "nginx exited on reload"
        time.sleep(0.05)
    raise AssertionError("nginx did not replace its workers after SIGHUP")


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_nginx_refuses_a_revoked_gateway_certificate_and_a_reload_takes_a_new_crl(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    b_cert, b_key = issue_client(pki, "gw-b")
    crl = write_crl(pki, (b_cert,), name="gateway-ca.crl")  # gw-b revoked, gw-tls not
    with running_cloud(tmp_path / "cloud", pki, tls=False, env=BEHIND_PROXY) as cloud:
        token_b = provision(cloud.db_path, "gw-b", 2)
        http_port, https_port = free_port(), free_port()
        shipped = SHIPPED.read_text()
        assert f"\n    ssl_crl {CRL_PATH};\n" in shipped  # shipped on
        site = render_nginx(
            shipped.replace(CRL_PATH, str(crl)),
            http_port=http_port,
            https_port=https_port,
            upstream_port=cloud.port,
            pki=pki,
        )
        assert f"ssl_crl {crl};" in site
        proc = start_nginx(tmp_path / "nginx", site, https_port)
        try:
            url = f"https://localhost:{https_port}"
            own = client_ctx(pki, pki.client_cert, pki.client_key)
            revoked = client_ctx(pki, b_cert, b_key)

            def upload(ctx: ssl.SSLContext, token: str, gw: str, device: int) -> httpx.Response:
                with httpx.Client(verify=ctx, timeout=10) as c:
                    return c.post(
                        url + HTTP_PATH,
                        content=json_batch(gw, device),
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    )

            # the revoked certificate with its gateway's valid token: refused by nginx on every route (403:
            # its report reaches the cloud, which here shares no secret with it, so nothing is recorded:
            # tests/cloud/test_nginx_audit.py has the audited case)
            r = upload(revoked, token_b, "gw-b", 2)
            assert r.status_code == 403 and r.json()["reason"] == "proxy_unauthenticated", r.text
            with httpx.Client(verify=revoked, timeout=10) as c:
                assert c.get(f"{url}/api/v1/auth/whoami").status_code == 403
            assert upload(own, cloud.token, "gw-tls", 1).status_code == 200

            # gw-tls revoked too: a new CRL, `nginx -s reload`, refused without a restart
            write_crl(pki, (b_cert, pki.client_cert), name="gateway-ca.crl")
            with httpx.Client(verify=own, timeout=10) as c:  # nginx read the file at start: not yet
                auth = {"Authorization": f"Bearer {cloud.token}"}
                assert c.get(f"{url}/api/v1/auth/whoami", headers=auth).status_code == 200
            reload_nginx(proc)
            assert upload(own, cloud.token, "gw-tls", 1).status_code == 403
        finally:
            proc.terminate()
            proc.wait(10)
        with contextlib.closing(sqlite3.connect(cloud.db_path)) as db:  # only the accepted upload
            assert db.execute("SELECT count(*) FROM alerts").fetchone() == (1,)


@pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="mosquitto is not installed",
)
async def test_mosquitto_refuses_a_revoked_gateway_and_reloads_its_crl_on_sighup(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    b_cert, b_key = issue_client(pki, "gw-b")
    crl = empty_crl(pki)
    for name in ("vigil-cloud.acl", "vigil-gateways.acl"):
        shutil.copy(ROOT / "deploy" / "mosquitto" / name, tmp_path / name)
    (tmp_path / "vigil-passwd").write_text("")
    conf = (ROOT / "deploy" / "mosquitto" / "vigil-gateways.conf").read_text()
    assert f"\ncrlfile {CRL_PATH}\n" in conf  # shipped on
    plain, tls_port = free_port(), free_port()
    listeners = render_mosquitto(
        conf.replace(CRL_PATH, str(crl)), plain_port=plain, tls_port=tls_port, pki=pki, d=tmp_path
    )
    assert f"\ncrlfile {crl}\n" in listeners
    # "Reloading config." is logged at the information level
    broker = ShippedMosquitto("127.0.0.1", plain, tmp_path, listeners=listeners + "\nlog_type information\n")
    broker.start()

    def ctx(cert: Path, key: Path) -> ssl.SSLContext:
        c = close_on_failed_handshake(ssl.create_default_context(cafile=str(pki.ca)))
        c.load_cert_chain(str(cert), str(key))
        return c

    async def connects(cert: Path, key: Path) -> bool:
        try:
            async with aiomqtt.Client("localhost", tls_port, tls_context=ctx(cert, key), timeout=10):
                return True
        except aiomqtt.MqttError:
            return False

    try:
        assert await connects(b_cert, b_key)  # the empty CRL refuses no one
        write_crl(pki, (b_cert,))  # the same path, atomically replaced
        assert await connects(b_cert, b_key)  # read at start and on SIGHUP only: not yet
        assert broker.proc is not None
        log_before = broker.log_path.read_text() if broker.log_path.exists() else ""
        broker.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30  # Mosquitto logs the reload once it has read the files again
        while "Reloading config" not in broker.log_path.read_text()[len(log_before) :]:
            assert time.monotonic() < deadline, broker.log_path.read_text()
            time.sleep(0.05)
        assert not await connects(b_cert, b_key)
        assert await connects(pki.client_cert, pki.client_key)
    finally:
        broker.stop()
