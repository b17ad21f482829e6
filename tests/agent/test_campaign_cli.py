"""``eva campaign list|create|import|status`` through ``voicebot.cli.main`` with a private data directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicebot.cli import main

pytestmark = pytest.mark.db  # every command migrates the data dir's database


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EVA_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_campaign_commands(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["campaign", "list"]) == 0
    assert "no campaigns" in capsys.readouterr().out
    rules = data_dir / "rules.json"
    rules.write_text(json.dumps({"windows": {"mon": ["10:00-14:00"]}, "pacing": {"max_concurrent": 2},
                                 "retry": {"busy": {"max_attempts": 2, "interval_minutes": 30}}}), encoding="utf-8")
    assert main(["campaign", "create", "winter", "--timezone", "Europe/Madrid", "--country-code", "+34",
                 "--rules-file", str(rules)]) == 0
    assert "created campaign winter" in capsys.readouterr().out
    assert main(["campaign", "create", "bad", "--timezone", "Nowhere/Land"]) == 2
    assert "[invalid_input]" in capsys.readouterr().err
    listing = data_dir / "list.csv"
    listing.write_text("phone,name,city\n600000001,Ana,Madrid\n600000001,Ana,Madrid\nnope,Bo,\n"
                       "+34600000003,Cy,Bilbao\n", encoding="utf-8")
    assert main(["campaign", "import", "winter", str(listing)]) == 0
    out = capsys.readouterr().out
    assert "parsed 4 rows" in out and "imported 2 of 4 rows" in out
    assert "line 3: duplicates [phone]: the same number as line 2" in out
    assert "line 4: invalid [phone]" in out
    assert main(["campaign", "import", "winter", str(listing), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["imported"], len(report["already_in_campaign"])) == (0, 2)
    assert main(["campaign", "status", "winter"]) == 0
    out = capsys.readouterr().out
    assert "winter: draft" in out and "contacts: 2 (2 pending)" in out and "outcomes: none yet" in out
    assert main(["campaign", "status", "winter", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["contacts"] == 2
    assert main(["campaign", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["contacts"] == {"pending": 2}
    assert main(["campaign", "status", "summer"]) == 2
    assert "no campaign named 'summer'" in capsys.readouterr().err


def test_a_segment_from_the_command_line(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = data_dir / "rules.json"
    rules.write_text(json.dumps({"segment": [{"variable": "city", "op": "eq", "value": "madrid"}]}), encoding="utf-8")
    assert main(["campaign", "create", "spring", "--country-code", "34", "--rules-file", str(rules)]) == 0
    listing = data_dir / "list.csv"
    listing.write_text("phone,city\n600000001, Madrid\n600000002,Bilbao\n", encoding="utf-8")
    assert main(["campaign", "import", "spring", str(listing)]) == 0
    out = capsys.readouterr().out
    assert "imported 2 of 2 rows" in out and "1 of them outside the campaign's segment" in out
    assert main(["campaign", "status", "spring"]) == 0
    out = capsys.readouterr().out
    assert "contacts: 2 (1 excluded, 1 pending)" in out and "1 outside the segment" in out
    rules.write_text(json.dumps({"segment": [{"variable": "city", "op": "in"}]}), encoding="utf-8")
    assert main(["campaign", "create", "bad-segment", "--rules-file", str(rules)]) == 2
    assert "rules.segment.0: Value error, in needs values" in capsys.readouterr().err
