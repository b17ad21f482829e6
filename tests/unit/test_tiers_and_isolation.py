"""The test suite's own guarantees (tests/conftest.py): the developer's ``EVA_*`` shell variables never reach a
test, and the derived markers are enforced (a test that starts a server or loads a model without its mark
fails, so ``make fast`` can never start one).

Each guarantee is checked by running pytest in a child process with a hostile environment or a misbehaving
test, since what is being tested is what pytest does at start-up and around every test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import INFRASTRUCTURE_ENV
from voicebot.config import Settings

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = {"EVA_DATABASE_URL": "postgresql+psycopg://eva@prod-db.example/eva",
           "EVA_CHROMA_URL": "http://prod-chroma.example:8000", "EVA_LLM": "ollama",
           "EVA_JWT_SECRET": "from-the-shell"}


def _pytest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=240,
                          check=False)


def test_no_eva_variable_from_the_shell_is_visible() -> None:
    """The probe the next test runs under a hostile shell (in a clean run it holds trivially)."""
    leaked = sorted(n for n in os.environ if n.startswith("EVA_") and n not in INFRASTRUCTURE_ENV)
    assert leaked == []
    loaded, defaults = Settings.load(), Settings()
    assert (loaded.database_url, loaded.chroma_url, loaded.llm) == (defaults.database_url, defaults.chroma_url,
                                                                    defaults.llm)


def test_a_hostile_shell_environment_never_reaches_a_test() -> None:
    probe = f"{Path(__file__).relative_to(ROOT)}::test_no_eva_variable_from_the_shell_is_visible"
    result = _pytest(probe, env=HOSTILE)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]


def test_unmarked_model_load_or_server_fails_the_test_and_starts_nothing(tmp_path: Path) -> None:
    unmarked = tmp_path / "test_unmarked.py"
    unmarked.write_text(
        "import pytest\n"
        "from voicebot.stt.whisper import WhisperStt\n\n"
        "def test_swallows_a_model_load():\n"
        "    try:\n"
        "        WhisperStt()\n"
        "    except Exception:\n"
        "        pass  # the code under test hides the failure: the test must fail anyway\n\n"
        "def test_asks_for_a_server_behind_the_markers_back(request: pytest.FixtureRequest):\n"
        "    request.getfixturevalue('postgres_server')\n\n"
        "def test_migrates_a_database_it_made_itself(tmp_path):\n"
        "    from models.db import make_engine, upgrade\n"
        "    upgrade(make_engine(f'sqlite:///{tmp_path}/x.db'))\n\n"
        "@pytest.mark.servers\n"
        "def test_marked_may_ask(request: pytest.FixtureRequest):\n"
        "    assert request.node.get_closest_marker('servers')\n")
    result = _pytest(str(unmarked), "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
                     "-p", "tests.conftest", "-k", "not marked_may_ask", "-rA")
    out = result.stdout
    assert result.returncode == 1, out[-3000:] + result.stderr[-2000:]
    assert "test_swallows_a_model_load loads Whisper but is not marked for it" in out, out[-3000:]
    assert "sets up fixture 'postgres_server' but is not marked 'servers'" in out, out[-3000:]
    assert "test_migrates_a_database_it_made_itself migrates a database but is not marked for it" in out, out[-3000:]
    assert "initdb" not in out  # the guard fails before the fixture starts anything
