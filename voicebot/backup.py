"""Database backups: ``eva db backup`` / ``eva db restore`` and the optional daily backup of ``eva run``.

SQLite is copied with its online backup API (a consistent snapshot while Eva keeps writing; never a plain file
copy of a WAL database).  PostgreSQL is dumped with ``pg_dump -Fc`` and restored with ``pg_restore``; the password
travels in the environment, never on a command line other users can read.  Backups are private (0600) and the
scheduled ones are pruned to the newest ``keep``.  All functions here block: async code runs them in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from voicebot.errors import EvaError, InvalidInput

log = logging.getLogger(__name__)

SCHEDULED_PREFIX = "eva-auto-"
PG_TIMEOUT_S = 3600.0


class BackupError(EvaError):
    code = "backup_failed"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")  # sortable, and two in one second differ


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise InvalidInput("an in-memory SQLite database cannot be backed up", field="database_url")
    return Path(url.database)


def _pg_command(url: URL, tool: str) -> tuple[list[str], dict[str, str]]:
    exe = shutil.which(tool) or next((str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))
                                      [::-1]), None)
    if exe is None:
        raise BackupError(f"{tool} is not installed (apt-get install postgresql-client)")
    env = dict(os.environ)
    args = [exe, "--no-password"]
    if url.host:
        args += ["--host", url.host]
    if url.port:
        args += ["--port", str(url.port)]
    if url.username:
        args += ["--username", url.username]
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    args += ["--dbname", url.database or "postgres"]
    return args, env


def _private_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)


def backup(database_url: str, target: Path) -> Path:
    """Write a consistent backup of the database to ``target`` (must not exist) and return it."""
    url = make_url(database_url)
    if target.exists():
        raise InvalidInput(f"{target} already exists: choose a new file", field="path")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    _private_file(partial)
    try:
        if url.get_backend_name() == "sqlite":
            source = sqlite3.connect(f"file:{_sqlite_path(url)}?mode=ro", uri=True, timeout=30)
            try:
                dest = sqlite3.connect(partial)
                try:
                    source.backup(dest)
                    dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                finally:
                    dest.close()
            finally:
                source.close()
        elif url.get_backend_name() == "postgresql":
            args, env = _pg_command(url, "pg_dump")
            result = subprocess.run([*args, "--format=custom", "--file", str(partial)], env=env,
                                    capture_output=True, text=True, timeout=PG_TIMEOUT_S, check=False)
            if result.returncode != 0:
                raise BackupError(f"pg_dump failed: {result.stderr.strip()[-500:]}")
        else:
            raise InvalidInput(f"backups support SQLite and PostgreSQL, not {url.get_backend_name()}",
                               field="database_url")
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup failed: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target


def restore(database_url: str, source: Path, *, safety_dir: Path) -> Path | None:
    """Replace the database's contents with the backup ``source``.

    First a backup of the current contents is written to ``safety_dir`` (returned), so a restore of the wrong file
    loses nothing.  Stop Eva before restoring: live connections would see the data change under them.
    """
    url = make_url(database_url)
    if not source.is_file():
        raise InvalidInput(f"no backup file at {source}", field="path")
    backend = url.get_backend_name()
    safety: Path | None = None
    if backend != "sqlite" or _sqlite_path(url).exists():
        suffix = ".db" if backend == "sqlite" else ".dump"
        safety = backup(database_url, safety_dir / f"pre-restore-{_stamp()}{suffix}")
    if backend == "sqlite":
        try:
            src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
            try:
                if src.execute("PRAGMA integrity_check").fetchone() != ("ok",):
                    raise InvalidInput(f"{source} is damaged (integrity check failed)", field="path")
                tables = {row[0] for row in src.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "alembic_version" not in tables:
                    raise InvalidInput(f"{source} is not an Eva database backup", field="path")
                dest = sqlite3.connect(_sqlite_path(url), timeout=30)
                try:
                    src.backup(dest)
                finally:
                    dest.close()
            finally:
                src.close()
        except sqlite3.DatabaseError as exc:
            raise InvalidInput(f"{source} is not a SQLite backup: {exc}", field="path") from exc
    elif backend == "postgresql":
        args, env = _pg_command(url, "pg_restore")
        result = subprocess.run([*args, "--clean", "--if-exists", "--no-owner", "--single-transaction",
                                 str(source)], env=env, capture_output=True, text=True,
                                timeout=PG_TIMEOUT_S, check=False)
        if result.returncode != 0:
            raise BackupError(f"pg_restore failed (the database is unchanged): "
                              f"{result.stderr.strip()[-500:]}")
    else:
        raise InvalidInput(f"backups support SQLite and PostgreSQL, not {backend}", field="database_url")
    return safety


def scheduled_backup(database_url: str, folder: Path, *, keep: int) -> Path:
    """One scheduled backup into ``folder``, then prune to the newest ``keep`` scheduled ones."""
    suffix = ".db" if make_url(database_url).get_backend_name() == "sqlite" else ".dump"
    made = backup(database_url, folder / f"{SCHEDULED_PREFIX}{_stamp()}{suffix}")
    old = sorted(folder.glob(f"{SCHEDULED_PREFIX}*"), key=lambda p: p.name)
    for stale in old[:-keep] if keep > 0 else []:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    return made


async def run_daily_backups(database_url: str, folder: Path, *, every_s: float, keep: int) -> None:
    """The ``eva run`` task: a backup every ``every_s`` seconds (the first one after ``every_s``)."""
    while True:
        await asyncio.sleep(every_s)
        started = time.monotonic()
        try:
            made = await asyncio.to_thread(scheduled_backup, database_url, folder, keep=keep)
        except EvaError as exc:
            log.error("scheduled database backup failed [%s]: %s", exc.code, exc.message)
            continue
        log.info("database backed up to %s in %.1fs", made, time.monotonic() - started)
