"""Alembic environment for the node DB (online mode only: the daemon migrates a live DB)."""

from __future__ import annotations

from alembic import context

from node.db.models import Base
from node.db.session import make_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no DB URL: pass -x url=... or set sqlalchemy.url")
    return url


def run_migrations_online() -> None:
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE on SQLite
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) mode is not supported; run against a DB")
run_migrations_online()
