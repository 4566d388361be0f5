"""Shared fixtures: real servers started on free ports in temporary directories (see tests/servers.py)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.servers import (
    InfluxServer,
    MosquittoServer,
    PostgresServer,
    VictoriaServer,
    start_influxdb,
    start_mosquitto,
    start_postgres,
    start_victoria,
)

# Fuzzing and property tests: deterministic in CI (a failure reproduces from the printed blob, never
# flickers), random locally so new cases keep being explored.
settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """Give every test the logging state it started with.

    Code under test configures logging process-wide (``configure_logging`` replaces the root handlers,
    ``quiet_chatty_loggers`` sets levels, ``install_log_throttle`` adds a filter to every root handler -
    including pytest's own capture handlers, which live for the whole session). Left behind, such state
    silently changes what a later test's ``caplog`` sees; so levels, ``propagate``, ``disabled``, handlers
    and filters of every logger, and the filters of every handler, are restored after each test.
    """
    manager = logging.Logger.manager
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in list(manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.level, lg.propagate, lg.disabled, list(lg.handlers), list(lg.filters)) for lg in loggers]
    handlers = {h for lg in loggers for h in lg.handlers}
    handler_filters = [(h, list(h.filters), h.level) for h in handlers]
    disable = manager.disable
    yield
    manager.disable = disable
    known = {id(lg) for lg in loggers}
    for lg, level, propagate, disabled, hs, fs in saved:
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled
        lg.handlers[:] = hs
        lg.filters[:] = fs
    # loggers first created during this test: a level or ``disabled`` set on them is the test's doing (a
    # handler may be a library's own, added on import, and stays)
    for new in list(manager.loggerDict.values()):
        if isinstance(new, logging.Logger) and id(new) not in known:
            new.setLevel(logging.NOTSET)
            new.disabled = False
    for h, hfs, hlevel in handler_filters:
        h.filters[:] = hfs
        h.setLevel(hlevel)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    server = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (SQLAlchemy URL, psycopg 3 driver).

    After the test and the fixtures built on it, no connection to the database may be left open: one left
    to the garbage collector failed a fresh-clone run with a ResourceWarning in a Chromium test ninety
    databases later (the shared rate limits' connections outlived their app). Checked here, a leak fails
    the test that made it."""
    url = pg_server.create_database()
    yield url
    left = pg_server.sessions(url.rsplit("/", 1)[1])
    assert not left, f"connections left open to the test's database: {left}"


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaServer]:
    server = start_victoria(tmp_path_factory.mktemp("victoria"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = start_influxdb(tmp_path_factory.mktemp("influxdb"))
    yield server
    server.stop()
