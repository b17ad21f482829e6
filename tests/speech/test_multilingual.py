"""The multilingual Whisper: assembled only when its pinned hash matches, routed by the agent's language, and it
understands Spanish that tiny.en cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebot.config import Settings
from voicebot.errors import SetupError
from voicebot.stt.multilingual import MODEL_BIN_SIZE, assemble_model, model_dir, model_ready
from voicebot.stt.whisper import SpeechRouter, WhisperStt, whisper_language


def test_language_tags_map_to_whisper_codes() -> None:
    assert [whisper_language(t) for t in ("es-ES", "pt_BR", "EN", "", "es")] == ["es", "pt", "en", "en", "es"]


def test_a_model_that_does_not_match_its_pinned_hash_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    parts = []
    for n in (1, 2):
        part = tmp_path / f"model.bin.part{n}"
        part.write_bytes(b"\0" * 1024)
        parts.append(part)
    side = tmp_path / "side"
    side.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        (side / name).write_text("{}")
    with pytest.raises(SetupError, match="does not match its pinned hash"):
        assemble_model(tmp_path / "models", parts=parts, side_dir=side)
    folder = model_dir(tmp_path / "models")
    assert not (folder / "model.bin").exists() and not list(folder.glob("*.partial"))
    assert not model_ready(tmp_path / "models")


@pytest.mark.models
def test_the_installed_multilingual_model_is_verified() -> None:
    installed = Settings.load()
    folder = Path(installed.stt_multilingual_model) if installed.stt_multilingual_model \
        else model_dir(installed.models_dir)
    assert model_ready(folder.parent), f"run `eva setup`: {folder} is not the verified model"
    assert (folder / "model.bin").stat().st_size == MODEL_BIN_SIZE


@pytest.mark.models
def test_spanish_calls_use_the_multilingual_model_and_english_ones_tiny_en() -> None:
    from voicebot.tts.espeak import EspeakTts

    installed = Settings.load()
    english = WhisperStt()
    router = SpeechRouter(english, str(model_dir(installed.models_dir)))
    try:
        assert router.for_language("en-US") is english and not english.multilingual
        assert router.for_language("es") is english  # not loaded yet: English recognition, never a refusal
        spanish = router.load("es")
        assert spanish.multilingual and router.load("es-MX") is spanish  # one model for every other language
        audio = EspeakTts("es").synthesize_blocking("Quiero hablar con una persona.", 16000)
        heard = spanish.transcribe_blocking(audio.samples, audio.rate, "es").text.lower()
        assert "hablar" in heard and "persona" in heard, heard
        bound = router.for_language("es")
        assert getattr(bound, "language", "") == "es"
        assert "hablar" not in english.transcribe_blocking(audio.samples, audio.rate).text.lower()
    finally:
        router.close()
