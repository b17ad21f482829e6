"""``eva db upgrade|status``: the database schema (Alembic migrations in ``models/migrations``)."""

from __future__ import annotations

import argparse

from sqlalchemy.engine import Engine

from voicebot.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("db", help="database schema: upgrade to the newest revision, or show status")
    actions = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    actions.add_parser("upgrade", help="apply pending migrations (idempotent)").set_defaults(func=upgrade)
    actions.add_parser("status", help="show the schema revision of the database and of the code"
                       ).set_defaults(func=status)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_engine(settings: Settings, *, upgrade_schema: bool = True) -> Engine:
    """The engine for ``settings`` with the schema brought up to date (what every CLI command that touches
    the database starts with, so a command never fails on a missing or old schema)."""
    from models.db import make_engine
    from models.db import upgrade as alembic_upgrade

    engine = make_engine(settings.effective_database_url)
    if upgrade_schema:
        alembic_upgrade(engine)
    return engine


def upgrade(args: argparse.Namespace) -> int:
    from models.db import schema_revisions

    settings = Settings.load()
    engine = open_engine(settings, upgrade_schema=False)
    try:
        before, head = schema_revisions(engine)
        if before == head:
            print(f"database schema is up to date (revision {head})")
            return 0
        from models.db import upgrade as alembic_upgrade

        alembic_upgrade(engine)
        after, _ = schema_revisions(engine)
        print(f"database schema upgraded from {before or 'empty'} to {after}")
        return 0
    finally:
        engine.dispose()


def status(args: argparse.Namespace) -> int:
    from models.db import schema_revisions

    settings = Settings.load()
    engine = open_engine(settings, upgrade_schema=False)
    try:
        current, head = schema_revisions(engine)
    finally:
        engine.dispose()
    state = "up to date" if current == head else "needs `eva db upgrade`"
    print(f"database: {_redacted(settings.effective_database_url)}\nrevision: {current or 'none'} "
          f"(code: {head}) - {state}")
    return 0 if current == head else 1
