"""Credentials: gateway tokens, user API tokens, passwords, roles.

Tokens are 32 random bytes (``secrets.token_urlsafe(32)``) with a readable prefix (``vgw_`` gateway,
``vus_`` user). Only their SHA-256 is stored. A slow hash (scrypt) protects *low*-entropy secrets such as
passwords against offline guessing; a 256-bit random token cannot be guessed, so a fast hash is enough and
lets every request find its credential by an indexed equality lookup. Passwords use scrypt from
``hashlib`` (n=2**14, r=8, p=1, 16-byte salt), compared in constant time.

Roles, from most to least privileged: ``admin`` (manage everything, see personal data), ``dispatcher``
(see personal data to call people), ``operator`` and ``viewer`` (see masked personal data), and
``gateway`` (may only ingest for its own devices).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from cloud.db import ApiToken, Database, Gateway, User
from cloud.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
)

GATEWAY_TOKEN_PREFIX = "vgw_"
USER_TOKEN_PREFIX = "vus_"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class Role(StrEnum):
    ADMIN = "admin"
    DISPATCHER = "dispatcher"
    OPERATOR = "operator"
    VIEWER = "viewer"
    GATEWAY = "gateway"


USER_ROLES = (Role.ADMIN, Role.DISPATCHER, Role.OPERATOR, Role.VIEWER)
#: roles that may read personal data (wearer name and phone, emergency contact) unmasked
PERSONAL_DATA_ROLES = frozenset({Role.ADMIN, Role.DISPATCHER})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user (``name`` = username) or a gateway (``name`` = gateway id)."""

    role: Role
    name: str

    @property
    def is_gateway(self) -> bool:
        return self.role is Role.GATEWAY


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise BadRequestError("a password needs at least 8 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        if algo != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


class Credentials:
    """Issue, rotate, revoke and check credentials. Blocking (call from a worker thread)."""

    def __init__(self, db: Database, *, rotation_grace_s: float) -> None:
        self.db = db
        self.rotation_grace_s = rotation_grace_s

    # -- gateways -------------------------------------------------------------------------------------
    def add_gateway(self, gateway_id: str, *, name: str = "", now: float) -> str:
        """Provision a gateway; returns its token (shown once, never stored in clear)."""
        token = new_token(GATEWAY_TOKEN_PREFIX)
        with self.db.write() as s:
            if s.get(Gateway, gateway_id) is not None:
                raise ConflictError(f"gateway {gateway_id!r} already exists")
            s.add(
                Gateway(
                    gateway_id=gateway_id,
                    name=name,
                    token_hash=token_hash(token),
                    created_at=now,
                    batches_total=0,
                )
            )
        return token

    def rotate_gateway(self, gateway_id: str, *, now: float) -> str:
        """New token; the previous one keeps working for ``rotation_grace_s`` (0 = invalid at once)."""
        token = new_token(GATEWAY_TOKEN_PREFIX)
        with self.db.write() as s:
            gw = s.get(Gateway, gateway_id)
            if gw is None:
                raise NotFoundError(f"no gateway {gateway_id!r}")
            if gw.revoked_at is not None:
                raise ConflictError(f"gateway {gateway_id!r} is revoked; add it again under a new id")
            if self.rotation_grace_s > 0:
                gw.prev_token_hash, gw.prev_token_expires_at = gw.token_hash, now + self.rotation_grace_s
            else:
                gw.prev_token_hash, gw.prev_token_expires_at = None, None
            gw.token_hash = token_hash(token)
        return token

    def revoke_gateway(self, gateway_id: str, *, now: float) -> None:
        """Immediately invalidate every token of the gateway (a stolen Pi)."""
        with self.db.write() as s:
            gw = s.get(Gateway, gateway_id)
            if gw is None:
                raise NotFoundError(f"no gateway {gateway_id!r}")
            gw.revoked_at = now
            gw.prev_token_hash, gw.prev_token_expires_at = None, None

    def gateway_for_token(self, token: str, *, now: float) -> str:
        """The gateway a token belongs to (its current token, or the previous one within its grace period).

        Every uplink batch asks this, so it is one indexed driver-level ``SELECT`` of three columns rather
        than an ORM load of the whole row (its status document included): 1.2 ms -> ~0.1 ms per request
        in the whole-path profile (bench/bench_ingest.py), on a pooled driver connection rather than a
        session (59 -> 9 us per lookup). Never cached: a revocation counts at once, in every worker."""
        h = token_hash(token)
        mark = "?" if self.db.is_sqlite else "%s"
        head = "SELECT gateway_id, revoked_at, prev_token_expires_at FROM gateways WHERE "
        with _driver_cursor(self.db) as cur:
            cur.execute(f"{head}token_hash = {mark}", (h,))
            row = cur.fetchone()
            if row is None:
                cur.execute(f"{head}prev_token_hash = {mark}", (h,))
                row = cur.fetchone()
                if row is not None and (row[2] or 0) <= now:
                    raise AuthenticationError("this gateway token was rotated and its grace period is over")
        if row is None:
            raise AuthenticationError("unknown token")
        if row[1] is not None:
            raise AuthenticationError(f"gateway {row[0]!r} is revoked")
        return str(row[0])

    # -- users ----------------------------------------------------------------------------------------
    def add_user(self, username: str, role: Role | str, *, password: str | None = None, now: float) -> str:
        """Create a user and an API token for it (returned once)."""
        role = Role(role)
        if role not in USER_ROLES:
            raise BadRequestError(f"a user role is one of {[r.value for r in USER_ROLES]}")
        pw = hash_password(password) if password else None
        token = new_token(USER_TOKEN_PREFIX)
        with self.db.write() as s:
            if s.scalars(select(User).where(User.username == username)).first() is not None:
                raise ConflictError(f"user {username!r} already exists")
            user = User(username=username, role=role.value, password_hash=pw, created_at=now, disabled=False)
            s.add(user)
            s.flush()
            s.add(ApiToken(token_hash=token_hash(token), user_id=user.id, created_at=now))
        return token

    def login(self, username: str, password: str, *, now: float, ttl_s: float = 12 * 3600) -> str:
        """Password login: returns a new bearer token valid for ``ttl_s``."""
        with self.db.read() as s:
            user = s.scalars(select(User).where(User.username == username)).first()
        # constant work whether or not the user exists, so response time does not reveal usernames
        ok = verify_password(password, user.password_hash if user else _dummy_hash())
        if user is None or not ok or user.disabled:
            raise AuthenticationError("wrong username or password")
        token = new_token(USER_TOKEN_PREFIX)
        with self.db.write() as s:
            s.add(
                ApiToken(
                    token_hash=token_hash(token), user_id=user.id, created_at=now, expires_at=now + ttl_s
                )
            )
        return token

    def set_disabled(self, username: str, disabled: bool, *, actor: str, now: float) -> int:
        """Disable (or enable again) a user, audited. Disabling also deletes every token of the user, so
        open sessions end at once, not when they expire; returns how many tokens were revoked."""
        from sqlalchemy import delete

        from cloud.loop.config import audit

        with self.db.write() as s:
            user = s.scalars(select(User).where(User.username == username)).first()
            if user is None:
                raise NotFoundError(f"no user {username!r}")
            user.disabled = disabled
            revoked = 0
            if disabled:
                result = s.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
                revoked = int(result.rowcount or 0)  # type: ignore[attr-defined]
            audit(
                s,
                actor=actor[:64],
                role="admin",
                action="user.disable" if disabled else "user.enable",
                target=f"user:{username}"[:128],
                now=now,
                tokens_revoked=revoked,
            )
        return revoked

    def users(self) -> list[dict[str, object]]:
        """Every user with role, state and live token count (never a token or a hash)."""
        from sqlalchemy import func

        with self.db.read() as s:
            counts = {
                int(uid): int(n)
                for uid, n in s.execute(select(ApiToken.user_id, func.count()).group_by(ApiToken.user_id))
            }
            return [
                {
                    "username": u.username,
                    "role": u.role,
                    "disabled": bool(u.disabled),
                    "created_at": u.created_at,
                    "tokens": int(counts.get(u.id, 0)),
                }
                for u in s.scalars(select(User).order_by(User.username))
            ]

    def revoke_user_token(self, token: str) -> None:
        """Log out: the token stops working at once (the user's other tokens are untouched)."""
        with self.db.write() as s:
            row = s.get(ApiToken, token_hash(token))
            if row is None:
                raise AuthenticationError("unknown token")
            s.delete(row)

    def user_for_token(self, token: str, *, now: float) -> Principal:
        with self.db.read() as s:
            row = s.execute(
                select(User, ApiToken)
                .join(ApiToken, ApiToken.user_id == User.id)
                .where(ApiToken.token_hash == token_hash(token))
            ).first()
            if row is None:
                raise AuthenticationError("unknown token")
            user, tok = row
            if tok.expires_at is not None and tok.expires_at <= now:
                raise AuthenticationError("token expired; log in again")
            if user.disabled:
                raise AuthenticationError(f"user {user.username!r} is disabled")
            return Principal(Role(user.role), user.username)

    def principal_for_token(self, token: str, *, now: float) -> Principal:
        if token.startswith(GATEWAY_TOKEN_PREFIX):
            return Principal(Role.GATEWAY, self.gateway_for_token(token, now=now))
        if token.startswith(USER_TOKEN_PREFIX):
            return self.user_for_token(token, now=now)
        raise AuthenticationError("malformed token")


class GatewayCertificateError(PermissionDeniedError):
    """403: a gateway token arrived without that gateway's own client certificate (docs/mtls.md).

    ``reason`` is ``certificate_mismatch`` (a certificate of another gateway, or of no gateway) or
    ``certificate_required`` (none, where binding is required); it is in the body, the audit log and
    ``vigil_cloud_gateway_certificate_refusals_total{reason}``.
    """

    def __init__(self, detail: str, *, reason: str, gateway_id: str, subject: str | None) -> None:
        super().__init__(detail)
        self.reason, self.gateway_id, self.subject = reason, gateway_id, subject

    def body(self) -> dict[str, object]:
        return {**super().body(), "reason": self.reason}


def check_gateway_certificate(
    principal: Principal, cert_gateway_id: str | None, subject: str | None, *, required: bool
) -> None:
    """A gateway's token must come with its own certificate: the certificate's gateway id (its CN) must be
    the token's. ``subject`` is ``None`` when no certificate was presented, which only ``required``
    refuses. Users' tokens are not bound to certificates (a console in a browser has none)."""
    if not principal.is_gateway:
        return
    gw = principal.name
    if subject is None:
        if required:
            raise GatewayCertificateError(
                f"gateway {gw!r} must present its client certificate (CN={gw}) with its token",
                reason="certificate_required",
                gateway_id=gw,
                subject=None,
            )
        return
    if cert_gateway_id != gw:
        raise GatewayCertificateError(
            f"the client certificate ({subject}) is not gateway {gw!r}'s: its CN must be the gateway id",
            reason="certificate_mismatch",
            gateway_id=gw,
            subject=subject,
        )


def require(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        raise PermissionDeniedError(
            f"role {principal.role.value!r} may not do this (needs one of {[r.value for r in roles]})"
        )


@functools.cache
def _dummy_hash() -> str:
    return hash_password("not-a-real-password")


class LoginThrottle:
    """Failed logins back off per username and per client address.

    The first ``free`` failures of a key cost nothing; each further failure locks the key for twice as
    long as the last (1 s, 2 s, 4 s ... up to ``max_s``), counted from the latest failure. A success clears
    the username's and the address's count.

    With ``db`` (the service), the counts are read from the audit log the login endpoint already writes
    (``auth.login_failed`` / ``auth.login`` rows in ``loop_audit``: actor = username, target =
    ``addr:<address>``): every worker process sees the same counts and a restart forgets nothing. Only
    failures within ``window_s`` (default one day) and after the key's latest success count; the query
    uses the audit log's time index. :meth:`failed` and :meth:`succeeded` then only keep the in-memory
    copy, and :meth:`retry_after` (blocking: call it from a worker thread) takes the longer of both.

    Without ``db`` (tests, tools) it is in memory and per process; at most ``max_keys`` keys are tracked
    (the oldest are forgotten), so a flood of made-up usernames cannot grow memory without bound.
    """

    def __init__(
        self,
        db: Database | None = None,
        *,
        free: int = 5,
        max_s: float = 900.0,
        max_keys: int = 10_000,
        window_s: float = 86400.0,
    ) -> None:
        self.db = db
        self.free, self.max_s, self.max_keys, self.window_s = free, max_s, max_keys, window_s
        self._fails: dict[str, tuple[int, float]] = {}  # key -> (failures, locked until)

    @staticmethod
    def keys(username: str, address: str) -> tuple[str, str]:
        return f"user:{username}", f"addr:{address}"

    def lock_s(self, failures: int) -> float:
        """How long ``failures`` consecutive failures lock a key (0 while within ``free``)."""
        over = failures - self.free
        # the exponent is capped: 2.0 ** 1100 overflows, and a flood of failures must not turn into a 500
        return min(2.0 ** min(over - 1, 60), self.max_s) if over > 0 else 0.0

    def retry_after(self, keys: tuple[str, ...], *, now: float) -> float:
        """Seconds until these keys may try again (0: now)."""
        local = max((self._fails.get(k, (0, 0.0))[1] - now for k in keys), default=0.0)
        if self.db is None:
            return local
        return max(local, self._shared_retry_after(keys, now=now))

    def _shared_retry_after(self, keys: tuple[str, ...], *, now: float) -> float:
        from sqlalchemy import func

        from cloud.loop.models import AuditEntry as A

        wait = 0.0
        assert self.db is not None
        with self.db.read() as s:
            for key in keys:
                kind, _, value = key.partition(":")
                column = A.actor if kind == "user" else A.target
                match = value[:64] if kind == "user" else key[:128]
                since = now - self.window_s
                last_ok = s.scalar(
                    select(func.max(A.at)).where(A.at > since, A.action == "auth.login", column == match)
                )
                n, last_fail = s.execute(
                    select(func.count(), func.max(A.at)).where(
                        A.at > (since if last_ok is None else max(since, last_ok)),
                        A.action == "auth.login_failed",
                        column == match,
                    )
                ).one()
                if n and last_fail is not None:
                    wait = max(wait, float(last_fail) + self.lock_s(int(n)) - now)
        return wait

    def failed(self, keys: tuple[str, ...], *, now: float) -> None:
        for k in keys:
            n = self._fails.pop(k, (0, 0.0))[0] + 1
            self._fails[k] = (n, now + self.lock_s(n))
        while len(self._fails) > self.max_keys:
            del self._fails[next(iter(self._fails))]

    def succeeded(self, keys: tuple[str, ...]) -> None:
        for k in keys:
            self._fails.pop(k, None)


@contextmanager
def _driver_cursor(db: Database) -> Iterator[Any]:
    """A cursor on a pooled driver connection, for a read of a few rows on the hot path (no ORM session:
    ~50 us less per request); the connection goes back to the pool rolled back. Driver and pool errors
    become :class:`StorageError`, as :meth:`Database.read` translates them."""
    dbapi_error = db.engine.dialect.loaded_dbapi.Error
    try:
        conn = db.engine.raw_connection()
    except (SQLAlchemyError, dbapi_error) as exc:  # the pool hands a failed connect on unwrapped
        raise StorageError(f"database read failed: {type(exc).__name__}") from exc
    try:
        yield conn.cursor()
    except dbapi_error as exc:
        raise StorageError(f"database read failed: {type(exc).__name__}") from exc
    finally:
        conn.close()
