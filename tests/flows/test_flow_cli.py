"""``eva flow``: flows written by hand in YAML/JSON files, checked, imported into a private database, exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicebot.cli import main

pytestmark = pytest.mark.db  # every command here runs `eva` against a data dir it migrates

SURVEY = """\
name: survey
description: Two questions
start_step: q1
steps:
  - id: q1
    say: Are you happy with us?
    collect: {var: happy, type: yes_no}
    branches:
      - when: {var: happy, equals: "no"}
        next: sorry
    next: bye
  - id: sorry
    say: Sorry to hear that.
    next: bye
  - id: bye
    say: Goodbye.
    end: done
"""


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EVA_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_check_import_export_a_yaml_flow(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = data_dir / "survey.yaml"
    path.write_text(SURVEY)
    assert main(["flow", "check", str(path)]) == 0
    assert "3 steps, ok" in capsys.readouterr().out
    assert main(["flow", "import", str(path)]) == 0
    assert main(["flow", "import", str(path)]) == 1  # exists: --replace needed
    path.write_text(SURVEY.replace("Goodbye.", "Bye now."))
    assert main(["flow", "import", "--replace", str(path)]) == 0
    capsys.readouterr()
    assert main(["flow", "export", "survey"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["steps"][2] == {"id": "bye", "say": "Bye now.", "end": "done"}
    assert main(["flow", "list"]) == 0
    assert "survey" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "problem"), [
    (SURVEY.replace("Sorry to hear that.", "Sorry, {name}."), "variable 'name'"),
    (SURVEY.replace("next: sorry", "next: nowhere"), "unknown step 'nowhere'"),
    (SURVEY.replace('equals: "no"', "equals: no"), "steps.0.branches.0.when.equals"),  # YAML's no is a boolean
    (SURVEY + "  - id: stray\n    say: never\n    end: x\n", "never reached"),
    ("name: [unclosed", "not valid YAML"),
    ("- just a list", "must hold one flow"),
])
def test_a_bad_flow_file_says_what_is_wrong(data_dir: Path, capsys: pytest.CaptureFixture[str], text: str,
                                            problem: str) -> None:
    path = data_dir / "bad.yaml"
    path.write_text(text)
    assert main(["flow", "check", str(path)]) == 2
    assert problem in capsys.readouterr().err


def test_the_shipped_examples_pass_the_check(capsys: pytest.CaptureFixture[str]) -> None:
    examples = Path(__file__).resolve().parents[2] / "voicebot" / "flows" / "examples"
    for path in sorted(examples.glob("*.json")):
        assert main(["flow", "check", str(path)]) == 0, path


def test_the_readme_flow_example_passes_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The YAML a designer copies from the README is a valid flow (documentation that cannot rot)."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Conversation flows and IVR menus"):]
    found = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert found is not None
    path = tmp_path / "front-desk.yaml"
    path.write_text(found.group(1))
    assert main(["flow", "check", str(path)]) == 0, capsys.readouterr().err
