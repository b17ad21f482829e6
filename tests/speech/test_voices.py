"""Which voice an agent speaks with (its own, a Piper voice for its language, eSpeak NG, the packaged English one),
``eva voice add`` validation, and the eSpeak NG engine itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from voicebot.errors import InvalidInput, TtsError
from voicebot.tts.espeak import EspeakTts, _wav_samples, espeak_voice_for
from voicebot.tts.piper import default_voice_path, load_voice
from voicebot.tts.voices import add_voice, installed_voices, resolve_voice


def _fake_voice(folder: Path, name: str, code: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx = folder / f"{name}.onnx"
    onnx.write_bytes(b"not really onnx")
    Path(str(onnx) + ".json").write_text(json.dumps({"language": {"code": code}, "espeak": {"voice": code[:2]}}))
    return onnx


def test_an_agents_own_voice_wins_and_english_agents_get_the_packaged_voice(tmp_path: Path) -> None:
    _fake_voice(tmp_path, "es_ES-x-medium", "es_ES")
    assert resolve_voice("/voices/mine.onnx", "es", tmp_path) == "/voices/mine.onnx"
    assert resolve_voice("", "en", tmp_path) == ""
    assert resolve_voice("", "en-GB", tmp_path) == ""


def test_a_piper_voice_for_the_language_beats_espeak_exact_tag_first(tmp_path: Path) -> None:
    spain = _fake_voice(tmp_path, "es_ES-x-medium", "es_ES")
    mexico = _fake_voice(tmp_path, "es_MX-y-medium", "es_MX")
    assert resolve_voice("", "es-MX", tmp_path) == str(mexico)
    assert resolve_voice("", "es", tmp_path) in {str(spain), str(mexico)}
    assert resolve_voice("", "es-AR", tmp_path) in {str(spain), str(mexico)}  # the base language serves


def test_a_broken_voice_config_is_skipped_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"x")
    (tmp_path / "broken.onnx.json").write_text("{not json")
    assert installed_voices(tmp_path) == []


@pytest.mark.models  # needs the espeak-ng package scripts/setup installs
def test_without_a_piper_voice_spanish_speaks_with_espeak(tmp_path: Path) -> None:
    assert espeak_voice_for("es") == "es-419" and espeak_voice_for("es-419") == "es-419"  # measured clearer
    assert espeak_voice_for("es-ES") == "es"  # Castilian when asked for
    assert resolve_voice("", "es", tmp_path / "none") == "espeak:es"
    assert espeak_voice_for("tlh") == ""  # Klingon: nothing, and the caller gets the English voice
    assert resolve_voice("", "tlh", tmp_path / "none") == ""


@pytest.mark.models
def test_espeak_speaks_a_sentence_at_the_requested_rate_and_is_not_fooled_by_options() -> None:
    voice = load_voice("espeak:es")
    audio = voice.synthesize_blocking("Hola, ¿en qué puedo ayudarle?", 8000)
    assert audio.rate == 8000 and 0.8 < len(audio.samples) / 8000 < 6.0
    assert int(abs(audio.samples.astype(int)).max()) > 1000
    # Text that looks like options is read, not obeyed (it goes on stdin).
    sneaky = voice.synthesize_blocking("--help -w /tmp/x", 8000)
    assert len(sneaky.samples) > 0
    assert len(voice.synthesize_blocking("   ", 8000).samples) == 0


def test_espeak_wav_parser_rejects_what_is_not_a_wav() -> None:
    with pytest.raises(TtsError):
        _wav_samples(b"garbage" * 10)


def test_espeak_for_a_language_it_lacks_is_a_clear_error() -> None:
    with pytest.raises(TtsError):
        EspeakTts("tlh")


def test_adding_a_voice_refuses_what_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"not a Piper \.onnx"):
        add_voice(tmp_path / "missing.onnx", tmp_path / "voices")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(b"x")
    with pytest.raises(InvalidInput, match="config"):
        add_voice(lonely, tmp_path / "voices")
    nameless = tmp_path / "nameless.onnx"
    nameless.write_bytes(b"x")
    Path(str(nameless) + ".json").write_text(json.dumps({"audio": {}}))
    with pytest.raises(InvalidInput, match="names no language"):
        add_voice(nameless, tmp_path / "voices")
    assert not any((tmp_path / "voices").iterdir())  # nothing half-installed


@pytest.mark.models
def test_a_file_that_does_not_load_as_a_voice_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    fake = _fake_voice(tmp_path / "src", "es_ES-fake-medium", "es_ES")
    with pytest.raises(InvalidInput, match="does not load"):
        add_voice(fake, tmp_path / "voices")
    assert list((tmp_path / "voices").iterdir()) == []


@pytest.mark.models
def test_a_real_piper_voice_is_installed_and_then_chosen_for_its_language(tmp_path: Path) -> None:
    onnx, config = default_voice_path()
    source = tmp_path / "src"
    source.mkdir()
    shutil.copyfile(onnx, source / "en_GB-test-medium.onnx")
    data = json.loads(config.read_text())
    data["language"] = {"code": "en_GB"}
    (source / "en_GB-test-medium.onnx.json").write_text(json.dumps(data))
    installed = add_voice(source / "en_GB-test-medium.onnx", tmp_path / "voices")
    assert installed.language == "en-gb" and installed.path.is_file()
    assert [v.name for v in installed_voices(tmp_path / "voices")] == ["en_GB-test-medium"]
