"""Real servers for the tests, each started on a free port in a temporary directory.

Nothing here relies on a service that happens to run on the machine: every server is our own child
process, stopped when the test session ends. Used by ``tests/conftest.py`` and by the benchmarks.

- :func:`start_mosquitto`  Mosquitto 2 (MQTT 3.1.1 / 5)
- :func:`start_postgres`   PostgreSQL (``initdb`` refuses root, so as root it runs as the ``postgres`` user)
- :func:`start_victoria`   VictoriaMetrics, which accepts InfluxDB line protocol on ``/api/v2/write``
- :func:`start_influxdb`   InfluxDB 1.6 (Debian 12's ``influxdb``): InfluxQL ``/query`` and the v1 ``/write``
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(RuntimeError):
    """A test server could not be started."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise ServerError(f"{proc.args!r} exited with {proc.returncode}: {tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServerError(f"{proc.args!r} did not listen on port {port} within {timeout} s")


def _find_binary(name: str, *globs: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for pattern in globs:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    raise ServerError(f"{name} is not installed; run scripts/test (it installs it through apt)")


def _stop(proc: subprocess.Popen[bytes], sig_timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(sig_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- Mosquitto ----------------------------------------------------------------------------------------
@dataclass
class MosquittoServer:
    host: str
    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_config: str = ""

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def start(self) -> None:
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.directory}/\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_queued_messages 100000\n"
            f"{self.extra_config}"
        )
        binary = _find_binary("mosquitto", "/usr/sbin/mosquitto")
        # Mosquitto drops privileges to user 'mosquitto' when started as root; keep files writable for it.
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                pw = pwd.getpwnam("mosquitto")
                os.chown(self.directory, pw.pw_uid, pw.pw_gid)
            conf.write_text(conf.read_text() + "user root\n")
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, self.proc, log=self.log_path)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def start_mosquitto(
    directory: Path | None = None, port: int | None = None, extra_config: str = ""
) -> MosquittoServer:
    d = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="vigil-mosquitto-"))
    d.mkdir(parents=True, exist_ok=True)
    server = MosquittoServer("127.0.0.1", port or free_port(), d, extra_config=extra_config)
    server.start()
    return server


# --- PostgreSQL ---------------------------------------------------------------------------------------
@dataclass
class PostgresServer:
    host: str
    port: int
    directory: Path
    user: str = "postgres"
    proc: subprocess.Popen[bytes] | None = None
    _counter: int = field(default=0, repr=False)

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{self.user}@{self.host}:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={database}"

    def create_database(self, prefix: str = "vigil_test") -> str:
        """Create a fresh database and return its SQLAlchemy URL."""
        import psycopg

        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def sessions(self, database: str, settle_s: float = 2.0) -> list[tuple[int, str, str, str]]:
        """Client sessions still connected to ``database`` (pid, application, state, last query), given
        ``settle_s`` for backends whose client has just closed to exit."""
        import psycopg

        deadline = time.monotonic() + settle_s
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            while True:
                rows = conn.execute(
                    "SELECT pid, application_name, state, left(query, 100) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                ).fetchall()
                if not rows or time.monotonic() > deadline:
                    return [tuple(r) for r in rows]
                time.sleep(0.02)

    def stop(self) -> None:
        """Fast shutdown (SIGINT, as ``pg_ctl stop -m fast`` and systemd do): SIGTERM is PostgreSQL's
        "smart" shutdown, which waits for every client to disconnect; one connection left open by a test
        held the session's teardown 20 s."""
        if self.proc is not None:
            _stop(self.proc, 20, signal.SIGINT)
            self.proc = None


def start_postgres(directory: Path | None = None, port: int | None = None) -> PostgresServer:
    initdb = _find_binary("initdb", "/usr/lib/postgresql/*/bin/initdb")
    bindir = Path(os.path.realpath(initdb)).parent
    postgres = str(bindir / "postgres")
    d = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="vigil-pg-"))
    data, sock = d / "data", d / "sock"
    sock.mkdir(parents=True, exist_ok=True)
    run_as: dict[str, int] = {}
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        pw = pwd.getpwnam("postgres")
        for p in (d, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid}
    log = d / "postgres.log"
    res = subprocess.run(
        [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        capture_output=True,
        cwd=d,
        **run_as,  # type: ignore[call-overload]
    )
    if res.returncode != 0:
        raise ServerError(f"initdb failed: {res.stderr.decode(errors='replace')[-2000:]}")
    port = port or free_port()
    logf = open(log, "wb")  # noqa: SIM115 - owned by the process lifetime
    proc = subprocess.Popen(
        [
            postgres,
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(sock),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
            # throwaway databases need no vacuum; with ~100 of them the launcher visits one every ~0.6 s, and
            # an ANALYZE takes a transaction id, which a test counting the store's transactions saw as its own
            "-c",
            "autovacuum=off",
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
        cwd=d,
        **run_as,  # type: ignore[call-overload]
    )
    logf.close()
    server = PostgresServer("127.0.0.1", port, d, proc=proc)
    try:
        wait_for_port(port, proc, log=log)
        import psycopg

        deadline = time.monotonic() + 20
        while True:  # the port opens before the server accepts connections
            try:
                with psycopg.connect(server.dsn(), connect_timeout=2):
                    break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    except BaseException:
        server.stop()
        raise
    return server


# --- VictoriaMetrics ----------------------------------------------------------------------------------
@dataclass
class VictoriaServer:
    host: str
    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def force_flush(self) -> None:
        """Make just-written samples visible to queries."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


def start_victoria(directory: Path | None = None, port: int | None = None) -> VictoriaServer:
    binary = _find_binary("victoria-metrics", "/usr/bin/victoria-metrics*")
    d = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="vigil-vm-"))
    port = port or free_port()
    log = d / "vm.log"
    logf = open(log, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            binary,
            f"-storageDataPath={d / 'data'}",
            f"-httpListenAddr=127.0.0.1:{port}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerLevel=ERROR",
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
    )
    logf.close()
    server = VictoriaServer("127.0.0.1", port, d, proc=proc)
    try:
        wait_for_port(port, proc, log=log)
        deadline = time.monotonic() + 20
        while True:
            try:
                if urllib.request.urlopen(f"{server.url}/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    except BaseException:
        server.stop()
        raise
    return server


# --- InfluxDB 1.x ---------------------------------------------------------------------------------------
@dataclass
class InfluxServer:
    host: str
    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    #: the admin user when started with ``auth=True`` (``auth-enabled = true``)
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def version(self) -> str:
        with urllib.request.urlopen(f"{self.url}/ping", timeout=5) as r:
            return str(r.headers.get("X-Influxdb-Version", ""))

    def query(self, q: str) -> bytes:
        """POST an InfluxQL statement to ``/query`` (as the admin user when auth is on: 1.x reads the
        ``u``/``p`` credentials from the URL, not from the form body)."""
        auth = ""
        if self.username is not None:
            auth = "?" + urllib.parse.urlencode({"u": self.username, "p": self.password or ""})
        body = urllib.parse.urlencode({"q": q}).encode()
        with urllib.request.urlopen(f"{self.url}/query{auth}", data=body, timeout=10) as r:
            return bytes(r.read())

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


def start_influxdb(
    directory: Path | None = None, port: int | None = None, *, auth: bool = False
) -> InfluxServer:
    """InfluxDB 1.x; with ``auth=True`` HTTP auth is enabled and an admin user (``server.username`` /
    ``server.password``) is created through the HTTP API, as an operator would (the first user may be
    created without credentials and must be an admin)."""
    binary = _find_binary("influxd", "/usr/bin/influxd")
    d = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="vigil-influx-"))
    d.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = d / "influxdb.conf"
    conf.write_text(
        "reporting-disabled = true\n"
        f'bind-address = "127.0.0.1:{free_port()}"\n'
        f'[meta]\n  dir = "{d}/meta"\n'
        f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  query-log-enabled = false\n'
        "[monitor]\n  store-enabled = false\n"
        f'[http]\n  bind-address = "127.0.0.1:{port}"\n  log-enabled = false\n'
        f"  auth-enabled = {'true' if auth else 'false'}\n"
        "[continuous_queries]\n  enabled = false\n"
    )
    log = d / "influxd.log"
    logf = open(log, "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, "-config", str(conf)], stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    server = InfluxServer("127.0.0.1", port, d, proc=proc)
    try:
        wait_for_port(port, proc, log=log)
        deadline = time.monotonic() + 20
        while True:
            try:
                if urllib.request.urlopen(f"{server.url}/ping", timeout=2).status == 204:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if auth:
            password = secrets.token_urlsafe(12)
            server.query(f"CREATE USER \"vigil_admin\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES")
            server.username, server.password = "vigil_admin", password
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running(server_factory: object, *args: object, **kwargs: object) -> Iterator[object]:
    """``with running(start_postgres) as pg: ...`` for scripts and benchmarks."""
    server = server_factory(*args, **kwargs)  # type: ignore[operator]
    try:
        yield server
    finally:
        server.stop()
