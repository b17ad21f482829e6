"""Small, pure audio helpers: 16-bit PCM WAV I/O, resampling (soxr), levels and voiced-region detection.

Samples are ``numpy.int16`` arrays, mono.  ``audioop`` is gone from Python 3.13, so nothing here uses it.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import soxr

Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Audio:
    samples: Pcm
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


def read_wav(path: str | Path) -> Audio:
    """Read a 16-bit PCM WAV (any channel count: channels are averaged to mono)."""
    with wave.open(str(path), "rb") as handle:
        if handle.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported (got {8 * handle.getsampwidth()}-bit)")
        channels = handle.getnchannels()
        rate = handle.getframerate()
        data = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return Audio(data.astype(np.int16), rate)


def write_wav(path: str | Path | BinaryIO, audio: Audio) -> None:
    with wave.open(path if not isinstance(path, str | Path) else str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(audio.rate)
        handle.writeframes(audio.samples.astype("<i2").tobytes())


def resample(audio: Audio, rate: int) -> Audio:
    if audio.rate == rate:
        return audio
    out = soxr.resample(audio.samples.astype(np.float32) / 32768.0, audio.rate, rate, quality="HQ")
    return Audio(float_to_pcm(out), rate)


def float_to_pcm(samples: npt.NDArray[np.floating]) -> Pcm:
    return np.clip(np.asarray(samples) * 32768.0, -32768, 32767).astype(np.int16)


def rms_dbfs(samples: Pcm) -> float:
    if len(samples) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    return float(20.0 * np.log10(max(rms, 1e-3) / 32768.0))


def voiced_regions(audio: Audio, *, frame_ms: int = 20, threshold_dbfs: float = -45.0,
                   min_gap_s: float = 0.3) -> list[tuple[float, float]]:
    """Regions (start, end seconds) whose 20 ms frame level is above ``threshold_dbfs``.

    Gaps shorter than ``min_gap_s`` are bridged, so the pauses between words do not split a sentence.
    """
    step = audio.rate * frame_ms // 1000
    regions: list[tuple[float, float]] = []
    start: float | None = None
    last_loud = 0.0
    for index in range(0, len(audio.samples) - step + 1, step):
        t = index / audio.rate
        if rms_dbfs(audio.samples[index:index + step]) > threshold_dbfs:
            if start is None:
                start = t
            elif t - last_loud > min_gap_s:
                regions.append((start, last_loud))
                start = t
            last_loud = t + frame_ms / 1000
    if start is not None:
        regions.append((start, last_loud))
    return regions


def voiced_seconds(audio: Audio, *, threshold_dbfs: float = -45.0) -> float:
    """Total seconds of 20 ms frames above the threshold."""
    step = audio.rate // 50
    loud = 0
    for index in range(0, len(audio.samples) - step + 1, step):
        if rms_dbfs(audio.samples[index:index + step]) > threshold_dbfs:
            loud += 1
    return loud * 0.02
