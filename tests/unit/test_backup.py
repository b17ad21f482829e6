"""``eva db backup`` / ``eva db restore`` on real SQLite (while another connection writes) and real PostgreSQL."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from models import Agent
from models.db import make_engine, upgrade
from voicebot.backup import backup, restore, scheduled_backup
from voicebot.cli import main
from voicebot.errors import InvalidInput

pytestmark = pytest.mark.db  # every test here backs up and restores a migrated database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'eva.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        session.add(Agent(name="before"))
        session.commit()
    engine.dispose()
    return str(url)


def _fresh_sqlite(path: Path) -> str:
    """A migrated, empty SQLite database at ``path``; its URL."""
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def _names(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return sorted(a.name for a in session.exec(select(Agent)).all())
    finally:
        engine.dispose()


def _add(url: str, name: str) -> None:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            session.add(Agent(name=name))
            session.commit()
    finally:
        engine.dispose()


def test_backup_then_restore_brings_the_data_back(database_url: str, tmp_path: Path) -> None:
    made = backup(database_url, tmp_path / "backups" / "one.bak")
    assert stat.S_IMODE(made.stat().st_mode) == 0o600  # transcripts and contacts: private
    _add(database_url, "after")
    assert _names(database_url) == ["after", "before"]
    safety = restore(database_url, made, safety_dir=tmp_path / "backups")
    assert _names(database_url) == ["before"]
    assert safety is not None and safety.exists()
    restore(database_url, safety, safety_dir=tmp_path / "backups")  # the restore itself can be undone
    assert _names(database_url) == ["after", "before"]


def test_sqlite_backup_is_consistent_while_eva_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'eva.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE load (n INTEGER, pad TEXT)"))
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO load VALUES (:n, :pad)"), {"n": n, "pad": "p" * 500})
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        made = [backup(url, tmp_path / f"b{i}.db") for i in range(3)]
    finally:
        stop.set()
        thread.join()
        engine.dispose()
    for path in made:
        check = make_engine(f"sqlite:///{path}")
        with check.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
            rows = conn.execute(text("SELECT COUNT(*), MAX(n) FROM load")).one()
            assert rows[0] == (rows[1] + 1 if rows[1] is not None else 0)  # a prefix of the writes, no gap
        check.dispose()


def test_restore_refuses_what_is_not_a_backup_and_changes_nothing(tmp_path: Path) -> None:
    url = _fresh_sqlite(tmp_path / "eva.db")
    _add(url, "kept")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(InvalidInput):
        restore(url, junk, safety_dir=tmp_path / "backups")
    with pytest.raises(InvalidInput):
        restore(url, tmp_path / "missing.db", safety_dir=tmp_path / "backups")
    assert _names(url) == ["kept"]
    with pytest.raises(InvalidInput):
        backup(url, junk)  # never overwrites an existing file


def test_scheduled_backups_keep_only_the_newest(tmp_path: Path) -> None:
    url = _fresh_sqlite(tmp_path / "eva.db")
    folder = tmp_path / "backups"
    folder.mkdir()
    for day in range(1, 5):
        (folder / f"eva-auto-2026010{day}-000000.db").write_text("old")
    (folder / "eva-manual.db").write_text("a manual backup is never pruned")
    scheduled_backup(url, folder, keep=2)
    names = sorted(p.name for p in folder.iterdir())
    assert len([n for n in names if n.startswith("eva-auto-")]) == 2
    assert "eva-auto-20260104-000000.db" in names and "eva-manual.db" in names


def test_cli_backup_and_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EVA_DATA_DIR", str(tmp_path / "data"))
    url = _fresh_sqlite(tmp_path / "data" / "eva.db")
    _add(url, "cli")
    target = tmp_path / "cli.db"
    assert main(["db", "backup", str(target)]) == 0
    assert "backed up" in capsys.readouterr().out
    _add(url, "later")
    assert main(["db", "restore", str(target)]) == 0
    assert "restored" in capsys.readouterr().out
    assert _names(url) == ["cli"]
    assert main(["db", "restore", str(tmp_path / "nope.db")]) == 2
    assert "no backup file" in capsys.readouterr().err
