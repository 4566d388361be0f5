"""Gateway certificate refusals: counted, logged and audited alike wherever they happen.

A gateway token that arrives with another gateway's certificate or none where one is required
(:func:`cloud.api.deps.get_principal`), and a revoked certificate (:mod:`cloud.tls`, checked against the
CRL) are each counted in ``vigil_cloud_gateway_certificate_refusals_total{reason}``, logged, and audited
as ``auth.gateway_certificate_refused`` at most once a minute per (gateway, reason, certificate) and
process: a gateway retrying a refused batch must not flood the audit log. A module of its own so that
both callers use it without importing each other.

**Refusals by the reverse proxy** (docs/mtls.md, "nginx's refusals in the cloud's audit log"): nginx answers
a client certificate that fails its verification (revoked, expired, not from the gateway CA: its status
495) or a missing one where required (496) by passing the request to its ``@certificate_refused``
location, which POSTs a report to :data:`REFUSAL_PATH` (no client header or body, only what nginx states:
``X-Vigil-Client-Verify`` ``FAILED:certificate revoked``, ``-Subject``, ``-Serial``, ``-Fingerprint`` and
``X-Forwarded-For``). :func:`proxy_refusal` believes a report only from a trusted proxy address
(``VIGIL_CLOUD_TRUSTED_PROXIES``, the connection's own peer) **and** with the shared secret
``X-Vigil-Proxy-Secret`` = ``VIGIL_CLOUD_PROXY_SECRET`` (compared in constant time); anything else is a
403 ``proxy_unauthenticated`` that records nothing. A believed report is counted and answered exactly as
the cloud's own refusals (403 with the reason); it is logged and audited (``via: proxy``, with the serial,
fingerprint, nginx's verify text and the client's address) within :data:`PROXY_AUDITS_PER_MINUTE` per
client address (IPv6: per /64) and :data:`PROXY_AUDITS_TOTAL_PER_MINUTE` in all, beside the once-a-minute
rule above; past that the refusal is still counted, and
``vigil_cloud_rate_limited_requests_total{limit="proxy_refusal_audit"}`` says how many went unaudited.
Stated values are cut to fixed sizes before they are kept.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloud.auth import GatewayCertificateError, Role
from cloud.errors import CloudError, ConfigError, PermissionDeniedError

if TYPE_CHECKING:
    from cloud.api.state import CloudState

log = logging.getLogger(__name__)

#: (gateway, reason, subject) -> when last audited; a gateway retrying a refused batch is audited once a
#: minute per process, not on every attempt
_AUDITED: dict[tuple[str, str, str], float] = {}
_AUDIT_EVERY_S = 60.0
_AUDIT_KEYS = 10_000


async def record_certificate_refusal(
    state: CloudState,
    exc: GatewayCertificateError,
    source: str | None,
    extra: Mapping[str, str] | None = None,
    *,
    audit_allowed: bool = True,
) -> None:
    """Count, log and (once a minute per gateway, reason and certificate) audit a certificate refusal.

    ``extra`` goes into the audit entry's detail (the serial, ...); ``audit_allowed=False`` (a report over
    its rate limit) counts the refusal only."""
    state.metrics.certificate_refusals.labels(exc.reason).inc()
    if not audit_allowed:
        return
    log.warning(
        "网关客户端证书被拒绝 / gateway certificate refused: %s (gateway %s, certificate %s, via %s)",
        exc.reason,
        exc.gateway_id,
        exc.subject,
        source,
    )
    key = (exc.gateway_id, exc.reason, f"{exc.subject or ''}|{(extra or {}).get('fingerprint', '')}")
    mono = time.monotonic()
    if mono - _AUDITED.get(key, -_AUDIT_EVERY_S) < _AUDIT_EVERY_S:
        return
    _AUDITED.pop(key, None)
    _AUDITED[key] = mono
    while len(_AUDITED) > _AUDIT_KEYS:
        del _AUDITED[next(iter(_AUDITED))]
    try:
        await asyncio.to_thread(_audit, state, exc, source, extra or {})
    except CloudError as audit_exc:  # the refusal stands even when the audit log cannot be written
        log.error("cannot audit the refused gateway token of %s: %s", exc.gateway_id, audit_exc)


def _audit(
    state: CloudState, exc: GatewayCertificateError, source: str | None, extra: Mapping[str, str]
) -> None:
    from cloud.loop.config import audit

    with state.db.write() as s:
        audit(
            s,
            actor=exc.gateway_id[:64],
            role=Role.GATEWAY.value,
            action="auth.gateway_certificate_refused",
            target=f"gateway:{exc.gateway_id}"[:128],
            now=state.clock.now(),
            reason=exc.reason,
            certificate=exc.subject,
            via=source,
            **extra,
        )


# -- refusals reported by the reverse proxy ----------------------------------------------------------------
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
_SECRET_CHARS = re.compile(r"^[\x21-\x7e]+\Z")  # printable ASCII without spaces or quotes' troubles
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


def certificate_serial(serial: int) -> str:
    """A serial number as nginx's ``$ssl_client_serial`` writes it: upper-case hex, whole bytes."""
    h = f"{serial:X}"
    return h if len(h) % 2 == 0 else "0" + h


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
    binding: Any  # cloud.tls.GatewayBinding
    per_source: Any  # cloud.limits.KeyedRateLimit
    total: Any

    @classmethod
    def from_env(cls) -> ProxyReports:
        from cloud.limits import KeyedRateLimit
        from cloud.tls import GatewayBinding

        detail = "too many certificate refusals reported; not audited"
        return cls(
            proxy_secret(),
            GatewayBinding.from_env(),
            KeyedRateLimit(
                "proxy_refusal_audit",
                per_minute=PROXY_AUDITS_PER_MINUTE,
                burst=PROXY_AUDITS_BURST,
                detail=detail,
            ),
            KeyedRateLimit(
                "proxy_refusal_audit",
                per_minute=PROXY_AUDITS_TOTAL_PER_MINUTE,
                burst=PROXY_AUDITS_TOTAL_BURST,
                detail=detail,
                max_keys=1,
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
    from cloud.tls import PEER_EXTENSION

    peer = (scope.get("extensions") or {}).get(PEER_EXTENSION) or {}
    from_proxy = reports.binding.trusts(peer.get("host"))
    stated = headers.get(SECRET_HEADER, "").encode("latin-1", "replace")
    expected = reports.secret or b"\0" * MIN_SECRET_CHARS  # compared anyway: same time with or without one
    good = hmac.compare_digest(stated, expected) and reports.secret is not None
    return from_proxy and good


async def proxy_refusal(
    state: CloudState, reports: ProxyReports, scope: Mapping[str, Any], headers: Mapping[str, str]
) -> GatewayCertificateError:
    """A reverse proxy's report of a refused client certificate (:data:`REFUSAL_PATH`): recorded like the
    cloud's own refusals; returns the error to answer with (403 and the reason).

    Raises :class:`PermissionDeniedError` (403, reason ``proxy_unauthenticated``) and records nothing
    unless the report comes from a trusted proxy with the shared secret."""
    global _last_forged_log
    if not _authenticated(reports, scope, headers):
        peer = ((scope.get("extensions") or {}).get("vigil.peer") or {}).get("host")
        mono = time.monotonic()
        if mono - _last_forged_log >= 60.0:  # at most a line a minute: a flood must not fill the journal
            _last_forged_log = mono
            log.warning(
                "拒绝未认证的证书拒绝报告 / unauthenticated certificate-refusal report refused (from %s%s)",
                peer,
                "; VIGIL_CLOUD_PROXY_SECRET is not set" if reports.secret is None else "",
            )
        raise _Unauthenticated()
    from cloud.limits import GuardMetrics
    from cloud.tls import identity_of_subject

    verify = headers.get("x-vigil-client-verify", "")[:MAX_VERIFY]
    reason = _VERIFY_REASONS.get(verify, "certificate_invalid")
    subject = headers.get("x-vigil-client-subject", "")[:MAX_SUBJECT] or None
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
    allowed = not reports.per_source.wait_s(source) and not reports.total.wait_s("all")
    if not allowed:
        guard.rate_limited.labels("proxy_refusal_audit").inc()
    extra = {"serial": serial, "fingerprint": fingerprint, "verify": verify, "client": address}
    await record_certificate_refusal(state, exc, "proxy", extra, audit_allowed=allowed)
    return exc


__all__ = [
    "PROXY_SECRET_ENV",
    "REFUSAL_PATH",
    "ProxyReports",
    "certificate_serial",
    "proxy_refusal",
    "proxy_secret",
    "record_certificate_refusal",
]
