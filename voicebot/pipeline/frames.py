"""The typed frames/events that flow through a call's pipeline.

Times (``t``) are seconds on the event loop's monotonic clock (``loop.time()``), so stage timings can be
subtracted directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voicebot.audio import Pcm


@dataclass(frozen=True)
class AudioFrame:
    """20 ms of caller audio at the call's rate."""

    samples: Pcm
    rate: int
    t: float


@dataclass(frozen=True)
class SpeechStarted:
    """The caller started speaking (after ``min_speech_ms`` of voiced frames); ``onset`` is the first voiced frame."""

    t: float
    onset: float


@dataclass(frozen=True)
class SpeechPaused:
    """The caller has been silent for ``pause_ms`` mid-turn: STT may start speculatively on ``samples``.

    If the turn then ends with no further speech (``UserUtterance.ended == last_voiced``), the speculative
    transcript is the turn's transcript, and the end-of-turn wait has overlapped with STT."""

    samples: Pcm
    rate: int
    last_voiced: float
    t: float


@dataclass(frozen=True)
class UserUtterance:
    """End of the caller's turn: all audio of the turn (with a little pre-roll)."""

    samples: Pcm
    rate: int
    started: float
    ended: float
    """When the last voiced frame was heard (speech end)."""
    t: float
    """When the end of turn was decided (``ended`` + the end-of-turn silence)."""
    truncated: bool = False

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


@dataclass(frozen=True)
class Dtmf:
    digit: str
    t: float


@dataclass(frozen=True)
class Transcript:
    text: str
    t: float


@dataclass(frozen=True)
class Sentence:
    text: str
    index: int
    t: float


@dataclass(frozen=True)
class SpeechAudio:
    """Synthesized audio of one sentence at the call's rate."""

    samples: Pcm
    rate: int
    sentence: Sentence


@dataclass(frozen=True)
class ToolRequest:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def silence(samples: int) -> Pcm:
    return np.zeros(samples, dtype=np.int16)
