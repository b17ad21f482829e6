"""Which voice speaks for an agent: its own, else one for its language from the voices folder, else eSpeak NG.

Order, for an agent's ``voice`` and ``language``:

1. the agent's ``voice`` when set (a Piper ``.onnx`` path, or ``espeak:<lang>``);
2. English agents: the packaged en_US voice ('', the speaker's default);
3. a Piper voice in ``<data_dir>/voices`` whose config names the agent's language (exact tag first, then the
   base language: an ``es_ES`` voice serves ``es-MX``), installed with ``eva voice add``;
4. eSpeak NG's voice for the language (robotic but intelligible, see voicebot.tts.espeak);
5. the packaged English voice, logged: a call is never silent for want of a voice.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from voicebot.errors import InvalidInput, TtsError
from voicebot.tts.espeak import VOICE_PREFIX, espeak_voice_for

log = logging.getLogger(__name__)

MAX_VOICE_BYTES = 300 * 1024 * 1024
"""Piper voices are 20-120 MB; a larger file is not one."""


def _norm(tag: str) -> str:
    return tag.replace("_", "-").lower()


@dataclass(frozen=True)
class VoiceFile:
    path: Path
    language: str
    """The voice's language tag, e.g. ``es-es`` (normalised)."""
    name: str


def read_voice_config(onnx: Path) -> dict[str, object]:
    config = Path(str(onnx) + ".json")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read the voice's config {config.name}: {exc}",
                               code="voice_invalid") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{config.name} is not a Piper voice config", code="voice_invalid")
    return data


def _voice_language(data: dict[str, object]) -> str:
    language = data.get("language")
    code = language.get("code") if isinstance(language, dict) else None
    if isinstance(code, str) and code:
        return _norm(code)
    espeak = data.get("espeak")
    voice = espeak.get("voice") if isinstance(espeak, dict) else None
    return _norm(voice) if isinstance(voice, str) else ""


def installed_voices(voices_dir: Path) -> list[VoiceFile]:
    found: list[VoiceFile] = []
    if not voices_dir.is_dir():
        return found
    for onnx in sorted(voices_dir.glob("*.onnx")):
        try:
            language = _voice_language(read_voice_config(onnx))
        except InvalidInput as exc:
            log.warning("voice %s skipped: %s", onnx.name, exc.message)
            continue
        found.append(VoiceFile(onnx, language, onnx.stem))
    return found


def resolve_voice(agent_voice: str, language: str, voices_dir: Path) -> str:
    """The voice key for the speaker (:class:`voicebot.tts.piper.PiperSpeaker`): a path, ``espeak:<lang>`` or
    '' (the packaged English voice)."""
    if agent_voice:
        return agent_voice
    tag = _norm(language or "en")
    base = tag.split("-")[0]
    if base == "en":
        return ""
    voices = installed_voices(voices_dir)
    for wanted in (tag, base):
        for voice in voices:
            if voice.language == wanted or (wanted == base and voice.language.split("-")[0] == base):
                return str(voice.path)
    if espeak_voice_for(tag):
        return VOICE_PREFIX + tag
    log.warning("no voice for language %s (add one with `eva voice add`); using the English voice", tag)
    return ""


def add_voice(onnx: Path, voices_dir: Path, *, config: Path | None = None) -> VoiceFile:
    """Validate a Piper voice (its config parses, names a language, and the voice speaks a test sentence) and
    copy it with its config into ``voices_dir``.  Raises InvalidInput naming the problem."""
    onnx = Path(onnx)
    config = Path(config) if config else Path(str(onnx) + ".json")
    if onnx.suffix != ".onnx" or not onnx.is_file():
        raise InvalidInput(f"{onnx} is not a Piper .onnx voice file", code="voice_invalid")
    if onnx.stat().st_size > MAX_VOICE_BYTES:
        raise InvalidInput(f"{onnx.name} is larger than {MAX_VOICE_BYTES // 2**20} MB", code="voice_invalid")
    if not config.is_file():
        raise InvalidInput(f"the voice's config {config} is missing (Piper voices come as NAME.onnx and "
                               "NAME.onnx.json)", code="voice_invalid")
    voices_dir.mkdir(parents=True, exist_ok=True)
    staging = voices_dir / f".{onnx.name}.adding"
    staging.unlink(missing_ok=True)
    staged_config = Path(str(staging) + ".json")
    try:
        shutil.copyfile(onnx, staging)
        shutil.copyfile(config, staged_config)
        language = _voice_language(read_voice_config(staging))
        if not language:
            raise InvalidInput(f"{config.name} names no language", code="voice_invalid")
        from voicebot.tts.piper import PiperTts

        try:
            audio = PiperTts(str(staging)).synthesize_blocking("1 2 3.", 16000)
        except TtsError as exc:
            raise InvalidInput(f"{onnx.name} does not load as a Piper voice: {exc.message}",
                                   code="voice_invalid") from exc
        if len(audio.samples) == 0:
            raise InvalidInput(f"{onnx.name} produced no audio", code="voice_invalid")
        target = voices_dir / onnx.name
        staging.replace(target)
        staged_config.replace(Path(str(target) + ".json"))
    finally:
        staging.unlink(missing_ok=True)
        staged_config.unlink(missing_ok=True)
    return VoiceFile(target, language, target.stem)
