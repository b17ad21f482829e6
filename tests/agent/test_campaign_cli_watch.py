"""``eva campaign status NAME --watch``: the progress view follows a campaign until it completes, is paused or
cancelled, then prints the outcome table; one line per change when stdout is not a terminal, a view redrawn in
place when it is; Ctrl-C stops watching with exit 0 and no traceback; the interval is bounded.

The campaign's attempts are moved on by a thread with the store functions the dialer itself calls (``claim``,
``finish``, ``change_status``), step by step: each step waits for the watch to have printed the previous one, so
the lines asserted are the lines a person watching would see, in order, with no sleeps guessed.  (The same
command on real calls, as a subprocess, is in tests/voice/test_campaign_end_to_end.py.)
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from models import Agent
from models.campaigns import CampaignAttempt
from models.db import session_scope
from voicebot.campaigns import store
from voicebot.cli import main
from voicebot.cli.db_cmd import open_engine
from voicebot.config import Settings

pytestmark = pytest.mark.db  # every command migrates the data dir's database

REPO = Path(__file__).resolve().parents[2]
STEP_S = 20.0
"""How long a step waits for the watch to show the previous one before the test fails (never reached when it works)."""


class Screen(io.StringIO):
    """stdout for the command under test: records what it writes and wakes whoever waits for more lines."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty
        self.changed = threading.Condition()

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        with self.changed:
            written = super().write(text)
            self.changed.notify_all()
        return written

    def wait_for(self, seen: Callable[[str], bool]) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: seen(self.getvalue()), timeout=STEP_S):
                raise AssertionError(f"the watch never showed it; it printed:\n{self.getvalue()}")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EVA_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def running_campaign(data_dir: Path, phones: list[str]) -> tuple[Engine, list[int]]:
    """A running campaign "winter" with two A/B arms; its engine and its attempts' ids (in import order)."""
    engine = open_engine(Settings.load())
    with session_scope(engine) as session:
        session.add(Agent(name="seller"))
    rules = data_dir / "rules.json"
    rules.write_text(json.dumps({"windows": {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat",
                                                                          "sun")},
                                 "arms": [{"name": "A", "agent_id": 1}, {"name": "B", "agent_id": 1}]}))
    listing = data_dir / "list.csv"
    listing.write_text("phone\n" + "\n".join(phones) + "\n")
    assert main(["campaign", "create", "winter", "--country-code", "34", "--agent", "seller",
                 "--rules-file", str(rules)]) == 0
    assert main(["campaign", "import", "winter", str(listing)]) == 0
    assert main(["campaign", "start", "winter"]) == 0
    with session_scope(engine) as session:
        ids = [int(i) for i in session.exec(select(CampaignAttempt.id).order_by(col(CampaignAttempt.id))).all()
               if i is not None]
    return engine, ids


def dial(engine: Engine, attempt_id: int) -> None:
    with session_scope(engine) as session:
        assert store.claim(session, attempt_id, "test-dialer", now=datetime.now(UTC), lease=timedelta(minutes=1))


def end(engine: Engine, attempt_id: int, outcome: str) -> None:
    with session_scope(engine) as session:
        store.finish(session, attempt_id, outcome, now=datetime.now(UTC))


def change(engine: Engine, action: str) -> None:
    with session_scope(engine) as session:
        store.change_status(session, 1, action, now=datetime.now(UTC))


def lines(screen: Screen) -> list[str]:
    return screen.getvalue().splitlines()


def test_a_campaign_completing_while_watched_prints_a_line_per_change_then_the_outcome_table(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, (first, second, third) = running_campaign(data_dir, ["600000001", "600000002", "600000003"])
    screen = Screen(tty=False)
    monkeypatch.setattr(sys, "stdout", screen)
    failures: list[BaseException] = []

    def dialer() -> None:
        try:
            # Each step, once the watch has printed the state before it (a line per change, and only then).
            screen.wait_for(lambda out: "0/3 done, 0 in progress, 3 waiting" in out)
            dial(engine, first)
            screen.wait_for(lambda out: "0/3 done, 1 in progress, 2 waiting" in out)
            end(engine, first, "busy")
            screen.wait_for(lambda out: "1/3 done, 0 in progress, 2 waiting; busy 1" in out)
            dial(engine, second)
            dial(engine, third)
            end(engine, second, "answered")
            end(engine, third, "no_answer")
            screen.wait_for(lambda out: "3/3 done" in out)
            change(engine, "complete")
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    driver = threading.Thread(target=dialer, daemon=True)
    driver.start()
    code = main(["campaign", "status", "winter", "--watch", "--interval", "0.5"])
    driver.join(STEP_S)
    stats = store_stats(engine)
    out = screen.getvalue()
    print(out, file=sys.__stdout__)
    assert not failures, failures
    assert code == 0
    progress = [line for line in lines(screen) if line.startswith("[")]
    assert len(progress) == len(set(progress)), progress  # nothing printed twice: only changes
    assert "\x1b[" not in out  # not a terminal: no cursor movement
    assert progress[0].startswith("[0:00:") and "winter: running; 0/3 done" in progress[0], progress
    assert "no outcomes yet" in progress[0] and "attempts/min" in progress[0]
    assert "winter: completed; 3/3 done, 0 in progress, 0 waiting; answered 1, busy 1, no_answer 1" in progress[-1]
    assert [line for line in progress if "1/3 done" in line], progress
    arms = {arm["arm"]: arm for arm in stats["per_arm"]}
    reached = ", ".join(f"{name} {arms[name]['reached']}" for name in ("A", "B"))
    assert f"reached {reached}" in progress[-1], (reached, progress[-1])
    # The ending: the status report and the outcome table by arm, whose columns are the analytics' own counts.
    after = out.split(progress[-1], 1)[1]
    assert "winter: completed" in after and "contacts: 3 (" in after
    table = {row.split()[0]: row.split()[1:] for row in after.splitlines() if row.startswith("  ") and row.split()
             and row.split()[0] in ("outcome", "answered", "busy", "no_answer", "total")}
    assert table["outcome"] == ["arm", "A", "arm", "B", "all"], table
    for outcome in ("answered", "busy", "no_answer"):
        assert table[outcome] == [str(arms["A"]["outcomes"][outcome]), str(arms["B"]["outcomes"][outcome]), "1"]
    assert table["total"][-1] == "3", table


def store_stats(engine: Engine) -> dict[str, Any]:
    """The analytics of the campaign (the engine is disposed of: the test is done with it)."""
    with session_scope(engine) as session:
        stats = store.analytics(session, store.get_campaign(session, 1))
    engine.dispose()
    return stats


def test_on_a_terminal_the_view_is_redrawn_in_place_until_the_campaign_is_paused(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, (first, _second) = running_campaign(data_dir, ["600000001", "600000002"])
    screen = Screen(tty=True)
    monkeypatch.setattr(sys, "stdout", screen)

    def dialer() -> None:
        screen.wait_for(lambda out: "0 in progress" in out)
        dial(engine, first)
        screen.wait_for(lambda out: "1 in progress" in out)
        change(engine, "pause")

    driver = threading.Thread(target=dialer, daemon=True)
    driver.start()
    code = main(["campaign", "status", "winter", "--watch", "--interval", "0.5"])
    driver.join(STEP_S)
    engine.dispose()
    out = screen.getvalue()
    assert code == 0
    frames, redraws = out.count(" elapsed\n"), out.count("\x1b[J")
    assert frames >= 3 and redraws == frames - 1, (redraws, frames, out)  # every frame after the first: in place
    view = out.rsplit("\x1b[J", 1)[1]  # the last frame: the view a person sees when the watch ends
    assert view.startswith("winter: paused   0:00:"), view
    assert "  contacts  0/2 done, 1 in progress, 1 waiting\n" in view
    assert "  outcomes  none yet\n" in view and "  reached   arm A 0, arm B 0\n" in view
    assert "attempts/min (0 placed)" in view
    assert "  (no outcomes)" in view  # the table the watch ends with, for a campaign paused before any outcome


def test_ctrl_c_stops_watching_with_exit_0_and_no_traceback(data_dir: Path) -> None:
    engine, _ids = running_campaign(data_dir, ["600000001"])
    engine.dispose()
    watcher = subprocess.Popen(
        [sys.executable, "-c", "import sys; from voicebot.cli import main; sys.exit(main())",
         "campaign", "status", "winter", "--watch", "--interval", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ), cwd=REPO)
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()  # the first progress line: the watch is looking
        assert "winter: running; 0/1 done" in first, first
        watcher.send_signal(signal.SIGINT)
        rest, err = watcher.communicate(timeout=STEP_S)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, (watcher.returncode, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "stopped watching (the campaign goes on)" in rest, rest


@pytest.mark.parametrize("interval", ["0.1", "0", "-1", "nan", "7200"])
def test_the_interval_is_bounded(data_dir: Path, interval: str, capsys: pytest.CaptureFixture[str]) -> None:
    running_campaign(data_dir, ["600000001"])[0].dispose()
    capsys.readouterr()
    assert main(["campaign", "status", "winter", "--watch", "--interval", interval]) == 2
    assert "[invalid_input]: --interval is 0.5 to 3600.0 seconds" in capsys.readouterr().err
