"""nginx's refusal log: the client-certificate refusals the cloud did not hear of (it was down).

nginx writes every refusal as a JSON line (deploy/nginx/vigil-cloud.conf, ``log_format
vigil_cert_refusal``); the ``nginx-refusal-log`` job reads the lines the cloud never answered and audits
each once, at the refusal's own time (docs/mtls.md, "When the cloud is down"). A module of its own: it
needs both :mod:`cloud.certrefusals` and :mod:`cloud.tls`, which otherwise use each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.auth import GatewayCertificateError, Role
from cloud.certrefusals import _AUDIT_EVERY_S, _audit_key
from cloud.errors import ConfigError
from cloud.tls import _REASON_TEXT, _VERIFY_REASONS, _hex, identity_of_subject

if TYPE_CHECKING:
    from cloud.api.state import CloudState
    from cloud.jobs import JobContext

log = logging.getLogger(__name__)


# -- nginx's refusal log: the refusals the cloud did not hear of (it was down) ---------------------------
#: nginx's JSON refusal log (deploy/nginx/vigil-cloud.conf, ``log_format vigil_cert_refusal``); unset: off
REFUSAL_LOG_ENV = "VIGIL_CLOUD_NGINX_REFUSAL_LOG"
#: where the read position is kept (default: beside the cloud's secret key file)
REFUSAL_OFFSET_ENV = "VIGIL_CLOUD_NGINX_REFUSAL_OFFSET"
REFUSAL_INTERVAL_ENV = "VIGIL_CLOUD_NGINX_REFUSAL_INTERVAL_S"
REFUSAL_LOG_JOB = "nginx-refusal-log"
#: bytes read per tick (about 13,000 lines): a huge backlog is read over several ticks, never skipped
REFUSAL_READ_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LogRefusal:
    """One line of nginx's refusal log that the cloud never answered (its report did not get through)."""

    at: float
    request_id: str
    status: str
    verify: str
    subject: str
    serial: str
    fingerprint: str
    client: str


def parse_refusal_line(line: bytes) -> LogRefusal | None:
    """A refusal the cloud missed, or None: the cloud answered it (upstream status 403), nginx answered it
    itself (its 429 past ``limit_req``: a flood, by design unaudited), or the line is not nginx's JSON."""
    try:
        row = json.loads(line)
        at = float(row["msec"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(row, dict):
        return None
    last_upstream = str(row.get("upstream_status", "")).replace(" : ", ",").split(",")[-1].strip()
    if last_upstream == "403" or str(row.get("status")) == "429":
        return None

    def text(name: str, n: int) -> str:
        value = row.get(name, "")
        return value[:n] if isinstance(value, str) else ""

    return LogRefusal(
        at,
        text("request_id", 64),
        text("status", 8),
        text("verify", 128),
        text("subject", 256),
        text("serial", 200),
        text("fingerprint", 200),
        text("client", 64),
    )


def _head(f: Any) -> str:
    """SHA-256 of the file's first line (its time and request id make it unique), "" while it has none."""
    first = f.readline(4096)
    return hashlib.sha256(first).hexdigest() if first.endswith(b"\n") else ""


class RefusalLog:
    """Audits the refusals in nginx's refusal log that never reached the cloud, each exactly once.

    A periodic job (``nginx-refusal-log``, under a lease: one process reads). Each tick reads what was
    appended since the saved position (``{"inode", "offset"}`` in the offset file, replaced atomically),
    complete lines only, at most :data:`REFUSAL_READ_BYTES`; after a rotation it finishes the rotated file
    (``<log>.1``, same inode) before starting the new one; a truncated file is read from its start. Lines
    the cloud answered (upstream 403) or nginx answered itself (429) are skipped. The others are counted in
    ``vigil_cloud_gateway_certificate_refusals_total{reason}`` and audited as
    ``auth.gateway_certificate_refused`` with ``via: nginx_log``, at the refusal's own time, with nginx's
    ``request_id`` and ``status`` (the 502 the client got), once a minute per refusal key as when reported
    live, in the job's fenced transaction. Exactly once: an entry whose ``request_id`` is already in the
    audit log is not written again (a crash between the commit and the offset file re-reads those lines).
    """

    def __init__(self, state: CloudState, path: Path, offset_path: Path) -> None:
        self.state, self.path, self.offset_path = state, path, offset_path

    def _load_offset(self) -> tuple[int, int, str] | None:
        try:
            saved = json.loads(self.offset_path.read_text())
            return int(saved["inode"]), int(saved["offset"]), str(saved.get("head", ""))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.error(
                "nginx 拒绝日志位置文件无法读取，从头读 / refusal log offset unreadable, reading "
                "from the start: %s",
                exc,
            )
            return None

    def _save_offset(self, inode: int, offset: int, head: str) -> None:
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        self.offset_path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump({"inode": inode, "offset": offset, "head": head}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.offset_path)

    def read(self) -> tuple[list[LogRefusal], tuple[int, int, str] | None]:
        """The missed refusals appended since the saved position, and the position after them (None:
        nothing to read). The position is (inode, offset, a hash of the file's first line): a file
        truncated and written again past the old offset is then still known to be another file."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return [], None
        inode, offset, head = self._load_offset() or (st.st_ino, 0, "")
        source = self.path
        if inode != st.st_ino:
            rotated = self.path.with_name(self.path.name + ".1")
            try:
                rst = rotated.stat()
            except FileNotFoundError:
                rst = None
            if rst is not None and rst.st_ino == inode and offset < rst.st_size:
                source = rotated
            else:
                inode, offset, head = st.st_ino, 0, ""
        with open(source, "rb") as f:
            now_head = _head(f)
            if source is self.path and (st.st_size < offset or (head and now_head != head)):
                offset = 0  # truncated (copytruncate) or replaced: from its start
            f.seek(offset)
            chunk = f.read(REFUSAL_READ_BYTES)
        end = chunk.rfind(b"\n")
        if end < 0:
            return [], (inode, offset, now_head) if offset else None
        found = [r for r in map(parse_refusal_line, chunk[: end + 1].splitlines()) if r is not None]
        return found, (inode, offset + end + 1, now_head)

    async def job(self, ctx: JobContext) -> None:
        """One tick: read, audit in the fenced transaction, then save the position."""
        found, position = await asyncio.to_thread(self.read)
        if position is None:
            return
        written = await asyncio.to_thread(self._record, ctx, found)
        await asyncio.to_thread(self._save_offset, *position)
        if written:
            log.warning(
                "补记 %d 条 nginx 证书拒绝（云端当时不可用）/ audited %d certificate refusals nginx "
                "could not report (the cloud was down)",
                written,
                written,
            )

    def _record(self, ctx: JobContext, found: list[LogRefusal]) -> int:
        from sqlalchemy import select

        from cloud.loop.config import audit
        from cloud.loop.models import AuditEntry

        state = self.state
        with state.db.write() as s:
            seen: set[str] = set()
            if found:
                rows = s.execute(
                    select(AuditEntry.detail).where(
                        AuditEntry.action == "auth.gateway_certificate_refused",
                        AuditEntry.at >= min(r.at for r in found) - 1.0,
                    )
                ).scalars()
                seen = {str(d.get("request_id")) for d in rows if isinstance(d, dict) and d.get("request_id")}
            last: dict[tuple[str, str, str], float] = {}
            written = 0
            for r in found:
                reason = _VERIFY_REASONS.get(r.verify, "certificate_invalid")
                state.metrics.certificate_refusals.labels(reason).inc()
                identity = identity_of_subject(r.subject, "proxy") if r.subject else None
                exc = GatewayCertificateError(
                    _REASON_TEXT[reason],
                    reason=reason,
                    gateway_id=(identity.gateway_id if identity else None) or "-",
                    subject=identity.subject if identity else None,
                )
                extra: dict[str, Any] = {
                    "serial": _hex(r.serial),
                    "fingerprint": _hex(r.fingerprint),
                    "verify": r.verify,
                    "client": r.client,
                }
                key = _audit_key(exc, extra)
                if (r.request_id and r.request_id in seen) or r.at - last.get(
                    key, -_AUDIT_EVERY_S
                ) < _AUDIT_EVERY_S:
                    continue
                last[key] = r.at
                audit(
                    s,
                    actor=exc.gateway_id[:64],
                    role=Role.GATEWAY.value,
                    action="auth.gateway_certificate_refused",
                    target=f"gateway:{exc.gateway_id}"[:128],
                    now=r.at,
                    reason=reason,
                    certificate=exc.subject,
                    via="nginx_log",
                    request_id=r.request_id,
                    status=r.status,
                    **extra,
                )
                written += 1
            ctx.fence(s)
        return written


def install_refusal_log(state: CloudState, environ: Mapping[str, str] | None = None) -> RefusalLog | None:
    """Register the ``nginx-refusal-log`` job when :data:`REFUSAL_LOG_ENV` names nginx's refusal log."""
    env = os.environ if environ is None else environ
    path = env.get(REFUSAL_LOG_ENV, "").strip()
    if not path:
        return None
    offset = env.get(REFUSAL_OFFSET_ENV, "").strip()
    offset_path = (
        Path(offset) if offset else Path(state.settings.secret_key_file).parent / "nginx-refusal-log.offset"
    )
    try:
        interval = float(env.get(REFUSAL_INTERVAL_ENV, "30"))
    except ValueError as exc:
        raise ConfigError(f"{REFUSAL_INTERVAL_ENV}: not a number") from exc
    if not interval > 0:
        raise ConfigError(f"{REFUSAL_INTERVAL_ENV}: must be > 0")
    job = RefusalLog(state, Path(path), offset_path)
    state.jobs.register(REFUSAL_LOG_JOB, interval, job.job)
    return job


__all__ = [
    "REFUSAL_LOG_ENV",
    "REFUSAL_LOG_JOB",
    "LogRefusal",
    "RefusalLog",
    "install_refusal_log",
    "parse_refusal_line",
]
