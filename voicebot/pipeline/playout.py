"""Playout: the queue of bot audio frames the media clock pulls from, one 20 ms frame per tick.

It knows which sentence each frame belongs to and how many of a sentence's frames went out, so after a barge-in
we know what the caller actually heard (:meth:`Playout.heard`).  Pure and synchronous (the media clock calls
``pop`` on the event loop).

What counts as heard: every sentence whose frames all went out, whole; of the sentence that was playing when the
caller interrupted, the share of its words equal to the share of its frames played, rounded down (a 3 s greeting
cut after 0.1 s counts as no words heard, not as the whole greeting).  Synthesized speech is close enough to
evenly paced for this; what matters is that the stored text never claims more than reached the caller.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voicebot.audio import Pcm
from voicebot.pipeline.frames import Sentence


@dataclass
class _Progress:
    """One sentence's frames: how many were queued, how many went out."""

    sentence: Sentence
    total: int = 0
    played: int = 0

    def heard_text(self) -> str:
        if self.total == 0 or self.played >= self.total:
            return self.sentence.text
        words = self.sentence.text.split()
        return " ".join(words[:len(words) * self.played // self.total])


class Playout:
    def __init__(self, frame_samples: int, frame_ms: int = 20) -> None:
        self.frame_samples = frame_samples
        self.frame_ms = frame_ms
        self._frames: deque[tuple[Pcm, _Progress | None]] = deque()
        self._queued: dict[int, _Progress] = {}
        """Progress of the sentences in the queue, by ``id(sentence)`` (sentences compare by value)."""
        self._started: list[_Progress] = []
        """Sentences of the current turn whose first frame went out (the caller heard at least part)."""
        self._current: _Progress | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.on_first_frame: Callable[[float], None] | None = None
        self.frames_out = 0
        self.paused = False

    def enqueue(self, samples: Pcm, sentence: Sentence | None = None) -> None:
        progress: _Progress | None = None
        if sentence is not None:
            progress = self._queued.setdefault(id(sentence), _Progress(sentence))
        step = self.frame_samples
        for start in range(0, len(samples), step):
            frame = samples[start:start + step]
            if len(frame) < step:
                frame = np.concatenate([frame, np.zeros(step - len(frame), dtype=np.int16)])
            self._frames.append((frame, progress))
            if progress is not None:
                progress.total += 1
        if self._frames:
            self.idle.clear()

    def pop(self, now: float) -> Pcm | None:
        if self.paused:
            return None  # holding: the caller may be interrupting (see CallSession)
        if not self._frames:
            self.idle.set()
            return None
        frame, progress = self._frames.popleft()
        if self.frames_out == 0 and self.on_first_frame is not None:
            self.on_first_frame(now)
        self.frames_out += 1
        if progress is not None:
            progress.played += 1
            if progress is not self._current:
                self._current = progress
                self._started.append(progress)
            if progress.played >= progress.total:
                self._queued.pop(id(progress.sentence), None)
        if not self._frames:
            self.idle.set()
        return frame

    @property
    def busy(self) -> bool:
        return bool(self._frames)

    @property
    def queued_s(self) -> float:
        """Seconds of audio still to play: when a sentence enqueued now would start."""
        return len(self._frames) * self.frame_ms / 1000.0

    @property
    def started(self) -> list[Sentence]:
        """Sentences of the current turn of which at least one frame went out."""
        return [p.sentence for p in self._started]

    def heard(self) -> list[str]:
        """What of the current turn reached the caller (see the module docstring for the rule); sentences of
        which no whole word was played are left out."""
        return [text for p in self._started if (text := p.heard_text())]

    def clear(self) -> list[str]:
        """Drop everything not yet played (barge-in); returns what the caller heard (:meth:`heard`)."""
        self._frames.clear()
        self._queued.clear()
        self.paused = False
        self.idle.set()
        return self.heard()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def new_turn(self, on_first_frame: Callable[[float], None] | None) -> None:
        self._started = []
        self._current = None
        self.frames_out = 0
        self.on_first_frame = on_first_frame
