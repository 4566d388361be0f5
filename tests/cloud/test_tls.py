"""HTTPS served by `vigil cloud` itself (cloud/tls.py), over real TLS with a throw-away CA.

The CA, the server certificate (localhost, 127.0.0.1) and a client certificate are generated here with
``cryptography``; the real cloud runs as a subprocess (`vigil cloud --tls-cert ... --tls-key ...`), and a
gateway's real HTTP uplink (edge/uplink/http.py, configured through edge/config.py ``uplink.ca_file``)
sends a batch that is then read back from the cloud's database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud.auth import Credentials
from cloud.crypto import SecretBox, load_or_create_key
from cloud.db import Database, upgrade_head
from cloud.errors import ConfigError
from cloud.registry import DeviceIn, Registry
from cloud.settings import CloudSettings
from cloud.tls import server_context
from edge.config import ConfigError as GatewayConfigError
from edge.config import parse_config
from edge.outbox import Outbox, PendingBatch
from edge.uplink import UplinkUnavailable
from edge.uplink.http import HttpUplink
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from tests.edge.helpers import alert, device_id, smoke_reading
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
_MAIN = "import sys, vigil_cli; sys.exit(vigil_cli.main(sys.argv[1:]))"


# -- a throw-away PKI ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting it must not be enough

    @property
    def directory(self) -> Path:
        return self.ca.parent


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    *,
    server: bool,
    subject: x509.Name | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject or _name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [
                    x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
                    if server
                    else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, b.sign(ca_key, hashes.SHA256())


def make_pki(d: Path) -> Pki:
    """A CA, a server certificate for localhost / 127.0.0.1 and a client certificate (CN ``gw-tls``, the
    gateway :func:`running_cloud` provisions), as PEM files; the CA's key too, for :func:`issue_client`."""
    ca_key, ca_cert = _ca("Vigil test CA")
    _write_key(d / "ca.key", ca_key)
    s_key, s_cert = _leaf(ca_key, ca_cert, "localhost", server=True)
    c_key, c_cert = _leaf(ca_key, ca_cert, "gw-tls", server=False)
    _, other = _ca("Some other CA")
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (d / "other-ca.pem").write_bytes(other.public_bytes(pem))
    (d / "server.pem").write_bytes(s_cert.public_bytes(pem))
    _write_key(d / "server.key", s_key)
    (d / "client.pem").write_bytes(c_cert.public_bytes(pem))
    _write_key(d / "client.key", c_key)
    return Pki(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "other-ca.pem",
    )


def issue_client(pki: Pki, name: str, *, subject: x509.Name | None = None) -> tuple[Path, Path]:
    """A further client certificate from the test CA (subject ``CN=<name>`` unless given), as PEM files
    ``<name>.pem`` / ``<name>.key`` beside the CA; what docs/mtls.md's openssl commands make."""
    ca_key = serialization.load_pem_private_key((pki.directory / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key, cert = _leaf(ca_key, ca_cert, name, server=False, subject=subject)
    cert_path, key_path = pki.directory / f"{name}.pem", pki.directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- the real cloud, serving HTTPS --------------------------------------------------------------------
@dataclass(frozen=True)
class Cloud:
    port: int
    db_path: Path
    token: str

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"


def _wait_https(port: int, proc: subprocess.Popen[bytes], ctx: ssl.SSLContext | None, log: Path) -> None:
    """Until the service answers /healthz (over TLS with ``ctx``); the port listens before the app is up."""
    scheme = "https://localhost" if ctx is not None else "http://127.0.0.1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"vigil cloud exited {proc.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{scheme}:{port}/healthz", verify=ctx or False, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"vigil cloud did not serve TLS on {port}: {log.read_text()[-3000:]}")


@contextlib.contextmanager
def running_cloud(
    tmp: Path,
    pki: Pki,
    *,
    client_ca: Path | None = None,
    tls: bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[Cloud]:
    """`vigil cloud` as a subprocess on a free port, with gateway ``gw-tls`` and its device provisioned;
    ``env`` adds settings (``VIGIL_CLOUD_*``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    db_path = tmp / "vigil.db"
    url = f"sqlite:///{db_path}"
    key_file = tmp / "secret.key"
    upgrade_head(url)
    db = Database(url)
    try:
        token = Credentials(db, rotation_grace_s=0).add_gateway("gw-tls", now=time.time())
        Registry(db, SecretBox(load_or_create_key(key_file))).upsert(
            [DeviceIn(device_id=device_id(1), kind=DeviceKind.SMOKE_ALARM, gateway_id="gw-tls")],
            now=time.time(),
        )
    finally:
        db.close()
    port = free_port()
    env_all = {
        **os.environ,
        "VIGIL_CLOUD_DATABASE_URL": url,
        "VIGIL_CLOUD_TIMESERIES_URL": f"sqlite:///{tmp / 'ts.db'}",
        "VIGIL_CLOUD_SECRET_KEY_FILE": str(key_file),
        "VIGIL_CLOUD_CONNECTIVITY_CHECK_S": "0",
        **(env or {}),
    }
    if tls:
        env_all["VIGIL_CLOUD_TLS_CERT"] = str(pki.server_cert)
        env_all["VIGIL_CLOUD_TLS_KEY"] = str(pki.server_key)
    if client_ca is not None:
        env_all["VIGIL_CLOUD_TLS_CLIENT_CA"] = str(client_ca)
    log = tmp / "cloud.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MAIN, "cloud", "--port", str(port)],
            cwd=ROOT,
            env=env_all,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        if client_ca is not None:
            ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        _wait_https(port, proc, ctx if tls else None, log)
        yield Cloud(port, db_path, token)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _gateway_toml(tmp: Path, cloud: Cloud, ca: str) -> str:
    return f"""
[gateway]
id = "gw-tls"
credential = "{cloud.token}"
data_dir = "{tmp / "gw"}"

[uplink]
mode = "http"
url = "{cloud.url}"
ca_file = "{ca}"
timeout_s = 10
"""


# -- tests --------------------------------------------------------------------------------------------
async def test_gateway_uploads_over_https_and_untrusted_or_plain_clients_are_refused(
    tmp_path: Path, pki: Pki
) -> None:
    with running_cloud(tmp_path / "cloud", pki) as cloud:
        # the gateway's config names the CA relative to the config file, as an installer writes it
        (tmp_path / "ca.pem").write_bytes(pki.ca.read_bytes())
        cfg = parse_config(_gateway_toml(tmp_path, cloud, "ca.pem"), tmp_path / "gateway.toml")
        assert cfg.uplink.ca_file == tmp_path / "ca.pem"
        assert cfg.uplink.plaintext_warning() is None  # https:// never warns

        now = time.time()
        outbox = Outbox(tmp_path / "outbox.db")
        try:
            readings = [smoke_reading(1, seq, now - 10 + seq) for seq in range(5)]
            outbox.commit([ReadingBatch.from_readings(DeviceKind.SMOKE_ALARM, readings)], [alert(1, t=now)])
            first = outbox.next_batch("gw-tls")
            assert first is not None

            # a gateway without the private CA: the certificate is not trusted, nothing is sent
            for ca_file in (None, pki.other_ca):
                stranger = HttpUplink(cloud.url, cloud.token, timeout_s=10, ca_file=ca_file)
                try:
                    with pytest.raises(UplinkUnavailable) as refused:
                        await stranger.send(first)
                    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
                finally:
                    await stranger.aclose()

            # the configured gateway: the alert lane first, then the readings, each acknowledged
            up = HttpUplink(cfg.uplink.url, cfg.read_credential(), timeout_s=10, ca_file=cfg.uplink.ca_file)
            stored = [0, 0]
            try:
                batch: PendingBatch | None = first
                while batch is not None:
                    ack = await up.send(batch)
                    assert ack.batch_id == batch.batch_id and not ack.duplicate
                    assert (ack.telemetry_refused, ack.alerts_refused) == (0, 0)
                    stored[0] += ack.telemetry_stored
                    stored[1] += ack.alerts_stored
                    outbox.ack(ack)
                    batch = outbox.next_batch("gw-tls")
            finally:
                await up.aclose()
        finally:
            outbox.close()
        assert stored == [5, 1]
        with contextlib.closing(sqlite3.connect(cloud.db_path)) as db:
            alerts = db.execute("SELECT device_id, event_type FROM alerts").fetchall()
        assert alerts == [(device_id(1), "fire")]

        # plain HTTP to the TLS port gets no HTTP answer at all
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{cloud.port}/healthz", timeout=5)

        # TLS 1.2 offering only legacy CBC/SHA-1 suites (which uvicorn's default "TLSv1" cipher string
        # accepts): the server shares none and drops the handshake
        legacy = ssl.create_default_context(cafile=str(pki.ca))
        legacy.maximum_version = ssl.TLSVersion.TLSv1_2
        legacy.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256")
        with (
            pytest.raises((ssl.SSLError, ConnectionError)),
            socket.create_connection(("127.0.0.1", cloud.port), timeout=5) as raw,
        ):
            legacy.wrap_socket(raw, server_hostname="localhost")

        # what a trusting client negotiates: TLS 1.2 or newer, an AEAD suite
        with (
            socket.create_connection(("127.0.0.1", cloud.port), timeout=5) as raw,
            ssl.create_default_context(cafile=str(pki.ca)).wrap_socket(
                raw, server_hostname="localhost"
            ) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            cipher = tls.cipher()
            assert cipher is not None and ("GCM" in cipher[0] or "CHACHA20" in cipher[0])


async def test_mutual_tls_requires_a_client_certificate_from_the_configured_ca(
    tmp_path: Path, pki: Pki
) -> None:
    with running_cloud(tmp_path / "cloud", pki, client_ca=pki.ca) as cloud:
        with pytest.raises(httpx.TransportError):  # no client certificate: the handshake is refused
            httpx.get(
                f"{cloud.url}/healthz", verify=ssl.create_default_context(cafile=str(pki.ca)), timeout=5
            )
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        r = httpx.get(f"{cloud.url}/healthz", verify=ctx, timeout=5)
        assert r.status_code == 200

        # the gateway's uplink: uplink.client_cert / client_key, relative to the config file
        for name in ("client.pem", "client.key"):
            (tmp_path / name).write_bytes((pki.directory / name).read_bytes())
        text = _gateway_toml(tmp_path, cloud, str(pki.ca)) + 'client_cert = "client.pem"\n'
        with pytest.raises(GatewayConfigError, match=r"client_cert and uplink\.client_key together"):
            parse_config(text, tmp_path / "gateway.toml")
        cfg = parse_config(text + 'client_key = "client.key"\n', tmp_path / "gateway.toml")
        assert ("uplink.client_cert", tmp_path / "client.pem") in cfg.files_to_open()
        with Outbox(tmp_path / "outbox.db") as outbox:
            outbox.commit([], [alert(1, t=time.time())])
            batch = outbox.next_batch("gw-tls")
            assert batch is not None
            u = cfg.uplink
            without = HttpUplink(u.url, cloud.token, timeout_s=10, ca_file=u.ca_file)
            try:
                with pytest.raises(UplinkUnavailable):
                    await without.send(batch)
            finally:
                await without.aclose()
            up = HttpUplink(
                u.url,
                cloud.token,
                timeout_s=10,
                ca_file=u.ca_file,
                client_cert=u.client_cert,
                client_key=u.client_key,
            )
            try:
                ack = await up.send(batch)
            finally:
                await up.aclose()
        assert ack.alerts_stored == 1


def test_server_context_is_tls12_or_newer_and_bad_settings_name_themselves(tmp_path: Path, pki: Pki) -> None:
    s = CloudSettings(tls_cert=pki.server_cert, tls_key=pki.server_key)
    ctx = server_context(s)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode is ssl.CERT_NONE
    assert all(c["protocol"] in ("TLSv1.2", "TLSv1.3") for c in ctx.get_ciphers())
    assert all(c["aead"] for c in ctx.get_ciphers())

    with pytest.raises(ConfigError, match="tls_cert and tls_key together"):
        CloudSettings.from_env({"VIGIL_CLOUD_TLS_CERT": str(pki.server_cert)})
    with pytest.raises(ConfigError, match="tls_client_ca needs tls_cert"):
        CloudSettings.from_env({"VIGIL_CLOUD_TLS_CLIENT_CA": str(pki.ca)})
    missing = CloudSettings(tls_cert=tmp_path / "nope.pem", tls_key=pki.server_key)
    with pytest.raises(ConfigError, match="VIGIL_CLOUD_TLS_CERT"):
        server_context(missing)
    wrong_key = CloudSettings(tls_cert=pki.server_cert, tls_key=pki.client_key)  # not this cert's key
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        server_context(wrong_key)


def test_vigil_cloud_with_a_missing_certificate_fails_before_serving(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    import vigil_cli

    cert, db = tmp_path / "missing.pem", tmp_path / "never.db"
    args = ["--tls-cert", str(cert), "--tls-key", str(pki.server_key), "--database-url", f"sqlite:///{db}"]
    code = vigil_cli.main(["cloud", "--port", str(free_port()), *args])
    assert code == 1
    assert "VIGIL_CLOUD_TLS_CERT" in capsys.readouterr().err
    assert not (tmp_path / "never.db").exists()  # nothing was started
