"""HTTPS served by the cloud itself: one server-side TLS context, modern protocols only.

``vigil cloud --tls-cert FILE --tls-key FILE`` (or ``VIGIL_CLOUD_TLS_CERT`` / ``VIGIL_CLOUD_TLS_KEY``)
makes uvicorn serve HTTPS with the context built here:

* TLS 1.2 and 1.3 only (``minimum_version = TLSv1_2``); SSLv3, TLS 1.0 and 1.1 handshakes fail;
* TLS 1.2 cipher suites limited to forward-secret AEAD ones (ECDHE/DHE with AES-GCM or ChaCha20), the
  Mozilla "intermediate" profile; TLS 1.3 suites are OpenSSL's defaults (all AEAD);
* no TLS compression and no renegotiation (``OP_NO_COMPRESSION``, ``OP_NO_RENEGOTIATION``);
* optional client certificates (``--tls-client-ca`` / ``VIGIL_CLOUD_TLS_CLIENT_CA``): when set, every
  connection must present a certificate signed by that CA (mutual TLS for gateways; a browser console
  then needs one too, so put the console behind a proxy or a second listener if that matters).

* optional revocation (``VIGIL_CLOUD_TLS_CRL``, needs the client CA): a client certificate listed in that
  CRL gets 403 ``certificate_revoked`` on every request, whatever the token (:class:`CrlCheck`: re-read
  when the file changes, no restart; the last good list is kept if a replacement is bad; an expired CRL
  still refuses what it lists and is reported loudly; docs/mtls.md says why it does not refuse everyone).

A missing or unreadable file is a :class:`~cloud.errors.ConfigError` naming the setting, raised before the
server starts. See docs/security.md ("Transport security").

A gateway's client certificate is bound to its gateway id (docs/mtls.md): the certificate's CN must be the
id of the gateway whose token comes with it. :func:`peer_identity_protocol` (installed by
:func:`cloud.connguard.server_config`) records each connection's real peer and verified certificate in the
ASGI scope; :func:`request_certificate` reads them, or, from a trusted reverse proxy only, the proxy's
``X-Vigil-Client-*`` headers; ``cloud.api.deps.get_principal`` refuses a mismatch (403).

A client certificate the reverse proxy refused (nginx's 495 / 496) is reported by the proxy to
:data:`REFUSAL_PATH` (``POST``, route in ``cloud/api/links.py``); :func:`proxy_refusal` believes the report
only from a trusted proxy address with the shared secret ``VIGIL_CLOUD_PROXY_SECRET`` (else 403
``proxy_unauthenticated``, nothing recorded), records it as the cloud's own refusals
(:func:`cloud.certrefusals.record_certificate_refusal`: counted, logged, audited ``via: proxy`` with the
serial, fingerprint, nginx's verify text and the client's address) within :data:`PROXY_AUDITS_PER_MINUTE`
audits per client address (IPv6: per /64) and :data:`PROXY_AUDITS_TOTAL_PER_MINUTE` in all (past them the
refusal is counted only, and in ``vigil_cloud_rate_limited_requests_total{limit="proxy_refusal_audit"}``),
with every stated value cut to size, and answers 403 with the reason (docs/mtls.md, "nginx's refusals in
the cloud's audit log").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hmac
import ipaddress
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from cryptography import x509
from cryptography.x509.oid import NameOID

from cloud.errors import ConfigError, PermissionDeniedError
from cloud.settings import CloudSettings

if TYPE_CHECKING:
    from cloud.auth import GatewayCertificateError
    from cloud.db.session import Database
    from cloud.limits import KeyedRateLimit

#: TLS 1.2 cipher suites: forward secrecy and AEAD only (Mozilla "intermediate")
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"


# -- revoked client certificates (VIGIL_CLOUD_TLS_CRL) -------------------------------------------------
_CRL_SETTING = "VIGIL_CLOUD_TLS_CRL"
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)
#: how often a problem with the CRL (expired, unreadable replacement) is logged again while it lasts
CRL_COMPLAINT_EVERY_S = 300.0
#: a CRL whose nextUpdate is closer than this is announced at each (re)load: nginx and Mosquitto refuse
#: every gateway once their copy expires (docs/mtls.md)
CRL_EXPIRY_WARNING_S = 30 * 86400.0

log = logging.getLogger(__name__)


def _client_cas(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(x509.load_pem_x509_certificates(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the client CA {path} (VIGIL_CLOUD_TLS_CLIENT_CA): "
            f"{getattr(exc, 'strerror', None) or exc}"
        ) from exc


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked certificate, as its CRL says."""

    serial: int
    revoked_at: dt.datetime
    issuer: str


@dataclass(frozen=True, slots=True)
class CrlSnapshot:
    """What one reading of the CRL file says: revoked (issuer, serial) pairs and when it must be renewed."""

    revoked: Mapping[tuple[bytes, int], Revocation]
    #: the earliest nextUpdate of the file's CRLs (epoch seconds); ``None`` if none states one
    next_update: float | None
    issuers: tuple[str, ...]


def load_crl(path: Path, cas: tuple[x509.Certificate, ...]) -> CrlSnapshot:
    """Read and check a CRL file: PEM (one or more CRLs, e.g. one per CA during a CA change) or one DER CRL.

    Every CRL must be signed by one of ``cas`` (the client CA file): a CRL of another CA, or a forged one,
    is a :class:`ConfigError` naming ``VIGIL_CLOUD_TLS_CRL``, as is an unreadable or empty file. An
    expired CRL is *not* an error here (see :class:`CrlCheck`).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the CRL {path} ({_CRL_SETTING}): {exc.strerror or exc}") from exc
    try:
        blocks = _PEM_CRL.findall(data)
        crls = [x509.load_pem_x509_crl(b) for b in blocks] if blocks else [x509.load_der_x509_crl(data)]
    except ValueError as exc:
        raise ConfigError(
            f"the CRL {path} ({_CRL_SETTING}) is not a PEM or DER certificate revocation list: {exc}"
        ) from exc
    revoked: dict[tuple[bytes, int], Revocation] = {}
    next_updates: list[float] = []
    issuers: list[str] = []
    for crl in crls:
        ca = next(
            (c for c in cas if c.subject == crl.issuer and crl.is_signature_valid(c.public_key())),  # type: ignore[arg-type]
            None,
        )
        if ca is None:
            raise ConfigError(
                f"the CRL {path} ({_CRL_SETTING}) of {crl.issuer.rfc4514_string()!r} is not signed by a CA "
                "in VIGIL_CLOUD_TLS_CLIENT_CA (a CRL of another CA, or altered)"
            )
        issuer = crl.issuer.public_bytes()
        issuers.append(crl.issuer.rfc4514_string())
        if crl.next_update_utc is not None:
            next_updates.append(crl.next_update_utc.timestamp())
        for r in crl:
            revoked[(issuer, r.serial_number)] = Revocation(
                r.serial_number, r.revocation_date_utc, issuers[-1]
            )
    return CrlSnapshot(revoked, min(next_updates) if next_updates else None, tuple(issuers))


class CrlCheck:
    """The client certificates revoked by ``VIGIL_CLOUD_TLS_CRL``, re-read whenever the file changes.

    :meth:`revoked` is asked on every request of a connection with a client certificate (so a connection
    opened before a revocation is cut at its next request); it first compares the file's ``stat`` (mtime,
    size, inode: ~1 us) with the last reading and re-reads the file when it changed. No restart.

    Fail-safe rules (docs/mtls.md, "Revocation in the cloud's own TLS"): a replacement that cannot be read
    or checked keeps the last good list (logged as an error every :data:`CRL_COMPLAINT_EVERY_S`); an
    **expired** CRL (nextUpdate past) keeps refusing what it lists and lets the other certificates through,
    logged as an error at the same interval and exported as ``vigil_cloud_tls_crl_expired 1``, because
    refusing every gateway would silence every alarm of the community.
    """

    def __init__(
        self, path: Path, cas: tuple[x509.Certificate, ...], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path, self._cas, self._clock = Path(path), cas, clock
        self._stamp = self._file_stamp()
        self.snapshot = load_crl(self.path, cas)  # a bad file at start stops the server (ConfigError)
        self.reload_errors = 0
        self.last_error: str | None = None
        self._complained: dict[str, float] = {}
        self._registered: set[int] = set()
        self._announce()

    def __repr__(self) -> str:
        return f"CrlCheck({self.path}, {len(self.snapshot.revoked)} revoked)"

    def _file_stamp(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def _complain(self, what: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._complained.get(what, -CRL_COMPLAINT_EVERY_S) >= CRL_COMPLAINT_EVERY_S:
            self._complained[what] = now
            log.error(message, *args)

    def _announce(self) -> None:
        snap = self.snapshot
        log.info(
            "证书吊销列表已加载 / certificate revocation list loaded: %s, %d revoked, next update %s",
            self.path,
            len(snap.revoked),
            _when(snap.next_update),
        )
        unchecked = [c.subject.rfc4514_string() for c in self._cas]
        unchecked = [name for name in unchecked if name not in snap.issuers]
        if unchecked:
            log.warning(
                "这些 CA 在证书吊销列表中没有 CRL，其证书不做吊销检查 / no CRL in %s for the client CA(s) "
                "%s: their certificates are not checked for revocation (nginx and Mosquitto refuse them)",
                self.path,
                "; ".join(unchecked),
            )
        if self.expired:
            self._complained.pop("expired", None)
            self._complain_expired()
        elif snap.next_update is not None and snap.next_update - self._clock() < CRL_EXPIRY_WARNING_S:
            log.warning(
                "证书吊销列表即将过期，请尽快发布新的列表 / the certificate revocation list %s expires %s: "
                "publish a new one (nginx and Mosquitto refuse every gateway once it expires)",
                self.path,
                _when(snap.next_update),
            )

    def _complain_expired(self) -> None:
        self._complain(
            "expired",
            "证书吊销列表已过期（%s），仍拒绝其中列出的 %d 张证书，其余放行；请立即发布新的列表 / the "
            "certificate revocation list %s expired at %s: the %d certificates it lists are still "
            "refused, others are accepted (fail-open for alarms); publish a new CRL now",
            _when(self.snapshot.next_update),
            len(self.snapshot.revoked),
            self.path,
            _when(self.snapshot.next_update),
            len(self.snapshot.revoked),
        )

    @property
    def expired(self) -> bool:
        nu = self.snapshot.next_update
        return nu is not None and nu <= self._clock()

    def refresh(self) -> None:
        """Re-read the file if its stat changed; keep the last good list if the new one is bad."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            snap = load_crl(self.path, self._cas)
        except ConfigError as exc:
            self.reload_errors += 1
            self.last_error = str(exc)
            self._complained.pop("reload", None)
            self._complain(
                "reload",
                "证书吊销列表无法重新加载，继续使用上一份 / cannot reload the certificate revocation list, "
                "the last good one (%d revoked) stays in force: %s",
                len(self.snapshot.revoked),
                exc,
            )
            return
        self.snapshot, self.last_error = snap, None
        self._announce()

    def revoked(self, cert: x509.Certificate) -> Revocation | None:
        """The revocation of ``cert`` (a client certificate the TLS handshake verified), or ``None``."""
        self.refresh()
        if self.expired:
            self._complain_expired()
        return self.snapshot.revoked.get((cert.issuer.public_bytes(), cert.serial_number))

    # a Prometheus collector: registered on the app's registry at the first request (see register_on)
    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.snapshot
        yield GaugeMetricFamily(
            "vigil_cloud_tls_crl_revoked_certificates",
            "Client certificates listed in VIGIL_CLOUD_TLS_CRL (last good reading)",
            value=len(snap.revoked),
        )
        yield GaugeMetricFamily(
            "vigil_cloud_tls_crl_next_update_timestamp_seconds",
            "nextUpdate of VIGIL_CLOUD_TLS_CRL (epoch seconds; publish a new CRL before it)",
            value=snap.next_update if snap.next_update is not None else float("nan"),
        )
        yield GaugeMetricFamily(
            "vigil_cloud_tls_crl_expired",
            "1 when VIGIL_CLOUD_TLS_CRL is past its nextUpdate (still enforced, fail-open for the rest)",
            value=1.0 if self.expired else 0.0,
        )
        yield CounterMetricFamily(
            "vigil_cloud_tls_crl_reload_errors",
            "Replacements of VIGIL_CLOUD_TLS_CRL that could not be read or checked (the last good one stays)",
            value=self.reload_errors,
        )

    def register_on(self, registry: Any) -> None:
        """Export :meth:`collect` on ``registry`` (once per registry)."""
        if id(registry) in self._registered:
            return
        self._registered.add(id(registry))
        with contextlib.suppress(ValueError):  # already registered by another CrlCheck of the same app
            registry.register(self)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ServerContext(ssl.SSLContext):
    """The server's TLS context, carrying the CRL check the request path applies to verified clients."""

    vigil_crl: CrlCheck | None = None


def server_context(s: CloudSettings, alpn_protocols: list[str] | None = None) -> ServerContext:
    """The server-side TLS context for settings with ``tls_cert`` set (TLS 1.2+, modern ciphers)."""
    if s.tls_cert is None:
        raise ConfigError("TLS is off: set VIGIL_CLOUD_TLS_CERT and VIGIL_CLOUD_TLS_KEY")
    ctx = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_ciphers(TLS12_CIPHERS)
    try:
        ctx.load_cert_chain(str(s.tls_cert), str(s.tls_key) if s.tls_key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {s.tls_cert} / key {s.tls_key} "
            f"(VIGIL_CLOUD_TLS_CERT / VIGIL_CLOUD_TLS_KEY): {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    if s.tls_client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(s.tls_client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client CA {s.tls_client_ca} (VIGIL_CLOUD_TLS_CLIENT_CA): "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
        if s.tls_crl is not None:
            ctx.vigil_crl = CrlCheck(s.tls_crl, _client_cas(s.tls_client_ca))
    if alpn_protocols:
        ctx.set_alpn_protocols(alpn_protocols)
    return ctx


def uvicorn_tls_options(s: CloudSettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: empty without TLS, else our context factory.

    The context is built once here (so a bad file fails before the server starts) and handed to uvicorn
    through ``ssl_context_factory``; uvicorn's own defaults (any protocol the build allows, the "TLSv1"
    cipher string) are never used.
    """
    GatewayBinding.from_env()  # a malformed VIGIL_CLOUD_TLS_BIND_GATEWAY / _TRUSTED_PROXIES fails here too
    proxy_secret()  # and a too short VIGIL_CLOUD_PROXY_SECRET
    if s.tls_cert is None:
        return {}
    ctx = server_context(s)

    def factory(_config: Any, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return ctx

    return {"ssl_context_factory": factory}


# -- binding a gateway's client certificate to its gateway id ------------------------------------------
#: a gateway id (alerts/contract.py ``Identifier``, ``cloud/api/gateways.py``); a certificate whose CN is
#: not one identifies no gateway
GATEWAY_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}\Z")
#: set by the trusted reverse proxy (deploy/nginx/vigil-cloud.conf): nginx's ``$ssl_client_verify``
#: (``SUCCESS``, ``NONE``, ``FAILED:<reason>``) and ``$ssl_client_s_dn`` (the verified subject, RFC 4514)
VERIFY_HEADER = "x-vigil-client-verify"
SUBJECT_HEADER = "x-vigil-client-subject"
#: this module's ASGI scope extension: the connection's real peer (before uvicorn's X-Forwarded-For
#: rewrite of ``scope["client"]``) and the client certificate's identity
PEER_EXTENSION = "vigil.peer"
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who a verified client certificate says the caller is.

    The identity of a gateway is the certificate's subject common name (CN), exactly one, equal to the
    gateway id. The CN rather than a SAN URI because the same certificate must name the gateway to
    Mosquitto too, and Mosquitto's ``use_identity_as_username`` takes the CN (it has no SAN mapping);
    nginx hands the verified subject on as ``$ssl_client_s_dn``. Gateway ids cannot contain the characters
    that need escaping in a distinguished name, so the mapping is exact (docs/mtls.md).
    """

    #: the CN when it is a valid gateway id, else ``None`` (a certificate of no gateway)
    gateway_id: str | None
    #: the subject, RFC 4514, for messages and the audit log
    subject: str
    #: ``tls`` (the cloud's own TLS handshake) or ``proxy`` (a trusted proxy's header)
    source: str


def identity_of_name(name: x509.Name, source: str) -> ClientIdentity:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if len(cns) == 1 else None
    ok = isinstance(cn, str) and GATEWAY_ID.match(cn) is not None
    return ClientIdentity(cn if ok and isinstance(cn, str) else None, name.rfc4514_string()[:256], source)


@functools.lru_cache(maxsize=4096)
def identity_of_subject(dn: str, source: str = "proxy") -> ClientIdentity:
    """The identity in an RFC 4514 subject string (nginx ``$ssl_client_s_dn``); unparsable = no gateway.

    Cached: a proxy states the same few thousand subjects on every request, and parsing one costs about
    20 us of CPU; the cache is bounded and only trusted proxies' headers reach it."""
    try:
        name = x509.Name.from_rfc4514_string(dn)
    except ValueError:
        return ClientIdentity(None, dn[:256], source)
    return identity_of_name(name, source)


def _ip_networks(text: str, key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(f"{key}: not an IP address or network: {item!r}") from exc
    return tuple(nets)


@dataclass(frozen=True, slots=True)
class GatewayBinding:
    """When a gateway's bearer token must come with that gateway's own client certificate.

    Read from the environment beside :class:`~cloud.settings.CloudSettings` (:meth:`from_env`):

    * ``VIGIL_CLOUD_TLS_BIND_GATEWAY`` (``true``/``false``): a gateway token is refused (403) unless the
      connection presents a verified client certificate whose CN is that gateway's id. Unset, it is on
      when the cloud checks client certificates itself (``VIGIL_CLOUD_TLS_CLIENT_CA``) or when a trusted
      proxy reports a verification result (:data:`VERIFY_HEADER`, the shipped nginx file always sends it).
      Whatever the setting, a certificate that *is* presented must name the token's gateway.
    * ``VIGIL_CLOUD_TRUSTED_PROXIES`` (comma-separated addresses or networks; default loopback,
      ``127.0.0.0/8,::1``): only a connection from these addresses may state the certificate in
      :data:`VERIFY_HEADER` / :data:`SUBJECT_HEADER`; from anywhere else the headers are ignored, so a
      client cannot claim a certificate it does not hold. Empty = trust no proxy.
    """

    required: bool | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayBinding:
        env = os.environ if environ is None else environ
        required: bool | None = None
        key = "VIGIL_CLOUD_TLS_BIND_GATEWAY"
        if env.get(key, "").strip():
            value = env[key].strip().lower()
            if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ConfigError(f"{key}: expected true or false, got {env[key]!r}")
            required = value in ("true", "1", "yes", "on")
        if "VIGIL_CLOUD_TRUSTED_PROXIES" in env:
            nets = _ip_networks(env["VIGIL_CLOUD_TRUSTED_PROXIES"], "VIGIL_CLOUD_TRUSTED_PROXIES")
            return cls(required, nets)
        return cls(required)

    def trusts(self, host: str | None) -> bool:
        if not host:
            return False
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
        return any(addr in net for net in self.trusted_proxies)


@dataclass(frozen=True, slots=True)
class ConnectionCertificate:
    """What one request's connection says about a client certificate (see :func:`request_certificate`)."""

    #: the verified certificate's identity, ``None`` when no certificate was (trustworthily) presented
    identity: ClientIdentity | None
    #: whether a gateway token on this request must come with its own certificate
    required: bool


def request_certificate(
    scope: Mapping[str, Any], headers: Mapping[str, str], binding: GatewayBinding, *, client_ca: bool
) -> ConnectionCertificate:
    """The client certificate of a request: from the cloud's own TLS handshake, else from a trusted proxy.

    The peer comes from :data:`PEER_EXTENSION`, which :func:`peer_identity_protocol` sets from the
    connection itself; without it (a server not built by :func:`cloud.connguard.server_config`) no proxy
    is trusted and no certificate is known, which refuses gateways when binding is required.
    """
    peer = (scope.get("extensions") or {}).get(PEER_EXTENSION) or {}
    required = binding.required if binding.required is not None else client_ca
    identity: ClientIdentity | None = peer.get("identity")
    if identity is None and binding.trusts(peer.get("host")):
        verify = headers.get(VERIFY_HEADER)
        if verify is not None and binding.required is None:
            required = True  # the proxy checks client certificates: so do we
        subject = headers.get(SUBJECT_HEADER)
        if verify == "SUCCESS" and subject:
            identity = identity_of_subject(subject, "proxy")
    return ConnectionCertificate(identity, required)


class _AsgiApp(Protocol):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


_P = TypeVar("_P", bound=asyncio.Protocol)


def connection_extensions(transport: asyncio.BaseTransport) -> dict[str, Any]:
    """ASGI scope extensions for one connection: :data:`PEER_EXTENSION` and, over TLS, ``tls``.

    ``tls`` follows the ASGI TLS extension (uvicorn does not fill it): the peer's certificate as PEM (the
    leaf only; Python 3.11 cannot list the verified chain), its subject, the TLS version.
    """
    peer = transport.get_extra_info("peername")
    host, port = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else (None, None)
    out: dict[str, Any] = {PEER_EXTENSION: {"host": host, "port": port, "identity": None}}
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return out
    der = sslobj.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der) if der else None
    out["tls"] = {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": cert.subject.rfc4514_string() if cert is not None else None,
        "client_cert_error": None,  # the handshake fails on an unverified certificate (CERT_REQUIRED)
        "tls_version": _TLS_VERSIONS.get(sslobj.version() or ""),
        "cipher_suite": None,
    }
    if cert is not None:  # only verified certificates get here: verify_mode is CERT_REQUIRED with a CA
        out[PEER_EXTENSION]["identity"] = identity_of_name(cert.subject, "tls")
        out[PEER_EXTENSION]["certificate"] = cert
    return out


def _connection_crl(
    transport: asyncio.BaseTransport, extensions: Mapping[str, Any]
) -> tuple[CrlCheck, x509.Certificate] | None:
    """The CRL check of this connection's server context and the verified client certificate, if both."""
    sslobj = transport.get_extra_info("ssl_object")
    crl = getattr(getattr(sslobj, "context", None), "vigil_crl", None)
    cert = extensions[PEER_EXTENSION].get("certificate")
    return (crl, cert) if isinstance(crl, CrlCheck) and cert is not None else None


def _cloud_state(app: Any) -> Any:
    """The :class:`~cloud.api.state.CloudState` behind uvicorn's middleware chain (``.app`` links), if any."""
    for _ in range(8):
        state = getattr(getattr(app, "state", None), "vigil", None)
        if state is not None:
            return state
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


async def _refuse_revoked(app: Any, cert: x509.Certificate, rev: Revocation, scope: Any, send: Any) -> None:
    """Answer a request on a connection whose client certificate is revoked: 403 ``certificate_revoked``
    (the connection is then closed), counted and audited as the other certificate refusals."""
    identity = identity_of_name(cert.subject, "tls")
    detail = (
        f"the client certificate ({identity.subject}, serial {cert.serial_number:x}) was revoked on "
        f"{rev.revoked_at:%Y-%m-%d %H:%M}Z by its CA ({_CRL_SETTING}); ask for a new certificate"
    )
    state = _cloud_state(app)
    if state is not None:
        from cryptography.hazmat.primitives import hashes

        from cloud.auth import GatewayCertificateError
        from cloud.certrefusals import certificate_serial, record_certificate_refusal

        exc = GatewayCertificateError(
            detail,
            reason="certificate_revoked",
            gateway_id=identity.gateway_id or "-",
            subject=identity.subject,
        )
        try:
            extra = {  # as nginx states them for its own refusals (cloud.certrefusals.proxy_refusal)
                "serial": certificate_serial(cert.serial_number),
                "fingerprint": cert.fingerprint(hashes.SHA1()).hex().upper(),  # nginx: SHA-1, an identifier
            }
            await record_certificate_refusal(state, exc, "tls", extra)
        except Exception:  # never let bookkeeping turn a refusal into a 500
            log.exception("cannot count or audit a revoked client certificate")
    else:
        log.warning("revoked client certificate refused: %s", identity.subject)
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": "certificate_revoked"})
        return
    body = json.dumps({"error": "forbidden", "reason": "certificate_revoked", "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def peer_identity_protocol(base: type[_P]) -> type[_P]:
    """A subclass of a uvicorn HTTP protocol that puts :func:`connection_extensions` into every scope.

    Computed once per connection, after the TLS handshake (asyncio calls ``connection_made`` then), and
    added by wrapping the protocol's ``app`` for this connection: outside uvicorn's proxy-headers
    middleware, so :data:`PEER_EXTENSION` holds the real peer, not the X-Forwarded-For address.
    """
    if getattr(base, "_vigil_peer_extensions", False):
        return base

    class PeerIdentityProtocol(base):  # type: ignore[valid-type,misc]
        _vigil_peer_extensions = True

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if transport.is_closing():  # refused by a connection guard before any request
                return
            extensions = connection_extensions(transport)
            inner: _AsgiApp = self.app  # type: ignore[has-type]
            revocable = _connection_crl(transport, extensions)
            if revocable is not None:
                registry = getattr(getattr(_cloud_state(inner), "metrics", None), "registry", None)
                if registry is not None:
                    revocable[0].register_on(registry)  # the CRL's gauges on the app's /metrics

            async def app(scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] in ("http", "websocket"):
                    if revocable is not None:  # asked on every request: a CRL published later counts
                        crl, cert = revocable
                        rev = crl.revoked(cert)
                        if rev is not None:
                            await _refuse_revoked(inner, cert, rev, scope, send)
                            return
                    ext = scope.setdefault("extensions", {})
                    for name, value in extensions.items():
                        ext.setdefault(name, value)
                await inner(scope, receive, send)

            self.app = app

    PeerIdentityProtocol.__name__ = PeerIdentityProtocol.__qualname__ = f"PeerIdentity{base.__name__}"
    return PeerIdentityProtocol


# -- client-certificate refusals reported by the reverse proxy (docs/mtls.md) ------------------------------
#: the internal endpoint nginx's ``@certificate_refused`` location posts to (deploy/nginx/vigil-cloud.conf)
REFUSAL_PATH = "/api/v1/internal/certificate-refusals"
PROXY_SECRET_ENV = "VIGIL_CLOUD_PROXY_SECRET"
SECRET_HEADER = "x-vigil-proxy-secret"
SERIAL_HEADER = "x-vigil-client-serial"
FINGERPRINT_HEADER = "x-vigil-client-fingerprint"
#: a secret shorter than this is refused at start (``openssl rand -hex 32`` makes 64 characters)
MIN_SECRET_CHARS = 32
#: audited reports per client address (IPv6 per /64) and minute, and at once; and for all addresses
PROXY_AUDITS_PER_MINUTE, PROXY_AUDITS_BURST = 10.0, 20.0
PROXY_AUDITS_TOTAL_PER_MINUTE, PROXY_AUDITS_TOTAL_BURST = 120.0, 240.0
#: what is kept of nginx's statements (a client chooses its certificate's subject and serial)
MAX_VERIFY, MAX_SUBJECT, MAX_HEX = 128, 256, 64
_HEX = re.compile(r"^[0-9A-Fa-f]{1,64}\Z")
_SECRET_CHARS = re.compile(r"^[\x21-\x7e]+\Z")  # printable ASCII, no spaces (and no '"', checked apart)
#: nginx's ``$ssl_client_verify`` -> the refusal's reason (also the metric's label: a fixed set)
_VERIFY_REASONS = {
    "NONE": "certificate_required",
    "FAILED:certificate revoked": "certificate_revoked",
    "FAILED:certificate has expired": "certificate_expired",
}
_REASON_TEXT = {
    "certificate_required": "网关上传需要客户端证书 / a client certificate from the gateway CA is required",
    "certificate_revoked": "客户端证书已被吊销 / the client certificate was revoked; ask for a new one",
    "certificate_expired": "客户端证书已过期 / the client certificate has expired; ask for a new one",
    "certificate_invalid": "客户端证书未通过验证 / the client certificate failed verification",
}


def proxy_secret(environ: Mapping[str, str] | None = None) -> bytes | None:
    """``VIGIL_CLOUD_PROXY_SECRET`` (``None`` when unset or empty: proxy reports are then refused).

    A value shorter than :data:`MIN_SECRET_CHARS` or with spaces / control characters is a
    :class:`ConfigError` (``vigil cloud`` checks it at start, :func:`cloud.tls.uvicorn_tls_options`)."""
    env = os.environ if environ is None else environ
    value = env.get(PROXY_SECRET_ENV, "").strip()
    if not value:
        return None
    if len(value) < MIN_SECRET_CHARS or not _SECRET_CHARS.match(value) or '"' in value:
        raise ConfigError(
            f"{PROXY_SECRET_ENV}: must be at least {MIN_SECRET_CHARS} printable characters without spaces or "
            "quotes (openssl rand -hex 32)"
        )
    return value.encode()


def _source_key(address: str) -> str:
    """The rate-limit key of a client address: the address, an IPv6 one's /64; unparsable: one key."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return "invalid"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _hex(value: str | None) -> str:
    """A stated serial or fingerprint: hex, upper case, at most :data:`MAX_HEX`; else ``invalid``."""
    if not value:
        return ""
    return value.upper() if _HEX.match(value) else "invalid"


@dataclass
class ProxyReports:
    """The proxy-report settings of one app: the secret, the trusted proxies, the audit rate limits."""

    secret: bytes | None
    binding: GatewayBinding
    per_source: KeyedRateLimit
    total: KeyedRateLimit

    @classmethod
    def from_env(cls, db: Database | None = None) -> ProxyReports:
        """``db``: the operational database; on PostgreSQL the audit limits are shared by every worker."""
        from cloud.limits import KeyedRateLimit

        detail = "too many certificate refusals reported; not audited"
        return cls(
            proxy_secret(),
            GatewayBinding.from_env(),
            KeyedRateLimit(
                "proxy_refusal_audit",
                per_minute=PROXY_AUDITS_PER_MINUTE,
                burst=PROXY_AUDITS_BURST,
                detail=detail,
                db=db,
            ),
            KeyedRateLimit(
                "proxy_refusal_audit",
                per_minute=PROXY_AUDITS_TOTAL_PER_MINUTE,
                burst=PROXY_AUDITS_TOTAL_BURST,
                detail=detail,
                max_keys=1,
                db=db,
            ),
        )


class _Unauthenticated(PermissionDeniedError):
    """403 ``proxy_unauthenticated``: a report not from a trusted proxy with the secret; nothing recorded."""

    def __init__(self) -> None:
        super().__init__(
            "只有反向代理可以报告证书拒绝 / only the reverse proxy may report certificate refusals "
            "(VIGIL_CLOUD_PROXY_SECRET)"
        )

    def body(self) -> dict[str, object]:
        return {**super().body(), "reason": "proxy_unauthenticated"}


_last_forged_log = -60.0


def _authenticated(reports: ProxyReports, scope: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    peer = (scope.get("extensions") or {}).get(PEER_EXTENSION) or {}
    from_proxy = reports.binding.trusts(peer.get("host"))
    stated = headers.get(SECRET_HEADER, "").encode("latin-1", "replace")
    expected = reports.secret or b"\0" * MIN_SECRET_CHARS  # compared anyway: same time with or without one
    good = hmac.compare_digest(stated, expected) and reports.secret is not None
    return from_proxy and good


async def proxy_refusal(
    state: Any, reports: ProxyReports, scope: Mapping[str, Any], headers: Mapping[str, str]
) -> GatewayCertificateError:
    """A reverse proxy's report of a refused client certificate (:data:`REFUSAL_PATH`): recorded like the
    cloud's own refusals; returns the error to answer with (403 and the reason).

    Raises :class:`PermissionDeniedError` (403, reason ``proxy_unauthenticated``) and records nothing
    unless the report comes from a trusted proxy with the shared secret."""
    global _last_forged_log
    if not _authenticated(reports, scope, headers):
        peer = ((scope.get("extensions") or {}).get(PEER_EXTENSION) or {}).get("host")
        mono = time.monotonic()
        if mono - _last_forged_log >= 60.0:  # at most a line a minute: a flood must not fill the journal
            _last_forged_log = mono
            log.warning(
                "拒绝未认证的证书拒绝报告 / unauthenticated certificate-refusal report refused (from %s%s)",
                peer,
                "; VIGIL_CLOUD_PROXY_SECRET is not set" if reports.secret is None else "",
            )
        raise _Unauthenticated()
    from cloud.auth import GatewayCertificateError
    from cloud.certrefusals import record_certificate_refusal
    from cloud.limits import GuardMetrics

    verify = headers.get(VERIFY_HEADER, "")[:MAX_VERIFY]
    reason = _VERIFY_REASONS.get(verify, "certificate_invalid")
    subject = headers.get(SUBJECT_HEADER, "")[:MAX_SUBJECT] or None
    identity = identity_of_subject(subject, "proxy") if subject else None
    address = headers.get("x-forwarded-for", "").split(",")[-1].strip()[:64]
    source = _source_key(address)
    serial, fingerprint = _hex(headers.get(SERIAL_HEADER)), _hex(headers.get(FINGERPRINT_HEADER))
    text = _REASON_TEXT[reason]
    detail = f"{text} ({subject}, serial {serial})" if subject else text
    exc = GatewayCertificateError(
        detail,
        reason=reason,
        gateway_id=(identity.gateway_id if identity else None) or "-",
        subject=identity.subject if identity else None,
    )
    guard = GuardMetrics.for_registry(state.metrics.registry)
    allowed = await asyncio.to_thread(  # on PostgreSQL a round trip each: not on the event loop
        lambda: not reports.per_source.wait_s(source) and not reports.total.wait_s("all")
    )
    if not allowed:
        guard.rate_limited.labels("proxy_refusal_audit").inc()
    extra = {"serial": serial, "fingerprint": fingerprint, "verify": verify, "client": address}
    await record_certificate_refusal(state, exc, "proxy", extra, audit_allowed=allowed)
    return exc


__all__ = [
    "GATEWAY_ID",
    "PEER_EXTENSION",
    "PROXY_SECRET_ENV",
    "REFUSAL_PATH",
    "SUBJECT_HEADER",
    "TLS12_CIPHERS",
    "VERIFY_HEADER",
    "ClientIdentity",
    "ConnectionCertificate",
    "GatewayBinding",
    "ProxyReports",
    "connection_extensions",
    "identity_of_name",
    "identity_of_subject",
    "peer_identity_protocol",
    "proxy_refusal",
    "proxy_secret",
    "request_certificate",
    "server_context",
    "uvicorn_tls_options",
]
