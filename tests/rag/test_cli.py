"""``eva kb ...`` end to end through the real CLI entry point (own data dir, SQLite, embedded Chroma)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.rag.files import encrypt_pdf, make_docx, make_pdf
from voicebot.cli import main
from voicebot.cli.kb_cmd import ProgressBoard

PAGES = ["The workshop fixes flat tyres in ten minutes.", "Bike rentals cost fifteen dollars per hour."]


@pytest.fixture
def eva_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("EVA_DATA_DIR", str(data))
    monkeypatch.delenv("EVA_DATABASE_URL", raising=False)
    monkeypatch.delenv("EVA_CHROMA_URL", raising=False)
    monkeypatch.setenv("EVA_EMBEDDER", "local")
    return tmp_path


@pytest.mark.models  # loads a model inline (the CLI / the backend factory), not through a fixture
def test_kb_commands(eva_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pdf, docx, locked = eva_env / "shop.pdf", eva_env / "faq.docx", eva_env / "locked.pdf"
    pdf.write_bytes(make_pdf(PAGES))
    docx.write_bytes(make_docx(["Helmets are included with every rental."]))
    locked.write_bytes(encrypt_pdf(make_pdf(PAGES[:1]), user_password="pw"))
    assert main(["agent", "create", "shop"]) == 0
    capsys.readouterr()

    # One good batch, then a batch with a failing and a missing file: exit code 1, every reason printed.
    assert main(["kb", "add", str(pdf), str(docx), "--agent", "shop"]) == 0
    out = capsys.readouterr().out
    assert "shop.pdf" in out and "ready: 2 chunks" in out and "overall: 2/2 files done" in out
    assert main(["kb", "add", str(locked), str(eva_env / "missing.txt"), "--agent", "shop"]) == 1
    out = capsys.readouterr().out
    assert "failed [document_encrypted]" in out and "refused [document_missing]" in out

    assert main(["kb", "list", "--agent", "shop", "--json"]) == 0
    documents = json.loads(capsys.readouterr().out)
    assert [(d["filename"], d["status"]) for d in documents] == [
        ("shop.pdf", "ready"), ("faq.docx", "ready"), ("locked.pdf", "failed")]

    assert main(["kb", "search", "how much is renting a bike", "--agent", "shop", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "shop, page 2" in out and "fifteen dollars" in out

    assert main(["kb", "stats", "--agent", "shop", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["by_status"] == {"pending": 0, "processing": 0, "ready": 2, "failed": 1}
    assert stats["chunks"] == 3

    shop_pdf = documents[0]["id"]
    assert main(["kb", "reindex", str(shop_pdf), "--agent", "shop"]) == 0
    assert "ready, 2 chunks" in capsys.readouterr().out
    assert main(["kb", "rm", str(shop_pdf), "--agent", "shop"]) == 0
    assert f"deleted document {shop_pdf}" in capsys.readouterr().out
    assert main(["kb", "search", "renting a bike", "--agent", "shop", "--json"]) == 0
    assert {hit["document_id"] for hit in json.loads(capsys.readouterr().out)} == {documents[1]["id"]}

    # Errors: unknown agent, a document of another agent.
    assert main(["agent", "create", "other"]) == 0
    assert main(["kb", "rm", str(documents[1]["id"]), "--agent", "other"]) == 2
    assert main(["kb", "list", "--agent", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "does not belong to this agent" in err and "agent 'nobody' does not exist" in err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_board_redraws_in_place_on_a_terminal() -> None:
    out = FakeTerminal()
    board = ProgressBoard(["a.pdf", "b.docx"], out)
    board.update(0, 0.5, "processing")
    board.update(1, 0.0, "accepted")
    board.draw()
    board.update(1, 1.0, "ready", final=True)
    board.draw()
    text = out.getvalue()
    assert text.count("\x1b[3F") == 1  # moved back up over 2 file lines + the overall line once
    assert "[############------------]  50.0%  a.pdf" in text
    assert "overall: 1/2 files done" in text
    # Overall counts the finished file as complete: (0.5 + 1.0) / 2.
    assert "[##################------]  75.0%  overall" in text


def test_progress_board_prints_final_lines_once_when_piped() -> None:
    out = io.StringIO()
    board = ProgressBoard(["a.pdf"], out)
    board.update(0, 0.3, "processing")
    board.draw()
    board.update(0, 1.0, "ready", final=True)
    board.update(0, 1.0, "ready", final=True)
    board.finish()
    assert out.getvalue().splitlines() == [
        "[########################] 100.0%  a.pdf  ready",
        "[########################] 100.0%  overall: 1/1 files done",
    ]
