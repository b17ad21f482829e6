"""The installer's idempotence logic: done steps are skipped, failures say what failed and how to retry."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebot.audio import read_wav, voiced_regions
from voicebot.config import Settings
from voicebot.errors import SetupError
from voicebot.setup import PROMPTS, STEPS, Step, run_steps


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


def test_the_real_secrets_step_is_idempotent(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    secrets_step = next(s for s in STEPS if s.name.startswith("secrets"))
    assert not secrets_step.done(settings)
    updated = secrets_step.run(settings)
    assert updated is not None and secrets_step.done(settings)
    again = secrets_step.run(settings)
    assert again is not None and again.ari_password == updated.ari_password


@pytest.mark.models  # the step synthesizes the prompts with the real Piper voice
def test_the_real_prompt_step_writes_every_prompt_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    prompt_step = next(s for s in STEPS if s.name == "telephony prompts")
    assert not prompt_step.done(settings)
    run_steps([prompt_step], settings, echo=lambda _: None)
    assert prompt_step.done(settings)
    files = {name: settings.sounds_dir / f"{name}.wav" for name in PROMPTS}
    for name, path in files.items():
        audio = read_wav(path)
        assert audio.rate == 8000 and voiced_regions(audio), name  # Asterisk's rate, and speech in it
    written = {name: path.stat().st_mtime_ns for name, path in files.items()}
    said: list[str] = []
    run_steps([prompt_step], settings, echo=said.append)  # a second `eva setup`: nothing is synthesized again
    assert said and "already done" in said[0]
    assert {name: path.stat().st_mtime_ns for name, path in files.items()} == written
    files["eva-no-route"].unlink()  # one prompt lost: the step is not done, and running it brings it back
    assert not prompt_step.done(settings)
    run_steps([prompt_step], settings, echo=lambda _: None)
    assert prompt_step.done(settings) and voiced_regions(read_wav(files["eva-no-route"]))
