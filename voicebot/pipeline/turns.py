"""The turn detector: a pure state machine fed one VAD decision per 20 ms frame.

It decides when the caller starts speaking (enough voiced frames in a row to not be a click or a cough) and
when the turn ends (enough trailing silence), and caps utterance length.  No I/O, no clock of its own: the
caller passes each frame's time, so it is tested with exact frame sequences.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

import numpy as np

from voicebot.audio import Pcm
from voicebot.pipeline.frames import SpeechPaused, SpeechStarted, UserUtterance


@dataclass(frozen=True)
class TurnConfig:
    frame_ms: int = 20
    min_speech_ms: int = 60
    """Voiced time in a row before the caller counts as speaking (also the barge-in threshold)."""
    end_silence_ms: int = 400
    """Unvoiced time after speech that ends the turn."""
    max_utterance_ms: int = 15000
    preroll_ms: int = 200
    """Audio kept from before the onset, so the first syllable reaches STT."""
    min_utterance_ms: int = 200
    """Voiced audio shorter than this is dropped (a click), not sent to STT."""
    pause_ms: int = 120
    """Silence after which a SpeechPaused event invites speculative STT (0 disables it)."""


class State(Enum):
    IDLE = "idle"
    MAYBE = "maybe"
    SPEAKING = "speaking"


class TurnDetector:
    def __init__(self, config: TurnConfig | None = None) -> None:
        self.config = config or TurnConfig()
        c = self.config
        self._min_frames = max(1, c.min_speech_ms // c.frame_ms)
        self._end_frames = max(1, c.end_silence_ms // c.frame_ms)
        self._pause_frames = c.pause_ms // c.frame_ms if 0 < c.pause_ms < c.end_silence_ms else 0
        self._max_frames = max(1, c.max_utterance_ms // c.frame_ms)
        self._preroll: deque[tuple[Pcm, float]] = deque(maxlen=max(1, c.preroll_ms // c.frame_ms))
        self.state = State.IDLE
        self._frames: list[Pcm] = []
        self._voiced_run = 0
        self._silent_run = 0
        self._voiced_total = 0
        self._onset = 0.0
        self._last_voiced = 0.0
        self._rate = 0

    def reset(self) -> None:
        self.state = State.IDLE
        self._frames = []
        self._voiced_run = self._silent_run = self._voiced_total = 0
        self._preroll.clear()

    @property
    def speaking(self) -> bool:
        return self.state is State.SPEAKING

    def feed(self, samples: Pcm, rate: int, voiced: bool,
             t: float) -> list[SpeechStarted | SpeechPaused | UserUtterance]:
        """Feed one frame (at time ``t``, the frame's end) and its VAD decision; returns 0..2 events."""
        self._rate = rate
        frame_s = self.config.frame_ms / 1000.0
        events: list[SpeechStarted | SpeechPaused | UserUtterance] = []
        if self.state is State.IDLE:
            if voiced:
                self.state = State.MAYBE
                self._onset = t - frame_s
                self._frames = [f for f, _ in self._preroll]
                self._voiced_run = 0
            else:
                self._preroll.append((samples, t))
                return events
        self._frames.append(samples)
        if voiced:
            self._voiced_run += 1
            self._voiced_total += 1
            self._silent_run = 0
            self._last_voiced = t
        else:
            self._silent_run += 1
            self._voiced_run = 0
        if self.state is State.MAYBE:
            if self._voiced_total >= self._min_frames:
                self.state = State.SPEAKING
                events.append(SpeechStarted(t=t, onset=self._onset))
            elif self._silent_run >= 2:
                # A click or a blip: back to idle, keeping the audio as pre-roll.
                for frame in self._frames[-self._preroll.maxlen:] if self._preroll.maxlen else []:
                    self._preroll.append((frame, t))
                self._frames = []
                self._voiced_total = 0
                self.state = State.IDLE
            return events
        speech_frames = len(self._frames)
        if self._pause_frames and self._silent_run == self._pause_frames and (
                self._voiced_total * self.config.frame_ms >= self.config.min_utterance_ms):
            events.append(SpeechPaused(samples=np.concatenate(self._frames), rate=rate,
                                       last_voiced=self._last_voiced, t=t))
        if self._silent_run >= self._end_frames or speech_frames >= self._max_frames:
            truncated = speech_frames >= self._max_frames and self._silent_run < self._end_frames
            events.append(self._finish(t, truncated))
        return events

    @property
    def voiced_ms(self) -> int:
        """Voiced time in the current utterance so far."""
        return self._voiced_total * self.config.frame_ms if self.state is not State.IDLE else 0

    @property
    def last_voiced(self) -> float:
        return self._last_voiced

    def end_turn(self, t: float) -> UserUtterance | None:
        """End the current turn now, before the full end-of-turn silence (the caller's words are known to be
        a complete sentence).  None unless the caller is in a pause of a turn."""
        if self.state is not State.SPEAKING or self._silent_run == 0:
            return None
        return self._finish(t, truncated=False)

    def _finish(self, t: float, truncated: bool) -> UserUtterance:
        # Drop most of the trailing silence: it only costs STT time.
        keep_tail = min(self._silent_run, 5)
        frames = self._frames[: len(self._frames) - self._silent_run + keep_tail]
        voiced_ms = self._voiced_total * self.config.frame_ms
        utterance = UserUtterance(
            samples=np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16),
            rate=self._rate, started=self._onset, ended=self._last_voiced, t=t, truncated=truncated)
        self._frames = []
        self._voiced_total = self._voiced_run = self._silent_run = 0
        self._preroll.clear()
        self.state = State.IDLE
        if voiced_ms < self.config.min_utterance_ms:
            return UserUtterance(np.zeros(0, dtype=np.int16), self._rate, utterance.started, utterance.ended, t)
        return utterance
