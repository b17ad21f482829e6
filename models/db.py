"""Database engine, sessions and migrations.

SQLite (WAL mode, a file under the data directory) by default; any SQLAlchemy URL through
``EVA_DATABASE_URL`` (PostgreSQL in production).  The schema is owned by Alembic (``models/migrations``);
``upgrade()`` runs on start and by ``eva db upgrade``.  All calls here are blocking: async code uses
``asyncio.to_thread`` (or an executor) around them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

import models  # noqa: F401 - registers every table on SQLModel.metadata

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # NORMAL in WAL mode survives a crash of Eva but may lose the last commits on power loss; FULL
            # fsyncs the WAL on every commit, measured ~7 ms instead of ~0.1 ms per commit on a VM disk, which
            # would lengthen every voice write holding SQLite's single write lock.  So NORMAL by default, and
            # FULL only where a commit is promised to someone outside (see durable_session_scope).
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)
    if revision == "head":
        check_columns(engine)


def check_columns(engine: Engine) -> None:
    """Every table and column of the code exists in the database, or a ConfigError saying what to do.

    Until Eva's first release the initial migration is regenerated in place, so a database made by an older
    development checkout can be "at revision 0001" and still lack newer columns: say so plainly instead of
    failing later with an SQL error in the middle of setup or a call."""
    from sqlalchemy import inspect

    from voicebot.errors import ConfigError

    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    missing: list[str] = []
    for table in SQLModel.metadata.sorted_tables:
        if table.name not in tables:
            missing.append(table.name)
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing.extend(f"{table.name}.{c.name}" for c in table.columns if c.name not in have)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(
            f"the database was made by an older development version of Eva and lacks {shown}; back it up "
            "(`eva db backup`), then move the database file away (or drop the database) and run the command "
            "again to create a fresh one",
            code="database_outdated",
        )


def schema_revisions(engine: Engine) -> tuple[str | None, str | None]:
    """(revision the database is at, newest revision of the code); equal when no upgrade is needed."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, head


@contextmanager
def _committed(session: Session) -> Iterator[Session]:
    """Commit on success, roll back on any error (nothing half-written)."""
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error (nothing half-written)."""
    with Session(engine, expire_on_commit=False) as session, _committed(session):
        yield session


@contextmanager
def durable_session_scope(engine: Engine) -> Iterator[Session]:
    """:func:`session_scope` whose commit is on disk when it returns, even across a power loss: for what is
    acknowledged to a sender that will not send it again (a WhatsApp webhook answered 200).  SQLite runs this
    one transaction with ``synchronous=FULL`` (which also makes every earlier commit in the WAL durable);
    PostgreSQL's default ``synchronous_commit=on`` already is."""
    if engine.dialect.name != "sqlite":
        with session_scope(engine) as session:
            yield session
        return
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA synchronous=FULL")
        connection.commit()
        try:
            with Session(bind=connection, expire_on_commit=False) as session, _committed(session):
                yield session
        finally:
            connection.exec_driver_sql("PRAGMA synchronous=NORMAL")  # pooled connections go back as they came
            connection.commit()
