"""docs/mtls.md's certificate commands, run as written, give certificates the cloud binds to the gateway.

The ``sh`` block under "Issuing gateway certificates" is run with bash and OpenSSL in a temporary directory
(``GW=gw-tls``, then ``GW=gw-other``), and so is the block under "Revoking a gateway certificate", whose
CRL makes the shipped Mosquitto listener refuse the revoked gateway and only it. The real cloud
(tests/cloud/test_tls.py ``running_cloud``) trusts the resulting CA next to the test CA in one file, as the
rotation section says to do during a CA change.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
from pathlib import Path

import aiomqtt
import httpx
import pytest
from cryptography import x509

from cloud.tls import identity_of_name
from firmware_bridge.transports.mqtt import close_on_failed_handshake
from tests.cloud.test_tls import make_pki, running_cloud
from tests.cloud.test_tls_binding import client_ctx
from tests.cloud.test_tls_mqtt_acl import ShippedMosquitto, render
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "mtls.md"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def doc_commands(heading: str = "## Issuing gateway certificates") -> str:
    text = DOC.read_text()
    section = text[text.index(heading) :]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    assert m is not None, f"docs/mtls.md: no sh block under {heading!r}"
    return m.group(1)


def issue(d: Path, gw: str, script: str) -> Path:
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=d,
        env={"GW": gw, "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
    )
    return d / f"{gw}.pem"


def test_documented_commands_issue_a_certificate_bound_to_its_gateway(tmp_path: Path) -> None:
    script = doc_commands()
    d = tmp_path / "ca"
    d.mkdir()
    own = issue(d, "gw-tls", script)
    # the CA block runs again for the second gateway: keep the first CA, sign with it
    per_gateway = script[script.index("# on the gateway") :]
    other = issue(d, "gw-other", per_gateway)
    cert = x509.load_pem_x509_certificate(own.read_bytes())
    assert identity_of_name(cert.subject, "tls").gateway_id == "gw-tls"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert (d / "gw-tls.key").stat().st_size > 0

    pki = make_pki(tmp_path)
    bundle = tmp_path / "client-cas.pem"  # the documented CA rotation: both CAs in one file
    bundle.write_bytes((d / "gateway-ca.pem").read_bytes() + pki.ca.read_bytes())
    with running_cloud(tmp_path / "cloud", pki, client_ca=bundle) as cloud:
        auth = {"Authorization": f"Bearer {cloud.token}"}
        with httpx.Client(verify=client_ctx(pki, other, d / "gw-other.key"), timeout=10) as c:
            wrong = c.get(f"{cloud.url}/api/v1/auth/whoami", headers=auth)
        assert wrong.status_code == 403 and wrong.json()["reason"] == "certificate_mismatch"
        with httpx.Client(verify=client_ctx(pki, own, d / "gw-tls.key"), timeout=10) as c:
            me = c.get(f"{cloud.url}/api/v1/auth/whoami", headers=auth)
        assert me.status_code == 200 and me.json()["role"] == "gateway"


async def test_documented_revocation_shuts_the_gateway_out_of_mqtt(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    d.mkdir()
    issuing = doc_commands()
    kept = issue(d, "gw-kept", issuing)
    revoked = issue(d, "gw-stolen", issuing[issuing.index("# on the gateway") :])
    issue(d, "gw-stolen", doc_commands("## Revoking a gateway certificate"))
    crl = x509.load_pem_x509_crl((d / "gateway-ca.crl").read_bytes())
    serial = x509.load_pem_x509_certificate(revoked.read_bytes()).serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.next_update_utc is not None and crl.next_update_utc.year >= crl.last_update_utc.year + 9

    pki = make_pki(tmp_path)  # the broker's own certificate
    for name in ("vigil-cloud.acl", "vigil-gateways.acl"):
        shutil.copy(ROOT / "deploy" / "mosquitto" / name, tmp_path / name)
    (tmp_path / "vigil-passwd").write_text("")
    plain, tls_port = free_port(), free_port()
    conf = render(
        (ROOT / "deploy" / "mosquitto" / "vigil-gateways.conf").read_text(),
        plain_port=plain,
        tls_port=tls_port,
        pki=pki,
        d=tmp_path,
        client_ca=d / "gateway-ca.pem",
        crl=d / "gateway-ca.crl",
    )
    broker = ShippedMosquitto("127.0.0.1", plain, tmp_path, listeners=conf)
    broker.start()
    try:

        def ctx(gw: str) -> ssl.SSLContext:
            c = close_on_failed_handshake(ssl.create_default_context(cafile=str(pki.ca)))
            c.load_cert_chain(str(d / f"{gw}.pem"), str(d / f"{gw}.key"))
            return c

        async with aiomqtt.Client("localhost", tls_port, tls_context=ctx("gw-kept"), timeout=10) as c:
            await c.publish("vigil/v1/gw/gw-kept/up", b"still in", qos=1)
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("localhost", tls_port, tls_context=ctx("gw-stolen"), timeout=10):
                pass
    finally:
        broker.stop()
    assert kept.exists()
