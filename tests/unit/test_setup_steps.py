"""The installer's idempotence logic: done steps are skipped, failures say what failed and how to retry."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebot.config import Settings
from voicebot.errors import SetupError
from voicebot.setup import STEPS, Step, run_steps


def test_done_steps_are_skipped_and_settings_flow_between_steps(tmp_path: Path) -> None:
    ran: list[str] = []
    marker = tmp_path / "marker"

    def first(settings: Settings) -> Settings:
        ran.append("first")
        marker.write_text("x")
        return settings.with_(log_level="DEBUG")

    def second(settings: Settings) -> None:
        ran.append(f"second:{settings.log_level}")

    steps = [Step("first", lambda s: marker.exists(), first), Step("second", lambda s: False, second)]
    lines: list[str] = []
    run_steps(steps, Settings(data_dir=tmp_path), echo=lines.append)
    assert ran == ["first", "second:DEBUG"]
    run_steps(steps, Settings(data_dir=tmp_path), echo=lines.append)
    assert ran == ["first", "second:DEBUG", "second:INFO"]
    assert any("first: already done" in line for line in lines)
    assert any(line.startswith("  [1/2] first: ok (") for line in lines)


def test_a_failing_step_names_itself_and_the_retry(tmp_path: Path) -> None:
    def boom(settings: Settings) -> None:
        raise OSError("disk full")

    with pytest.raises(SetupError) as err:
        run_steps([Step("write things", lambda s: False, boom)], Settings(data_dir=tmp_path), echo=lambda _: None)
    assert "write things" in err.value.message and "disk full" in err.value.message
    assert "eva setup" in err.value.message


def test_the_real_secret_and_prompt_steps_are_idempotent(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    secrets_step = next(s for s in STEPS if s.name.startswith("secrets"))
    assert not secrets_step.done(settings)
    updated = secrets_step.run(settings)
    assert updated is not None and secrets_step.done(settings)
    again = secrets_step.run(settings)
    assert again is not None and again.ari_password == updated.ari_password
