"""Certificate revocation lists for the TLS tests (docs/mtls.md, "Revoking a gateway certificate").

``crl_of`` signs a CRL with a test CA's key (tests/cloud/test_tls.py ``make_pki`` keeps it as ``ca.key``
beside ``ca.pem``); ``empty_crl`` is the first CRL docs/mtls.md makes with the CA, for the shipped nginx and
Mosquitto files, which name a CRL file (``ssl_crl``, ``crlfile``) that must exist.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cloud.test_tls import Pki

DAY = dt.timedelta(days=1)


def crl_of(
    ca_cert: Path,
    ca_key: Path,
    revoked: list[Path],
    *,
    last: dt.datetime | None = None,
    next_: dt.datetime | None = None,
) -> bytes:
    """A PEM CRL signed by ``ca_key`` listing the ``revoked`` certificates (PEM files)."""
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(last or now - DAY)
        .next_update(next_ or now + 31 * DAY)
    )
    for cert in revoked:
        serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - DAY).build()
        )
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def write_crl(pki: Pki, revoked: tuple[Path, ...] = (), *, name: str = "ca.crl") -> Path:
    """The test CA's CRL listing ``revoked`` (empty by default), as ``<name>`` beside the CA; returns it."""
    path = pki.directory / name
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(crl_of(pki.ca, pki.directory / "ca.key", list(revoked)))
    tmp.replace(path)  # atomically, as docs/mtls.md says to publish a CRL
    return path


def empty_crl(pki: Pki) -> Path:
    """The test CA's first CRL (nothing revoked), for the shipped ``ssl_crl`` / ``crlfile`` lines."""
    return write_crl(pki)
