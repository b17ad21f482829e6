"""``eva campaign start|pause|resume|cancel`` through ``voicebot.cli.main``: the same transitions and checks as the
API's routes (a clear error and exit 2 for an illegal one), and ``status`` with the A/B and ROI lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import Agent
from models.db import session_scope
from voicebot.cli import main
from voicebot.cli.db_cmd import open_engine
from voicebot.config import Settings

pytestmark = pytest.mark.db  # every command migrates the data dir's database


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EVA_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_status_transitions_from_the_command_line(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = open_engine(Settings.load())
    with session_scope(engine) as session:
        session.add(Agent(name="seller"))
    engine.dispose()
    rules = data_dir / "rules.json"
    rules.write_text(json.dumps({"arms": [{"name": "A", "agent_id": 1}, {"name": "B", "agent_id": 1}]}))
    assert main(["campaign", "create", "winter", "--country-code", "34", "--agent", "seller",
                 "--rules-file", str(rules)]) == 0
    assert main(["campaign", "create", "lonely", "--country-code", "34"]) == 0
    capsys.readouterr()
    assert main(["campaign", "start", "winter"]) == 2
    assert "[campaign_empty]" in capsys.readouterr().err
    listing = data_dir / "list.csv"
    listing.write_text("phone\n600000001\n600000002\n")
    for name in ("winter", "lonely"):
        assert main(["campaign", "import", name, str(listing)]) == 0
    assert main(["campaign", "start", "lonely"]) == 2
    assert "[campaign_incomplete]" in capsys.readouterr().err
    assert main(["campaign", "pause", "winter"]) == 2
    assert "[campaign_transition_invalid]" in capsys.readouterr().err
    for action, status in (("start", "running"), ("pause", "paused"), ("resume", "running"),
                           ("pause", "paused"), ("cancel", "cancelled")):
        assert main(["campaign", action, "winter"]) == 0, action
        assert capsys.readouterr().out.startswith(f"winter: {status}\n")
        assert main(["campaign", "status", "winter", "--json"]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["status"] == status and stats["comparison"]["a"] == "A"
    assert main(["campaign", "status", "winter"]) == 0
    out = capsys.readouterr().out
    assert "winter: cancelled" in out and "converted" in out and "conversions: 0; cost 0.00, value 0.00" in out
    assert main(["campaign", "resume", "nobody"]) == 2
    assert "no campaign named 'nobody'" in capsys.readouterr().err
