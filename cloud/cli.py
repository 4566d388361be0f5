"""`vigil cloud` subcommands: run the service, migrate, provision gateways and users, import devices,
rotate the key that seals personal data.

Heavy imports (FastAPI, SQLAlchemy, uvicorn) happen inside the handlers so ``vigil --help`` stays fast.
Tokens are printed once, to stdout, and never logged.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any


def _settings(args: argparse.Namespace) -> Any:
    from cloud.settings import CloudSettings

    return CloudSettings.from_env(
        database_url=getattr(args, "database_url", None),
        timeseries_url=getattr(args, "timeseries_url", None),
        secret_key_file=getattr(args, "secret_key_file", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
        tls_client_ca=getattr(args, "tls_client_ca", None),
        tls_crl=getattr(args, "tls_crl", None),
    )


def _common(p: argparse.ArgumentParser, *, sub: bool = True) -> None:
    # on subcommands the default is SUPPRESS, so `vigil cloud --database-url X migrate` keeps X
    default = argparse.SUPPRESS if sub else None
    p.add_argument(
        "--database-url",
        default=default,
        help="SQLAlchemy URL (default sqlite:///./var/vigil.db; env VIGIL_CLOUD_DATABASE_URL)",
    )
    p.add_argument(
        "--secret-key-file",
        type=Path,
        default=default,
        help="Fernet key file (default ./var/vigil-secret.key; created 0600 if missing)",
    )


def _ctx(args: argparse.Namespace) -> Any:
    """Database handles for one-shot commands (migrates first, like the service)."""
    from cloud.auth import Credentials
    from cloud.crypto import SecretBox, load_or_create_key
    from cloud.db import Database, upgrade_head
    from cloud.registry import Registry

    s = _settings(args)
    upgrade_head(s.database_url, secret_key_file=s.secret_key_file)
    db = Database(s.database_url)
    return (
        s,
        db,
        Credentials(db, rotation_grace_s=s.gateway_rotation_grace_s),
        Registry(db, SecretBox(load_or_create_key(s.secret_key_file))),
    )


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from cloud.errors import CloudError, ImportRowsError

        try:
            return int(fn(args) or 0)
        except ImportRowsError as exc:
            print(f"error: {exc.detail}", file=sys.stderr)
            for line, msg in exc.rows:
                print(f"  line {line}: {msg}", file=sys.stderr)
            return 1
        except CloudError as exc:
            print(f"error: {exc.detail}", file=sys.stderr)
            return 1
        except ModuleNotFoundError as exc:
            hint = missing_extra_hint(exc)
            if hint is None:
                raise
            print(hint, file=sys.stderr)
            return 1

    return run


#: top-level modules of the ``cloud`` extra (pyproject.toml); a gateway-only install has none of them
CLOUD_EXTRA_MODULES = frozenset(
    {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "influxdb_client", "psycopg"}
)


def missing_extra_hint(exc: ModuleNotFoundError) -> str | None:
    """How to install the cloud's extras, when ``exc`` is one of them missing; ``None`` otherwise."""
    if (exc.name or "").split(".")[0] not in CLOUD_EXTRA_MODULES:
        return None
    return (
        f"error: this needs the cloud extras, and {exc.name!r} is not installed (a gateway-only install?).\n"
        "  install them:   pip install 'vigil-safety[cloud]'\n"
        "  from a checkout: ./scripts/vigil ... (installs everything into .venv), "
        "or pip install -e '.[cloud]'"
    )


def check_port_free(host: str, port: int) -> None:
    """Fail early, with the fix, when the listen port is taken (uvicorn would only log errno 98)."""
    import errno
    import socket

    from cloud.errors import ConfigError

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigError(
                f"port {port} on {host} is in use (another `vigil cloud` or `vigil demo`?): stop it, "
                "or choose another with --port N (or VIGIL_CLOUD_PORT)"
            ) from exc


def _serve(args: argparse.Namespace) -> int:
    from cloud.logs import configure_json_logging

    s = _settings(args)
    check_port_free(s.host, s.port)  # before the heavy imports: a busy port fails at once, with the fix
    from cloud.tls import uvicorn_tls_options

    tls = uvicorn_tls_options(s)  # a bad certificate or key fails here, before anything starts
    if s.json_logs:  # before the heavy imports, so their log lines are JSON too
        configure_json_logging(args.log_level)
    import uvicorn

    from cloud.app import create_app

    clock = None
    if args.clock is not None:
        from cloud.errors import ConfigError
        from firmware_bridge.kernel.clock import AcceleratedClock

        try:
            clock = AcceleratedClock.load(args.clock)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read clock file {args.clock}: {exc}") from exc
    app = create_app(s, clock=clock)
    from cloud.connguard import server_config
    from cloud.limits import GuardMetrics, install_log_throttle

    if not tls and s.host not in _LOOPBACK:
        logging.getLogger("cloud").warning(
            "vigil cloud 以明文 HTTP 在 %s:%d 上提供服务：请设置 VIGIL_CLOUD_TLS_CERT/KEY，"
            "或置于终止 TLS 的反向代理之后 / serving plain HTTP on %s:%d: set VIGIL_CLOUD_TLS_CERT/KEY "
            "or put a TLS-terminating reverse proxy in front (docs/security.md)",
            s.host,
            s.port,
            s.host,
            s.port,
        )
    install_log_throttle()  # repeated lines (a hostile client's errors) at most 5 per 10 s each
    guard = GuardMetrics.for_registry(app.state.vigil.metrics.registry)
    # header/body deadlines and connection caps (issue 11): slow clients cannot take the service down
    uvicorn.Server(server_config(app, host=s.host, port=s.port, metrics=guard, **tls)).run()
    return 0


_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _role(args: argparse.Namespace) -> int:
    """`vigil cloud jobs | mqtt-ingest | detect`: the app's lifespan without HTTP (cloud/roles.py)."""
    import asyncio

    from cloud.logs import configure_json_logging
    from cloud.roles import run_role

    overrides: dict[str, object] = {}
    if args.cloud_command == "jobs":
        overrides = {"run_jobs": True}
    elif args.cloud_command == "detect":
        overrides = {"run_jobs": True, "jobs_only": "detect", "detect_batch_max": args.batch_max}
    if getattr(args, "client_id", None):
        overrides["mqtt_client_id"] = args.client_id
    s = _settings(args).model_copy(update=overrides)
    if s.json_logs:
        configure_json_logging(args.log_level)
    if args.cloud_command == "detect" and not s.detect_gateway_ids:
        from cloud.errors import ConfigError

        raise ConfigError("cloud-side detection is off: set VIGIL_CLOUD_DETECT_GATEWAYS (e.g. ctwing,onenet)")
    body = None
    if args.cloud_command == "mqtt-ingest":
        from cloud.roles import mqtt_body

        body = mqtt_body(s, args.workers)
    asyncio.run(run_role(s, body, metrics_port=args.metrics_port))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from cloud.db import upgrade_head

    s = _settings(args)
    upgrade_head(s.database_url, secret_key_file=s.secret_key_file)
    print("database schema is at head")
    return 0


def _timeseries_upgrade(args: argparse.Namespace) -> int:
    import getpass

    from cloud.db import Database, upgrade_head
    from cloud.loop.config import audit
    from cloud.timeseries.postgres import CollationUpgrade, upgrade_command

    s = _settings(args)
    upgrade_head(s.database_url, secret_key_file=s.secret_key_file)
    db = Database(s.database_url)
    actor = f"cli:{getpass.getuser()}"

    def audited(r: CollationUpgrade) -> None:
        with db.write() as sess:
            audit(
                sess, actor=actor, role="admin", action="timeseries.upgrade", target=r.table,
                now=time.time(), rows=r.rows, locked_s=round(r.locked_s, 3), forced=bool(args.force),
            )  # fmt: skip

    try:
        return upgrade_command(
            s.timeseries_url, force=args.force, lock_timeout_s=args.lock_timeout, on_upgraded=audited
        )
    finally:
        db.close()


def _gateway(args: argparse.Namespace) -> int:
    s, db, creds, _ = _ctx(args)
    try:
        now = time.time()
        if args.action == "add":
            token = creds.add_gateway(args.gateway_id, name=args.name or "", now=now)
        elif args.action == "rotate":
            token = creds.rotate_gateway(args.gateway_id, now=now)
            if s.gateway_rotation_grace_s:
                print(
                    f"# the previous token stays valid for {s.gateway_rotation_grace_s:.0f} s",
                    file=sys.stderr,
                )
        else:
            creds.revoke_gateway(args.gateway_id, now=now)
            print(f"gateway {args.gateway_id} revoked")
            return 0
        print(
            f"# gateway {args.gateway_id}: token (shown once, store it in the gateway's config)",
            file=sys.stderr,
        )
        print(token)
        return 0
    finally:
        db.close()


def _import(args: argparse.Namespace) -> int:
    _, db, _, registry = _ctx(args)
    try:
        n = registry.import_csv(Path(args.csv).read_bytes(), now=time.time(), gateway_id=args.gateway)
        print(f"imported {n} device(s)")
        return 0
    finally:
        db.close()


def _user(args: argparse.Namespace) -> int:
    import getpass

    _, db, creds, _ = _ctx(args)
    try:
        password = None
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        elif args.password:
            password = getpass.getpass(f"password for {args.username}: ")
        token = creds.add_user(args.username, args.role, password=password, now=time.time())
        print(f"# user {args.username} ({args.role}): API token (shown once)", file=sys.stderr)
        print(token)
        return 0
    finally:
        db.close()


def _user_state(args: argparse.Namespace) -> int:
    """``user list`` / ``user disable NAME`` / ``user enable NAME`` (audited as the operating-system user)."""
    import getpass

    _, db, creds, _ = _ctx(args)
    try:
        if args.user_action == "list":
            for u in creds.users():
                state = "已停用 disabled" if u["disabled"] else "启用 active"
                print(f"{u['username']}\t{u['role']}\t{state}\ttokens={u['tokens']}")
            return 0
        disabled = args.user_action == "disable"
        revoked = creds.set_disabled(
            args.username, disabled, actor=f"cli:{getpass.getuser()}", now=time.time()
        )
        if disabled:
            print(f"用户 {args.username} 已停用，撤销令牌 {revoked} 个 / user {args.username} disabled, "
                  f"{revoked} token(s) revoked")  # fmt: skip
        else:
            print(f"用户 {args.username} 已启用（需重新登录）/ user {args.username} enabled (log in again)")
        return 0
    finally:
        db.close()


def _key(args: argparse.Namespace) -> int:
    """``key status | add | rotate | reseal | retire``: rotate the key that seals personal data (audited).

    The procedure across hosts (add, copy, restart; rotate, copy, restart; reseal, retire, copy, restart)
    is in docs/privacy.md; every step refuses what would leave a value unreadable.
    """
    import getpass

    from cloud import privacy
    from cloud.crypto import key_id, load_or_create_key
    from cloud.db import Database, upgrade_head
    from cloud.errors import ConfigError

    s = _settings(args)
    path = Path(s.secret_key_file)
    if not path.exists():  # never create a key here: it would not open what the database holds
        raise ConfigError(
            f"secret key file {path} does not exist: point --secret-key-file at the server's key"
        )
    upgrade_head(s.database_url, secret_key_file=path)
    db = Database(s.database_url)
    actor = f"cli:{getpass.getuser()}"
    try:
        action = args.key_action
        if action == "status":
            ring = load_or_create_key(path)
            counts = privacy.census(db, ring)
            indexes = privacy.index_census(db, ring)
            for e in ring.entries:
                n = counts.get(key_id(e.key), 0) if e.role != "hmac" else "-"
                m = indexes.get(key_id(e.key), 0)
                print(f"{e.role}\t{key_id(e.key)}\tsealed values: {n}\tphone indexes: {m}")
            if counts.get("unreadable"):
                print(f"无法解密 unreadable\t-\tsealed values: {counts['unreadable']}")
            stale = sum(n for k, n in indexes.items() if k != key_id(ring.primary))
            print(f"旧密钥下的电话索引 phone indexes not under the primary: {stale}")
            return 0
        if action == "add":
            ring = privacy.add_next_key(path)
            added = key_id(next(e.key for e in ring.entries if e.role == "next"))
            privacy.audit_key_action(db, actor=actor, action="key.add", target=added)
            print(f"新密钥 {added} 已加入（仅解密）/ key {added} added (opens only)")
            print(f"下一步：把 {path} 复制到每台云主机并重启各角色，然后 `vigil cloud key rotate`。")
            print(
                f"next: copy {path} to every cloud host, restart every role, then `vigil cloud key rotate`."
            )
            return 0
        if action == "rotate":
            ring, old, new = privacy.promote_next_key(path)
            privacy.audit_key_action(db, actor=actor, action="key.rotate", target=new, previous=old)
            print(f"主密钥 {old} -> {new} / primary key {old} -> {new}; resealing ...", file=sys.stderr)
        else:
            ring = load_or_create_key(path)
        if action in ("rotate", "reseal"):
            report = privacy.reseal(
                db,
                ring,
                batch=args.batch,
                after_batch=lambda col, n: print(f"  {col}: +{n}", file=sys.stderr),
            )
            privacy.audit_key_action(
                db,
                actor=actor,
                action="key.reseal",
                target=key_id(ring.primary),
                resealed=report.total,
                reindexed=report.reindexed,
            )
            for col, n in report.resealed.items():
                print(f"{col}\tresealed {n}\talready {report.already[col]}")
            print(
                f"notify_contacts.phone_hash\treindexed {report.reindexed}\t"
                f"(sms log {report.inbound_rehashed}, report hashes blanked {report.reports_forgotten})"
            )
            print(f"下一步：复制 {path} 到每台主机并重启，再 `key reseal` 与 `key retire`。")
            print(
                f"next: copy {path} to every host and restart them, then `key reseal` again and `key retire`."
            )
            return 0
        from cloud.notify.config import NotifyConfig

        notify = NotifyConfig.load(s.notify_config_file)
        ring, retired = privacy.retire_old_keys(
            db, path, links_live_s=notify.link_ttl_s + notify.reopen_window_s, void_links=args.void_links
        )
        if not retired:
            print("没有旧密钥可退役 / no old key to retire")
            return 0
        for k in retired:
            privacy.audit_key_action(
                db, actor=actor, action="key.retire", target=k, void_links=bool(args.void_links)
            )
        if args.void_links:
            print("用旧密钥签发的消息链接已作废 / links signed with the retired key are void")
        print(f"已退役 retired: {', '.join(retired)}; copy {path} to every cloud host and restart them.")
        return 0
    finally:
        db.close()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this package's subcommands to the `vigil` parser."""
    p = sub.add_parser("cloud", help="the cloud service: run it, migrate, provision gateways/users/devices")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8080)")
    p.add_argument("--timeseries-url", help="sqlite:///path, influx://..., victoria://host:port")
    p.add_argument(
        "--tls-cert", type=Path, help="serve HTTPS: PEM certificate chain (env VIGIL_CLOUD_TLS_CERT)"
    )
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (env VIGIL_CLOUD_TLS_KEY)")
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        help="require client certificates signed by this CA (mutual TLS; env VIGIL_CLOUD_TLS_CLIENT_CA)",
    )
    p.add_argument(
        "--tls-crl",
        type=Path,
        help="refuse client certificates this CRL revokes, re-read when it changes (env VIGIL_CLOUD_TLS_CRL)",
    )
    p.add_argument(
        "--clock", type=Path, help="accelerated clock file written by `vigil simulate` (simulations)"
    )
    _common(p, sub=False)
    p.set_defaults(handler=_guard(_serve))
    csub = p.add_subparsers(dest="cloud_command", metavar="SUBCOMMAND")

    m = csub.add_parser("migrate", help="upgrade the database schema to the newest version (alembic)")
    _common(m)
    m.set_defaults(handler=_guard(_migrate))

    roles = {
        "jobs": "run the periodic jobs (connectivity, escalation, retries): each in one process at a time",
        "mqtt-ingest": "MQTT ingest workers on the broker's shared subscription (VIGIL_CLOUD_MQTT_*)",
        "detect": "cloud-side detection over readings that arrive without a Vigil gateway",
    }
    for name, text in roles.items():
        r = csub.add_parser(name, help=text, description=text + ". See docs/deploy-district.md.")
        r.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
        if name == "mqtt-ingest":
            r.add_argument("--workers", type=int, default=1, help="workers in this process (default 1)")
            r.add_argument("--client-id", help="stable client id prefix (default VIGIL_CLOUD_MQTT_CLIENT_ID)")
        if name == "detect":
            r.add_argument("--batch-max", type=int, default=50_000, help="readings per detection pass")
        _common(r)
        r.set_defaults(handler=_guard(_role))

    text = (
        "give PostgreSQL time-series tables made by an older store the bytewise device_id key "
        "(rebuilds each table's key index, blocking its writes meanwhile)"
    )
    ts = csub.add_parser("timeseries-upgrade", help=text, description=text + ". See docs/timeseries.md.")
    ts.add_argument(
        "--timeseries-url",
        default=argparse.SUPPRESS,
        help="the store to upgrade (default: the service's, env VIGIL_CLOUD_TIMESERIES_URL)",
    )
    ts.add_argument(
        "--force",
        action="store_true",
        help="run although ingest workers or the cloud service are connected (their writes wait; audited)",
    )
    ts.add_argument(
        "--lock-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="give up on a table whose lock is not free within S seconds (default 10)",
    )
    _common(ts)
    ts.set_defaults(handler=_guard(_timeseries_upgrade))

    g = csub.add_parser("gateway", help="provision, rotate or revoke a gateway credential")
    g.add_argument("action", choices=("add", "rotate", "revoke"))
    g.add_argument("gateway_id")
    g.add_argument("--name", help="display name (add)")
    _common(g)
    g.set_defaults(handler=_guard(_gateway))

    i = csub.add_parser("import-devices", help="bulk-import devices from CSV (all rows or none)")
    i.add_argument("csv", help="CSV with the columns `vigil simulate` writes (UTF-8, or GBK from Excel)")
    i.add_argument(
        "--gateway", metavar="ID", help="assign every device to this gateway (a development gateway)"
    )
    _common(i)
    i.set_defaults(handler=_guard(_import))

    u = csub.add_parser("user", help="add a user and print an API token")
    usub = u.add_subparsers(dest="user_action", metavar="ACTION", required=True)
    ua = usub.add_parser("add", help="add a user")
    ua.add_argument("username")
    ua.add_argument("--role", choices=("admin", "dispatcher", "operator", "viewer"), default="viewer")
    ua.add_argument("--password", action="store_true", help="also set a password for login (prompted)")
    ua.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    _common(ua)
    ua.set_defaults(handler=_guard(_user))
    ul = usub.add_parser("list", help="list users: role, active or disabled, live tokens")
    _common(ul)
    ul.set_defaults(handler=_guard(_user_state))
    for action, text in (
        ("disable", "disable a user: login refused, every token revoked at once (audited)"),
        ("enable", "enable a disabled user again (audited; they log in again)"),
    ):
        ud = usub.add_parser(action, help=text)
        ud.add_argument("username")
        _common(ud)
        ud.set_defaults(handler=_guard(_user_state))

    k = csub.add_parser("key", help="rotate the key that seals personal data (docs/privacy.md)")
    ksub = k.add_subparsers(dest="key_action", metavar="ACTION", required=True)
    for action, text in (
        ("status", "list the keys (ids, never keys) and how many sealed values each one opens"),
        ("add", "add a new key that opens but does not seal yet; copy the file to every host next"),
        ("rotate", "make the added key primary and re-seal every value under it (resumable; audited)"),
        ("reseal", "re-seal what is still under an old key (resumes an interrupted rotation)"),
        ("retire", "remove old keys; refused while a value or phone index needs one, or links may be live"),
    ):
        ka = ksub.add_parser(action, help=text)
        if action in ("rotate", "reseal"):
            ka.add_argument("--batch", type=int, default=500, help="rows per transaction (default 500)")
        if action == "retire":
            ka.add_argument(
                "--void-links",
                action="store_true",
                help="retire within the longest link lifetime after the last rotate (link_ttl_s + "
                "reopen_window_s, 8 days by default), voiding the links the old key signed (after a leak)",
            )
        _common(ka)
        ka.set_defaults(handler=_guard(_key))
