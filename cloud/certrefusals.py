"""Gateway certificate refusals: counted, logged and audited alike wherever they happen.

A gateway token that arrives with another gateway's certificate or none where one is required
(:func:`cloud.api.deps.get_principal`), and a revoked certificate (:mod:`cloud.tls`, checked against the
CRL) are each counted in ``vigil_cloud_gateway_certificate_refusals_total{reason}``, logged, and audited
as ``auth.gateway_certificate_refused`` at most once a minute per (gateway, reason, certificate), across
every worker on PostgreSQL: a gateway retrying a refused batch must not flood the audit log. A module of
its own so that both callers use it without importing each other.

Refusals by the reverse proxy (nginx's 495 / 496, reported to the cloud) are recorded here too, through
:func:`cloud.tls.proxy_refusal` (docs/mtls.md, "nginx's refusals in the cloud's audit log").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from cloud.auth import GatewayCertificateError, Role
from cloud.errors import CloudError
from cloud.limits import SharedBuckets

if TYPE_CHECKING:
    from cloud.api.state import CloudState
    from cloud.db.session import Database

log = logging.getLogger(__name__)

#: (gateway, reason, subject) -> when last audited; a gateway retrying a refused batch is audited once a
#: minute, not on every attempt. In memory on SQLite (one process); on PostgreSQL the rule is kept in the
#: shared ``rate_limit_buckets`` (cloud.limits.SharedBuckets), so it holds across every worker
_AUDITED: dict[tuple[str, str, str], float] = {}
_SHARED: WeakKeyDictionary[Database, SharedBuckets] = WeakKeyDictionary()
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
    key = _audit_key(exc, extra or {})
    shared = _shared(state)
    if shared is None:  # SQLite: one process, the rule in memory
        mono = time.monotonic()
        if mono - _AUDITED.get(key, -_AUDIT_EVERY_S) < _AUDIT_EVERY_S:
            return
        _AUDITED.pop(key, None)
        _AUDITED[key] = mono
        while len(_AUDITED) > _AUDIT_KEYS:
            del _AUDITED[next(iter(_AUDITED))]
    try:
        await asyncio.to_thread(_audit_once, state, shared, key, exc, source, extra or {})
    except CloudError as audit_exc:  # the refusal stands even when the audit log cannot be written
        log.error("cannot audit the refused gateway token of %s: %s", exc.gateway_id, audit_exc)


def _audit_key(exc: GatewayCertificateError, extra: Mapping[str, str]) -> tuple[str, str, str]:
    """What "the same refusal" is for the once-a-minute rule: gateway, reason and certificate; with no
    certificate at all (nginx's 496), the client's address stands for it."""
    cert = f"{exc.subject or ''}|{extra.get('fingerprint', '')}"
    if cert == "|":
        cert = f"client:{extra.get('client', '')}"
    return exc.gateway_id, exc.reason, cert


def _shared(state: CloudState) -> SharedBuckets | None:
    """The buckets shared by every worker when the operational database is PostgreSQL, else None."""
    db = state.db
    if db.is_sqlite:
        return None
    found = _SHARED.get(db)
    if found is None:
        found = _SHARED[db] = SharedBuckets(db, now=state.clock.now)
    return found


def _audit_once(
    state: CloudState,
    shared: SharedBuckets | None,
    key: tuple[str, str, str],
    exc: GatewayCertificateError,
    source: str | None,
    extra: Mapping[str, str],
) -> None:
    """Audit, unless (``shared``: any worker) audited this key within the last minute."""
    if shared is not None and shared.take("cert_refusal_audit", key, 1, 1 / _AUDIT_EVERY_S, 1, strict=True):
        return
    _audit(state, exc, source, extra)


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


def certificate_serial(serial: int) -> str:
    """A serial number as nginx's ``$ssl_client_serial`` writes it: upper-case hex, whole bytes."""
    h = f"{serial:X}"
    return h if len(h) % 2 == 0 else "0" + h


__all__ = ["certificate_serial", "record_certificate_refusal"]
