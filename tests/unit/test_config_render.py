"""Settings from the environment, generated secrets, and rendering of Asterisk's configuration."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from voicebot.asterisk.files import SUBDIRS
from voicebot.asterisk.render import instance_path, render_config, render_text
from voicebot.config import Settings
from voicebot.errors import ConfigError
from voicebot.secrets import ensure_secrets


def test_settings_from_environment_with_types(tmp_path: Path) -> None:
    s = Settings.load({"EVA_DATA_DIR": str(tmp_path), "EVA_SIP_PORT": "5999", "EVA_RECORD_CALLS": "no",
                       "EVA_OLLAMA_TIMEOUT": "2.5"})
    assert s.data_dir == tmp_path and s.sip_port == 5999 and s.record_calls is False and s.ollama_timeout == 2.5
    assert s.effective_database_url == f"sqlite:///{tmp_path / 'eva.db'}"
    assert s.bind_host == "127.0.0.1" and s.api_host == "127.0.0.1"  # secure defaults


def test_bad_values_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load({"EVA_DATA_DIR": str(tmp_path), "EVA_SIP_PORT": "lots"})
    assert err.value.field == "sip_port" and "EVA_SIP_PORT" in err.value.message


def test_secrets_are_generated_once_private_and_environment_wins(tmp_path: Path) -> None:
    s = ensure_secrets(Settings(data_dir=tmp_path))
    assert len(s.ari_password) >= 24 and s.ari_password != s.ami_password
    mode = stat.S_IMODE(os.stat(s.secrets_file).st_mode)
    assert mode == 0o600
    again = ensure_secrets(Settings(data_dir=tmp_path))
    assert again.ari_password == s.ari_password and again.jwt_secret == s.jwt_secret
    loaded = Settings.load({"EVA_DATA_DIR": str(tmp_path), "EVA_AMI_PASSWORD": "from-env"})
    assert loaded.ari_password == s.ari_password and loaded.ami_password == "from-env"


def test_render_fills_every_placeholder_and_keeps_secrets_private(tmp_path: Path) -> None:
    s = ensure_secrets(Settings(data_dir=tmp_path, sip_port=5099, ari_port=8099))
    etc = render_config(s)
    for sub in SUBDIRS:
        assert (s.asterisk_dir / sub).is_dir()
    texts = {p.name: p.read_text() for p in etc.glob("*.conf")}
    assert all("{{" not in t for t in texts.values())
    assert "bind = 127.0.0.1:5099" in texts["pjsip.conf"]
    assert "bindport = 8099" in texts["http.conf"] and "bindaddr = 127.0.0.1" in texts["http.conf"]
    assert f"password = {s.ari_password}" in texts["ari.conf"]
    assert f"astetcdir => {instance_path(s)}/etc" in texts["asterisk.conf"]
    assert stat.S_IMODE(os.stat(etc / "ari.conf").st_mode) == 0o640
    # Only what Eva needs is loaded: no sample dialplans, no wildcard-listening channel drivers.
    loaded = [line.split("=", 1)[1].strip() for line in texts["modules.conf"].splitlines()
              if line.startswith("load")]
    assert "autoload = no" in texts["modules.conf"]
    for banned in ("pbx_lua.so", "pbx_ael.so", "chan_iax2.so", "chan_unistim.so", "pbx_dundi.so", "chan_motif.so"):
        assert banned not in loaded
    assert {"chan_pjsip.so", "res_ari.so", "chan_rtp.so", "app_stasis.so"} <= set(loaded)
    assert (etc / "dialplan" / "inbound.conf").exists()


def test_render_prefers_dialplan_overrides_and_is_idempotent(tmp_path: Path) -> None:
    s = ensure_secrets(Settings(data_dir=tmp_path))
    render_config(s)
    first = {p.name: p.read_text() for p in (s.asterisk_dir / "etc").glob("*.conf")}
    (s.data_dir / "dialplan").mkdir()
    (s.data_dir / "dialplan" / "inbound.conf").write_text("[eva-inbound]\nexten => 1,1,Hangup()\n")
    render_config(s)
    assert (s.asterisk_dir / "etc" / "dialplan" / "inbound.conf").read_text().startswith("[eva-inbound]\nexten => 1")
    assert {p.name: p.read_text() for p in (s.asterisk_dir / "etc").glob("*.conf")} == first


def test_unknown_placeholder_is_an_error() -> None:
    with pytest.raises(ConfigError):
        render_text("x = {{nope}}", {"yes": "1"}, source="t.conf")


def test_missing_secrets_refuse_to_render(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        render_config(Settings(data_dir=tmp_path))
