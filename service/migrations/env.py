"""Alembic environment: the URL comes from the caller's Config (service.store.migrate) or from
BITPLAN_DATABASE_URL when run as ``alembic -c service/migrations/alembic.ini upgrade head``."""
from __future__ import annotations

import os

from alembic import context

from service.db import Base, make_engine

config = context.config
url = config.get_main_option("sqlalchemy.url") or os.environ.get("BITPLAN_DATABASE_URL", "sqlite:///var/bitplan.db")


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=url.startswith("sqlite"))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
