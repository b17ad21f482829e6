"""CLI smoke tests through ``voicebot.cli.main`` with a private data directory: ``eva db``, ``eva agent``,
``eva chat`` (stdin pipe, real embedded model, real knowledge) and the setup steps that seed the demo."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from sqlmodel import Session, select

from models import Agent, Flow, KnowledgeDocument, Route
from models.db import make_engine
from tests.embedded_model import gguf_path
from voicebot.agent.demo import EXAMPLE_FLOWS
from voicebot.cli import main
from voicebot.config import Settings

pytestmark = pytest.mark.db  # every command here runs `eva` against a data dir it migrates


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EVA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EVA_LLM", "embedded")
    monkeypatch.setenv("EVA_LLM_MODEL_PATH", str(gguf_path()))
    return tmp_path


def test_db_upgrade_and_status(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "status"]) == 1  # empty database: needs an upgrade
    assert "needs `eva db upgrade`" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    assert "upgraded from empty to 0006" in capsys.readouterr().out  # the newest revision, by name
    assert main(["db", "upgrade"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["db", "status"]) == 0
    assert (data_dir / "eva.db").exists()


def test_agent_commands(data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    persona = tmp_path / "persona.txt"
    persona.write_text("You are Rita, the receptionist of Hill Dental Clinic.\n", encoding="utf-8")
    assert main(["agent", "list"]) == 0
    assert "no agents" in capsys.readouterr().out
    assert main(["agent", "create", "dental", "--persona-file", str(persona), "--max-tokens", "64",
                 "--greeting", "Hill Dental, Rita speaking."]) == 0
    assert "created agent dental" in capsys.readouterr().out
    assert main(["agent", "show", "dental", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["persona"] == "You are Rita, the receptionist of Hill Dental Clinic."
    assert shown["max_tokens"] == 64 and shown["active"] is True
    assert main(["agent", "update", "dental", "--temperature", "0.7", "--inactive",
                 "--rename", "clinic"]) == 0
    assert "updated agent clinic" in capsys.readouterr().out
    assert main(["agent", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(a["name"], a["temperature"], a["active"]) for a in listed] == [("clinic", 0.7, False)]
    assert main(["agent", "list"]) == 0
    assert "clinic" in capsys.readouterr().out
    assert main(["agent", "delete", "clinic"]) == 0
    assert main(["agent", "show", "clinic"]) == 2
    assert "[not_found]" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "code"), [
    (["agent", "create", "bad name"], "invalid_input"),
    (["agent", "create", "x", "--temperature", "7"], "invalid_input"),
    (["agent", "update", "ghost", "--persona", "x"], "not_found"),
    (["agent", "delete", "ghost"], "not_found"),
    (["agent", "create", "x", "--persona-file", "/nonexistent/persona.txt"], "invalid_input"),
    (["chat", "--agent", "ghost"], "not_found"),
])
def test_agent_command_errors(data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                              code: str) -> None:
    assert main(argv) == 2
    assert f"[{code}]" in capsys.readouterr().err


def test_update_without_changes_is_an_error(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "create", "quiet"]) == 0
    assert main(["agent", "update", "quiet"]) == 2
    assert "nothing to change" in capsys.readouterr().err


@pytest.mark.models  # loads a model inline (the CLI / the backend factory), not through a fixture
def test_setup_seeds_the_demo_once_and_chat_answers_from_it(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from voicebot.setup import _demo_done, _demo_run, _schema_done, _schema_run

    settings = Settings.load()
    assert not _schema_done(settings) and not _demo_done(settings)
    _schema_run(settings)
    assert _schema_done(settings)
    _demo_run(settings)
    assert _demo_done(settings)
    _demo_run(settings)  # idempotent: nothing duplicated
    engine = make_engine(settings.effective_database_url)
    try:
        with Session(engine) as session:
            agents = {a.name: a.id for a in session.exec(select(Agent)).all()}
            assert sorted(agents) == ["demo", "demo-es"]  # English on 100, its Spanish twin on 101
            routes = session.exec(select(Route).order_by(Route.did)).all()
            menu = session.exec(select(Flow).where(Flow.name == "main-menu")).one()
            assert [(r.did, r.agent_id, r.flow_id) for r in routes] == [
                ("100", agents["demo"], None), ("101", agents["demo-es"], None), ("200", None, menu.id)]
            shipped = sorted(p.stem for p in EXAMPLE_FLOWS.glob("*.json"))
            assert sorted(f.name for f in session.exec(select(Flow)).all()) == shipped  # seeded once
            documents = session.exec(select(KnowledgeDocument)).all()
            assert [(d.status, d.chunk_count > 0) for d in documents] == [("ready", True), ("ready", True)]
    finally:
        engine.dispose()

    monkeypatch.setattr("sys.stdin", io.StringIO("How much is a flat tire repair?\n\n/quit\nnot read\n"))
    assert main(["chat", "--agent", "demo"]) == 0
    out = capsys.readouterr().out
    assert out.count("demo> ") == 1
    answer = out.split("demo> ", 1)[1].splitlines()[0]
    assert "15" in answer
    assert "sources:" in out and "Sunny Side Bike Shop facts" in out

    # Deleting the demo needs --force (route 100 and the document point at it).
    assert main(["agent", "delete", "demo"]) == 2
    assert "[conflict]" in capsys.readouterr().err
    # --force removes the agent's routes and documents, but never a designer's flows: those must be re-pointed.
    assert main(["agent", "delete", "demo", "--force"]) == 2
    assert "used by 3 flow(s)" in capsys.readouterr().err  # and nothing was deleted (checked below)
    engine = make_engine(settings.effective_database_url)
    try:
        with Session(engine) as session:
            for flow in session.exec(select(Flow)).all():
                flow.agent_id = None
                session.add(flow)
            session.commit()
    finally:
        engine.dispose()
    assert main(["agent", "delete", "demo", "--force"]) == 0
    assert "1 route(s) and 1 document(s)" in capsys.readouterr().out


def test_a_database_from_an_older_development_checkout_is_named_not_crashed_on(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before the first release the initial migration is regenerated: a database at "0001" may lack columns."""
    import sqlite3

    assert main(["db", "upgrade"]) == 0
    with sqlite3.connect(data_dir / "eva.db") as db:
        db.execute("ALTER TABLE agents DROP COLUMN flow_triggers")
    capsys.readouterr()
    assert main(["agent", "list"]) == 2
    err = capsys.readouterr().err
    assert "database_outdated" in err and "agents.flow_triggers" in err and "eva db backup" in err
    assert main(["db", "upgrade"]) == 2
    assert main(["db", "backup", str(data_dir / "before.db")]) == 0  # what the message tells the user to do works
