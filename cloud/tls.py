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

A missing or unreadable file is a :class:`~cloud.errors.ConfigError` naming the setting, raised before the
server starts. See docs/security.md ("Transport security").

A gateway's client certificate is bound to its gateway id (docs/mtls.md): the certificate's CN must be the
id of the gateway whose token comes with it. :func:`peer_identity_protocol` (installed by
:func:`cloud.connguard.server_config`) records each connection's real peer and verified certificate in the
ASGI scope; :func:`request_certificate` reads them, or, from a trusted reverse proxy only, the proxy's
``X-Vigil-Client-*`` headers; ``cloud.api.deps.get_principal`` refuses a mismatch (403).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cryptography import x509
from cryptography.x509.oid import NameOID

from cloud.errors import ConfigError
from cloud.settings import CloudSettings

#: TLS 1.2 cipher suites: forward secrecy and AEAD only (Mozilla "intermediate")
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"


def server_context(s: CloudSettings, alpn_protocols: list[str] | None = None) -> ssl.SSLContext:
    """The server-side TLS context for settings with ``tls_cert`` set (TLS 1.2+, modern ciphers)."""
    if s.tls_cert is None:
        raise ConfigError("TLS is off: set VIGIL_CLOUD_TLS_CERT and VIGIL_CLOUD_TLS_KEY")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
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
    return out


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

            async def app(scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] in ("http", "websocket"):
                    ext = scope.setdefault("extensions", {})
                    for name, value in extensions.items():
                        ext.setdefault(name, value)
                await inner(scope, receive, send)

            self.app = app

    PeerIdentityProtocol.__name__ = PeerIdentityProtocol.__qualname__ = f"PeerIdentity{base.__name__}"
    return PeerIdentityProtocol


__all__ = [
    "GATEWAY_ID",
    "PEER_EXTENSION",
    "SUBJECT_HEADER",
    "TLS12_CIPHERS",
    "VERIFY_HEADER",
    "ClientIdentity",
    "ConnectionCertificate",
    "GatewayBinding",
    "connection_extensions",
    "identity_of_name",
    "identity_of_subject",
    "peer_identity_protocol",
    "request_certificate",
    "server_context",
    "uvicorn_tls_options",
]
