"""``eva db upgrade|status|backup|restore``: the database schema (Alembic migrations in ``models/migrations``)
and its backups (see :mod:`voicebot.backup`)."""

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
    backup = actions.add_parser("backup", help="write a consistent backup of the database (safe while Eva runs)")
    backup.add_argument("path", nargs="?", help="backup file to write (default: <data dir>/backups/eva-<time>.db)")
    backup.set_defaults(func=backup_cmd)
    restore = actions.add_parser("restore", help="replace the database with a backup (stop Eva first); the "
                                 "current contents are backed up before")
    restore.add_argument("path", help="a file written by `eva db backup`")
    restore.set_defaults(func=restore_cmd)


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
            from models.db import check_columns

            check_columns(engine)
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


def backup_cmd(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from voicebot.backup import _stamp, backup

    settings = Settings.load()
    suffix = ".db" if make_url(settings.effective_database_url).get_backend_name() == "sqlite" else ".dump"
    target = Path(args.path) if args.path else settings.backup_dir / f"eva-{_stamp()}{suffix}"
    made = backup(settings.effective_database_url, target.resolve())
    print(f"database backed up to {made} ({made.stat().st_size} bytes)")
    return 0


def restore_cmd(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.db import make_engine
    from models.db import upgrade as alembic_upgrade
    from voicebot.backup import restore

    settings = Settings.load()
    safety = restore(settings.effective_database_url, Path(args.path).resolve(), safety_dir=settings.backup_dir)
    if safety is not None:
        print(f"the previous contents were saved to {safety}")
    engine = make_engine(settings.effective_database_url)
    try:
        alembic_upgrade(engine)  # a backup from an older Eva is brought to this version's schema
    finally:
        engine.dispose()
    print(f"database restored from {args.path}")
    return 0
