"""Alembic environment: online migrations only, against the URL set by ``cloud.db.migrate``."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from cloud.db.models import Base
from cloud.db.session import normalise_url

config = context.config
url = config.get_main_option("sqlalchemy.url") or os.environ.get("VIGIL_CLOUD_DATABASE_URL", "")
if not url:
    raise RuntimeError("no database URL: set VIGIL_CLOUD_DATABASE_URL or use `vigil cloud migrate`")

engine = create_engine(normalise_url(url), poolclass=pool.NullPool)
try:
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
