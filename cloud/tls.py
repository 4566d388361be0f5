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
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

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
    if s.tls_cert is None:
        return {}
    ctx = server_context(s)

    def factory(_config: Any, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return ctx

    return {"ssl_context_factory": factory}


__all__ = ["TLS12_CIPHERS", "server_context", "uvicorn_tls_options"]
