"""Alembic environment: migrations run on the engine handed over in ``config.attributes['engine']``."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import models  # noqa: F401 - registers every table

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
