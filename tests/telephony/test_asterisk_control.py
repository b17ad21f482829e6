"""`eva asterisk start|stop|status|cli` and the failure paths of starting Asterisk."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebot.asterisk.process import Asterisk
from voicebot.cli import main
from voicebot.config import Settings
from voicebot.errors import AsteriskError
from voicebot.harness import isolated_settings

pytestmark = pytest.mark.asterisk  # by hand: these tests start Asterisk themselves (Asterisk.start, `eva asterisk`)


def _env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("EVA_DATA_DIR", str(settings.data_dir))
    for name in ("sip_port", "ari_port", "ami_port", "rtp_port_start", "rtp_port_end"):
        monkeypatch.setenv(f"EVA_{name.upper()}", str(getattr(settings, name)))


def test_cli_status_and_command(asterisk: Asterisk, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, asterisk.settings)
    assert main(["asterisk", "status"]) == 0
    out = capsys.readouterr().out
    assert "running (pid" in out and "Asterisk 22." in out
    assert main(["asterisk", "cli", "pjsip show transports"]) == 0
    assert f"127.0.0.1:{asterisk.settings.sip_port}" in capsys.readouterr().out


def test_start_that_does_not_boot_fails_loudly_and_cleans_up(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path / "data").with_(asterisk_boot_timeout=0.05)
    instance = Asterisk(settings)
    with pytest.raises(AsteriskError) as err:
        instance.start()
    assert "did not finish booting" in err.value.message or "exited during boot" in err.value.message
    assert "---" in err.value.message or "no Asterisk log" in err.value.message  # the log tail is included
    assert instance.pid() is None
    assert not instance._mounted()


def test_start_without_an_image_says_how_to_fix_it(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path / "data").with_(asterisk_root=tmp_path / "no-image")
    with pytest.raises(AsteriskError, match="eva setup"):
        Asterisk(settings).start()


def test_status_of_a_stopped_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, isolated_settings(tmp_path / "data"))
    assert main(["asterisk", "status"]) == 3
    assert "not running" in capsys.readouterr().out
    assert main(["asterisk", "stop"]) == 0  # idempotent
