"""Run the alembic migrations shipped inside the package (``cloud/migrations``, ``alembic.ini``)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

# alembic logs one INFO line per built-in plugin while it is imported: noise in every start-up log
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import create_engine, pool  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from cloud.db.session import normalise_url, private_sqlite_file  # noqa: E402
from cloud.errors import StorageError  # noqa: E402

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a password holding '%' must be escaped
    cfg.set_main_option("sqlalchemy.url", normalise_url(database_url).replace("%", "%%"))
    return cfg


def upgrade_head(database_url: str, *, secret_key_file: Path | None = None) -> None:
    """``alembic upgrade head`` against ``database_url`` (idempotent).

    ``secret_key_file`` is the key that data migrations seal personal data with (0015_pii_at_rest); without
    it they use ``VIGIL_CLOUD_SECRET_KEY_FILE`` or the default path, and only if that file exists.

    Raises :class:`StorageError` naming the database (without its password) if it cannot be reached.
    """
    url = make_url(normalise_url(database_url))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        private_sqlite_file(Path(url.database))
    cfg = alembic_config(database_url)
    if secret_key_file is not None:
        cfg.attributes["vigil_secret_key_file"] = Path(secret_key_file)
    try:
        if not _at_heads(database_url):
            command.upgrade(cfg, "heads")
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        raise StorageError(
            f"cannot migrate {url.render_as_string(hide_password=True)}: {str(orig).splitlines()[0]}"
        ) from exc


@functools.cache
def script_heads() -> frozenset[str]:
    """The shipped scripts' head revisions, read once per process: alembic compiles every script to find
    them (~60 ms), which each start of the cloud (and each test's cloud) paid for a database at head."""
    return frozenset(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def _at_heads(database_url: str) -> bool:
    """The database is stamped exactly at the scripts' heads (then ``upgrade`` would do nothing)."""
    engine = create_engine(normalise_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return frozenset(MigrationContext.configure(conn).get_current_heads()) == script_heads()
    finally:
        engine.dispose()
